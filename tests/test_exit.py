"""Nothing outlives the worker, on every way out, and start-up explains its time.

The worker runs as users run it (`python src/handler.py` under runpod's production job loop
against tests/job_api.py; `--test_input`; `python src/server.py`) on the GPU path: vLLM's
stand-in (tests/stand_ins/vllm), whose engines each start an engine-core process of their own
as the real ones do (and, like them, do not notice a parent that died), beside the front end's
spawned processes. tests/reaper.py runs the worker as a child subreaper: whatever the worker
started and left running is handed to it when the worker exits, and reported.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import media
from job_api import JobApi, JobLoopWorker
from reaper import running
from worker_server import NETGUARD, ROOT, free_port, worker_env

STAND_INS = Path(__file__).resolve().parent / "stand_ins"
REAPER = Path(__file__).resolve().parent / "reaper.py"
BACKSTOP = "after SIGTERM: exiting now"


def gpu_path_env(model_dirs, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The worker on its vLLM path, with the stand-in in place of vLLM."""
    env = worker_env(model_dirs["english"], model_dirs["aligner"], tmp_path / "work",
                     ASR_BACKEND="vllm", VLLM_FRONTEND_PROCESSES="2",
                     STAND_IN_CORE_PIDS=str(_pids_dir(tmp_path)), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(STAND_INS), str(NETGUARD)])
    return env


def _pids_dir(tmp_path: Path) -> Path:
    d = tmp_path / "core-pids"
    d.mkdir(exist_ok=True)
    return d


def core_pids(tmp_path: Path) -> list[int]:
    return sorted(int(p.name) for p in _pids_dir(tmp_path).iterdir())


def wait_until(condition, timeout: float, what: str, log=lambda: "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not after {timeout} s\n{log()}")
        time.sleep(0.05)


def left(path: Path) -> list[dict]:
    return json.loads(path.read_text())


@pytest.fixture
def api():
    a = JobApi()
    yield a
    a.close()


def _job(tmp_path: Path, seconds: float = 3.0) -> dict:
    wav = media.make_audio(tmp_path / "a.wav", seconds).read_bytes()
    return {"audio_base64": base64.b64encode(wav).decode()}


def _loop_worker(api: JobApi, env: dict[str, str], tmp_path: Path) -> tuple[JobLoopWorker, Path]:
    left_path = tmp_path / "left.json"
    worker = JobLoopWorker(api, env, tmp_path / "worker.log",
                           wrapper=(sys.executable, str(REAPER), str(left_path), "--"))
    return worker, left_path


def _exit(worker: JobLoopWorker, timeout: float = 60) -> int:
    try:
        return worker.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker still running after {timeout} s:\n{worker.log()}") from None


def test_sigterm_on_an_idle_worker_exits_0_and_ends_every_process_it_started(
        api, model_dirs, tmp_path):
    worker, left_path = _loop_worker(api, gpu_path_env(model_dirs, tmp_path), tmp_path)
    try:
        api.submit("job-1", _job(tmp_path))
        (post,) = api.wait_for(1, 300).values()
        assert post["output"]["text"], post
        cores = core_pids(tmp_path)
        assert len(cores) == 2
        # Start-up explained its time: a line per phase, then the whole.
        log = worker.log()
        for phase in ("settings", "engine configs", "imports", "front end", "asr engine",
                      "aligner engine", "warm-up", "fitness check"):
            assert re.search(rf"start-up phase: {phase} [\d.]+ s \([\d.]+ -> [\d.]+ s after "
                             "process start", log), (phase, log)
        assert re.search(r"start-up: ready for jobs [\d.]+ s after process start \(settings ",
                         log), log
        assert "KV cache fixed: ASR " in log  # so the two engines started together
        worker.proc.send_signal(signal.SIGTERM)
        assert _exit(worker) == 0
        assert BACKSTOP not in worker.log()  # it ended by itself, not by the 8 s backstop
        assert left(left_path) == []
        assert not any(running(pid) for pid in cores)
    finally:
        worker.close()


