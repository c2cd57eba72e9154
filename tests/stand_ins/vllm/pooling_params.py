from __future__ import annotations

from typing import Any

from ._strict import msgspec_kwargs


class PoolingParams:
    def __init__(self, *args: Any, **kwargs: Any):
        from . import SURFACE

        self.kwargs = msgspec_kwargs(SURFACE["PoolingParams"], args, kwargs)
        self.task = kwargs.get("task")
