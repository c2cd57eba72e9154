from __future__ import annotations

import enum
from typing import Any

from ._strict import msgspec_kwargs


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:
    """Records its arguments in `.kwargs`; refuses what 0.22.0's SamplingParams refuses."""

    def __init__(self, *args: Any, **kwargs: Any):
        from . import SURFACE

        self.kwargs = msgspec_kwargs(SURFACE["SamplingParams"], args, kwargs)
        self.temperature = kwargs.get("temperature", 1.0)  # the real defaults
        self.max_tokens = kwargs.get("max_tokens", 16)
        self.min_tokens = kwargs.get("min_tokens", 0)
        self.ignore_eos = kwargs.get("ignore_eos", False)
        self.detokenize = kwargs.get("detokenize", True)
        self.output_kind = kwargs.get("output_kind", RequestOutputKind.CUMULATIVE)
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                             f"got {self.min_tokens}.")
