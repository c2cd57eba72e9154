"""A loopback stand-in of RunPod's client-side job API, the one `runpod.Endpoint` speaks to:

    POST {base}/v2/{endpoint}/run            {"input": ...} -> {"id", "status": "IN_QUEUE"}
    GET  {base}/v2/{endpoint}/status/{job}   IN_QUEUE | IN_PROGRESS (+ progress in "output")
                                             | COMPLETED (+ "output") | FAILED (+ "error")
    POST {base}/v2/{endpoint}/cancel/{job}   -> {"id", "status": "CANCELLED"}

Jobs are handed to a real worker through tests/job_api.py (RunPod's worker-side API), so what
a client sees is what the worker posted. Each /status call reveals the next thing the worker
posted for the job (every progress update, then the result), so a client sees every update
however fast the tiny models are; `hold` keeps jobs queued (nobody takes them).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field

from http_server import LoopbackServer, QuietHandler
from job_api import JobApi

API_KEY = "test-api-key"
ENDPOINT_ID = "ep-test"


@dataclass(eq=False)
class ClientApi(LoopbackServer):
    worker_api: JobApi | None = None  # None: jobs are only recorded (with hold)
    hold: bool = False
    runs: list[dict] = field(default_factory=list)  # the /run bodies
    polls: dict[str, int] = field(default_factory=dict)  # job -> /status calls
    cancelled: list[str] = field(default_factory=list)
    unauthorized: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        api = self

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802
                m = re.fullmatch(rf"/v2/{ENDPOINT_ID}/status/([\w-]+)", self.path)
                if not self._authorized():
                    return
                if m is None:
                    return self.send_json(404, {"error": "not found"})
                self.send_json(200, api._status(m.group(1)))

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", "0") or 0)
                raw = self.rfile.read(length)
                if not self._authorized():
                    return
                if self.path == f"/v2/{ENDPOINT_ID}/run":
                    return self.send_json(200, api._run(json.loads(raw)))
                m = re.fullmatch(rf"/v2/{ENDPOINT_ID}/cancel/([\w-]+)", self.path)
                if m is None:
                    return self.send_json(404, {"error": "not found"})
                self.send_json(200, api._cancel(m.group(1)))

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {API_KEY}":
                    return True
                with api.lock:
                    api.unauthorized += 1
                self.send_json(401, {"error": "Unauthorized"})
                return False

        self._seen: dict[str, int] = {}  # job -> posts revealed so far
        super().__init__(Handler)
        self.base = self.url("/v2")

    def _run(self, body: dict) -> dict:
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        with self.lock:
            self.runs.append(body)
        if not self.hold and self.worker_api is not None:
            self.worker_api.submit(job_id, body["input"])
        return {"id": job_id, "status": "IN_QUEUE"}

    def _status(self, job_id: str) -> dict:
        with self.lock:
            self.polls[job_id] = self.polls.get(job_id, 0) + 1
            if job_id in self.cancelled:
                return {"id": job_id, "status": "CANCELLED"}
        worker = self.worker_api
        if self.hold or worker is None:
            return {"id": job_id, "status": "IN_QUEUE"}
        with worker.lock:
            queued = any(j["id"] == job_id for j in worker.queue)
            posts = [p.body for p in worker.posts if p.job_id == job_id]
        if queued or not posts:
            return {"id": job_id, "status": "IN_QUEUE" if queued else "IN_PROGRESS"}
        shown = min(self._seen.get(job_id, 0) + 1, len(posts))
        self._seen[job_id] = shown
        body = posts[shown - 1]
        if body.get("status") == "IN_PROGRESS":
            return {"id": job_id, "status": "IN_PROGRESS", "output": body.get("output")}
        if "error" in body:
            return {"id": job_id, "status": "FAILED", "error": body["error"]}
        return {"id": job_id, "status": "COMPLETED", "output": body.get("output")}

    def _cancel(self, job_id: str) -> dict:
        with self.lock:
            self.cancelled.append(job_id)
        if self.worker_api is not None:
            with self.worker_api.lock:  # RunPod tells the worker to stop the job
                self.worker_api.stops.append(job_id)
        return {"id": job_id, "status": "CANCELLED"}
