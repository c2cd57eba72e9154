"""Model locations checked before anything loads them.

A missing directory, a truncated weight file or an unreachable hub otherwise surface as a
40-line traceback from deep inside transformers (`HFValidationError`, `SafetensorError:
incomplete metadata`, an `OSError` after a minute of retries). Here each becomes one sentence
that names the path and the setting to change.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class StartupError(RuntimeError):
    """The worker cannot start; the message is one line for the log."""


def resolve_model(value: str, setting: str) -> str:
    """A local model directory (checked) or a hub id (fetched into the hub cache, checked)."""
    path = Path(value).expanduser()
    if path.is_dir():
        check_model_dir(path, setting)
        return str(path)
    if not _is_repo_id(value):
        raise StartupError(f"{setting}={value}: no such model directory; set {setting} to a "
                           "directory with config.json and the weights, or to a hub id")
    local = _download(value, setting)
    check_model_dir(local, setting)
    return str(local)


def _is_repo_id(value: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.startswith(("/", ".", "~")) or value.count("/") != 1:
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _download(repo_id: str, setting: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # offline, unreachable, unknown repo, gated: one line for all
        raise StartupError(
            f"{setting}={repo_id}: could not get the model from the hub ({type(exc).__name__}); "
            f"set {setting} to a local model directory, or allow hub access "
            "(HF_HUB_OFFLINE unset, HF_TOKEN for gated models)") from exc


def check_model_dir(path: Path, setting: str) -> None:
    """config.json readable, weights present, every safetensors file as long as its header says."""
    config = path / "config.json"
    try:
        json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise StartupError(f"{setting}={path}: config.json is missing or unreadable "
                           f"({type(exc).__name__})") from None
    weights = sorted(f for pattern in WEIGHT_PATTERNS for f in path.glob(pattern))
    if not weights:
        raise StartupError(f"{setting}={path}: no weight files (*.safetensors) in the directory")
    for index in path.glob("*.safetensors.index.json"):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise StartupError(f"{setting}={path}: weight shards missing: {', '.join(missing)}")
    for f in weights:
        if f.suffix == ".safetensors":
            _check_safetensors(f, setting)


def _header(path: Path) -> tuple[int, dict]:
    """A safetensors file's header: its length and its JSON (names, dtypes, shapes, offsets)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > path.stat().st_size:
            raise ValueError("header longer than the file")
        return header_len, json.loads(f.read(header_len))


def parameter_count(path: Path) -> int:
    """Weights in a checked model directory's safetensors files, from their headers alone."""
    count = 0
    for f in path.glob("*.safetensors"):
        _, header = _header(f)
        for name, tensor in header.items():
            if name != "__metadata__":
                count += math.prod(tensor["shape"])
    return count


def _check_safetensors(path: Path, setting: str) -> None:
    """The file format: 8-byte header length, JSON header, then the tensors' bytes."""
    size = path.stat().st_size
    try:
        header_len, header = _header(path)
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise StartupError(f"{setting}: {path} is not a readable safetensors file ({exc}); "
                           "the download or the image build was cut short") from None
    if 8 + header_len + end > size:
        raise StartupError(f"{setting}: {path} is truncated ({size} of {8 + header_len + end} "
                           "bytes); the download or the image build was cut short")
