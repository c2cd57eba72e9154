"""RunPod serverless entry point.

    python src/handler.py --test_input '{"input": {"audio_url": "...", "language": "auto"}}'
    python src/handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
    python src/handler.py --self-test     # acceptance check of a built image on its GPU

Everything is imported inside `serve`: vLLM's engine processes and the front end's are spawned,
and a spawned process imports this file again as `__mp_main__` (14 of them at start-up).
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# qwen_worker first: its package init prepares the environment torch and vLLM read at import.
from qwen_worker.startup import run  # noqa: E402


def serve() -> int | None:
    import logging

    from qwen_worker.startup import CLOCK, end_everything, start

    log = logging.getLogger("handler")

    if "--self-test" in sys.argv[1:]:
        from qwen_worker.selftest import run_self_test

        settings, engine, _ = start()
        return run_self_test(settings, engine)

    import runpod

    from qwen_worker.selftest import warm_up
    from qwen_worker.worker import Worker

    settings, engine, diarizer = start()
    worker = Worker(settings, engine, diarizer)

    # Runs on RunPod only (runpod skips fitness checks locally): a worker whose models load
    # but cannot transcribe dies here instead of failing every job it takes.
    @runpod.serverless.register_fitness_check
    def transcribe_warm_up_clip() -> None:
        try:
            with CLOCK.phase("fitness check"):
                warm_up(engine)
        except BaseException:
            log.exception("the fitness check failed")  # runpod logs only the message
            end_everything()  # runpod ends the process with os._exit(1): nothing closes after
            raise
        CLOCK.ready("ready for jobs")

    async def handle(job: dict[str, Any]) -> dict[str, Any]:
        output = await worker.handle_async(job)
        if output.get("refresh_worker"):
            # This worker cannot serve again (a dead engine, a full disk): runpod's loop ends
            # after the jobs in flight, and the way out ends the engines, whose GPU memory
            # would otherwise stay held (RunPod also replaces the worker: stopPod).
            config["refresh_worker"] = True
        return output

    # An async handler with a constant concurrency: up to MAX_CONCURRENCY jobs at once, their
    # engine calls shared through the worker's scheduler.
    config: dict[str, Any] = {"handler": handle, "concurrency_modifier": worker.concurrency}
    runpod.serverless.start(config)
    return 0


def main() -> NoReturn:
    run(serve)


if __name__ == "__main__":
    main()
