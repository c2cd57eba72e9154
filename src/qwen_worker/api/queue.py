"""The RunPod queue handler (entry point: src/handler.py): runpod's job loop takes jobs from the
endpoint's queue and hands them to the worker, up to MAX_CONCURRENCY at once.

    python src/handler.py --test_input '{"input": {"audio_url": "...", "language": "auto"}}'
    python src/handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
    python src/handler.py --self-test     # acceptance check of a built image on its GPU
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from qwen_worker.base.clock import CLOCK
from qwen_worker.startup import end_everything, start

log = logging.getLogger("handler")


def serve() -> int | None:
    if "--self-test" in sys.argv[1:]:
        from qwen_worker.selftest import run_self_test

        settings, engine, _ = start()
        return run_self_test(settings, engine)

    import runpod

    from qwen_worker.jobs.worker import Worker
    from qwen_worker.selftest import warm_up

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
