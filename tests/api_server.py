"""The real OpenAI-compatible server process, `python src/server.py`, on a loopback port with
tiny generated models; it records what /ping answered while the models loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import requests

from worker_server import ROOT, LoggedProcess, free_port


class ApiServer(LoggedProcess):
    def __init__(self, env: dict[str, str], log_path: Path, timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pings: list[int] = []  # /ping's statuses, from the first answer to the first 200
        super().__init__([sys.executable, str(ROOT / "src" / "server.py"), "--host",
                          "127.0.0.1", "--port", str(self.port)], env, log_path)

        def ready() -> bool:
            # The loading thread can hold the GIL for seconds on a small CPU host.
            self.pings.append(requests.get(self.url + "/ping", timeout=30).status_code)
            return self.pings[-1] == 200

        self.wait_ready(ready, timeout, "server")

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=5).json()
