"""vLLM's input processing, in processes of its own: the front end of the GPU engine.

Before a chunk can join vLLM's running batch, vLLM's input processing turns its prompt and
audio into engine input: prompt tokens with the audio placeholder expanded, and the audio's
mel features. That is CPU work (~0.4 s for a 270 s chunk, 0.02 s for 30 s, on one thread), and
`AsyncLLM` does it inline, on the one event loop that owns the engine, under this process's
GIL, one request at a time while every job thread competes for the same GIL. On an H200 it
made a job wait 8.5 s of 12.9 s at 64 jobs while the GPU needed ~1.5 s (docs/gpu.md, "The front end").

Here a pool of spawned processes, each with its own `InputProcessor` built from the engine's
own `VllmConfig`, prepares the input, and the engine receives it ready (`AsyncLLM` accepts
processed input, checking it as it checks a raw prompt). Each process has its own vLLM
renderer: no state is shared (eight preprocessors in threads of one process had corrupted each
other's audio placeholders and killed the engine).
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

# In each pool process: engine name -> its InputProcessor, or the start-up failure.
_PROCESSORS: dict[str, Any] = {}
_START_ERROR: list[BaseException] = []
_ALL_STARTED: list[Any] = []  # the pool's start barrier (FrontEnd.start)
_WARMED: list[str] = []  # engines whose processor ran its warm-up here
START_TIMEOUT_S = 600.0
WARM_UP_SAMPLES = 16000  # 1 s: vLLM refuses audio of 160 samples or fewer


def _start(configs: dict[str, Any], warm: dict[str, str], all_started: Any) -> None:
    """Pool initializer: the engines' input processors, each run once on 1 s of silence (its
    first call loads the HF processor and sets up the feature extractor: not a job's cost).
    A failure is kept and raised by every task, with its message (a raising initializer only
    breaks the pool, its reason lost in the process's stderr)."""
    _ALL_STARTED.append(all_started)
    try:
        import torch

        # One thread each: the audio features are torch work, and N processes each using
        # torch's default (a thread per core) oversubscribe the host and starve the
        # engine-core processes, which need a core each to keep the GPU fed.
        torch.set_num_threads(1)
        from vllm.v1.engine.input_processor import InputProcessor

        for name, config in configs.items():
            _PROCESSORS[name] = InputProcessor(config)
        silence = np.zeros(WARM_UP_SAMPLES, dtype=np.float32)
        for name, prompt in warm.items():
            _PROCESSORS[name].input_preprocessor.preprocess(
                {"prompt": prompt, "multi_modal_data": {"audio": silence}})
            _WARMED.append(name)
    except Exception as exc:  # noqa: BLE001 - reported by each task
        _START_ERROR.append(exc)


class FrontEndStartError(RuntimeError):
    """A front-end process could not start (raised by each of its tasks)."""


def _ping() -> bool:
    if _START_ERROR:
        raise FrontEndStartError(f"vLLM's input processing failed to start: {_START_ERROR[0]!r}")
    return True


def _started() -> tuple[int, list[str], float]:
    """Start-up's task: returns when every process of the pool holds one (a process runs one
    task at a time, so all of them have finished their initializer), or raises."""
    barrier = _ALL_STARTED[0]
    if _START_ERROR:
        barrier.abort()  # the others' waits end at once
        _ping()
    barrier.wait(START_TIMEOUT_S)
    return os.getpid(), list(_WARMED), time.time()


def _prepare(name: str, request_id: str, prompt: str, audio: np.ndarray) -> dict[str, Any]:
    """vLLM's processed input for one prompt with one audio (vLLM's own errors propagate)."""
    _ping()
    engine_input = _PROCESSORS[name].input_preprocessor.preprocess(
        {"prompt": prompt, "multi_modal_data": {"audio": audio}})
    # With both of its caches off, vLLM names an audio item after a counter of its renderer
    # ("renderer0-mm-7-audio-0"). Every process counts from 1, and the engine keys its encoder
    # cache by these names: name each item after its request, which is unique.
    engine_input["mm_hashes"] = {
        modality: [f"{request_id}-{modality}-{i}" for i in range(len(items))]
        for modality, items in engine_input["mm_hashes"].items()}
    return engine_input


class FrontEnd:
    """A pool of `processes` input-processing processes for the named engines' configs.

    Requests wait here, lowest rank first (the engines' priority: a call's audio seconds),
    and only as many as there are processes are handed to the pool at a time: a 30 s job is
    prepared next, not after the queued chunks of an hour-long file."""

    def __init__(self, configs: dict[str, Any], processes: int,
                 warm_prompts: dict[str, str] | None = None):
        # Spawn: a fresh interpreter, nothing of this process's threads or locks.
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_start,
                                         initargs=(configs, warm_prompts or {},
                                                   context.Barrier(processes)))
        self.processes = processes
        self.warmed: dict[int, list[str]] = {}  # after start(): process id -> engines warmed
        self.ready_at = 0.0  # after start(): when the last process was ready (time.time())
        self._starting: list[Future] = []
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, Future, tuple]] = []  # a heap
        self._order = itertools.count()
        self._running = 0

    def start(self) -> None:
        """Start every process now and wait until each has finished starting (imports, the
        input processors, their warm-up on `warm_prompts`): no job pays for that, and no
        process still starting competes for the host's cores with the first jobs. Raise their
        start-up failure, if any."""
        self.begin()
        self.wait_started()

    def begin(self) -> None:
        """Start every process now, without waiting (the engines start meanwhile)."""
        self._starting = [self._pool.submit(_started) for _ in range(self.processes)]

    def wait_started(self) -> None:
        """Wait until every process has finished starting (after `begin`); raise their
        start-up failure, if any. `ready_at` is when the last one was ready (time.time())."""
        futures = self._starting
        failed = [e for e in (f.exception() for f in futures) if e is not None]
        if failed:  # the start-up failure's own message before the others' broken barrier
            raise next((e for e in failed if isinstance(e, FrontEndStartError)), failed[0])
        results = [f.result() for f in futures]
        self.warmed = {pid: warmed for pid, warmed, _ in results}
        self.ready_at = max(at for _, _, at in results)

    def prepare(self, name: str, request_id: str, prompt: str, audio: np.ndarray,
                rank: int = 0) -> "Future[dict[str, Any]]":
        """The engine input for one request. Cancelling the future drops a request still
        waiting. A process that dies (killed for memory, say) breaks the pool: this and every
        later call fail with BrokenProcessPool."""
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            heapq.heappush(self._waiting, (rank, next(self._order), future,
                                           (name, request_id, prompt, audio)))
        self._dispatch()
        return future

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if self._running >= self.processes or not self._waiting:
                    return
                _, _, future, args = heapq.heappop(self._waiting)
                if not future.set_running_or_notify_cancel():
                    continue  # its job stopped while it waited
                self._running += 1
            try:
                task = self._pool.submit(_prepare, *args)
            except Exception as exc:  # noqa: BLE001 - a broken or closed pool: this request fails
                self._finished(future, None, exc)
                continue
            task.add_done_callback(lambda t, f=future: self._finished(f, t, None))

    def _finished(self, future: Future, task: "Future | None", error: Exception | None) -> None:
        with self._lock:
            self._running -= 1
        if task is not None:
            error = task.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(task.result())  # type: ignore[union-attr]
        self._dispatch()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for _, _, future, _ in waiting:
            future.cancel()
