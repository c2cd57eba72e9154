"""OpenAI-compatible HTTP entry point: the same worker, engine and job path as src/handler.py
(qwen_worker.api.http; docs/openai-server.md).

    python src/server.py --host 0.0.0.0 --port 8000
"""

from __future__ import annotations

from typing import NoReturn

# qwen_worker first: its package init prepares the environment torch and vLLM read at import.
from qwen_worker.startup import run


def main(argv: list[str] | None = None) -> NoReturn:
    """Serve until SIGTERM (or a start-up failure); `run` closes the engines and ends every
    process the server started on the way out."""
    from qwen_worker.api.http import serve_http

    run(lambda: serve_http(argv))


if __name__ == "__main__":
    main()
