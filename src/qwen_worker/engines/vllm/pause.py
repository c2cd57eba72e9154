"""A shorter call's alignment pauses the ASR engine (the two engine processes time-slice one GPU)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any, Awaitable, Callable, Coroutine, Iterator

from qwen_worker.engines.base import FatalEngineError

log = logging.getLogger(__name__)

# A shorter call's alignment pauses the ASR engine for at most half of any such window, and
# each pause at most that half (AsrPause); a pause or resume unanswered this long is fatal.
PAUSE_WINDOW_S = 1.0
MAX_PAUSE_S = PAUSE_WINDOW_S / 2
PAUSE_CALL_TIMEOUT_S = 10.0


class AsrPause:
    """The ASR engine pauses while a shorter call is aligned.

    The two engines are two processes on one GPU, which the driver time-slices between them:
    while an hour-long file decodes, a 30 s job's alignment took 2-2.5x its time alone
    (BENCHMARKS.md, "Latency"). When a call is aligned and every request the ASR engine runs
    belongs to a longer call (its priority, audio seconds, is higher), vLLM's scheduler is paused with its
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

