from __future__ import annotations

from typing import Any

from ._strict import dataclass_kwargs


class PoolerConfig:
    def __init__(self, **kwargs: Any):
        from . import SURFACE

        self.kwargs = dataclass_kwargs("PoolerConfig", SURFACE["PoolerConfig"], kwargs)
        self.tok_pooling_type = kwargs.get("tok_pooling_type")
        self.step_tag_id = kwargs.get("step_tag_id")
