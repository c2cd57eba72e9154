"""The GPU edge: Qwen3-ASR and Qwen3-ForcedAligner on vLLM 0.22's own model classes.

Two `AsyncLLM` engines, each with an engine-core process of its own: the ASR model generates;
the aligner runs as a pooling model (token classification with STEP pooling at `<timestamp>`,
so only those rows come back: ALL pooling would ship ~109 MB of float32 per chunk). Every chunk
is one request, and the requests of all running jobs join the batch the engine is running at
its next step (continuous batching): no job waits for another job's call to end, and no
gathering delay is added. The engines schedule by priority, shorter calls first (a call's
audio seconds): a 30 s job or a repair is not queued behind the chunks of an hour-long file.
The two engine processes time-slice one GPU, so a call's alignment also pauses the ASR engine
while all it runs belongs to longer calls (`AsrPause`).
vLLM's input processing runs in a pool of processes (`frontend`); one event-loop thread owns
both engines; job threads call `transcribe` and `align` and wait for their own requests.
Stopping a job (RunPod's cancel, SIGTERM) aborts its requests; a dead engine or front end
fails every later call (the worker is replaced).

qwen-asr supplies the text side that vLLM lacks: output parsing and the aligner's word
splitting (nagisa for Japanese, soynlp for Korean); `timestamps` repairs the aligner's times as
qwen-asr does. qwen-asr's transformers models are never loaded here, and its own vLLM model
class (for vLLM 0.14) never replaces vLLM's: `check_native_classes` proves it at start-up.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Iterator, Sequence, TypeVar

import numpy as np

from .compile_cache import verdict
from .config import MAX_CHUNK_AUDIO_TOKENS, Settings
from .decode import SAMPLE_RATE
from .engine import (AlignedToken, AsrOutput, EngineError, FatalEngineError,
                     is_fatal_gpu_error, padded, read_asr_output)
from .frontend import FrontEnd
from .languages import ALIGNER_LANGUAGES
from .lifecycle import wait_in_job
from .model_files import StartupError
from .prompts import ContextFitter, asr_prompt
from .timestamps import word_spans

log = logging.getLogger(__name__)

T = TypeVar("T")

ASR_ARCHITECTURE = "Qwen3ASRForConditionalGeneration"
ALIGNER_ARCHITECTURE = "Qwen3ASRForcedAlignerForTokenClassification"
WARM_UP_SECONDS = MAX_CHUNK_AUDIO_TOKENS / 13  # the longest chunk: 300 s
WARM_UP_WORDS = 700  # a long aligner prompt (~270 s of speech)
AUDIO_PLACEHOLDER = "<|audio_pad|>"
# A shorter call's alignment pauses the ASR engine for at most half of any such window, and
# each pause at most that half (AsrPause); a pause or resume unanswered this long is fatal.
PAUSE_WINDOW_S = 1.0
MAX_PAUSE_S = PAUSE_WINDOW_S / 2
PAUSE_CALL_TIMEOUT_S = 10.0


def encoder_overrides(settings: Settings) -> dict[str, Any]:
    """Config overrides both engines share: the audio encoder's convolution pass size (its
    activations per pass are the largest block either engine allocates; config.py)."""
    return {"thinker_config": {"audio_config": {
        "conv_chunksize": settings.vllm_encoder_conv_windows}}}


def asr_engine_args(settings: Settings, model: str) -> dict[str, Any]:
    """`AsyncEngineArgs` of the ASR engine."""
    return {
        "model": model,
        "hf_overrides": encoder_overrides(settings),
        "dtype": settings.dtype,
        "gpu_memory_utilization": settings.vllm_gpu_memory_utilization,
        "max_model_len": settings.vllm_max_model_len,
        # Also the encoder cache: one 300 s chunk is 3900 audio tokens (checked at start-up).
        "max_num_batched_tokens": settings.vllm_max_num_batched_tokens,
        "max_num_seqs": settings.vllm_max_num_seqs,
        "enforce_eager": settings.vllm_enforce_eager,
        "limit_mm_per_prompt": {"audio": 1},
        # Audio never repeats: caching or prefix-hashing it only costs CPU and memory.
        "mm_processor_cache_gb": 0,
        "enable_prefix_caching": False,
        "scheduling_policy": "priority",
        "disable_log_stats": True,
    }


def aligner_engine_args(settings: Settings, model: str, timestamp_token_id: int) -> dict[str, Any]:
    """`AsyncEngineArgs` of the aligner: a pooling model returning the `<timestamp>` rows."""
    from vllm.config import PoolerConfig

    return {
        "model": model,
        "runner": "pooling",
        "hf_overrides": {"architectures": [ALIGNER_ARCHITECTURE], **encoder_overrides(settings)},
        "pooler_config": PoolerConfig(tok_pooling_type="STEP", step_tag_id=timestamp_token_id),
        "dtype": settings.dtype,
        "gpu_memory_utilization": settings.vllm_aligner_gpu_memory_utilization,
        "max_model_len": settings.vllm_aligner_max_model_len,
        # At least a whole prompt in one step: the pooled rows come from one pass over it.
        "max_num_batched_tokens": settings.vllm_aligner_max_num_batched_tokens,
        "max_num_seqs": settings.vllm_aligner_max_num_seqs,
        "enforce_eager": settings.vllm_aligner_enforce_eager,
        "limit_mm_per_prompt": {"audio": 1},
        "mm_processor_cache_gb": 0,
        "enable_prefix_caching": False,
        "scheduling_policy": "priority",
        "disable_log_stats": True,
    }


def priority(chunks: Sequence[np.ndarray]) -> int:
    """A call's place in the engines' queues: its audio seconds (lower runs first)."""
    return int(sum(c.shape[0] for c in chunks) // SAMPLE_RATE)


class AlignerConfig:
    """What the aligner directory's config.json says about its output."""

    def __init__(self, model_dir: str):
        config = json.loads((Path(model_dir) / "config.json").read_text())
        self.timestamp_token_id = int(config["timestamp_token_id"])
        self.segment_ms = float(config["timestamp_segment_time"])
        self.classes = int((config.get("thinker_config") or {}).get("classify_num", 5000))
        declared = {str(x).lower() for x in config.get("support_languages") or ()}
        # An aligner that declares none gets the known 11 (as qwen-asr's own wrapper does).
        self.languages = (frozenset(n for n in ALIGNER_LANGUAGES if n.lower() in declared)
                          if declared else ALIGNER_LANGUAGES)


