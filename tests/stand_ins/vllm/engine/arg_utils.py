from __future__ import annotations

from typing import Any

from .._strict import dataclass_kwargs


class EngineArgs:
    def __init__(self, **kwargs: Any):
        from .. import SURFACE

        self.kwargs = dataclass_kwargs(type(self).__name__, SURFACE["AsyncEngineArgs"], kwargs)
        for name in SURFACE["AsyncEngineArgs"]:
            setattr(self, name, kwargs.get(name))

    def create_engine_config(self, usage_context: Any = None) -> Any:
        from ..v1.engine.input_processor import VllmConfig

        return VllmConfig(self.kwargs)


class AsyncEngineArgs(EngineArgs):
    pass
