"""The worker's lifetime around its jobs: stopping jobs (one, or all on SIGTERM) and job
directories.

A job runs in its own thread; what it has open that could take long to end by itself (its
ffmpeg processes, its download's socket, its place in the engine's queue) is registered with
the job's `JobScope` as a stopper. Stopping the scope runs the stoppers, so the job thread
fails fast with `JobCancelled` (RunPod stopped this job) or `ShuttingDown` (SIGTERM), and
its own `finally` removes its directory.

SIGTERM (docker stop, RunPod scaling a worker down) must not wait for running jobs: a stalled
download alone can hold a job for most of a minute, and after the container's grace period
SIGKILL would leave job directories and ffmpeg processes behind. The handler installed here
stops every job, lets runpod's own handler end the job loop, and as a backstop ends the
process after `SHUTDOWN_GRACE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
import signal
import threading
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

log = logging.getLogger(__name__)

JOB_DIR_PREFIX = "job-"
# From SIGTERM to a forced exit when the job loop has not ended by itself (docker stop waits 10 s).
SHUTDOWN_GRACE_SECONDS = 8.0
# From SIGTERM to SIGKILL for a child process that does not end by itself (vLLM's engine core
# ends on SIGTERM after closing its sockets).
CHILD_GRACE_SECONDS = 3.0


class Stopped(BaseException):
    """A job was stopped from outside. A BaseException, like KeyboardInterrupt: no
    `except Exception` on the way may turn it into an ordinary failure."""


class ShuttingDown(Stopped):
    """The worker received SIGTERM while the job ran."""


class JobCancelled(Stopped):
    """RunPod stopped this job (cancelled by its caller, or past its timeout)."""


class JobScope:
    """One job's stop switch and what must be stopped with it."""

    def __init__(self, job_id: str = "") -> None:
        self.job_id = job_id
        self.reason: type[Stopped] | None = None
        # Re-entrant: the SIGTERM handler runs on the main thread, which may be inside stop().
        self._lock = threading.RLock()
        self._stoppers: dict[int, Callable[[], None]] = {}
        self._next = 0

    @contextlib.contextmanager
    def stopper(self, stop: Callable[[], None]) -> Iterator[None]:
        """Run `stop` if the job is stopped while the block runs (at once if it already is)."""
        with self._lock:
            key = self._next
            self._next += 1
            self._stoppers[key] = stop
            stopped = self.reason is not None
        try:
            if stopped:
                _quietly(stop)
            yield
        finally:
            with self._lock:
                self._stoppers.pop(key, None)

    def stop(self, reason: type[Stopped]) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            stoppers = list(self._stoppers.values())
        for stop in stoppers:
            _quietly(stop)

    def raise_if_stopped(self) -> None:
        if self.reason is not None:
            raise self.reason(f"job {self.job_id} was stopped")


def _quietly(stop: Callable[[], None]) -> None:
    try:
        stop()
    except Exception:  # noqa: BLE001 - stopping must reach every stopper
        log.debug("a stopper failed", exc_info=True)


# The scope of the job this thread works for (the worker runs each job in a copy of the
# context that holds it; decode copies it into its piece threads).
CURRENT_JOB: contextvars.ContextVar[JobScope | None] = contextvars.ContextVar("job", default=None)


class _Lifetime:
    """Process-wide, as signals are: the running jobs a SIGTERM must stop."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.RLock()  # re-entrant for the same reason as JobScope's
        self._jobs: dict[JobScope, Path | None] = {}

    @contextlib.contextmanager
    def job(self, scope: JobScope, job_dir: Path | None = None) -> Iterator[JobScope]:
        """Run a job's code inside its scope (in this thread)."""
        with self._lock:
            self._jobs[scope] = job_dir
        token = CURRENT_JOB.set(scope)
        try:
            if self.stopping.is_set():
                scope.stop(ShuttingDown)
            scope.raise_if_stopped()
            yield scope
        finally:
            CURRENT_JOB.reset(token)
            with self._lock:
                self._jobs.pop(scope, None)

    @contextlib.contextmanager
    def stopper(self, stop: Callable[[], None]) -> Iterator[None]:
        """Register `stop` with the current job (a no-op outside a job)."""
        scope = CURRENT_JOB.get()
        if scope is None:
            yield
            return
        with scope.stopper(stop):
            yield

    def raise_if_stopping(self) -> None:
        scope = CURRENT_JOB.get()
        if scope is not None:
            scope.raise_if_stopped()
        if self.stopping.is_set():
            raise ShuttingDown("the worker is shutting down")

    def stop_all(self) -> None:
        self.stopping.set()
        with self._lock:
            scopes = list(self._jobs)
        for scope in scopes:
            scope.stop(ShuttingDown)

    def remove_job_dirs(self) -> None:
        with self._lock:
            dirs = [d for d in self._jobs.values() if d is not None]
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


LIFETIME = _Lifetime()

T = TypeVar("T")
_STOP_POLL_SECONDS = 0.2  # how soon a stopped job's thread stops waiting for the engine


