"""`python -m qwen_worker.client` as a user runs it (a subprocess, loopback only), through
runpod's own Endpoint client against tests/runpod_api.py, a stand-in of RunPod's client-side
job API whose jobs a real worker runs (runpod's job loop, tiny models, real progress posts,
results over the limit uploaded to moto's S3 server on loopback); and against the local
server runpod's SDK serves (`--rp_serve_api`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import srt

import media
from job_api import JobApi, JobLoopWorker
from models import ENGLISH, ENGLISH_WORDS
from runpod_api import API_KEY, ENDPOINT_ID, ClientApi
from s3_server import S3Server, isolate_boto3
from worker_server import NETGUARD, ROOT, worker_env

# The 4 s clip's result (~1.1 kB) stays inline; the 120 s one (~3.4 kB) is uploaded.
RESULT_MAX_BYTES = "2500"


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    server.create_bucket("client-results")
    yield server
    server.close()


@pytest.fixture(scope="module")
def worker_api():
    api = JobApi()
    yield api
    api.close()


@pytest.fixture(scope="module")
def worker(worker_api, model_dirs, s3, tmp_path_factory):
    env = worker_env(model_dirs["english"], model_dirs["aligner"],
                     tmp_path_factory.mktemp("client-jobs"), DOWNLOAD_ALLOW_LOOPBACK="true",
                     RESULT_MAX_BYTES=RESULT_MAX_BYTES, **s3.env("client-results"))
    isolate_boto3(env)
    w = JobLoopWorker(worker_api, env, tmp_path_factory.mktemp("log") / "worker.log")
    yield w
    w.close()


@pytest.fixture(scope="module")
def api(worker_api, worker):
    a = ClientApi(worker_api)
    yield a
    a.close()


def _client_env(api: ClientApi | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"PYTHONPATH": f"{NETGUARD}{os.pathsep}{ROOT / 'src'}",
                "RUNPOD_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"})
    if api is not None:
        env["RUNPOD_ENDPOINT_BASE_URL"] = api.base
    env.update(extra)
    return env


def _client(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen_worker.client", *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def _posted(worker_api: JobApi, api: ClientApi) -> dict:
    """What the worker posted as the result of the client's last job."""
    job_id = list(api.polls)[-1]
    return worker_api.results()[job_id]["output"]


def test_a_local_file_is_transcribed_with_progress_and_written_beside_it(
        api, worker_api, worker, tmp_path):
    audio = media.make_audio(tmp_path / "talk.wav", 4.0)
    run = _client([str(audio), "--endpoint", ENDPOINT_ID, "--poll", "0.05"],
                  _client_env(api), tmp_path)
    assert run.returncode == 0, run.stderr + worker.log()

    written = [Path(p) for p in run.stdout.split()]
    assert sorted(p.name for p in written) == ["talk.json", "talk.srt", "talk.txt", "talk.vtt"]
    assert all(p.parent == tmp_path for p in written)
    assert (tmp_path / "talk.txt").read_text() == ENGLISH + "\n"
    result = json.loads((tmp_path / "talk.json").read_text())
    posted = _posted(worker_api, api)
    # Inline: the worker's own result (with the bucket, its SRT and VTT are also files, but the
    # result itself fits, so there is no transcript.json to fetch).
    assert "json" not in posted.get("files", {}) and result == posted
    assert [w["word"] for w in result["words"]] == ENGLISH_WORDS
    cues = list(srt.parse((tmp_path / "talk.srt").read_text()))
    assert " ".join(c.content.replace("\n", " ") for c in cues) == ENGLISH
    assert (tmp_path / "talk.vtt").read_text().startswith("WEBVTT")
    assert "audio_base64" in api.runs[-1]["input"]

    progress = run.stderr.splitlines()
    assert any(line.startswith("transcribing") and "1/1 chunks" in line for line in progress)
    assert any(line.startswith("aligning") and "[####" in line for line in progress)
    assert progress.index(next(p for p in progress if p.startswith("decoding"))) < \
        progress.index(next(p for p in progress if p.startswith("transcribing")))


def test_a_result_uploaded_to_the_bucket_is_downloaded_whole(api, worker_api, worker, tmp_path):
    audio = media.make_audio(tmp_path / "long talk.ogg", 120.0)
    out = tmp_path / "subs"
    run = _client([str(audio), "--endpoint", ENDPOINT_ID, "--poll", "0.05", "--out", str(out),
                   "--chunk-seconds", "30"], _client_env(api), tmp_path)
    assert run.returncode == 0, run.stderr + worker.log()

    summary = _posted(worker_api, api)
    assert set(summary["files"]) == {"json", "srt", "vtt"} and "words" not in summary
    result = json.loads((out / "long_talk.json").read_text())
    assert len(result["words"]) == 24 and len(result["chunks"]) == 4
    assert result["text"] == summary["text"] == " ".join([ENGLISH] * 4)
    # The SRT the client wrote is the one the worker uploaded as its own file.
    assert (out / "long_talk.srt").read_text() == \
        requests.get(summary["files"]["srt"]["url"], timeout=30).text
    assert "4/4 chunks" in run.stderr


