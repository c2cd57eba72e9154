"""The hostile-input corpus, through the real worker (runpod's local API server, /runsync).

Each input ends in a correct transcript or its documented error code, within a bounded time,
with nothing left in the job directory, and the worker answers the next job. Only loopback is
contacted: private and metadata targets are refused by the guard before any connection (and
tests/netguard refuses them in the worker process as a second line).
"""

from __future__ import annotations

import base64
import json
import time

import pytest

import media
from models import ENGLISH
from qwen_worker.base.errors import ErrorCode

OK = "COMPLETED"


@pytest.fixture(scope="module")
def corpus(host, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    mp3 = media.make_audio(d / "a.mp3", 8.0).read_bytes()
    png = d / "x.png"
    media.ffmpeg("-f", "lavfi", "-i", "color=c=red:s=8x8", "-frames:v", "1", str(png))
    silence = d / "silence.flac"  # 3 hours of silence in ~2 MB
    media.ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "10800", "-c:a", "flac",
                 str(silence))
    h = host
    return {
        "zero-byte body": (h.file("/h/empty", b""), ErrorCode.AUDIO_UNREADABLE),
        # LAME's Info header states the full 8 s: a cut file is refused, not half-transcribed.
        "truncated mp3": (h.file("/h/cut.mp3", mp3[: len(mp3) * 6 // 10]),
                          ErrorCode.AUDIO_TRUNCATED),
        "random bytes": (h.file("/h/random", bytes(range(251)) * 400,
                                "application/octet-stream"), ErrorCode.AUDIO_UNREADABLE),
        "html page": (h.file("/h/page", b"<!DOCTYPE html><html><body>hi</body></html>",
                             "text/html"), ErrorCode.AUDIO_UNREADABLE),
        "html as octet-stream": (h.file("/h/page.mp3", b"<!DOCTYPE html><html></html>" * 50,
                                        "application/octet-stream"), ErrorCode.AUDIO_UNREADABLE),
        "json": (h.file("/h/api", json.dumps({"audio": "nope"}).encode(), "application/json"),
                 ErrorCode.AUDIO_UNREADABLE),
        "image": (h.file("/h/x.png", png.read_bytes(), "image/png"), ErrorCode.AUDIO_UNREADABLE),
        "video without audio": (h.file("/h/silent.mp4", media.make_video(
            d / "silent.mp4", 3.0, with_audio=False).read_bytes(), "video/mp4"),
            ErrorCode.AUDIO_UNREADABLE),
        "404": (h.status("/h/404", 404), ErrorCode.DOWNLOAD_FAILED),
        "500 every time": (h.status("/h/500", 500), ErrorCode.DOWNLOAD_FAILED),
        "500 then success": (h.fail_then_serve("/h/flaky.mp3", 1, mp3), OK),
        "stall mid-body": (h.stall("/h/stall.mp3", mp3, after=4096, seconds=70),
                           ErrorCode.DOWNLOAD_FAILED),
        "no length past the cap": (h.endless("/h/endless", b"\xff" * 65536, max_seconds=20),
                                   ErrorCode.AUDIO_TOO_LARGE),
        "length over the cap": (h.declared("/h/huge", 50 << 30), ErrorCode.AUDIO_TOO_LARGE),
        "too many redirects": (_chain(h, "/h/loop", 8), ErrorCode.DOWNLOAD_FAILED),
        "redirect to private": (h.redirect("/h/to-private", "http://192.168.0.10/a.mp3"),
                                ErrorCode.URL_NOT_ALLOWED),
        "redirect to metadata": (h.redirect("/h/to-meta", "http://169.254.169.254/latest/"),
                                 ErrorCode.URL_NOT_ALLOWED),
        "redirect to file scheme": (h.redirect("/h/to-file", "file:///etc/passwd"),
                                    ErrorCode.URL_NOT_ALLOWED),
        "file scheme": ("file:///etc/passwd", ErrorCode.URL_NOT_ALLOWED),
        "ftp scheme": ("ftp://127.0.0.1/a.mp3", ErrorCode.URL_NOT_ALLOWED),
        "gopher scheme": ("gopher://127.0.0.1:70/1", ErrorCode.URL_NOT_ALLOWED),
        "data url as audio_url": ("data:audio/mpeg;base64," + base64.b64encode(mp3[:99]).decode(),
                                  ErrorCode.URL_NOT_ALLOWED),
        "cloud metadata address": ("http://169.254.169.254/latest/meta-data/",
                                   ErrorCode.URL_NOT_ALLOWED),
        "over MAX_AUDIO_SECONDS": (h.file("/h/long.mp3", media.make_audio(
            d / "long.mp3", 150.0, rate=8000).read_bytes()), ErrorCode.AUDIO_TOO_LONG),
        "tiny flac of 3 hours of silence": (h.file("/h/silence.flac", silence.read_bytes(),
                                                   "audio/flac"), ErrorCode.AUDIO_TOO_LONG),
        "8 kHz mono": (h.file("/h/8k.mp3", media.make_audio(d / "8k.mp3", 6.0,
                                                             rate=8000).read_bytes()), OK),
        "96 kHz 6 channels": (h.file("/h/96k.wav", media.make_audio(
            d / "96k.wav", 4.0, rate=96000, channels=6).read_bytes(), "audio/wav"), OK),
        "extension lies": (h.file("/h/episode.mp3", media.make_audio(
            d / "x.ogg", 5.0).read_bytes()), OK),
        "query string, no extension": (h.file("/h/stream", mp3) + "?id=42&sig=a%2Fb", OK),
    }


def _chain(host, prefix: str, hops: int) -> str:
    for i in range(hops):
        host.redirect(f"{prefix}{i}", f"{prefix}{i + 1}")
    host.file(f"{prefix}{hops}", b"ID3")
    return host.url(f"{prefix}0")


CASES = ["zero-byte body", "truncated mp3", "random bytes", "html page", "html as octet-stream",
         "json", "image", "video without audio", "404", "500 every time", "500 then success",
         "stall mid-body", "no length past the cap", "length over the cap", "too many redirects",
         "redirect to private", "redirect to metadata", "redirect to file scheme", "file scheme",
         "ftp scheme", "gopher scheme", "data url as audio_url", "cloud metadata address",
         "over MAX_AUDIO_SECONDS", "tiny flac of 3 hours of silence", "8 kHz mono",
         "96 kHz 6 channels", "extension lies", "query string, no extension"]


def _check(server, jobs_dir, job: dict, expected, bound: float) -> dict:
    t0 = time.monotonic()
    result = server.runsync(job)
    elapsed = time.monotonic() - t0
    assert elapsed < bound, f"took {elapsed:.1f} s"
    if expected == OK:
        assert result["status"] == OK, result
        assert result["output"]["text"] == ENGLISH
    else:
        assert result["status"] == "FAILED", result
        assert result["error"].startswith(f"{expected.value}: "), result["error"]
        assert "Traceback" not in result["error"] and "/tmp" not in result["error"]
    assert list(jobs_dir.iterdir()) == []  # nothing left on disk
    return result


@pytest.mark.parametrize("case", CASES)
def test_hostile_url(server, host, corpus, jobs_dir, case):
    url, expected = corpus[case]
    bound = 60.0 if case == "stall mid-body" else 30.0
    result = _check(server, jobs_dir, {"audio_url": url}, expected, bound)
    if case == "truncated mp3":
        assert "ends at 4.8 s but the file states 8.1 s" in result["error"]
    if case == "500 every time":
        assert host.hits["/h/500"] == 3
    if case == "96 kHz 6 channels":
        assert result["output"]["duration"] == pytest.approx(4.0, abs=0.05)
    # The worker still serves.
    assert server.runsync({"audio_url": corpus["query string, no extension"][0]})["status"] == OK


def test_base64_that_is_not_base64(server, jobs_dir):
    _check(server, jobs_dir, {"audio_base64": "this is %%% not base64"},
           ErrorCode.INVALID_INPUT, 10)


def test_base64_over_the_cap(server, jobs_dir):
    big = base64.b64encode(b"\0" * (3 << 20)).decode()  # cap is 2 MiB
    _check(server, jobs_dir, {"audio_base64": big}, ErrorCode.AUDIO_TOO_LARGE, 30)


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/h/stream", "http://[::1]:{port}/h/stream",
                                 "http://localhost:{port}/h/stream"])
def test_guard_as_deployed_refuses_loopback(guarded_server, host, corpus, url):
    result = guarded_server.runsync({"audio_url": url.format(port=host.port)})
    assert result["status"] == "FAILED"
    assert result["error"].startswith("URL_NOT_ALLOWED: ")