def test_sigterm_during_start_up_ends_the_engine_cores_and_the_front_end(
        api, model_dirs, tmp_path):
    gate = tmp_path / "gate"  # never created: the engine cores stay in their start
    env = gpu_path_env(model_dirs, tmp_path, STAND_IN_CORE_GATE=str(gate))
    worker, left_path = _loop_worker(api, env, tmp_path)
    try:
        # Both engine cores are starting at once (the KV caches are fixed beforehand).
        wait_until(lambda: len(core_pids(tmp_path)) == 2, 240, "two engine cores starting",
                   worker.log)
        cores = core_pids(tmp_path)
        worker.proc.send_signal(signal.SIGTERM)
        assert _exit(worker) == 0
        assert "SIGTERM during start-up" in worker.log()
        assert left(left_path) == []
        assert not any(running(pid) for pid in cores)
        assert api.takes == []
    finally:
        worker.close()


def test_a_start_up_failure_exits_1_and_leaves_nothing(api, model_dirs, tmp_path):
    # The aligner's engine core fails its start while the ASR's starts fine.
    env = gpu_path_env(model_dirs, tmp_path, STAND_IN_CORE_FAIL="pooling")
    worker, left_path = _loop_worker(api, env, tmp_path)
    try:
        assert _exit(worker, 240) == 1
        log = worker.log()
        assert "start-up failed" in log and "Engine core initialization failed" in log
        assert left(left_path) == []
        assert core_pids(tmp_path) and not any(running(p) for p in core_pids(tmp_path))
    finally:
        worker.close()


def test_a_dead_engine_core_fails_jobs_with_refresh_and_the_worker_ends_everything(
        api, model_dirs, tmp_path):
    worker, left_path = _loop_worker(api, gpu_path_env(model_dirs, tmp_path), tmp_path)
    try:
        api.submit("job-1", _job(tmp_path))
        api.wait_for(1, 300)
        asr_core, aligner_core = core_pids(tmp_path)  # pid order, not start order: either
        os.kill(asr_core, signal.SIGKILL)
        api.submit("job-2", _job(tmp_path))
        done = api.wait_for(2, 60)
        failed = done["job-2"]
        assert failed["output"]["error_code"] == "ENGINE_ERROR", failed
        assert failed.get("stopPod") is True, failed  # runpod's form of refresh_worker
        # The worker cannot serve again: it ends by itself, with the other engine and the
        # front end, instead of holding the GPU's memory until someone stops it.
        assert _exit(worker) == 0
        assert left(left_path) == []
        assert not running(aligner_core)
    finally:
        worker.close()


def test_test_input_exits_0_and_leaves_nothing(model_dirs, tmp_path):
    left_path = tmp_path / "left.json"
    job = {"input": _job(tmp_path, 1.0)}  # on the command line: one argument, under 128 KiB
    proc = subprocess.run([sys.executable, str(REAPER), str(left_path), "--", sys.executable,
                           str(ROOT / "src" / "handler.py"), "--test_input", json.dumps(job)],
                          env=gpu_path_env(model_dirs, tmp_path), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Job result" in proc.stdout + proc.stderr
    assert left(left_path) == []
    assert len(core_pids(tmp_path)) == 2


def test_the_server_shuts_down_on_sigterm_and_leaves_nothing(model_dirs, tmp_path):
    left_path = tmp_path / "left.json"
    port = free_port()
    with open(tmp_path / "server.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, str(REAPER), str(left_path), "--",
                                 sys.executable, str(ROOT / "src" / "server.py"),
                                 "--port", str(port)],
                                env=gpu_path_env(model_dirs, tmp_path), cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            def ready() -> bool:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                try:
                    return requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_until(ready, 240, "/ping 200", lambda: (tmp_path / "server.log").read_text())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            assert left(left_path) == []
            assert "start-up: ready for requests" in (tmp_path / "server.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
