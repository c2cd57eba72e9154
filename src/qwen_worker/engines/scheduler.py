"""One owner for the engine: the engine calls of all running jobs, gathered into shared batches.

Jobs run their pipelines in threads of their own; every engine call they make (transcribe or
align, first passes and repairs alike) becomes a request in one queue. A single thread takes
the requests waiting for the same kind of call, up to `max_chunks`, runs ONE engine call over
all their chunks, and hands each job its own results in its own order. vLLM's `LLM` and the
transformers models are not thread-safe, so this thread is also the only one that touches them.

- A request that arrives while a call runs joins the next call; an idle engine waits
  `gather_seconds` after the first request for others to join.
- A request is never split: one long file is one request, run as one call as before.
- Isolation: when a shared call fails, its requests are run again in halves until the failing
  job is found; only that job gets the error. A fatal GPU error (CUDA error, dead vLLM engine)
  fails every request in flight and every later one: the worker must be replaced.
- A stopped job's requests are dropped from the queue (`JobScope` stopper).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from qwen_worker.base.lifecycle import ShuttingDown, wait_in_job
from qwen_worker.base.types import AlignedToken, AsrOutput
from qwen_worker.engines.base import Engine, is_fatal_gpu_error, is_out_of_memory

log = logging.getLogger(__name__)

ASR, ALIGN = "asr", "align"


def _fail(future: Future, exc: BaseException) -> None:
    """Fail a request unless its job dropped it (a cancelled future takes no exception)."""
    try:
        if future.running() or future.set_running_or_notify_cancel():
            future.set_exception(exc)
    except InvalidStateError:
        pass


@dataclass(eq=False)
class _Request:
    kind: str
    items: list[tuple[Any, ...]]  # per chunk: the engine call's arguments
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class BatchScheduler:
    def __init__(self, engine: Engine, *, gather_seconds: float, max_chunks: int):
        self.engine = engine
        self.gather_seconds = gather_seconds
        self.max_chunks = max_chunks
        self.calls: Counter[str] = Counter()  # engine calls made, by kind
        self._queue: deque[_Request] = deque()
        self._cv = threading.Condition()
        self._fatal: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    # -- the job side -------------------------------------------------------------------

    def submit(self, kind: str, items: list[tuple[Any, ...]]) -> list[Any]:
        """Queue one request and wait for its results (in the calling job's thread)."""
        if not items:
            return []
        request = _Request(kind, items)
        with self._cv:
            if self._fatal is not None:
                raise RuntimeError("the engine failed earlier with a fatal GPU error") \
                    from self._fatal
            if self._closed:
                raise ShuttingDown("the engine is shutting down")
            self._queue.append(request)
            self._cv.notify()
        # Stopping the job drops the request if still queued, and stops the wait either way.
        return wait_in_job(request.future)

    def engine_for_job(self) -> "SharedEngine":
        return SharedEngine(self)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for request in self._queue:
                _fail(request.future, ShuttingDown("the engine is shutting down"))
            self._queue.clear()
            self._cv.notify()

    # -- the engine thread --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - this thread must outlive any call
                log.exception("engine scheduler: unexpected failure")
                for request in batch:
                    if not request.future.done():
                        _fail(request.future, exc)

    def _next_batch(self) -> list[_Request] | None:
        with self._cv:
            while True:
                while not self._queue:
                    if self._closed:
                        return None
                    self._cv.wait()
                deadline = self._queue[0].queued_at + self.gather_seconds
                while (left := deadline - time.monotonic()) > 0 and not self._closed:
                    self._cv.wait(left)
                if self._queue:  # close() may have emptied it meanwhile
                    break
            kind = self._queue[0].kind
            batch: list[_Request] = []
            size = 0
            for request in list(self._queue):
                if request.kind != kind:
                    continue
                if batch and size + len(request.items) > self.max_chunks:
                    break
                self._queue.remove(request)
                if not request.future.set_running_or_notify_cancel():
                    continue  # its job was stopped
                batch.append(request)
                size += len(request.items)
            return batch

    def _run(self, batch: list[_Request]) -> None:
        if not batch:
            return
        if self._fatal is not None:  # an earlier half broke the GPU: do not call it again
            for request in batch:
                _fail(request.future, self._fatal)
            return
        try:
            results = self._call(batch[0].kind, [it for r in batch for it in r.items], len(batch))
        except BaseException as exc:  # noqa: BLE001 - handed to the jobs, never raised here
            self._failed(batch, exc)
            return
        pos = 0
        for request in batch:
            n = len(request.items)
            request.future.set_result(results[pos:pos + n])
            pos += n

    def _failed(self, batch: list[_Request], exc: BaseException) -> None:
        shared = len(batch) > 1
        if is_fatal_gpu_error(exc) and not (shared and is_out_of_memory(exc)):
            log.error("fatal GPU error: failing every job in flight (%s)", type(exc).__name__)
            with self._cv:
                self._fatal = exc
                waiting = list(self._queue)
                self._queue.clear()
            for request in batch + waiting:
                if not request.future.done():
                    _fail(request.future, exc)
            return
        if not shared:
            _fail(batch[0].future, exc)
            return
        # Find the job that breaks the shared call: the others succeed in smaller calls.
        log.warning("a shared %s call of %d jobs failed (%s); retrying in halves",
                    batch[0].kind, len(batch), type(exc).__name__)
        half = len(batch) // 2
        self._run(batch[:half])
        self._run(batch[half:])

    def _call(self, kind: str, items: list[tuple[Any, ...]], jobs: int) -> list[Any]:
        self.calls[kind] += 1
        started = time.perf_counter()
        if kind == ASR:
            chunks, languages, contexts = zip(*items)
            out = self.engine.transcribe(list(chunks), list(languages), list(contexts))
        else:
            chunks, texts, languages = zip(*items)
            out = self.engine.align(list(chunks), list(texts), list(languages))
        if len(out) != len(items):
            raise RuntimeError(f"the engine returned {len(out)} results for {len(items)} chunks")
        log.info("engine %s call: %d chunks of %d jobs in %.2f s", kind, len(items), jobs,
                 time.perf_counter() - started)
        return out


class SharedEngine:
    """What a job's pipeline sees: the Engine interface, served by the shared scheduler."""

    def __init__(self, scheduler: BatchScheduler):
        self._scheduler = scheduler
        engine = scheduler.engine
        self.backend = engine.backend
        self.asr_model = engine.asr_model
        self.aligner_model = engine.aligner_model
        self.aligner_languages = engine.aligner_languages

    def transcribe(self, chunks: Sequence[np.ndarray], languages: Sequence[str | None],
                   contexts: Sequence[str]) -> list[AsrOutput]:
        return self._scheduler.submit(ASR, list(zip(chunks, languages, contexts)))

    def align(self, chunks: Sequence[np.ndarray], texts: Sequence[str],
              languages: Sequence[str]) -> list[list[AlignedToken]]:
        return self._scheduler.submit(ALIGN, list(zip(chunks, texts, languages)))

    def fit_context(self, context: str) -> tuple[str, list[str]]:
        return self._scheduler.engine.fit_context(context)  # tokenizer only: thread-safe