def native_class_module(architecture: str) -> str:
    """The module vLLM's model registry resolves `architecture` to, without importing it."""
    from vllm import ModelRegistry

    entry = ModelRegistry.models[architecture]
    module = getattr(entry, "module_name", None)  # registered lazily by vLLM itself
    if module is None:  # registered as a class, by a plugin or a package such as qwen-asr
        module = entry.model_cls.__module__
    return module


def check_native_classes() -> None:
    """qwen-asr tries to register its own vLLM model class when imported (made for vLLM 0.14;
    on 0.22 the attempt fails silently). Refuse to start if it ever succeeds."""
    for arch in (ASR_ARCHITECTURE, ALIGNER_ARCHITECTURE):
        module = native_class_module(arch)
        if not module.startswith("vllm.model_executor.models."):
            raise StartupError(f"vLLM resolves {arch} to {module}, not to its own class; "
                               "a package replaced it (qwen-asr's vLLM backend?)")


def _same_data(a: Any, b: Any) -> bool:
    """Equal processed-input parts: vLLM's kwargs items (dicts of elements with `.data`) or
    plain values, tensors and arrays compared exactly."""
    import torch

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if hasattr(a, "keys") and hasattr(b, "keys"):
        return set(a.keys()) == set(b.keys()) and all(_same_data(a[k], b[k]) for k in a.keys())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_data(x, y) for x, y in zip(a, b))
    if hasattr(a, "data") and hasattr(b, "data"):  # a kwargs element: its tensor
        return _same_data(a.data, b.data)
    return bool(a == b)


class _LoopThread:
    """An asyncio loop in a thread of its own: AsyncLLM lives in one event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-loop",
                                        daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> "Future[T]":
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def thread_id(self) -> int | None:
        return self._thread.ident

    def stop(self, timeout: float = 10.0) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


# vLLM's AsyncLLM logs this (with a traceback) when its output task finds the engine core
# gone. Its own shutdown stops the core first and cancels that task after, so the task may
# report the shutdown itself as a failure (seen at the end of run 13, BENCHMARKS.md).
ASYNC_LLM_LOGGER = "vllm.v1.engine.async_llm"
OUTPUT_TASK_FAILED = "AsyncLLM output_handler failed"


class _ShutdownNoise(logging.Filter):
    """Drops that report while the engines are being shut down, from their loop's thread only:
    a failure of the running engines, or of another worker's, is still logged."""

    def __init__(self, thread_id: int | None):
        super().__init__()
        self._thread_id = thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.thread == self._thread_id
                    and record.getMessage().startswith(OUTPUT_TASK_FAILED))


