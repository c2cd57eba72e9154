"""RunPod serverless entry point.

    python src/handler.py --test_input '{"input": {"audio_url": "...", "language": "auto"}}'
    python src/handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qwen_worker.config import load_settings  # noqa: E402
from qwen_worker.download import allow_loopback_for_local_testing  # noqa: E402
from qwen_worker.engine import load_engine  # noqa: E402
from qwen_worker.worker import Worker  # noqa: E402


def main() -> None:
    import runpod

    settings = load_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.download_allow_loopback:
        allow_loopback_for_local_testing()
    # Loaded once per worker process, before the first job; vLLM needs this under __main__.
    worker = Worker(settings, load_engine(settings))
    runpod.serverless.start({"handler": worker.handle})


if __name__ == "__main__":
    main()
