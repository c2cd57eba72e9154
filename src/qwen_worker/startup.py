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
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from qwen_worker.base.clock import CLOCK
from qwen_worker.base.lifecycle import CLOSERS, LIFETIME, adopt_orphans, end_child_processes

if TYPE_CHECKING:
    from qwen_worker.base.config import Settings
    from qwen_worker.engines.base import Engine
    from qwen_worker.engines.diarizer import Diarizer

log = logging.getLogger("startup")


class Terminated(SystemExit):
    """SIGTERM before the job loop or server took the signal over (start-up): a clean exit."""


def _sigterm_during_startup(signum: int, frame: Any) -> None:
    log.warning("SIGTERM during start-up: stopping")
    raise Terminated(0)


def configure() -> "Settings":
    """Settings from the environment, logging, the compile cache's folder; or one log line
    saying what to change and exit status 1."""
    from qwen_worker.base.config import ConfigError, load_settings
    from qwen_worker.engines.vllm.compile_cache import apply, choose
    from qwen_worker.pipeline.download import allow_loopback_for_local_testing

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
    from qwen_worker.engines.model_files import StartupError

    if isinstance(exc, StartupError):
        return str(exc)
    log.debug("model loading failed", exc_info=exc)
    return (f"loading ASR_MODEL={settings.asr_model} / ALIGNER_MODEL={settings.aligner_model} "
            f"raised {type(exc).__name__}: "
            + (str(exc).splitlines()[0][:300] if str(exc) else ""))


def start() -> "tuple[Settings, Engine, Diarizer | None]":
    """Settings and models, or one log line saying what to change and exit status 1."""
    from qwen_worker.engines.diarizer import load_configured
    from qwen_worker.engines.load import load_engine

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
    LIFETIME.stop_all()  # jobs still running (a way out other than SIGTERM) stop first
    CLOSERS.close_all()
    return end_child_processes()


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run an entry point's `main` and end the process with its status: 0 when it returns,
    a SystemExit's code, 1 after an exception (logged)."""
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