def test_a_url_is_passed_on_and_named_after_its_file(api, worker, host, tmp_path):
    raw = media.make_audio(tmp_path / "src.mp3", 4.0).read_bytes()
    url = host.file("/shows/Episode%2012.mp3", raw)
    run = _client([url, "--endpoint", ENDPOINT_ID, "--poll", "0.05", "--language", "en"],
                  _client_env(api), tmp_path)
    assert run.returncode == 0, run.stderr + worker.log()
    assert api.runs[-1]["input"]["audio_url"] == url
    assert api.runs[-1]["input"]["language"] == "en"
    assert (tmp_path / "Episode_12.txt").read_text() == ENGLISH + "\n"


def test_a_failed_job_exits_1_with_its_error_code(api, worker, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("these are notes, not audio\n" * 50)
    run = _client([str(bad), "--endpoint", ENDPOINT_ID, "--poll", "0.05"], _client_env(api),
                  tmp_path)
    assert run.returncode == 1
    assert "job failed: AUDIO_UNREADABLE" in run.stderr
    assert not (tmp_path / "notes.txt").exists()


def test_diarize_asks_for_speakers_and_a_worker_without_them_says_so(api, worker, host,
                                                                       tmp_path):
    """--diarize and --speakers reach the job's input; the test worker was built without
    diarization, so the job fails with that code and nothing is written."""
    url = host.file("/talk.wav", media.make_audio(tmp_path / "talk.wav", 3.0).read_bytes(),
                    "audio/wav")
    run = _client([url, "--endpoint", ENDPOINT_ID, "--poll", "0.05", "--diarize",
                   "--speakers", "2", "--out", str(tmp_path / "out")], _client_env(api), tmp_path)
    assert api.runs[-1]["input"]["diarize"] is True
    assert api.runs[-1]["input"]["num_speakers"] == 2
    assert run.returncode == 1
    assert "job failed: DIARIZATION_UNAVAILABLE" in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_file_too_large_to_go_inline_is_refused_with_how_to_pass_a_url(tmp_path):
    api = ClientApi(hold=True)
    try:
        big = tmp_path / "concert.flac"
        with open(big, "wb") as f:
            f.truncate(9_000_000)  # RunPod's 10 MB /run cap holds 7.5 MB of audio as base64
        run = _client([str(big), "--endpoint", ENDPOINT_ID], _client_env(api), tmp_path)
        assert run.returncode == 2
        assert "9.0 MB" in run.stderr and "7.5 MB" in run.stderr
        assert "pass the URL" in run.stderr and f"--endpoint {ENDPOINT_ID}" in run.stderr
        assert api.runs == []  # nothing was sent
    finally:
        api.close()


def test_ctrl_c_cancels_the_job_on_the_endpoint(tmp_path):
    api = ClientApi(hold=True)  # the job stays queued until the client gives up on it
    proc = None  # started with SIGINT's default action, as from a terminal (tests/conftest.py)
    try:
        audio = media.make_audio(tmp_path / "a.wav", 2.0)
        proc = subprocess.Popen(
            [sys.executable, "-m", "qwen_worker.client", str(audio), "--endpoint", ENDPOINT_ID,
             "--poll", "0.05"], env=_client_env(api), cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not api.polls:  # wait until the job exists and is being watched
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        (job_id,) = api.polls
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert api.cancelled == [job_id]
        assert f"cancelling job {job_id}" in stderr and stdout == ""
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        api.close()


def test_a_missing_api_key_is_said_plainly(tmp_path):
    env = _client_env(None)
    env.pop("RUNPOD_API_KEY")
    run = _client(["x.wav", "--endpoint", ENDPOINT_ID], env, tmp_path)
    assert run.returncode == 2 and "set RUNPOD_API_KEY" in run.stderr


def test_a_wrong_api_key_is_refused_before_any_job(tmp_path):
    api = ClientApi(hold=True)
    try:
        audio = media.make_audio(tmp_path / "a.wav", 1.0)
        run = _client([str(audio), "--endpoint", ENDPOINT_ID],
                      _client_env(api, RUNPOD_API_KEY="not-the-key"), tmp_path)
        assert run.returncode == 1 and "401 Unauthorized" in run.stderr
        assert api.unauthorized == 1 and api.runs == []
    finally:
        api.close()


def test_against_runpods_local_server(server, tmp_path):
    """`python src/handler.py --rp_serve_api` (conftest's `server`), as `docker run` serves it."""
    audio = media.make_audio(tmp_path / "clip.ogg", 4.0)
    env = _client_env(None)
    env.pop("RUNPOD_API_KEY")  # a local worker needs none
    run = _client([str(audio), "--local", server.url], env, tmp_path)
    assert run.returncode == 0, run.stderr + server.log()
    assert (tmp_path / "clip.txt").read_text() == ENGLISH + "\n"
    result = json.loads((tmp_path / "clip.json").read_text())
    assert [w["word"] for w in result["words"]] == ENGLISH_WORDS
    assert list(srt.parse((tmp_path / "clip.srt").read_text()))
