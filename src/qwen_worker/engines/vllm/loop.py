"""The engines' event loop: AsyncLLM lives in one asyncio loop, run in a thread of its own that
job threads submit to; and the one log record vLLM's own shutdown makes that is not a failure."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from typing import Any, Awaitable, Coroutine, TypeVar

T = TypeVar("T")


class LoopThread:
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
# report the shutdown itself as a failure (seen on an H100 at a worker's exit).
ASYNC_LLM_LOGGER = "vllm.v1.engine.async_llm"
OUTPUT_TASK_FAILED = "AsyncLLM output_handler failed"


class ShutdownNoise(logging.Filter):
    """Drops that report while the engines are being shut down, from their loop's thread only:
    a failure of the running engines, or of another worker's, is still logged."""

    def __init__(self, thread_id: int | None):
        super().__init__()
        self._thread_id = thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.thread == self._thread_id
                    and record.getMessage().startswith(OUTPUT_TASK_FAILED))


async def all_or_none(awaitables: list[Awaitable[T]]) -> list[T]:
    """Like gather, but a failure or a cancellation cancels (and so aborts) all the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

