"""A method's parameters as data (name, kind, default), for comparing the stand-in vllm's
methods with the real package's (tests/real_vllm_checks.py records the real ones)."""

from __future__ import annotations

import inspect
from typing import Any, Callable


def parameters(method: Callable[..., Any]) -> list[list[str]]:
    return [[p.name, p.kind.name, repr(p.default)]
            for p in inspect.signature(method).parameters.values() if p.name != "self"]