def wait_in_job(future: "Future[T]", dropped: str = "the job's engine request was dropped") -> T:
    """The future's result, for the current job: stopping the job cancels the future (a
    queued request is dropped; a vLLM request is aborted) and raises its stop reason here,
    even while the work it waits for is still running."""
    scope = CURRENT_JOB.get()
    if scope is None:
        return future.result()
    with scope.stopper(future.cancel):
        while True:
            try:
                return future.result(timeout=_STOP_POLL_SECONDS)
            except FutureTimeout:
                scope.raise_if_stopped()
            except CancelledError:
                scope.raise_if_stopped()
                raise JobCancelled(dropped) from None


def ensure_sigterm_handler() -> None:
    """Put our SIGTERM handler in front of whatever is installed now (runpod's job loop or
    uvicorn install theirs after start-up, so this runs as each job starts). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if getattr(current, "stops_jobs", False):
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        log.warning("SIGTERM: stopping the running jobs and exiting")
        _start_exit_backstop()  # first: nothing below may keep the process from ending
        LIFETIME.stop_all()
        if callable(current):
            current(signum, frame)  # runpod ends its job loop; uvicorn its server
        elif current == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    on_sigterm.stops_jobs = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)


def _start_exit_backstop() -> None:
    def force_exit() -> None:
        log.error("still running %.0f s after SIGTERM: exiting now", SHUTDOWN_GRACE_SECONDS)
        LIFETIME.remove_job_dirs()
        end_child_processes()  # os._exit runs no cleanup: the children end here or never
        os._exit(1)

    timer = threading.Timer(SHUTDOWN_GRACE_SECONDS, force_exit)
    timer.daemon = True
    timer.start()


def sweep_job_dirs(work_dir: Path) -> list[str]:
    """Remove job directories left by an earlier worker that was killed (SIGKILL, OOM).

    Called at start-up, before this worker has any job: WORK_DIR belongs to one worker.
    """
    removed = []
    if not work_dir.is_dir():
        return removed
    for entry in work_dir.iterdir():
        if entry.name.startswith(JOB_DIR_PREFIX) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.warning("removed %d job directories left by an earlier run: %s", len(removed),
                    ", ".join(sorted(removed)[:10]))
    return removed


def end_child_processes(grace: float = CHILD_GRACE_SECONDS) -> list[int]:
    """End every process this one started, at any depth (engine cores, front-end processes,
    ffmpeg, multiprocessing's resource tracker): SIGTERM, then SIGKILL for those still running
    after `grace` seconds. Returns their PIDs. Processes a child started and then left
    (re-parented to init) are out of reach: none of ours does that."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    tracker = _resource_tracker_pid()
    others = [c for c in children if c.pid != tracker]
    for child in others:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(others, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace)
    if tracker is not None and any(c.pid == tracker for c in children):
        _stop_resource_tracker(grace)
    with contextlib.suppress(psutil.Error):  # whatever is still there (started meanwhile)
        rest = psutil.Process().children(recursive=True)
        for child in rest:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(rest, timeout=grace)
        children += [c for c in rest if c not in children]
    if children:
        log.info("ended %d child processes", len(children))
    return [c.pid for c in children]


def _resource_tracker_pid() -> int | None:
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)


def _stop_resource_tracker(grace: float) -> None:
    """multiprocessing's resource tracker ignores SIGTERM: it ends, after releasing what
    processes left registered, once every holder of its pipe is gone. Its own `_stop` closes
    this process's end and waits; a kill is the fallback."""
    from multiprocessing import resource_tracker

    import psutil

    pid = _resource_tracker_pid()
    # The process is ending: nothing may start a tracker again. A semaphore's finalizer
    # unregisters it on the way out, which relaunches a stopped tracker: a new process that
    # would outlive this one.
    resource_tracker.register = resource_tracker.unregister = lambda *args: None
    resource_tracker.ensure_running = lambda: None
    stopper = threading.Thread(target=resource_tracker._resource_tracker._stop, daemon=True)
    stopper.start()
    stopper.join(grace)
    if stopper.is_alive() and pid is not None:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def adopt_orphans() -> None:
    """Make this process the reaper of its descendants' orphans (Linux): a process whose
    parent ends before it (a grandchild of a front-end or engine process that was ended) is
    handed to this process instead of init, so `end_child_processes` still finds it."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init, as before
        log.debug("cannot become a child subreaper", exc_info=True)


class Closers:
    """What must be closed before the process ends (the engines), newest first."""

    def __init__(self) -> None:
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def add(self, close: Callable[[], None]) -> None:
        with self._lock:
            self._closers.append(close)

    def close_all(self) -> None:
        with self._lock:
            closers, self._closers = self._closers[::-1], []
        for close in closers:
            try:
                close()
            except Exception:  # noqa: BLE001 - the way out goes on; the children end below
                log.debug("closing failed", exc_info=True)


CLOSERS = Closers()
