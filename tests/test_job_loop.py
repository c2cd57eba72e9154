"""The worker under runpod's production job loop (tests/job_api.py stands in for RunPod's job
API on loopback): the warm-up fitness check, SIGTERM during a job, and the start-up sweep."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import time
from pathlib import Path

import pytest

import media
from job_api import JobApi, JobLoopWorker
from models import ENGLISH
from worker_server import worker_env


@pytest.fixture
def api():
    a = JobApi()
    yield a
    a.close()


def _wav_b64(tmp_path: Path) -> str:
    return base64.b64encode(media.make_audio(tmp_path / "a.wav", 4.0).read_bytes()).decode()


def _wait_exit(worker: JobLoopWorker, timeout: float) -> int:
    try:
        return worker.proc.wait(timeout=timeout)
    except Exception:
        raise AssertionError(f"worker still running after {timeout} s:\n{worker.log()}") from None


def test_warm_up_passes_then_jobs_run_and_stale_job_dirs_are_swept(api, model_dirs, tmp_path):
    work = tmp_path / "work"
    (work / "job-left-by-sigkill").mkdir(parents=True)
    (work / "job-left-by-sigkill" / "input").write_bytes(b"x" * 1000)
    (work / "keep-me").mkdir()  # not a job directory: left alone
    env = worker_env(model_dirs["english"], model_dirs["aligner"], work)
    worker = JobLoopWorker(api, env, tmp_path / "worker.log")
    try:
        api.submit("job-1", {"audio_base64": _wav_b64(tmp_path)})
        (post,) = api.wait_for(1, 180).values()
        assert post["output"]["text"] == ENGLISH, post
        log = worker.log()
        assert "Running 1 fitness check(s)" in log and "fitness check" in log.lower()
        assert sorted(p.name for p in work.iterdir()) == ["keep-me"]
        worker.proc.send_signal(signal.SIGTERM)
        assert _wait_exit(worker, 10) == 0
    finally:
        worker.close()


def test_a_model_that_cannot_transcribe_stops_the_worker_before_it_takes_a_job(
        api, model_dirs, tmp_path):
    # Loads fine, fails on the first audio (the processor's windows assume n_window 50).
    broken = tmp_path / "broken-asr"
    shutil.copytree(model_dirs["english"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["thinker_config"]["audio_config"]["n_window"] = 100
    (broken / "config.json").write_text(json.dumps(config))
    env = worker_env(broken, model_dirs["aligner"], tmp_path / "work")
    api.submit("never-taken", {"audio_base64": _wav_b64(tmp_path)})
    worker = JobLoopWorker(api, env, tmp_path / "worker.log")
    try:
        assert _wait_exit(worker, 180) == 1
        assert api.takes == [] and len(api.queue) == 1
        assert "transcribe_warm_up_clip" in worker.log()
    finally:
        worker.close()


def test_sigterm_stops_a_stalled_download_and_the_worker_exits(api, model_dirs, tmp_path, host):
    mp3 = media.make_audio(tmp_path / "a.mp3", 8.0).read_bytes()
    url = host.stall("/loop/stall.mp3", mp3, after=4096, seconds=60)
    work = tmp_path / "work"
    env = worker_env(model_dirs["english"], model_dirs["aligner"], work,
                     DOWNLOAD_ALLOW_LOOPBACK="true")
    worker = JobLoopWorker(api, env, tmp_path / "worker.log")
    try:
        api.submit("stalled", {"audio_url": url})
        end = time.monotonic() + 180
        while not list(work.glob("job-*/input")) and time.monotonic() < end:
            time.sleep(0.1)
        assert list(work.glob("job-*/input")), worker.log()
        time.sleep(0.5)  # the download is now blocked reading the silent body
        sent = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        # The process ends by itself, before the 15 s read timeout (and its retries) could
        # have; its last seconds are Python's own teardown of torch and the rest (2-10 s of
        # one core on this 2-core machine, more under load), after the job has ended.
        _wait_exit(worker, 15)
        (post,) = [p for p in api.posts if p.job_id == "stalled" and
                   p.body.get("status") != "IN_PROGRESS"]
        # The job was stopped at once: its result was posted right after the signal.
        assert post.at - sent < 3, f"result posted {post.at - sent:.1f} s after SIGTERM"
        assert post.body["error"].startswith("WORKER_SHUTDOWN: "), post.body
        assert list(work.iterdir()) == []
    finally:
        worker.close()


def test_concurrent_jobs_under_runpods_loop_share_calls_and_post_exactly_what_they_should(
        api, model_dirs, tmp_path, host):
    """Four jobs at once (MAX_CONCURRENCY=4): three valid ones of different lengths and one
    404. Each result is posted once, to its own job, with its own content; the valid jobs
    post progress first; their chunks met in shared engine calls."""
    work = tmp_path / "work"
    env = worker_env(model_dirs["english"], model_dirs["aligner"], work,
                     DOWNLOAD_ALLOW_LOOPBACK="true", MAX_CONCURRENCY="4",
                     SCHEDULER_GATHER_MS="500")
    lengths = {"a": 4.0, "b": 7.0, "c": 5.0}
    for name, seconds in lengths.items():
        api.submit(name, {"audio_url": host.file(f"/cc/{name}.wav", media.make_audio(
            tmp_path / f"{name}.wav", seconds, rate=16000).read_bytes(), "audio/wav")})
    api.submit("missing", {"audio_url": host.status("/cc/missing", 404)})
    worker = JobLoopWorker(api, env, tmp_path / "worker.log")
    try:
        results = api.wait_for(4, 180)
        time.sleep(1.0)  # anything posted late would arrive now
        finals = [p for p in api.posts if p.body.get("status") != "IN_PROGRESS"]
        assert sorted(p.job_id for p in finals) == ["a", "b", "c", "missing"]  # once each
        assert all(p.request_id == p.job_id for p in finals), [
            (p.job_id, p.request_id) for p in finals]
        for name, seconds in lengths.items():
            output = results[name]["output"]
            assert output["text"] == ENGLISH and output["duration"] == pytest.approx(seconds, 0.01)
            stages = [b["output"]["stage"] for b in api.progress(name)]
            assert stages[:2] == ["downloading", "decoding"] and "aligning" in stages
            last_progress = max(p.at for p in api.posts
                                if p.job_id == name and p.body.get("status") == "IN_PROGRESS")
            final = next(p.at for p in finals if p.job_id == name)
            assert last_progress <= final  # progress never lands after the result
        assert results["missing"]["error"].startswith("DOWNLOAD_FAILED: ")
        assert api.progress("missing") == [{"status": "IN_PROGRESS", "output": {
            "stage": "downloading", "chunks_done": 0, "chunks_total": 0}}]
        # Jobs were taken together, and their chunks shared engine calls.
        assert max(n for _, n in api.takes) >= 2
        calls = [ln for ln in worker.log().splitlines() if "engine asr call" in ln]
        assert len(calls) < 3 and any(" of 1 jobs" not in ln for ln in calls), calls
        assert list(work.iterdir()) == []
    finally:
        worker.close()


def test_a_job_stopped_by_runpod_is_dropped_and_the_worker_serves_the_next(
        api, model_dirs, tmp_path, host):
    mp3 = media.make_audio(tmp_path / "a.mp3", 8.0).read_bytes()
    work = tmp_path / "work"
    env = worker_env(model_dirs["english"], model_dirs["aligner"], work,
                     DOWNLOAD_ALLOW_LOOPBACK="true", MAX_CONCURRENCY="2")
    worker = JobLoopWorker(api, env, tmp_path / "worker.log")
    try:
        api.submit("stalled", {"audio_url": host.stall("/st/x.mp3", mp3, after=4096, seconds=60)})
        end = time.monotonic() + 180
        while not list(work.glob("job-*/input")) and time.monotonic() < end:
            time.sleep(0.1)
        with api.lock:
            api.stops.append("stalled")  # RunPod's stop channel: cancelled by its caller
        api.submit("next", {"audio_base64": _wav_b64(tmp_path)})
        results = api.wait_for(1, 120)
        assert results["next"]["output"]["text"] == ENGLISH
        end = time.monotonic() + 10
        while list(work.iterdir()) and time.monotonic() < end:
            time.sleep(0.1)
        assert list(work.iterdir()) == []  # the stopped job's directory went with it
        assert "stalled" not in api.results()  # runpod posts nothing for a stopped job
        assert worker.children() == []
    finally:
        worker.close()
