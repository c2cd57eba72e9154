"""The engine interface (`Engine`) the pipeline calls, and its errors.

Two backends implement it: `qwen_asr.QwenEngine` (transformers through the qwen-asr package: CPU,
development, tests) and `vllm.engine.VllmEngine` (vLLM 0.22's own model classes on a GPU).
Engines speak in chunk time; `pipeline.merge` turns it into file time.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np

from qwen_worker.base.errors import in_cause_chain
from qwen_worker.base.types import SAMPLE_RATE, AlignedToken, AsrOutput

# qwen-asr pads shorter inputs to this length itself; we must too, since we call below transcribe().
MIN_INPUT_SAMPLES = SAMPLE_RATE // 2

T = TypeVar("T")


class EngineError(RuntimeError):
    """The model failed on a file: no partial transcript is returned."""


class DiarizationError(EngineError):
    """The speaker diarizer failed on a file (after its transcription)."""


class Engine(Protocol):
    backend: str
    asr_model: str
    aligner_model: str
    aligner_languages: frozenset[str]
    # True when the engine is safe to call from many job threads at once and batches their
    # requests itself (vLLM); else the worker serialises calls through its BatchScheduler.
    batches_itself: bool

    def transcribe(self, chunks: Sequence[np.ndarray], languages: Sequence[str | None],
                   contexts: Sequence[str]) -> list[AsrOutput]: ...

    def align(self, chunks: Sequence[np.ndarray], texts: Sequence[str],
              languages: Sequence[str]) -> list[list[AlignedToken]]: ...

    def fit_context(self, context: str) -> tuple[str, list[str]]:
        """(the context as the prompt will hold it, warnings for the job)."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """The ASR tokenizer's ids for `text` (no special tokens); any thread."""
        ...


class FatalEngineError(EngineError):
    """The engine cannot serve another job (the worker is replaced)."""


# Exception names and messages after which the GPU or the engine cannot be trusted again.
# BrokenProcessPool: a vLLM front-end process died (engines/vllm/frontend.py); the pool cannot recover.
_FATAL_NAMES = ("EngineDeadError", "OutOfMemoryError", "AcceleratorError", "BrokenProcessPool",
                "FatalEngineError")
_FATAL_TEXT = ("CUDA error", "CUDA out of memory", "cuDNN error", "CUBLAS_STATUS",
               "device-side assert", "NCCL error")


def is_fatal_gpu_error(exc: BaseException) -> bool:
    return in_cause_chain(exc, lambda e: type(e).__name__ in _FATAL_NAMES
                          or any(t in str(e) for t in _FATAL_TEXT))


def is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)


def padded(samples: np.ndarray) -> np.ndarray:
    """At least MIN_INPUT_SAMPLES (vLLM refuses audio of 160 samples or fewer)."""
    if samples.shape[0] >= MIN_INPUT_SAMPLES:
        return samples
    return np.pad(samples, (0, MIN_INPUT_SAMPLES - samples.shape[0]))


def engine_call(stage: str, call: Callable[[], T], error: type[EngineError] = EngineError) -> T:
    """call(); any failure of the model fails the whole file as `error`, never part of it."""
    try:
        return call()
    except error:
        raise
    except Exception as exc:  # any model failure fails the whole file, never part of it
        raise error(f"{stage} failed: {type(exc).__name__}: {exc}") from exc
