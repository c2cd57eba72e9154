"""RunPod serverless entry point (qwen_worker.api.queue).

    python src/handler.py --test_input '{"input": {"audio_url": "...", "language": "auto"}}'
    python src/handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
    python src/handler.py --self-test     # acceptance check of a built image on its GPU

Everything is imported inside `main`: vLLM's engine processes and the front end's are spawned,
and a spawned process imports this file again as `__mp_main__` (14 of them at start-up).
"""

from __future__ import annotations

from typing import NoReturn

# qwen_worker first: its package init prepares the environment torch and vLLM read at import.
from qwen_worker.startup import run


def main() -> NoReturn:
    from qwen_worker.api.queue import serve

    run(serve)


if __name__ == "__main__":
    main()