async def _all(awaitables: list[Awaitable[T]]) -> list[T]:
    """Like gather, but a failure or a cancellation cancels (and so aborts) all the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class AsrPause:
    """The ASR engine pauses while a shorter call is aligned.

    The two engines are two processes on one GPU, which the driver time-slices between them:
    while an hour-long file decodes, a 30 s job's alignment took 2-2.5x its time alone
    (BENCHMARKS.md). When a call is aligned and every request the ASR engine runs belongs to a
    longer call (its priority, audio seconds, is higher), vLLM's scheduler is paused with its
    requests kept ("keep": no step runs, their KV cache stays). It resumes when that alignment
    ends, after MAX_PAUSE_S, or as soon as a call as short as the aligned one sends ASR
    requests (a paused engine queues them). One call pauses at a time, and a pause starts only
    while the pauses of the last PAUSE_WINDOW_S took less than half of it: longer calls keep
    about half the GPU however many short ones arrive. The alignment's result does not wait for
    the resume. A pause or resume the engine does not answer within PAUSE_CALL_TIMEOUT_S (its
    core died: vLLM then never answers) leaves the engine unusable: the requests in it are
    aborted and fail, and so does every later call. Runs on the engines' loop thread only.
    """

    def __init__(self, asr: Any, enabled: bool):
        self._asr = asr
        self.enabled = enabled
        self._requests: dict[str, int] = {}  # the ASR engine's requests in flight -> rank
        self._rank: int | None = None  # the paused-for call's, until its resume is answered
        self._end: Callable[[], None] | None = None  # starts the resume (once)
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (from, to)
        self.failed: FatalEngineError | None = None
        self.pauses = 0
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    @contextlib.contextmanager
    def running(self, request_id: str, rank: int) -> Iterator[None]:
        """Around one ASR request, while it is in the engine."""
        if self._end is not None and self._rank is not None and rank <= self._rank:
            self._end()  # a call as short as the aligned one is not held up by its pause
        self._requests[request_id] = rank
        try:
            yield
        finally:
            del self._requests[request_id]
        if self.failed is not None:  # aborted by a failed resume: fail as the engine failed
            raise self.failed

    def _paused_lately(self, now: float) -> float:
        """Seconds the ASR engine was paused within the last PAUSE_WINDOW_S."""
        since = now - PAUSE_WINDOW_S
        while self._recent and self._recent[0][1] <= since:
            self._recent.popleft()
        return sum(end - max(start, since) for start, end in self._recent)

    def _due(self, rank: int) -> bool:
        return (self.enabled and self._rank is None and self.failed is None
                and bool(self._requests) and rank < min(self._requests.values())
                and self._paused_lately(time.monotonic()) < PAUSE_WINDOW_S / 2)

    @contextlib.contextmanager
    def aligning(self, rank: int) -> Iterator[None]:
        """Around one call's aligner requests (on the loop). The pause is sent alongside them:
        the alignment starts at once, and the ASR engine stops after its current step."""
        if not self._due(rank):
            yield
            return
        self._rank = rank
        self.pauses += 1
        started = time.monotonic()
        pause = self._task(self._call(
            self._asr.pause_generation(mode="keep", clear_cache=False)))
        ending: list[asyncio.Task] = []

        def end() -> None:
            if not ending:  # a task of its own: a stopped job's cancellation cannot stop it
                ending.append(self._task(self._resume(pause, started)))

        self._end = end
        timer = asyncio.get_running_loop().call_later(MAX_PAUSE_S, end)
        try:
            yield
        finally:
            timer.cancel()
            end()

    def _task(self, work: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, call: Awaitable[None]) -> None:
        await asyncio.wait_for(call, PAUSE_CALL_TIMEOUT_S)

    async def _resume(self, pause: "asyncio.Future[None]", started: float) -> None:
        self._end = None
        try:
            with contextlib.suppress(Exception):
                await pause  # resumed after the pause was taken, never before it
            await self._call(self._asr.resume_generation())
        except Exception as exc:  # noqa: BLE001 - whatever it was, the engine may stay paused
            # Left paused, it would hold its requests, and every later job's, for good.
            self.failed = FatalEngineError(
                f"the ASR engine could not be resumed after a pause: {exc!r}")
            log.error("%s; failing its requests and every later call", self.failed)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._asr.abort(list(self._requests)),
                                       PAUSE_CALL_TIMEOUT_S)
        finally:
            self._recent.append((started, time.monotonic()))
            self._rank = None


class VllmEngine:
    """The `Engine` over two AsyncLLM engines. Thread-safe: jobs call it directly."""

    backend = "vllm"
    batches_itself = True

    def __init__(self, asr: Any, aligner: Any, *, front: FrontEnd, tokenizer: Any,
                 aligner_tokenizer: Any, aligner_config: AlignerConfig, asr_model: str,
                 aligner_model: str, max_new_tokens: int, max_context_tokens: int,
                 align_pauses_longer_asr: bool = True, loop: _LoopThread | None = None,
                 aligner_text: Any = None):
        from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor

        self._asr = asr
        self._aligner = aligner
        self.asr_pause = AsrPause(asr, align_pauses_longer_asr)
        self._front = front
        self._loop = loop or _LoopThread()
        self._tokenizer = tokenizer
        self._decode_lock = threading.Lock()
        self._contexts = ContextFitter(tokenizer, max_context_tokens)
        self._aligner_text = aligner_text or Qwen3ForceAlignProcessor()
        self._aligner_text_lock = threading.Lock()  # nagisa and soynlp keep state
        self._config = aligner_config
        # The aligner's input for a chunk the ASR has just had: the same audio features, with
        # the aligner's prompt (see `_aligner_input`). Kept while the chunk's array lives.
        self._aligner_tokenizer = aligner_tokenizer
        self._aligner_tokenizer_lock = threading.Lock()
        self._audio_pad_id = aligner_tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
        self._features: dict[int, tuple[weakref.ref, Any, Any]] = {}
        # Reentrant: `_forget` runs in garbage collection, which may start in a thread that
        # holds the lock (inside `_remember` or `_recall`).
        self._features_lock = threading.RLock()
        self.reuses_features = False  # set by `warm_up` once the check below has passed
        self.within_audio = True  # see `_pooling` (benchmarks turn it off for an A/B)
        self._ids = itertools.count()
        self._fatal: BaseException | None = None
        self._closed = False
        self.asr_model = asr_model
        self.aligner_model = aligner_model
        self.aligner_languages = aligner_config.languages
        self.max_new_tokens = max_new_tokens
        # Benchmarks only: SamplingParams fields per chunk (samples -> fields), e.g. a fixed
        # output length for random weights. A length reached then is not a MAX_NEW_TOKENS cut.
        self.sampling_overrides: Callable[[int], dict[str, Any]] | None = None

    # -- the Engine interface (job threads) ----------------------------------------------

    def fit_context(self, context: str) -> tuple[str, list[str]]:
        return self._contexts.fit(context)

    def tokenize(self, text: str) -> list[int]:
        with self._decode_lock:  # the one tokenizer, one call at a time (see `_decode`)
            return list(self._tokenizer.encode(text, add_special_tokens=False))

    def transcribe(self, chunks: Sequence[np.ndarray], languages: Sequence[str | None],
                   contexts: Sequence[str]) -> list[AsrOutput]:
        """One request per chunk; languages and contexts are per chunk."""
        if isinstance(contexts, str) or len(contexts) != len(chunks):
            raise TypeError("contexts must be a list with one context per chunk")
        ids = [f"asr-{next(self._ids)}" for _ in chunks]
        rank = priority(chunks)
        inputs = self._prepare("asr", ids, [asr_prompt(ctx, lang)
                                            for lang, ctx in zip(languages, contexts)],
                               chunks, rank)
        self._remember(chunks, inputs)
        params = [self._sampling(c.shape[0]) for c in chunks]
        finals = self._run(lambda: _all([self._generate(i, p, sp, rank)
                                         for i, p, sp in zip(ids, inputs, params)]))
        return [self._read(final, lang) for final, lang in zip(finals, languages)]

    def align(self, chunks: Sequence[np.ndarray], texts: Sequence[str],
              languages: Sequence[str]) -> list[list[AlignedToken]]:
        """One pooling request per chunk with words; times in chunk seconds."""
        with self._aligner_text_lock:
            encoded = [self._aligner_text.encode_timestamp(t, lang)
                       for t, lang in zip(texts, languages)]
        todo = [i for i, (words, _) in enumerate(encoded) if words]
        if not todo:
            return [[] for _ in chunks]
        ids = [f"align-{next(self._ids)}" for _ in todo]
        rank = priority([chunks[i] for i in todo])
        known = [self._recall(chunks[i]) for i in todo]
        inputs = [None if k is None else self._aligner_input(rid, encoded[i][1], *k)
                  for rid, i, k in zip(ids, todo, known)]
        unknown = [n for n, k in enumerate(known) if k is None]  # repairs: parts of chunks
        if unknown:
            made = self._prepare("aligner", [ids[n] for n in unknown],
                                 [encoded[todo[n]][1] for n in unknown],
                                 [chunks[todo[n]] for n in unknown], rank)
            for n, prepared in zip(unknown, made):
                inputs[n] = prepared
        params = [self._pooling(chunks[i].shape[0]) for i in todo]

        async def encode_all() -> list[Any]:
            with self.asr_pause.aligning(rank):
                return await _all([self._encode(rid, inp, rank, p)
                                   for rid, inp, p in zip(ids, inputs, params)])

        rows = self._run(encode_all)
        out: list[list[AlignedToken]] = [[] for _ in chunks]
        for i, pooled in zip(todo, rows):
            out[i] = self._timestamps(encoded[i][0], pooled)
        return out

    # -- start-up and shutdown (main thread) -----------------------------------------------

    def warm_up(self) -> None:
        """A full-length chunk through both models: the first call on new shapes compiles
        kernels (3-4 s on an H200), which must not land on the first job. The two engines
        warm up at the same time."""
        rng = np.random.default_rng(0)
        audio = rng.normal(0, 0.05, int(WARM_UP_SECONDS * SAMPLE_RATE)).astype(np.float32)
        from vllm import SamplingParams

        short = SamplingParams(temperature=0.0, max_tokens=8, detokenize=False)
        (prepared,) = self._prepare("asr", ["warm-up"], [asr_prompt("", None)], [audio], 0)
        asr = self._loop.submit(self._generate("warm-up", prepared, short, 0))
        try:
            text = " ".join(["word"] * WARM_UP_WORDS)
            self.reuses_features = self._check_reuse(audio, prepared, text)
            self.align([audio], [text], ["English"])
        finally:
            asr.result()

    def compile_reports(self) -> dict[str, dict[str, Any] | None]:
        """What each engine's start compiled or loaded (compile_cache.counters), by engine;
        None where the engine cannot say (a stand-in)."""
        import cloudpickle

        from .compile_cache import counters

        method = cloudpickle.dumps(counters)  # vLLM's run_method takes pickled callables
        reports: dict[str, dict[str, Any] | None] = {}
        for name, engine in (("asr", self._asr), ("aligner", self._aligner)):
            try:
                reports[name] = self._loop.submit(engine.collective_rpc(method)).result(60)[0]
            except Exception:  # noqa: BLE001 - a report, not a condition of start-up
                log.debug("no compile report from the %s engine", name, exc_info=True)
                reports[name] = None
        return reports

    def _check_reuse(self, audio: np.ndarray, asr_input: dict[str, Any], text: str) -> bool:
        """Whether the aligner input built from the ASR's equals vLLM's own processing of the
        aligner prompt (token ids, placeholder, features): if the two models ever process
        audio differently, the aligner computes its own, as before."""
        with self._aligner_text_lock:
            _, prompt = self._aligner_text.encode_timestamp(text, "English")
        (own,) = self._prepare("aligner", ["check"], [prompt], [audio], 0)
        (place,) = asr_input["mm_placeholders"]["audio"]
        built = self._aligner_input("check", prompt, asr_input["mm_kwargs"], place)
        try:
            same = (built["prompt_token_ids"] == own["prompt_token_ids"]
                    and bool(built["mm_placeholders"] == own["mm_placeholders"])
                    and _same_data(built["mm_kwargs"], own["mm_kwargs"]))
        except Exception:  # noqa: BLE001 - parts that do not even compare are not the same
            same = False
        if not same:
            log.warning("the aligner processes audio unlike the ASR model: it computes its own "
                        "audio features (slower)")
        return same

    def close(self) -> None:
        """Stop both engine processes (they would otherwise outlive a worker that exits),
        without the false engine failure vLLM may log meanwhile (`_ShutdownNoise`)."""
        if self._closed:
            return
        self._closed = True
        noise = _ShutdownNoise(self._loop.thread_id)
        async_llm_log = logging.getLogger(ASYNC_LLM_LOGGER)
        async_llm_log.addFilter(noise)
        try:
            for engine in (self._asr, self._aligner):
                try:
                    engine.shutdown()
                except Exception:  # noqa: BLE001 - shutting down: nothing left to tell
                    log.debug("engine shutdown failed", exc_info=True)
            self._front.close()
            self._loop.stop()  # and joined: its thread logs nothing after the filter goes
        finally:
            async_llm_log.removeFilter(noise)

    # -- requests (the loop thread) --------------------------------------------------------

    def _sampling(self, samples: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # Greedy, as qwen-asr decodes. Final output only and no detokenizing in the engine's
        # front end: the text is decoded once, in the job's thread, from the token ids.
        kwargs: dict[str, Any] = {"temperature": 0.0, "max_tokens": self.max_new_tokens,
                                  "detokenize": False,
                                  "output_kind": RequestOutputKind.FINAL_ONLY}
        if self.sampling_overrides is not None:
            kwargs.update(self.sampling_overrides(samples))
        return SamplingParams(**kwargs)

    def _prepare(self, engine: str, ids: list[str], prompts: list[str],
                 chunks: Sequence[np.ndarray], rank: int) -> list[dict[str, Any]]:
        """vLLM's processed input for each request, made in the front-end processes (a job
        thread waits, stoppable, without holding the GIL)."""
        self._check_alive()
        futures = [self._front.prepare(engine, rid, prompt, padded(chunk), rank)
                   for rid, prompt, chunk in zip(ids, prompts, chunks)]
        try:
            return [wait_in_job(f, "the job's vLLM requests were dropped") for f in futures]
        except Exception as exc:
            self._note_fatal(exc)
            raise
        finally:
            for future in futures:
                future.cancel()  # those not yet started, when one failed or the job stopped

    def _remember(self, chunks: Sequence[np.ndarray], inputs: list[dict[str, Any]]) -> None:
        """Keep each chunk's audio features for its alignment, while the chunk's array lives
        (the pipeline aligns the very arrays it transcribed)."""
        if not self.reuses_features:
            return
        for chunk, prepared in zip(chunks, inputs):
            (place,) = prepared["mm_placeholders"]["audio"]
            key = id(chunk)
            ref = weakref.ref(chunk, lambda dead, key=key: self._forget(key, dead))
            with self._features_lock:
                self._features[key] = (ref, prepared["mm_kwargs"], place)

    def _forget(self, key: int, dead: weakref.ref) -> None:
        with self._features_lock:
            if key in self._features and self._features[key][0] is dead:
                del self._features[key]

    def _recall(self, chunk: np.ndarray) -> tuple[Any, Any] | None:
        """The chunk's features, taken: a chunk is aligned once (a repair aligns stretches of
        it, other arrays), so they are not held through the rest of the job."""
        if not self.reuses_features:
            return None
        with self._features_lock:
            entry = self._features.pop(id(chunk), None)
        if entry is None or entry[0]() is not chunk:
            return None
        return entry[1], entry[2]

    def _aligner_input(self, request_id: str, prompt: str, mm_kwargs: Any,
                       place: Any) -> dict[str, Any]:
        """The aligner's processed input from the ASR's for the same audio: both models turn
        audio into the same features and the same number of audio tokens (checked at
        start-up), so only the prompt differs: its tokens, with the one audio placeholder
        expanded to that number. Saves the aligner's feature extraction (~0.66 s of a core
        for a 270 s chunk on the H200's host, BENCHMARKS.md)."""
        with self._aligner_tokenizer_lock:
            ids = self._aligner_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        at = ids.index(self._audio_pad_id)
        return {"type": "multimodal", "prompt": prompt,
                "prompt_token_ids": ids[:at] + [self._audio_pad_id] * place.length + ids[at + 1:],
                "mm_kwargs": mm_kwargs,
                "mm_hashes": {"audio": [f"{request_id}-audio-0"]},
                "mm_placeholders": {"audio": [dataclasses.replace(place, offset=at)]}}

    async def _generate(self, request_id: str, prompt: dict[str, Any], params: Any,
                        rank: int) -> Any:
        final = None
        with self.asr_pause.running(request_id, rank):
            async for output in self._asr.generate(prompt, params, request_id, priority=rank):
                final = output
        if final is None or not final.finished:
            raise EngineError("the ASR engine ended a request without its output")
        return final

    def _pooling(self, samples: int) -> Any:
        """The aligner's classes are times (class x segment_ms); only those within the chunk's
        audio, plus one past its end, are asked for: a 30 s chunk's rows come back with 377
        of the 5000 classes, not 5000 (~4 MB of float32 per 100 words otherwise)."""
        from vllm import PoolingParams

        if not self.within_audio:
            return PoolingParams(task="token_classify")
        n = min(self._config.classes,
                int(samples * 1000 / SAMPLE_RATE / self._config.segment_ms) + 2)
        return PoolingParams(task="token_classify", returned_token_ids=list(range(n)))

    async def _encode(self, request_id: str, prompt: dict[str, Any], rank: int,
                      params: Any) -> Any:
        final = None
        async for output in self._aligner.encode(prompt, params, request_id, priority=rank):
            final = output
        if final is None or not final.finished:
            raise EngineError("the aligner engine ended a request without its output")
        return final

    def _run(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run work() on the engines' loop, waiting as the current job (stoppable). After a
        fatal error the dead engine is not called again."""
        self._check_alive()
        try:
            return wait_in_job(self._loop.submit(work()), "the job's vLLM requests were aborted")
        except Exception as exc:
            self._note_fatal(exc)
            raise

    def _check_alive(self) -> None:
        if self._fatal is None and self.asr_pause.failed is not None:
            self._fatal = self.asr_pause.failed
        if self._fatal is not None:
            raise RuntimeError("the vLLM engine failed earlier with a fatal error") \
                from self._fatal

    def _note_fatal(self, exc: BaseException) -> None:
        if is_fatal_gpu_error(exc) and self._fatal is None:
            log.error("fatal engine error: failing this and every later job (%s)",
                      type(exc).__name__)
            self._fatal = exc

    # -- outputs (job threads) -------------------------------------------------------------

    def _decode(self, token_ids: list[int]) -> str:
        # One tokenizer, one call at a time (a Rust tokenizer is not to be used by two threads
        # at once). A copy per job thread cost ~0.3 s of GIL-held deepcopy each: 48 new job
        # threads serialised ~10 s of it in front of the H200 (BENCHMARKS.md).
        with self._decode_lock:
            return self._tokenizer.decode(token_ids, skip_special_tokens=True,
                                          clean_up_tokenization_spaces=False)

    def _read(self, final: Any, forced: str | None) -> AsrOutput:
        completion = final.outputs[0]
        if completion.finish_reason not in ("stop", "length"):
            raise EngineError(f"the ASR engine ended a chunk with {completion.finish_reason!r}")
        token_ids = list(completion.token_ids)
        cut = completion.finish_reason == "length" and self.sampling_overrides is None
        return read_asr_output(self._decode(token_ids), forced, len(token_ids), cut)

    def _timestamps(self, words: list[str], pooled: Any) -> list[AlignedToken]:
        """The class (argmax) at each `<timestamp>` row x segment time, repaired as qwen-asr
        repairs it (timestamps.repair)."""
        # numpy's argmax: one thread. torch's would wake this process's pool of a thread per
        # core for a few hundred rows, in every job thread.
        classes = np.asarray(pooled.outputs.data.float()).argmax(-1).tolist()
        try:
            spans = word_spans(words, classes, self._config.segment_ms)
        except ValueError as exc:
            raise EngineError(f"the aligner's output does not fit the words: {exc}") from None
        return [AlignedToken(*span) for span in spans]


@contextlib.contextmanager
def engine_process_env(settings: Settings) -> Iterator[None]:
    """The environment an engine process is spawned with: `VLLM_ENGINE_THREADS` torch threads
    (OMP_NUM_THREADS, read when torch starts in the new interpreter: this relies on spawn; a
    forked engine would keep this process's pool). This process's own is left as it was."""
    if not settings.vllm_engine_threads:
        yield
        return
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(settings.vllm_engine_threads)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class KvCachePlan:
    """Each engine's KV cache, fixed before it starts (`VLLM_KV_CACHE_SIZING=computed`)."""

    card_bytes: int
    asr_bytes: int
    aligner_bytes: int


def card_memory_bytes() -> int | None:
    """The GPU's memory, through NVML (no CUDA context in this process); None without one."""
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cuda():
            return None
        return int(current_platform.get_device_total_memory(0))
    except Exception:  # noqa: BLE001 - no GPU, no NVML, or a vLLM without platforms
        log.debug("the card's memory is unknown", exc_info=True)
        return None


def kv_cache_bytes(card_bytes: int, share: float, weight_bytes: int, reserve_bytes: int) -> int:
    """An engine's KV cache: its share of the card less its weights and the reserve for
    activations, CUDA graphs and its CUDA context: what vLLM's profiling measured, fixed."""
    return int(card_bytes * share) - weight_bytes - reserve_bytes


def kv_cache_plan(settings: Settings, asr_path: str, aligner_path: str,
                  card_bytes: int | None) -> KvCachePlan | None:
    """The fixed sizes, or None where vLLM profiles instead (the setting, or no card known)."""
    from .model_files import parameter_count

    if settings.vllm_kv_cache_sizing != "computed" or card_bytes is None:
        return None
    per_weight = 4 if settings.dtype == "float32" else 2
    reserve = int(settings.vllm_activation_reserve_gib * GIB)
    sizes = {}
    for name, path, share, setting in (
            ("asr", asr_path, settings.vllm_gpu_memory_utilization,
             "VLLM_GPU_MEMORY_UTILIZATION"),
            ("aligner", aligner_path, settings.vllm_aligner_gpu_memory_utilization,
             "VLLM_ALIGNER_GPU_MEMORY_UTILIZATION")):
        weights = parameter_count(Path(path)) * per_weight
        sizes[name] = kv_cache_bytes(card_bytes, share, weights, reserve)
        if sizes[name] < GIB // 4:
            raise StartupError(
                f"{setting}={share} of this card's {card_bytes / GIB:.1f} GiB leaves "
                f"{sizes[name] / GIB:.2f} GiB of KV cache after the {name} model's weights "
                f"({weights / GIB:.2f} GiB) and VLLM_ACTIVATION_RESERVE_GIB="
                f"{settings.vllm_activation_reserve_gib}: raise {setting}")
    return KvCachePlan(card_bytes, sizes["asr"], sizes["aligner"])


def _in_thread(name: str, work: Callable[[], T]) -> "Future[T]":
    """work() in a daemon thread of its own (an engine start blocks its caller for its whole
    start; a daemon thread does not hold the process's exit up if start-up is abandoned)."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def load_vllm_engine(settings: Settings, asr_path: str, aligner_path: str) -> VllmEngine:
    """Start both engines and the front end at the same time, check the model classes, warm
    up. Call only under `if __name__ == "__main__"`: the engine processes are spawned.

    Each engine's KV cache is fixed beforehand from the card's memory and the worker's shares
    (`kv_cache_plan`): two engines that profiled the card's free memory at the same time
    would each count the other's allocations as their own (docs/cold-start.md). With
    VLLM_KV_CACHE_SIZING=profiled they start one after the other, as vLLM advises."""
    from .startup import CLOCK

    # Spawn: nothing this process holds (threads, locks, the event loop) leaks into the
    # engine processes, and CUDA is never initialised here (PYTORCH_NVML_BASED_CUDA_CHECK).
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    aligner_config = AlignerConfig(aligner_path)
    args = {"asr": asr_engine_args(settings, asr_path),
            "aligner": aligner_engine_args(settings, aligner_path,
                                           aligner_config.timestamp_token_id)}
    with CLOCK.phase("engine configs") as detail:
        plan = kv_cache_plan(settings, asr_path, aligner_path, card_memory_bytes())
        if plan is not None:
            for name, size in (("asr", plan.asr_bytes), ("aligner", plan.aligner_bytes)):
                args[name].update(kv_cache_memory_bytes=size,
                                  skip_mm_profiling=settings.vllm_skip_mm_profiling)
            detail.append(f"KV cache fixed: ASR {plan.asr_bytes / GIB:.2f} GiB, aligner "
                          f"{plan.aligner_bytes / GIB:.2f} GiB of {plan.card_bytes / GIB:.1f}")
        else:
            detail.append("KV cache profiled by vLLM: engines start one after the other")
        # Together: on a cold cache each resolves its model class in a subprocess of its own
        # (~20 s; vLLM keeps the answer under VLLM_CACHE_ROOT/modelinfos for later starts).
        from vllm import ModelRegistry  # noqa: F401 - the registry, imported once, here

        making = {name: _in_thread(f"config-{name}",
                                   lambda a=a: AsyncEngineArgs(**a).create_engine_config())
                  for name, a in args.items()}
        configs = {name: future.result() for name, future in making.items()}

    spans: dict[str, tuple[float, float]] = {}

    def start_engine(name: str) -> Any:
        began = CLOCK.now()
        engine = AsyncLLM.from_vllm_config(configs[name], disable_log_stats=True)
        spans[name] = (began, CLOCK.now())
        return engine

    front_began = CLOCK.now()
    # The front end processes input with the engines' own configs; its processes start now,
    # beside the engines.
    front = FrontEnd(configs, settings.vllm_frontend_processes,
                     warm_prompts={"asr": asr_prompt("", None)})
    started: dict[str, Any] = {}
    try:
        front.begin()
        with CLOCK.phase("imports"):
            # Before the engines' threads: what they import (transformers' tokenizers) and
            # qwen-asr's text side for the aligner are imported by one thread at a time (two
            # threads importing one package at once can each see the other's half-initialised
            # modules); and the check that qwen-asr's import left vLLM's own classes in place.
            from transformers import AutoProcessor, AutoTokenizer  # noqa: F401
            from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor

            aligner_text = Qwen3ForceAlignProcessor()
            check_native_classes()
            # The job side's own tokenizers (plain transformers ones: vLLM's engine keeps a
            # thread-pool wrapper that cannot be copied, and ContextFitter copies).
            tokenizers = {"asr": AutoTokenizer.from_pretrained(asr_path),
                          "aligner": AutoTokenizer.from_pretrained(aligner_path)}
        with engine_process_env(settings):
            if plan is None:  # each profiles the free memory: one after the other
                def both() -> dict[str, Any]:
                    for name in ("asr", "aligner"):
                        started[name] = start_engine(name)
                    return started

                starting = {"engines": _in_thread("start-engines", both)}
            else:
                starting = {name: _in_thread(f"start-{name}", lambda n=name: start_engine(n))
                            for name in ("asr", "aligner")}
            failures = []
            for name, future in starting.items():
                try:
                    result = future.result()
                    if name in args:
                        started[name] = result
                except Exception as exc:  # noqa: BLE001 - the other's start is waited for
                    failures.append(exc)
            if failures:
                raise failures[0]
        front.wait_started()
        CLOCK.record("front end", front_began, front.ready_at - CLOCK.origin,
                     f"{front.processes} processes")
    except BaseException:
        front.close()
        for engine in started.values():
            engine.shutdown()
        raise
    asr, aligner = started["asr"], started["aligner"]
    engine = VllmEngine(asr, aligner, front=front, aligner_text=aligner_text,
                        tokenizer=tokenizers["asr"], aligner_tokenizer=tokenizers["aligner"],
                        aligner_config=aligner_config, asr_model=settings.asr_model,
                        aligner_model=settings.aligner_model,
                        max_new_tokens=settings.max_new_tokens,
                        max_context_tokens=settings.max_context_tokens,
                        align_pauses_longer_asr=settings.vllm_align_pauses_longer_asr)
    from .startup import CLOSERS

    CLOSERS.add(engine.close)
    atexit.register(engine.close)  # also for code that loads an engine outside `startup.run`
    reports = engine.compile_reports()
    for name in ("asr", "aligner"):
        CLOCK.record(f"{name} engine", *spans[name], verdict(reports[name]))
    with CLOCK.phase("warm-up"):
        engine.warm_up()
    log.info("loaded %s and %s on vLLM (AsyncLLM, ASR memory %.2f, aligner %.2f, %d front-end "
             "processes, %s torch threads per engine)", settings.asr_model,
             settings.aligner_model, settings.vllm_gpu_memory_utilization,
             settings.vllm_aligner_gpu_memory_utilization, settings.vllm_frontend_processes,
             settings.vllm_engine_threads or "default")
    return engine
