"""`vllm.multimodal.inputs.PlaceholderRange`: where a multimodal item's tokens sit in a prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlaceholderRange:
    offset: int
    length: int
    is_embed: Any = None
