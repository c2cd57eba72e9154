"""The real worker process: `python src/handler.py --rp_serve_api` (runpod's local API server)
on a loopback port, loaded with tiny generated models, spoken to over HTTP like RunPod would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).resolve().parent / "netguard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(asr: Path, aligner: Path, work_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and k != "RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS"}
    env.update({
        "ASR_MODEL": str(asr), "ALIGNER_MODEL": str(aligner), "ASR_BACKEND": "transformers",
        "ASR_DEVICE": "cpu", "ASR_DTYPE": "float32", "MAX_NEW_TOKENS": "256",
        "WORK_DIR": str(work_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "RUNPOD_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
        # Every worker process the tests start may talk to loopback only (netguard).
        "PYTHONPATH": str(NETGUARD),
    })
    env.update(extra)
    return env


class LoggedProcess:
    """A process the tests start, its output in `log_path`: log() is its tail; close() ends it
    (SIGTERM, then SIGKILL after `grace` s; at once with grace=0)."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path,
                 grace: float = 15.0):
        self.log_path = log_path
        self.grace = grace
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, probe, timeout: float, what: str) -> None:
        """Until probe() is true (a connection refused counts as false); raises if the process
        exits or `timeout` s pass first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited early:\n{self.log()}")
            try:
                if probe():
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{what} not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-8000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.grace:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=self.grace)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            else:
                self.proc.kill()
            self.proc.wait()
        self._log.close()


class WorkerServer(LoggedProcess):
    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, str(ROOT / "src" / "handler.py"), "--rp_serve_api",
             "--rp_api_host", "127.0.0.1", "--rp_api_port", str(self.port)], env, log_path)
        self.wait_ready(lambda: requests.get(self.url + "/docs", timeout=2).status_code == 200,
                        300.0, "worker")

    def runsync(self, job_input: dict, timeout: float = 180.0) -> dict:
        r = requests.post(self.url + "/runsync", json={"input": job_input}, timeout=timeout)
        assert r.status_code == 200, r.text
        return r.json()


def run_test_input(env: dict[str, str], job: dict, timeout: float = 180.0,
                   script: Path = ROOT / "src" / "handler.py") -> subprocess.CompletedProcess:
    """`python <script> --test_input '<json>'`: runpod's one-shot local mode (the script is
    src/handler.py, or .runpod/handler.py, the Hub's entry point)."""
    return subprocess.run(
        [sys.executable, str(script), "--test_input", json.dumps(job)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
