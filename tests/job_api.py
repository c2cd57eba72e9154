"""A loopback stand-in of RunPod's job API, and the worker run as RunPod runs it against it.

runpod 1.12's production loop (fetch jobs, run them, post results and progress) starts when
RUNPOD_WEBHOOK_GET_JOB is set and no --rp_serve_api is given. It speaks to:

    GET  {base}/v2/job-take/{worker}?gpu=test&job_in_progress=0|1        one job, or 204
    GET  {base}/v2/job-take-batch/{worker}?gpu=test&batch_size=N&...     a list of jobs
    GET  {base}/v2/job-stop/{worker}?gpu=test                            {"jobsToStop": [...]}
    POST {base}/v2/job-done/{worker}/{job}?gpu=test&isStream=false       result or progress

This server records every call, so tests assert exactly what the SDK posted back.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from http_server import LoopbackServer, QuietHandler
from worker_server import ROOT, LoggedProcess

WORKER_ID = "worker-test"
_IDLE_POLL_SECONDS = 0.3  # how long an empty job-take is held open (the real one long-polls)


@dataclass
class Post:
    job_id: str
    body: dict
    request_id: str | None
    is_stream: str
    at: float


@dataclass(eq=False)
class JobApi(LoopbackServer):
    """The job queue and the record of what the worker fetched and posted."""

    queue: deque = field(default_factory=deque)
    takes: list[tuple[float, int]] = field(default_factory=list)  # (time, jobs handed out)
    posts: list[Post] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        api = self

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if "/job-take" in url.path:
                    want = int(query.get("batch_size", ["1"])[0])
                    jobs = api._take(want)
                    if not jobs:
                        return self.send_json(204)
                    body = jobs if "/job-take-batch/" in url.path else jobs[0]
                    return self.send_json(200, body)
                if "/job-stop/" in url.path:
                    time.sleep(_IDLE_POLL_SECONDS)
                    with api.lock:
                        ids, api.stops = api.stops, []
                    return self.send_json(200, {"jobsToStop": ids}) if ids else self.send_json(204)
                return self.send_json(200, {})

            def do_POST(self):  # noqa: N802
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if "/job-done/" in url.path:
                    query = parse_qs(url.query)
                    with api.lock:
                        api.posts.append(Post(url.path.rsplit("/", 1)[1], json.loads(raw),
                                              self.headers.get("X-Request-ID"),
                                              query.get("isStream", [""])[0], time.monotonic()))
                self.send_json(200, {})

        super().__init__(Handler)
        self.base = self.url()

    def _take(self, want: int) -> list[dict]:
        end = time.monotonic() + _IDLE_POLL_SECONDS
        while True:
            with self.lock:
                if self.queue:
                    jobs = [self.queue.popleft() for _ in range(min(want, len(self.queue)))]
                    self.takes.append((time.monotonic(), len(jobs)))
                    return jobs
            if time.monotonic() >= end:
                return []
            time.sleep(0.02)

    def submit(self, job_id: str, job_input: dict) -> None:
        with self.lock:
            self.queue.append({"id": job_id, "input": job_input})

    def results(self) -> dict[str, dict]:
        """Final posts (not progress) by job id."""
        with self.lock:
            return {p.job_id: p.body for p in self.posts
                    if p.body.get("status") != "IN_PROGRESS"}

    def progress(self, job_id: str) -> list[dict]:
        with self.lock:
            return [p.body for p in self.posts
                    if p.job_id == job_id and p.body.get("status") == "IN_PROGRESS"]

    def wait_for(self, n: int, timeout: float) -> dict[str, dict]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            done = self.results()
            if len(done) >= n:
                return done
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.results())} of {n} results after {timeout} s")

    def env(self) -> dict[str, str]:
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.base}/v2/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.base}/v2/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
            "RUNPOD_POD_ID": WORKER_ID,
            # The SDK's start-up system checks connect to 8.8.8.8: never from a test.
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        }


class JobLoopWorker(LoggedProcess):
    """`python src/handler.py` with no flags: runpod's production job loop against `api`."""

    def __init__(self, api: JobApi, env: dict[str, str], log_path: Path,
                 script: Path = ROOT / "src" / "handler.py", wrapper: tuple[str, ...] = ()):
        """wrapper: a command that ends by running its arguments (e.g. a namespace set-up)."""
        super().__init__([*wrapper, sys.executable, str(script)], {**env, **api.env()},
                         log_path, grace=0)  # close() kills it: the tests that end it wait

    def children(self) -> list[int]:
        """Live child processes of the worker (ffmpeg, ...)."""
        kids = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            kids += [int(p) for p in task.read_text().split()]
        return kids
