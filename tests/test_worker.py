"""End to end through the real runpod local API server (/runsync), real HTTP on loopback,
real ffmpeg and the real qwen-asr code running tiny generated models."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

import media
from models import ENGLISH, ENGLISH_WORDS
from qwen_worker.base.errors import ErrorCode
from worker_server import run_test_input, worker_env

EXPECTED_KEYS = {"text", "language", "languages", "duration", "words", "segments", "chunks",
                 "warnings", "model", "timings", "rtf"}


@pytest.fixture(scope="module")
def files(tmp_path_factory, host):
    d = tmp_path_factory.mktemp("media")
    urls = {}
    for fmt in ("mp3", "m4a", "wav", "opus"):
        path = media.make_audio(d / f"a.{fmt}", 8.0)
        urls[fmt] = host.file(f"/a.{fmt}", path.read_bytes())
    urls["mp4"] = host.file("/v.mp4", media.make_video(d / "v.mp4", 8.0).read_bytes(),
                            content_type="video/mp4")
    return urls


def _ok(result: dict) -> dict:
    assert result["status"] == "COMPLETED", result
    return result["output"]


def _failed(result: dict, code: ErrorCode) -> str:
    assert result["status"] == "FAILED", result
    assert result["error"].startswith(f"{code.value}: "), result["error"]
    return result["error"]


@pytest.mark.parametrize("fmt", ["mp3", "m4a", "wav", "opus", "mp4"])
def test_transcribes_each_format(server, files, jobs_dir, fmt):
    out = _ok(server.runsync({"audio_url": files[fmt], "language": "auto",
                              "formats": ["srt", "vtt"]}))
    assert EXPECTED_KEYS | {"srt", "vtt"} <= set(out)
    assert out["text"] == ENGLISH and out["language"] == "English"
    assert [w["word"] for w in out["words"]] == ENGLISH_WORDS
    assert out["duration"] == pytest.approx(8.0, abs=0.05)
    assert out["model"]["backend"] == "transformers"
    assert set(out["timings"]) == {"download", "decode", "asr", "align", "total"}
    assert out["srt"].startswith("1\n00:00:00,000 --> ") and out["vtt"].startswith("WEBVTT")
    assert list(jobs_dir.iterdir()) == []  # the job's temporary files are gone


def test_base64_input(server, tmp_path, jobs_dir):
    raw = media.make_audio(tmp_path / "b.ogg", 5.0).read_bytes()
    out = _ok(server.runsync({"audio_base64": base64.b64encode(raw).decode(),
                              "word_timestamps": False, "formats": ["txt"]}))
    assert out["text"] == ENGLISH and out["words"] == []  # README: `"words": []`
    assert out["txt"] == ENGLISH + "\n"
    assert "srt" not in out
    assert list(jobs_dir.iterdir()) == []


@pytest.mark.parametrize("job,code", [
    ({"audio_url": "http://x/a.mp3", "bogus": 1}, ErrorCode.INVALID_INPUT),
    ({}, ErrorCode.INVALID_INPUT),
    ({"audio_url": "http://x/a.mp3", "chunk_seconds": 10}, ErrorCode.INVALID_INPUT),
    ({"audio_base64": "@@not base64@@"}, ErrorCode.INVALID_INPUT),
    ({"audio_url": "ftp://127.0.0.1/a.mp3"}, ErrorCode.URL_NOT_ALLOWED),
    ({"audio_url": "http://169.254.169.254/latest/meta-data/"}, ErrorCode.URL_NOT_ALLOWED),
    ({"audio_url": "http://10.1.2.3/a.mp3"}, ErrorCode.URL_NOT_ALLOWED),
    ({"audio_url": "https://x/a.mp3", "language": "klingon"}, ErrorCode.UNSUPPORTED_LANGUAGE),
])
def test_input_errors_return_their_code_and_the_server_keeps_serving(server, files, job, code):
    message = _failed(server.runsync(job), code)
    assert "Traceback" not in message and "/work/" not in message and "site-packages" not in message
    assert _ok(server.runsync({"audio_url": files["wav"]}))["text"] == ENGLISH


def test_test_input_mode_runs_one_job(model_dirs, files, tmp_path):
    env = worker_env(model_dirs["english"], model_dirs["aligner"], tmp_path,
                     DOWNLOAD_ALLOW_LOOPBACK="true")
    done = run_test_input(env, {"input": {"audio_url": files["mp3"], "language": "en",
                                          "formats": ["srt"]}})
    assert done.returncode == 0, done.stdout + done.stderr
    assert ENGLISH in done.stdout and "00:00:00,000 -->" in done.stdout


def test_test_input_mode_with_the_guard_on_refuses_loopback(model_dirs, files, tmp_path):
    env = worker_env(model_dirs["english"], model_dirs["aligner"], tmp_path)
    done = run_test_input(env, {"input": {"audio_url": files["mp3"]}})
    assert done.returncode == 1
    assert "URL_NOT_ALLOWED" in done.stdout + done.stderr


SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_the_offline_sample_is_a_few_seconds_of_audio_in_a_job(server, jobs_dir):
    job = json.loads((SAMPLES / "sample_input.json").read_text())
    raw = base64.b64decode(job["input"]["audio_base64"])
    assert raw == (SAMPLES / "sample.ogg").read_bytes() and len(raw) < 20_000
    out = _ok(server.runsync(job["input"]))
    assert 3.0 < out["duration"] < 8.0 and out["text"] == ENGLISH
    assert out["srt"].startswith("1\n00:00:00,000 --> ") and out["vtt"].startswith("WEBVTT")


def test_readme_quickstart_runs_the_offline_sample(model_dirs, tmp_path):
    # README: python src/handler.py --test_input "$(cat samples/sample_input.json)"
    env = worker_env(model_dirs["english"], model_dirs["aligner"], tmp_path)
    done = run_test_input(env, json.loads((SAMPLES / "sample_input.json").read_text()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert ENGLISH in done.stdout and "00:00:00,000 -->" in done.stdout


def test_diarize_on_a_worker_built_without_it_is_refused_and_the_worker_serves_on(server,
                                                                                   files):
    # The default worker has no diarizer: the job fails with its own code before the download.
    message = _failed(server.runsync({"audio_url": files["mp3"], "diarize": True,
                                      "num_speakers": 2, "formats": ["srt"]}),
                      ErrorCode.DIARIZATION_UNAVAILABLE)
    assert "diarize" in message
    assert _ok(server.runsync({"audio_url": files["mp3"]}))["text"] == ENGLISH
