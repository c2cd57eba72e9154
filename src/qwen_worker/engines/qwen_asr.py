"""The transformers backend: Qwen3-ASR and Qwen3-ForcedAligner through the qwen-asr package
(CPU, development, tests; a GPU without vLLM). Not thread-safe: the worker's `BatchScheduler`
owns it and gathers the jobs' calls into shared batches."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from qwen_worker.base.clock import CLOCK
from qwen_worker.base.config import Settings
from qwen_worker.base.languages import ALIGNER_LANGUAGES
from qwen_worker.base.types import SAMPLE_RATE, AlignedToken, AsrOutput
from qwen_worker.engines.base import EngineError, is_out_of_memory, padded
from qwen_worker.engines.prompts import ContextFitter, read_asr_output

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def halve_on_oom(run: Callable[[list[T]], list[R]], items: list[T], device: str) -> list[R]:
    """run(items); after a GPU out-of-memory error, once more as two halves, one at a time.

    A second out-of-memory error propagates (the worker then asks RunPod for a fresh one).
    """
    try:
        return run(items)
    except Exception as exc:
        if not is_out_of_memory(exc) or len(items) < 2:
            raise
        log.warning("GPU out of memory on %d chunks; retrying as two halves", len(items))
    _release_gpu_cache(device)
    half = (len(items) + 1) // 2
    return run(items[:half]) + run(items[half:])


def _release_gpu_cache(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


class QwenEngine:
    """Wraps a loaded transformers `qwen_asr.Qwen3ASRModel` that carries its forced aligner."""

    batches_itself = False

    def __init__(self, model: Any, *, backend: str, asr_model: str, aligner_model: str,
                 max_new_tokens: int, aligner_batch_size: int, max_context_tokens: int,
                 device: str, asr_batch_seconds: float = float("inf"),
                 asr_batch_size: int = 1 << 30):
        self._model = model
        self._tokenizer = model.processor.tokenizer
        self._tokenizer_lock = threading.Lock()
        self._contexts = ContextFitter(self._tokenizer, max_context_tokens)
        self.backend = backend
        self.asr_model = asr_model
        self.aligner_model = aligner_model
        self.max_new_tokens = max_new_tokens
        self.aligner_batch_size = aligner_batch_size
        self.max_context_tokens = max_context_tokens
        self.device = device
        self.asr_batch_seconds = asr_batch_seconds
        self.asr_batch_size = asr_batch_size
        declared = model.forced_aligner.get_supported_languages()
        # The aligner config lists lower-case names; an aligner that declares none gets the known 11.
        self.aligner_languages = (
            frozenset(n for n in ALIGNER_LANGUAGES if n.lower() in set(declared))
            if declared else ALIGNER_LANGUAGES
        )

    def transcribe(self, chunks: Sequence[np.ndarray], languages: Sequence[str | None],
                   contexts: Sequence[str]) -> list[AsrOutput]:
        """All chunks in batched generate calls, sliced by padded audio (ASR_BATCH_SECONDS).

        languages and contexts are per chunk: one call may serve the chunks of several jobs.
        """
        # Below `transcribe()` on purpose: it re-splits long inputs, glues chunk texts together
        # and hides the raw output that tells a truncated or looping chunk apart.
        def run(items: list[tuple[np.ndarray, str | None, str]]) -> list[str]:
            return self._model._infer_asr([ctx for _, _, ctx in items],
                                          [padded(c) for c, _, _ in items],
                                          [lang for _, lang, _ in items])

        if isinstance(contexts, str) or len(contexts) != len(chunks):
            raise TypeError("contexts must be a list with one context per chunk")
        items = list(zip(chunks, languages, contexts))
        raw: list[str] = [""] * len(items)
        for group in self._asr_slices([c.shape[0] for c in chunks]):
            texts = halve_on_oom(run, [items[i] for i in group], self.device)
            if len(texts) != len(group):
                raise EngineError(f"the ASR model returned {len(texts)} outputs for "
                                  f"{len(group)} chunks")
            for i, text in zip(group, texts):
                raw[i] = text
        return [self._read_output(text, forced) for text, forced in zip(raw, languages)]

    def _asr_slices(self, lengths: list[int]) -> list[list[int]]:
        """Generate calls by padded audio: longest first, each call's count x longest chunk
        within ASR_BATCH_SECONDS and at most ASR_BATCH_SIZE chunks."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        budget = self.asr_batch_seconds * SAMPLE_RATE
        slices: list[list[int]] = []
        for i in order:
            if (slices and len(slices[-1]) < self.asr_batch_size
                    and (len(slices[-1]) + 1) * lengths[slices[-1][0]] <= budget):
                slices[-1].append(i)
            else:
                slices.append([i])
        return slices

    def fit_context(self, context: str) -> tuple[str, list[str]]:
        return self._contexts.fit(context)

    def tokenize(self, text: str) -> list[int]:
        with self._tokenizer_lock:  # a Rust tokenizer is not to be used by two threads at once
            return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _read_output(self, raw: str, forced: str | None) -> AsrOutput:
        raw = raw or ""
        # Re-tokenising the decoded text gives the output length within a token or two.
        tokens = len(self._tokenizer(raw, add_special_tokens=False)["input_ids"])
        return read_asr_output(raw, forced, tokens, tokens >= int(self.max_new_tokens * 0.98))

    def align(self, chunks: Sequence[np.ndarray], texts: Sequence[str],
              languages: Sequence[str]) -> list[list[AlignedToken]]:
        """Bounded batches: aligner memory grows with every chunk in a batch."""
        aligner = self._model.forced_aligner

        def run(items: list[tuple[np.ndarray, str, str]]) -> list[list[AlignedToken]]:
            results = aligner.align(audio=[(padded(c), SAMPLE_RATE) for c, _, _ in items],
                                    text=[t for _, t, _ in items],
                                    language=[lang for _, _, lang in items])
            return [[AlignedToken(it.text, float(it.start_time), float(it.end_time))
                     for it in result.items] for result in results]

        # Batches of similar lengths: a padded batch costs as much as its longest chunk.
        order = sorted(range(len(chunks)), key=lambda i: chunks[i].shape[0])
        items = [(chunks[i], texts[i], languages[i]) for i in order]
        by_length: list[list[AlignedToken]] = []
        step = self.aligner_batch_size
        for i in range(0, len(items), step):
            by_length.extend(halve_on_oom(run, items[i:i + step], self.device))
        if len(by_length) != len(chunks):
            raise EngineError(f"the aligner returned {len(by_length)} results for {len(chunks)} chunks")
        out: list[list[AlignedToken]] = [[] for _ in chunks]
        for pos, i in enumerate(order):
            out[i] = by_length[pos]
        return out


