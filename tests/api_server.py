"""The real OpenAI-compatible server process, `python src/server.py`, on a loopback port with
tiny generated models; it records what /ping answered while the models loaded."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from worker_server import ROOT, free_port


class ApiServer:
    def __init__(self, env: dict[str, str], log_path: Path, timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.pings: list[int] = []  # /ping's statuses, from the first answer to the first 200
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "src" / "server.py"), "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                # The loading thread can hold the GIL for seconds on a small CPU host.
                status = requests.get(self.url + "/ping", timeout=30).status_code
            except requests.ConnectionError:
                time.sleep(0.1)
                continue
            self.pings.append(status)
            if status == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log()}")

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=5).json()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-8000:]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
