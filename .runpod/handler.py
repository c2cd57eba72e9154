"""RunPod Hub entry point: runs the worker's one entry point, src/handler.py, and nothing else.

The Hub wants a handler.py in the repository root or in .runpod/; the worker's own entry point
stays at src/handler.py (the Docker image runs that one). This file only loads src/handler.py
and calls its main(), so both paths run the same code:

    python .runpod/handler.py --test_input '{"input": {"audio_url": "..."}}'
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SRC_HANDLER = Path(__file__).resolve().parents[1] / "src" / "handler.py"


def load_entry_point():
    """src/handler.py as a module (it puts src/ on sys.path itself)."""
    spec = importlib.util.spec_from_file_location("qwen_worker_entry", SRC_HANDLER)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {SRC_HANDLER}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# vLLM starts its engine in child processes that re-import the __main__ module: the engine may
# only be built under this guard, never at import time.
if __name__ == "__main__":
    load_entry_point().main()
