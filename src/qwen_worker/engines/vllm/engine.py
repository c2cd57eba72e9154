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

import copy
import dataclasses
import itertools
import logging
import threading
import weakref
from typing import Any, Callable, Coroutine, Sequence, TypeVar

import numpy as np

from qwen_worker.base.config import MAX_CHUNK_AUDIO_TOKENS
from qwen_worker.base.lifecycle import wait_in_job
from qwen_worker.base.types import SAMPLE_RATE, AlignedToken, AsrOutput
from qwen_worker.engines.base import EngineError, is_fatal_gpu_error, padded
from qwen_worker.engines.prompts import ContextFitter, asr_prompt, read_asr_output
from qwen_worker.engines.timestamps import word_spans
from qwen_worker.engines.vllm.args import AlignerConfig
from qwen_worker.engines.vllm.frontend import FrontEnd
from qwen_worker.engines.vllm.loop import ASYNC_LLM_LOGGER, LoopThread, ShutdownNoise, all_or_none
from qwen_worker.engines.vllm.pause import AsrPause

log = logging.getLogger(__name__)

T = TypeVar("T")

WARM_UP_SECONDS = MAX_CHUNK_AUDIO_TOKENS / 13  # the longest chunk: 300 s
WARM_UP_WORDS = 700  # a long aligner prompt (~270 s of speech)
AUDIO_PLACEHOLDER = "<|audio_pad|>"


def priority(chunks: Sequence[np.ndarray]) -> int:
    """A call's place in the engines' queues: its audio seconds (lower runs first)."""
    return int(sum(c.shape[0] for c in chunks) // SAMPLE_RATE)


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


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Engine options for benchmarks only (bench/gpu.py); the defaults are the worker's."""

    # SamplingParams fields per chunk (samples -> fields), e.g. a fixed output length for
    # random weights; a length reached then is not a MAX_NEW_TOKENS cut.
    sampling_overrides: Callable[[int], dict[str, Any]] | None = None
    # False: the aligner returns all its classes, not only the times within the audio (an A/B
    # of `_pooling`).
    align_within_audio: bool = True


class VllmEngine:
    """The `Engine` over two AsyncLLM engines. Thread-safe: jobs call it directly."""

    backend = "vllm"
    batches_itself = True

    def __init__(self, asr: Any, aligner: Any, *, front: FrontEnd, tokenizer: Any,
                 aligner_tokenizer: Any, aligner_config: AlignerConfig, asr_model: str,
                 aligner_model: str, max_new_tokens: int, max_context_tokens: int,
                 align_pauses_longer_asr: bool = True, loop: LoopThread | None = None,
                 aligner_text: Any = None, bench: BenchOptions | None = None):
        from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor

        self._asr = asr
        self._aligner = aligner
        self.asr_pause = AsrPause(asr, align_pauses_longer_asr)
        self._front = front
        self._loop = loop or LoopThread()
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
        self._ids = itertools.count()
        self._fatal: BaseException | None = None
        self._closed = False
        self.asr_model = asr_model
        self.aligner_model = aligner_model
        self.aligner_languages = aligner_config.languages
        self.max_new_tokens = max_new_tokens
        self._bench = bench or BenchOptions()

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
        finals = self._run(lambda: all_or_none([self._generate(i, p, sp, rank)
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
                return await all_or_none([self._encode(rid, inp, rank, p)
                                   for rid, inp, p in zip(ids, inputs, params)])

        rows = self._run(encode_all)
        out: list[list[AlignedToken]] = [[] for _ in chunks]
        for i, pooled in zip(todo, rows):
            out[i] = self._timestamps(encoded[i][0], pooled)
        return out

    # -- benchmarks only -------------------------------------------------------------------

    def with_bench_options(self, bench: BenchOptions) -> "VllmEngine":
        """This engine (the same engines, loop, front end and kept features) with other
        benchmark options: an A/B on one engine. Close only the original."""
        twin = copy.copy(self)
        twin._bench = bench
        return twin

    def probe(self, model: str, prompt: str, audio: np.ndarray, params: Any) -> Any:
        """One request, processed by vLLM itself, with vLLM's own params (SamplingParams for
        model "asr", PoolingParams for "aligner"); its final output as vLLM gives it: raw
        probabilities to compare with the transformers backend's, never the job path."""
        request_id = f"probe-{next(self._ids)}"
        raw = {"prompt": prompt, "multi_modal_data": {"audio": audio}}
        if model == "asr":
            return self._run(lambda: self._generate(request_id, raw, params, 0))
        return self._run(lambda: self._encode(request_id, raw, 0, params))

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

        from qwen_worker.engines.vllm.compile_cache import counters

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
        without the false engine failure vLLM may log meanwhile (`ShutdownNoise`)."""
        if self._closed:
            return
        self._closed = True
        noise = ShutdownNoise(self._loop.thread_id)
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
        if self._bench.sampling_overrides is not None:
            kwargs.update(self._bench.sampling_overrides(samples))
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

        if not self._bench.align_within_audio:
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
        cut = completion.finish_reason == "length" and self._bench.sampling_overrides is None
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


