"""The worker's GPU start-up with the real vllm 0.22.0 on CPU, as far as it goes: run by
tests/test_real_vllm.py under tests/reaper.py.

    python tests/real_vllm_start.py ASR_DIR ALIGNER_DIR

vLLM's CPU platform is forced here, at the top of the main module, so that the processes vLLM
spawns (which import this module again as `__mp_main__`) force it too. The real engine core
then starts, spawns its worker, and fails its initialisation (the CUDA wheel has no CPU
kernels): a start-up failure of the real process tree, through the worker's own way out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

import vllm.platforms  # noqa: E402
from vllm.platforms.cpu import CpuPlatform  # noqa: E402

vllm.platforms._current_platform = CpuPlatform()


def serve() -> None:
    from qwen_worker.engines.load import load_engine
    from qwen_worker.startup import configure

    asr, aligner = sys.argv[1:3]
    os.environ.update({"ASR_BACKEND": "vllm", "ASR_DEVICE": "cpu", "ASR_DTYPE": "float32",
                       "ASR_MODEL": asr, "ALIGNER_MODEL": aligner,
                       "VLLM_FRONTEND_PROCESSES": "1"})
    load_engine(configure())


if __name__ == "__main__":
    from qwen_worker.startup import run

    run(serve)
