"""RunPod serverless entry point.

    python src/handler.py --test_input '{"input": {"audio_url": "...", "language": "auto"}}'
    python src/handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
    python src/handler.py --self-test     # acceptance check of a built image on its GPU
"""

from __future__ import annotations

import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# qwen_worker first: its package init prepares the environment torch and vLLM read at import.
from qwen_worker.config import ConfigError, Settings, load_settings  # noqa: E402
from qwen_worker.download import allow_loopback_for_local_testing  # noqa: E402
from qwen_worker.diarize import Diarizer, load_configured  # noqa: E402
from qwen_worker.engine import QwenEngine, load_engine  # noqa: E402
from qwen_worker.model_files import StartupError  # noqa: E402
from qwen_worker.worker import Worker  # noqa: E402

log = logging.getLogger("handler")


def configure() -> Settings:
    """Settings from the environment and logging, or one log line saying what to change and
    exit status 1. Shared with src/server.py."""
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
    return settings


def load_failure(settings: Settings, exc: BaseException) -> str:
    """Why the models did not load, in one line (the traceback goes to DEBUG)."""
    if isinstance(exc, StartupError):
        return str(exc)
    log.debug("model loading failed", exc_info=exc)
    return (f"loading ASR_MODEL={settings.asr_model} / ALIGNER_MODEL={settings.aligner_model} "
            f"raised {type(exc).__name__}: "
            + (str(exc).splitlines()[0][:300] if str(exc) else ""))


def start() -> tuple[Settings, QwenEngine, Diarizer | None]:
    """Settings and models, or one log line saying what to change and exit status 1."""
    settings = configure()
    try:
        # Loaded once per worker process, before the first job; vLLM needs this under __main__.
        engine = load_engine(settings)
        return settings, engine, load_configured(settings)
    except Exception as exc:  # noqa: BLE001 - the reason in one line; the traceback at DEBUG
        log.error("start-up failed: %s", load_failure(settings, exc))
    sys.exit(1)


def main() -> None:
    if "--self-test" in sys.argv[1:]:
        from qwen_worker.selftest import run_self_test

        t0 = time.perf_counter()
        settings, engine, _ = start()
        sys.exit(run_self_test(settings, engine, time.perf_counter() - t0))

    import runpod

    from qwen_worker.selftest import warm_up

    settings, engine, diarizer = start()
    worker = Worker(settings, engine, diarizer)

    # Runs on RunPod only (runpod skips fitness checks locally): a worker whose models load
    # but cannot transcribe dies here instead of failing every job it takes.
    @runpod.serverless.register_fitness_check
    def transcribe_warm_up_clip() -> None:
        warm_up(engine)

    # An async handler with a constant concurrency: up to MAX_CONCURRENCY jobs at once, their
    # engine calls shared through the worker's scheduler.
    runpod.serverless.start({"handler": worker.handle_async,
                             "concurrency_modifier": worker.concurrency})


if __name__ == "__main__":
    main()
