"""The start-up's clock: one log line per phase with its seconds, counted from the process's
start, and one summary line (docs/cold-start.md). Phases overlap, so their seconds add up to
more than the whole."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Iterator

log = logging.getLogger("startup")


def _process_started() -> float:
    """time.time() at which this process started (its interpreter's start, imports included)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - psutil missing or /proc unreadable: from here on
        return time.time()


class StartupClock:
    """The start-up's phases: name -> (from, to), seconds after the process started."""

    def __init__(self) -> None:
        self.origin = _process_started()
        self.phases: dict[str, tuple[float, float, str]] = {}
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() - self.origin

    def record(self, name: str, start: float, end: float, detail: str = "") -> None:
        with self._lock:
            self.phases[name] = (start, end, detail)
        log.info("%s", self.line(name))

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[list[str]]:
        """Time the block as phase `name`; what the block appends to the yielded list joins
        the phase's line."""
        start = self.now()
        detail: list[str] = []
        yield detail
        self.record(name, start, self.now(), "; ".join(detail))

    def line(self, name: str) -> str:
        start, end, detail = self.phases[name]
        return (f"start-up phase: {name} {end - start:.1f} s ({start:.1f} -> {end:.1f} s after "
                f"process start{'; ' + detail if detail else ''})")

    def ready(self, what: str) -> str:
        """The summary line: `what` is ready, this long after the process started."""
        with self._lock:
            parts = ", ".join(f"{name} {end - start:.1f}"
                              for name, (start, end, _) in self.phases.items())
        line = f"start-up: {what} {self.now():.1f} s after process start ({parts})"
        log.info("%s", line)
        return line

    def lines(self) -> list[str]:
        with self._lock:
            return [self.line(name) for name in self.phases]


CLOCK = StartupClock()