def _torch_dtype(name: str) -> Any:
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def configure_torch(device: str) -> None:
    """Process-wide torch settings for the transformers-run models (the aligner always is)."""
    if device == "cuda":
        import torch

        # cuDNN's SDPA builds a new plan for every unseen sequence length, i.e. every decode
        # step and every aligner batch: measured 2-2.6x slower decoding on an H200.
        torch.backends.cuda.enable_cudnn_sdp(False)


def load_qwen_asr_engine(settings: Settings, asr_path: str, aligner_path: str) -> QwenEngine:
    """Both models through qwen-asr's transformers classes, loaded once per worker process."""
    with CLOCK.phase("models"):
        from qwen_asr import Qwen3ASRModel

        configure_torch(settings.device)
        device_map = "cuda:0" if settings.device == "cuda" else "cpu"
        aligner_kwargs = {"dtype": _torch_dtype(settings.dtype), "device_map": device_map}
        model = Qwen3ASRModel.from_pretrained(
            asr_path,
            forced_aligner=aligner_path,
            forced_aligner_kwargs=aligner_kwargs,
            max_inference_batch_size=settings.asr_batch_size,
            max_new_tokens=settings.max_new_tokens,
            dtype=_torch_dtype(settings.dtype),
            device_map=device_map,
        )
    log.info("loaded %s (%s backend) with aligner %s", settings.asr_model, settings.backend,
             settings.aligner_model)
    return QwenEngine(model, backend=settings.backend, asr_model=settings.asr_model,
                      aligner_model=settings.aligner_model,
                      max_new_tokens=settings.max_new_tokens,
                      aligner_batch_size=settings.aligner_batch_size,
                      max_context_tokens=settings.max_context_tokens,
                      device=settings.device,
                      asr_batch_seconds=settings.asr_batch_seconds,
                      asr_batch_size=settings.asr_batch_size)
