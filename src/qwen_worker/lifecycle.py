"""The worker's lifetime around its jobs: stopping on SIGTERM, and job directories.

SIGTERM (docker stop, RunPod scaling a worker down) must not wait for a running job to end:
a stalled download alone can hold a job for most of a minute, and after the container's
grace period SIGKILL would leave the job's directory and ffmpeg processes behind. So the
handler installed here stops the running job at once: it kills the job's ffmpeg processes,
raises `ShuttingDown` in the job (which the worker reports as WORKER_SHUTDOWN and then
removes its directory), lets runpod's own handler end the job loop, and as a backstop ends
the process after `SHUTDOWN_GRACE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

JOB_DIR_PREFIX = "job-"
# From SIGTERM to a forced exit when the job loop has not ended by itself (docker stop waits 10 s).
SHUTDOWN_GRACE_SECONDS = 8.0


class ShuttingDown(Exception):
    """The worker received SIGTERM while a job ran."""


class _Lifetime:
    """Process-wide, as signals are: what a SIGTERM must stop."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._job_dirs: set[Path] = set()
        self._job_thread: int | None = None

    @contextlib.contextmanager
    def process(self, proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
        """Kill `proc` on SIGTERM while the block runs."""
        with self._lock:
            self._procs.add(proc)
        try:
            if self.stopping.is_set():
                proc.kill()
            yield proc
        finally:
            with self._lock:
                self._procs.discard(proc)

    @contextlib.contextmanager
    def job(self, job_dir: Path) -> Iterator[None]:
        """Marks the running job: SIGTERM raises ShuttingDown in this (the main) thread."""
        self.raise_if_stopping()
        with self._lock:
            self._job_dirs.add(job_dir)
            if threading.current_thread() is threading.main_thread():
                self._job_thread = threading.get_ident()
        try:
            yield
        finally:
            with self._lock:
                self._job_dirs.discard(job_dir)
                self._job_thread = None

    def raise_if_stopping(self) -> None:
        if self.stopping.is_set():
            raise ShuttingDown("the worker is shutting down")

    def stop(self) -> bool:
        """Kill the running jobs' processes; True if a job runs on the main thread."""
        self.stopping.set()
        with self._lock:
            procs = list(self._procs)
            in_job = self._job_thread is not None
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()
        return in_job

    def remove_job_dirs(self) -> None:
        with self._lock:
            dirs = list(self._job_dirs)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


LIFETIME = _Lifetime()


def ensure_sigterm_handler() -> None:
    """Put our SIGTERM handler in front of whatever is installed now (runpod's job loop or
    uvicorn install theirs after start-up, so this runs as each job starts). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if getattr(current, "stops_jobs", False):
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        log.warning("SIGTERM: stopping the running job and exiting")
        in_job = LIFETIME.stop()
        _start_exit_backstop()
        if callable(current):
            current(signum, frame)  # runpod ends its job loop; uvicorn its server
        elif current == signal.SIG_DFL:
            raise SystemExit(128 + signum)
        if in_job:
            raise ShuttingDown("the worker received SIGTERM")

    on_sigterm.stops_jobs = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)


def _start_exit_backstop() -> None:
    def force_exit() -> None:
        log.error("still running %.0f s after SIGTERM: exiting now", SHUTDOWN_GRACE_SECONDS)
        LIFETIME.remove_job_dirs()
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

