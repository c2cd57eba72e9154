"""One job: validate -> fetch -> transcribe -> output, every failure mapped to a code (`codes`).

Jobs run concurrently, each in a thread of its own (downloads and decodes overlap); their
engine calls share batches: in vLLM's running batch (GPU), or in the one `BatchScheduler`'s
gathered calls (transformers).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qwen_worker.base.config import Settings
from qwen_worker.base.errors import ErrorCode, WorkerError
from qwen_worker.base.lifecycle import (
    JOB_DIR_PREFIX,
    LIFETIME,
    JobCancelled,
    JobScope,
    Stopped,
    ensure_sigterm_handler,
    sweep_job_dirs,
)
from qwen_worker.base.types import Progress, Timings
from qwen_worker.engines.base import Engine
from qwen_worker.engines.scheduler import BatchScheduler
from qwen_worker.jobs.codes import code_for
from qwen_worker.jobs.output import build_output
from qwen_worker.jobs.request import parse_request
from qwen_worker.jobs.results import deliver
from qwen_worker.pipeline.download import INPUT_NAME, DownloadPolicy, decode_base64, fetch_url
from qwen_worker.pipeline.speakers import TurnSource
from qwen_worker.pipeline.transcribe import transcribe_file

log = logging.getLogger(__name__)

PROGRESS_POST_SECONDS = 5.0


class Worker:
    """Holds the loaded engine (behind a scheduler unless it batches itself); `handle_async`
    is RunPod's handler."""

    def __init__(self, settings: Settings, engine: Engine, diarizer: TurnSource | None = None,
                 *, repair_collapsed_times: bool = True):
        self.settings = settings
        self.engine = engine
        self.diarizer = diarizer  # None: built without speaker diarization
        # False: jobs keep collapsed word times unrepaired (benchmarks only, see transcribe_samples)
        self.repair_collapsed_times = repair_collapsed_times
        # vLLM batches the requests of all jobs itself, as they come (continuous batching);
        # the transformers models need one owner that gathers jobs into shared calls.
        self.scheduler = None if engine.batches_itself else BatchScheduler(
            engine, gather_seconds=settings.scheduler_gather_s,
            max_chunks=settings.scheduler_max_chunks)
        # One thread per job slot: asyncio's default pool has only cpu_count + 4 threads, which
        # would leave slots idle on small hosts.
        self._job_threads = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="job")
        self.policy = DownloadPolicy(max_bytes=settings.max_download_bytes,
                                     total_seconds=settings.download_timeout_s)
        Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
        sweep_job_dirs(Path(settings.work_dir))

    async def handle_async(self, job: dict[str, Any], upload_dir: Path | None = None,
                           whole: bool = False) -> dict[str, Any]:
        """The job runs in a thread; the event loop stays free to take jobs and stop signals.
        Cancelling the awaiting task stops the job's work (as RunPod's stop does)."""
        ensure_sigterm_handler()
        scope = JobScope(str(job.get("id", "")))
        context = contextvars.copy_context()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._job_threads, context.run, self.handle, job, scope, upload_dir, whole)
        except asyncio.CancelledError:  # RunPod stopped the job: stop its thread's work too
            scope.stop(JobCancelled)
            log.info("job %s stopped by RunPod", job.get("id"))
            raise

    def concurrency(self, current: int) -> int:
        # A constant: runpod 1.12 re-sizes only when no job is in flight.
        return self.settings.max_concurrency

    def new_upload_dir(self) -> Path:
        """A job directory for audio the caller writes itself (the HTTP server's upload, to
        `upload_dir / INPUT_NAME`); pass it to `handle` as upload_dir, which removes it."""
        return Path(tempfile.mkdtemp(prefix=JOB_DIR_PREFIX, dir=self.settings.work_dir))

    def handle(self, job: dict[str, Any], scope: JobScope | None = None,
               upload_dir: Path | None = None, whole: bool = False) -> dict[str, Any]:
        """Serve one job in this thread; returns its output or its error, never raises
        (except JobCancelled, which only a stopped job's own thread sees).

        upload_dir: a directory from `new_upload_dir` holding the job's audio. It is the
        caller's (trusted) argument, never part of the job's input: no input names a path.
        whole: the output as made, never uploaded or trimmed for RunPod's payload limit (the
        HTTP server answers in full).
        """
        started = time.perf_counter()
        scope = scope if scope is not None else JobScope(str(job.get("id", "")))
        job_dir: Path | None = upload_dir
        try:
            if job_dir is None:
                job_dir = Path(tempfile.mkdtemp(prefix=JOB_DIR_PREFIX, dir=self.settings.work_dir))
            with LIFETIME.job(scope, job_dir):
                output = self._run(job.get("input"), job_dir, started, self._progress(job),
                                   uploaded=upload_dir is not None)
                if whole:
                    return output
                # Too large for RunPod's payload limit: uploaded to the bucket, or trimmed.
                return deliver(output, self.settings, str(job.get("id", "")))
        except Stopped as stop:
            return self._stopped(job, type(stop))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a coded error
            if scope.reason is not None:  # the stop caused it: say so, not what it broke
                return self._stopped(job, scope.reason)
            err, note = code_for(exc)
            if note is None:
                log.info("job %s failed: %s", job.get("id"), err.code.value)
            else:
                log.error("job %s failed: %s (%s)", job.get("id"), err.code.value, note,
                          exc_info=exc)
            return err.to_output()
        finally:
            if job_dir is not None:
                shutil.rmtree(job_dir, ignore_errors=True)

    def _stopped(self, job: dict[str, Any], reason: type[Stopped]) -> dict[str, Any]:
        """SIGTERM: WORKER_SHUTDOWN. Stopped by RunPod: nobody waits for an answer."""
        if reason is JobCancelled:
            log.info("job %s: its work stopped", job.get("id"))
            raise JobCancelled(f"job {job.get('id')} was stopped")
        log.warning("job %s stopped: the worker is shutting down", job.get("id"))
        return WorkerError(ErrorCode.WORKER_SHUTDOWN, "the worker was stopped while the job "
                           "ran; retry the job").to_output()

    def _progress(self, job: dict[str, Any]) -> Progress | None:
        """Progress for RunPod's /status, posted from this job's thread and waited for.

        runpod's `progress_update` posts from a thread of its own, so on a fast job a late
        update could land after the job's result; `_thread_target` is that thread's body,
        waited for here up to PROGRESS_POST_SECONDS so a hung API cannot hold the job.
        """
        if not self.settings.progress_updates:
            return None
        from runpod.serverless.modules.rp_progress import _thread_target

        def post(payload: dict[str, Any]) -> None:
            try:
                _thread_target(job, payload)
            except Exception:  # noqa: BLE001 - progress is best effort, the job goes on
                log.warning("job %s: progress update failed", job.get("id"), exc_info=True)

        def send(stage: str, done: int, total: int) -> None:
            poster = threading.Thread(target=post, daemon=True, args=(
                {"stage": stage, "chunks_done": done, "chunks_total": total},))
            poster.start()
            poster.join(PROGRESS_POST_SECONDS)

        return send

    def _run(self, job_input: Any, job_dir: Path, started: float,
             progress: Progress | None, uploaded: bool = False) -> dict[str, Any]:
        s = self.settings
        request = parse_request(job_input, s.max_context_chars, uploaded=uploaded)
        if request.options.diarize and self.diarizer is None:  # say so before any download
            raise WorkerError(ErrorCode.DIARIZATION_UNAVAILABLE, "diarize was asked for, but "
                              "this worker was built without speaker diarization")
        timings = Timings()

        t0 = time.perf_counter()
        if progress is not None:
            progress("downloading", 0, 0)
        if uploaded:
            path = job_dir / INPUT_NAME
        elif request.audio_url is not None:
            path = fetch_url(request.audio_url, job_dir, self.policy)
        else:
            path = decode_base64(request.audio_base64, job_dir, s.max_base64_bytes)
        download_s = time.perf_counter() - t0

        engine = self.engine if self.scheduler is None else self.scheduler.engine_for_job()
        transcript = transcribe_file(path, request.options, engine,
                                     max_audio_seconds=s.max_audio_seconds,
                                     decode_workers=s.decode_workers, timings=timings,
                                     progress=progress, diarizer=self.diarizer,
                                     repair_collapsed_times=self.repair_collapsed_times)
        return build_output(transcript, self.engine, timings, download_s=download_s,
                            total_s=time.perf_counter() - started, formats=request.formats,
                            diarized=request.options.diarize)
