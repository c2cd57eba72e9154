"""Start-up and the way out, shared by the entry points (src/handler.py, src/server.py).

Start-up logs one line per phase, with its seconds and when it ran counted from the process's
start, then one line with the whole:

    start-up phase: asr engine 24.1 s (3.2 -> 27.3 s after process start; compile cache: hit ...)
    start-up: models ready 31.0 s after process start (settings 0.4, asr engine 24.1, ...)

Phases overlap (the engines and the front end start together), so their seconds add up to
more than the whole. `--self-test` prints the same lines; bench/startup.py reads them.

`run` ends the process: on every way out of an entry point (it returns or exits, SIGTERM
during start-up, a start-up failure, an exception) whatever the worker opened is closed and
every process it started ends before the process does; then `os._exit`, so that no thread
left by a library (vLLM's, concurrent.futures') can hold the exit up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

if TYPE_CHECKING:
    from .config import Settings
    from .diarize import Diarizer
    from .engine import Engine

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


class Terminated(SystemExit):
    """SIGTERM before the job loop or server took the signal over (start-up): a clean exit."""


def _sigterm_during_startup(signum: int, frame: Any) -> None:
    log.warning("SIGTERM during start-up: stopping")
    raise Terminated(0)


def configure() -> "Settings":
    """Settings from the environment, logging, the compile cache's folder; or one log line
    saying what to change and exit status 1."""
    from .compile_cache import apply, choose
    from .config import ConfigError, load_settings
    from .download import allow_loopback_for_local_testing

    with CLOCK.phase("settings"):
        try:
            settings = load_settings()
        except ConfigError as exc:
            logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
            log.error("start-up failed: %s", exc)
            sys.exit(1)
        # force: a library imported earlier may have configured the root logger already.
        logging.basicConfig(level=settings.log_level, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if settings.download_allow_loopback:
            allow_loopback_for_local_testing()
        if settings.backend == "vllm":  # before vLLM is imported (its engines inherit it)
            apply(choose(settings.compile_cache_dir))
    return settings


def load_failure(settings: "Settings", exc: BaseException) -> str:
    """Why the models did not load, in one line (the traceback goes to DEBUG)."""
    from .model_files import StartupError

    if isinstance(exc, StartupError):
        return str(exc)
    log.debug("model loading failed", exc_info=exc)
    return (f"loading ASR_MODEL={settings.asr_model} / ALIGNER_MODEL={settings.aligner_model} "
            f"raised {type(exc).__name__}: "
            + (str(exc).splitlines()[0][:300] if str(exc) else ""))


def start() -> "tuple[Settings, Engine, Diarizer | None]":
    """Settings and models, or one log line saying what to change and exit status 1."""
    from .diarize import load_configured
    from .engine import load_engine

    settings = configure()
    try:
        engine = load_engine(settings)  # closed by `run` on the way out
        diarizer = load_configured(settings)
    except Exception as exc:  # noqa: BLE001 - the reason in one line; the traceback at DEBUG
        log.error("start-up failed: %s", load_failure(settings, exc))
        sys.exit(1)
    CLOCK.ready("models ready")
    return settings, engine, diarizer


def end_everything() -> list[int]:
    """Close what the worker opened and end every process it started; their PIDs."""
    from .lifecycle import LIFETIME, end_child_processes

    LIFETIME.stop_all()  # jobs still running (a way out other than SIGTERM) stop first
    CLOSERS.close_all()
    return end_child_processes()


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run an entry point's `main` and end the process with its status: 0 when it returns,
    a SystemExit's code, 1 after an exception (logged)."""
    from .lifecycle import adopt_orphans

    adopt_orphans()
    if threading.current_thread() is threading.main_thread():
        # Until runpod's job loop or uvicorn installs its own (lifecycle wraps those).
        signal.signal(signal.SIGTERM, _sigterm_during_startup)
    code = 1
    try:
        code = main() or 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - logged, then the same way out as the rest
        log.exception("the worker failed")
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the way out is under way
        try:
            end_everything()
        finally:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)
