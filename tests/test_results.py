"""Results of any size: uploads to a real S3-compatible server on loopback (moto's server mode,
spoken to over HTTP by boto3, presigned URLs fetched over HTTP), and without a bucket the drop
order (words, then segments) with its warning. The worker runs in-process with the tiny
generated models, so every result is one the real pipeline made."""

from __future__ import annotations

import base64
import dataclasses
import os
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

import media
from models import ENGLISH, settings_for
from qwen_worker.base.config import ConfigError, load_settings
from qwen_worker.base.errors import ErrorCode
from qwen_worker.jobs.results import result_bytes, trim
from qwen_worker.jobs.worker import Worker
from s3_server import SECRET_KEY, S3Server, isolate_boto3

# 120 s in 30 s chunks: 4 chunks, 24 words, about 3.4 kB of JSON with SRT and VTT.
JOB = {"formats": ["srt", "vtt"], "chunk_seconds": 30}
VARYING = ("timings", "rtf")  # differ between two runs of the same job


@pytest.fixture(scope="module", autouse=True)
def no_cloud_lookups():
    saved = dict(os.environ)
    isolate_boto3(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    yield server
    server.close()


@pytest.fixture(scope="module")
def engine(english_engine):
    return english_engine


@pytest.fixture(scope="module")
def audio_b64(tmp_path_factory):
    path = media.make_audio(tmp_path_factory.mktemp("audio") / "long.wav", 120.0)
    return base64.b64encode(path.read_bytes()).decode()


def _worker(model_dirs, engine, tmp_path, **env: str) -> Worker:
    settings = settings_for(model_dirs["english"], model_dirs["aligner"],
                            WORK_DIR=str(tmp_path / "jobs"), **env)
    return Worker(settings, engine)


@pytest.fixture(scope="module")
def whole(model_dirs, engine, audio_b64, tmp_path_factory):
    """The job's result as the worker returns it inline (no bucket, default limit)."""
    worker = _worker(model_dirs, engine, tmp_path_factory.mktemp("inline"))
    out = worker.handle({"id": "inline", "input": {"audio_base64": audio_b64, **JOB}})
    assert "error" not in out, out
    assert len(out["words"]) == 24 and len(out["chunks"]) == 4 and "files" not in out
    return out


def _same_result(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k not in VARYING} == \
        {k: v for k, v in b.items() if k not in VARYING}


def _fetch(url: str) -> requests.Response:
    assert urlsplit(url).hostname == "127.0.0.1", url
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text[:300]
    return r


def test_an_over_limit_result_is_uploaded_and_its_urls_serve_exactly_what_the_worker_made(
        model_dirs, engine, audio_b64, whole, s3, tmp_path):
    s3.create_bucket("results-auto")
    limit = result_bytes(whole) - 500  # the whole result is over it, a summary is well under
    worker = _worker(model_dirs, engine, tmp_path, RESULT_MAX_BYTES=str(limit),
                     RESULT_URL_EXPIRY_SECONDS="3600", **s3.env("results-auto/asr"))
    out = worker.handle({"id": "job-42", "input": {"audio_base64": audio_b64, **JOB}})

    assert "error" not in out, out
    assert result_bytes(out) <= limit
    assert set(out["files"]) == {"json", "srt", "vtt"}
    for bulky in ("words", "segments", "chunks", "srt", "vtt"):
        assert bulky not in out
    assert out["text"] == whole["text"] == " ".join([ENGLISH] * 4)
    assert out["counts"] == {"words": 24, "segments": len(whole["segments"]), "chunks": 4}
    assert out["language"] == "English" and out["duration"] == whole["duration"]

    full = _fetch(out["files"]["json"]["url"])
    assert full.headers["Content-Type"].startswith("application/json")
    uploaded = full.json()
    _same_result(uploaded, whole)  # words, segments, chunks, SRT, VTT: all of it
    assert out["files"]["json"]["bytes"] == len(full.content)
    srt = _fetch(out["files"]["srt"]["url"])
    vtt = _fetch(out["files"]["vtt"]["url"])
    assert srt.content.decode() == whole["srt"] and vtt.content.decode() == whole["vtt"]
    assert vtt.headers["Content-Type"].startswith("text/vtt")
    for entry in out["files"].values():
        query = parse_qs(urlsplit(entry["url"]).query)
        assert query["X-Amz-Expires"] == ["3600"]
        assert entry["expires_at"].endswith("Z")
    keys = s3.keys("results-auto")
    assert len(keys) == 3 and all(k.startswith("asr/job-42-") for k in keys), keys


def test_always_uploads_even_a_small_result(model_dirs, engine, audio_b64, whole, s3, tmp_path):
    s3.create_bucket("results-always")
    worker = _worker(model_dirs, engine, tmp_path, RESULT_UPLOAD="always",
                     **s3.env("results-always"))
    out = worker.handle({"id": "small", "input": {"audio_base64": audio_b64, **JOB}})
    assert "error" not in out, out
    _same_result(_fetch(out["files"]["json"]["url"]).json(), whole)
    assert out["text"] == whole["text"] and "words" not in out


def test_a_result_under_the_limit_stays_inline_and_its_requested_files_are_uploaded(
        model_dirs, engine, audio_b64, whole, s3, tmp_path):
    """With a bucket, the requested SRT and VTT also become files (URLs in `files`); the
    result itself fits, so it stays whole and inline, and no JSON file is made."""
    s3.create_bucket("results-inline")
    worker = _worker(model_dirs, engine, tmp_path, **s3.env("results-inline"))
    out = worker.handle({"id": "fits", "input": {"audio_base64": audio_b64, **JOB}})
    files = out.pop("files")
    _same_result(out, whole)
    assert set(files) == {"srt", "vtt"}
    assert _fetch(files["srt"]["url"]).content.decode() == whole["srt"]
    assert _fetch(files["vtt"]["url"]).content.decode() == whole["vtt"]
    keys = s3.keys("results-inline")
    assert len(keys) == 2 and all(k.startswith("fits-") for k in keys), keys
    # No format asked for: nothing to upload, the result as it is.
    plain = worker.handle({"id": "plain", "input": {"audio_base64": audio_b64,
                                                    "chunk_seconds": 30}})
    assert "files" not in plain and "error" not in plain and len(s3.keys("results-inline")) == 2


def test_a_failed_upload_fails_the_job_with_its_code_and_the_worker_goes_on(
        model_dirs, engine, audio_b64, whole, s3, tmp_path):
    worker = _worker(model_dirs, engine, tmp_path, RESULT_UPLOAD="always",
                     **s3.env("not-created-yet"))
    job = {"id": "j", "input": {"audio_base64": audio_b64, **JOB}}
    out = worker.handle(job)
    assert out["error_code"] == ErrorCode.RESULT_UPLOAD_FAILED.value
    assert out["error"].startswith("RESULT_UPLOAD_FAILED: ") and "NoSuchBucket" in out["error"]
    assert "not-created-yet" in out["error"] and SECRET_KEY not in out["error"]
    assert list((tmp_path / "jobs").iterdir()) == []

    s3.create_bucket("not-created-yet")  # fixed: the same worker delivers the next job
    again = worker.handle(job)
    _same_result(_fetch(again["files"]["json"]["url"]).json(), whole)


def test_an_unreachable_bucket_is_an_upload_failure(model_dirs, engine, audio_b64, tmp_path):
    from worker_server import free_port

    env = {"BUCKET_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}/nobody-listens",
           "BUCKET_ACCESS_KEY_ID": "k", "BUCKET_SECRET_ACCESS_KEY": "s"}
    worker = _worker(model_dirs, engine, tmp_path, RESULT_UPLOAD="always", **env)
    out = worker.handle({"id": "j", "input": {"audio_base64": audio_b64, **JOB}})
    assert out["error_code"] == "RESULT_UPLOAD_FAILED", out
    assert "EndpointConnectionError" in out["error"]


def test_without_a_bucket_words_are_dropped_first_with_a_warning(
        model_dirs, engine, audio_b64, whole, tmp_path):
    # Under the whole result by more than its timings can vary between runs (a few bytes),
    # and by less than the words weigh (~1.1 kB).
    limit = result_bytes(whole) - 200
    worker = _worker(model_dirs, engine, tmp_path, RESULT_MAX_BYTES=str(limit))
    out = worker.handle({"id": "j", "input": {"audio_base64": audio_b64, **JOB}})

    assert "error" not in out and result_bytes(out) <= limit
    assert "words" not in out and out["omitted"] == ["words"]
    assert out["segments"] == whole["segments"] and out["srt"] == whole["srt"]
    assert out["text"] == whole["text"]
    (warning,) = out["warnings"]
    assert "RESULT_MAX_BYTES" in warning and "dropped words to fit" in warning
    assert "BUCKET_ENDPOINT_URL" in warning


def test_then_segments_and_a_long_transcript_never_fails_for_its_size(whole):
    without_words = trim(whole, result_bytes(whole), result_bytes(whole) - 1)
    limit = result_bytes(without_words) - 1
    out = trim(whole, result_bytes(whole), limit)
    assert out["omitted"] == ["words", "segments"] and result_bytes(out) <= limit
    assert out["chunks"] == whole["chunks"] and out["vtt"] == whole["vtt"]
    assert "dropped words, segments to fit" in out["warnings"][-1]

    smallest = trim(whole, result_bytes(whole), 1000)  # the lowest RESULT_MAX_BYTES
    assert smallest["omitted"] == ["words", "segments", "chunks", "vtt", "srt"]
    assert smallest["text"] == whole["text"] and result_bytes(smallest) <= 1000
    assert whole["words"] and "omitted" not in whole  # the worker's own result is untouched


def test_the_worker_trims_through_its_setting(whole, model_dirs):
    settings = settings_for(model_dirs["english"], model_dirs["aligner"])
    assert settings.bucket is None and settings.result_max_bytes == 8_000_000
    from qwen_worker.jobs.results import deliver

    assert deliver(whole, settings, "j") is whole
    small = dataclasses.replace(settings, result_max_bytes=result_bytes(whole) - 1)
    assert deliver(whole, small, "j")["omitted"] == ["words"]


BUCKET_ENV = {"BUCKET_ACCESS_KEY_ID": "id", "BUCKET_SECRET_ACCESS_KEY": "secret"}


@pytest.mark.parametrize("url,name,endpoint,prefix,region,path_style", [
    ("https://my-results.s3.eu-west-1.amazonaws.com", "my-results",
     "https://s3.eu-west-1.amazonaws.com", "", "eu-west-1", False),
    ("https://my-results.nyc3.digitaloceanspaces.com", "my-results",
     "https://nyc3.digitaloceanspaces.com", "", "nyc3", False),
    ("https://acct.r2.cloudflarestorage.com/my-results", "my-results",
     "https://acct.r2.cloudflarestorage.com", "", "us-east-1", True),
    ("https://s3.us-west-004.backblazeb2.com/my-results", "my-results",
     "https://s3.us-west-004.backblazeb2.com", "", "us-west-004", True),
    ("http://minio.local:9000/my-results/asr/out", "my-results", "http://minio.local:9000",
     "asr/out/", "us-east-1", True),
])
def test_the_bucket_is_read_from_runpods_variables(url, name, endpoint, prefix, region,
                                                   path_style):
    bucket = load_settings({"BUCKET_ENDPOINT_URL": url, **BUCKET_ENV}).bucket
    assert (bucket.name, bucket.endpoint_url, bucket.prefix, bucket.region,
            bucket.path_style) == (name, endpoint, prefix, region, path_style)
    assert "secret" not in repr(bucket)


def test_bucket_settings_that_cannot_work_are_refused_at_start_up():
    with pytest.raises(ConfigError, match="BUCKET_SECRET_ACCESS_KEY not set"):
        load_settings({"BUCKET_ENDPOINT_URL": "https://x.s3.us-east-1.amazonaws.com",
                       "BUCKET_ACCESS_KEY_ID": "id"})
    with pytest.raises(ConfigError, match="names no bucket"):
        load_settings({"BUCKET_ENDPOINT_URL": "https://storage.example.com", **BUCKET_ENV})
    named = load_settings({"BUCKET_ENDPOINT_URL": "https://storage.example.com",
                           "BUCKET_NAME": "b", "BUCKET_REGION": "auto", **BUCKET_ENV}).bucket
    assert (named.name, named.region) == ("b", "auto")
    with pytest.raises(ConfigError, match="RESULT_UPLOAD"):
        load_settings({"RESULT_UPLOAD": "sometimes"})
    assert load_settings({}).bucket is None


def test_a_summary_over_the_limit_leaves_its_text_to_the_file(whole, s3, model_dirs):
    from qwen_worker.jobs.results import deliver

    s3.create_bucket("results-tiny")
    settings = settings_for(model_dirs["english"], model_dirs["aligner"],
                            RESULT_MAX_BYTES="1000", **s3.env("results-tiny"))
    out = deliver(whole, settings, "tiny")
    assert "text" not in out and "files.json" in out["warnings"][-1]
    assert _fetch(out["files"]["json"]["url"]).json() == whole
