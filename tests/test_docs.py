"""README documents every error code and every environment variable the worker has."""

from __future__ import annotations

import re
from pathlib import Path

from qwen_worker.base.errors import DESCRIPTIONS, ErrorCode

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _table_keys(heading: str) -> set[str]:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)`", section, re.MULTILINE))


def test_every_error_code_has_a_row_and_a_description():
    assert _table_keys("Errors") == {c.value for c in ErrorCode}
    assert set(DESCRIPTIONS) == set(ErrorCode)


def test_every_setting_the_worker_reads_is_in_the_environment_table():
    config = (ROOT / "src/qwen_worker/config.py").read_text()
    read = set(re.findall(r'env(?:\.get\(|, )"([A-Z_]+)"', config))
    assert len(read) > 20
    assert read <= _table_keys("Environment variables"), read - _table_keys("Environment variables")
