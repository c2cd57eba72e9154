"""The docs document every error code and every environment variable the worker has, and
their relative links lead to files that exist."""

from __future__ import annotations

import re
from pathlib import Path

from qwen_worker.base.errors import DESCRIPTIONS, ErrorCode

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs/configuration.md"
ERRORS = ROOT / "docs/errors.md"


def _table_keys(doc: Path, heading: str) -> set[str]:
    """The `NAME` keys of the table rows in the section under `heading` (any level)."""
    text = doc.read_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\n", text, re.MULTILINE)
    assert match, f"{doc.name} has no section {heading!r}"
    level = len(match.group(1))
    section = re.split(rf"\n#{{1,{level}}} ", text[match.end():], maxsplit=1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)`", section, re.MULTILINE))


def _config_source() -> str:
    return (ROOT / "src/qwen_worker/base/config.py").read_text()


def test_every_error_code_has_a_row_and_a_description():
    codes = {c.value for c in ErrorCode}
    assert _table_keys(README, "Errors") == codes
    assert _table_keys(ERRORS, "Error codes") == codes
    assert set(DESCRIPTIONS) == set(ErrorCode)


def test_every_setting_the_worker_reads_is_in_the_environment_table():
    read = set(re.findall(r'env(?:\.get\(|, )"([A-Z_]+)"', _config_source()))
    assert len(read) > 20
    table = _table_keys(CONFIGURATION, "Environment variables")
    assert read <= table, read - table
    # README's short table names settings that exist.
    assert _table_keys(README, "Settings") <= table, _table_keys(README, "Settings") - table


def _docs() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", doc.read_text(), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_relative_links_lead_to_files_and_headings_that_exist():
    broken = []
    for doc in _docs():
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken
