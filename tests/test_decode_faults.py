"""Decoding is complete or it fails: a decoder that dies mid-stream, or a file that ends long
before the duration it states, never yields a shorter transcript.

The dying decoder is the real ffmpeg behind tests/fake_ffmpeg/ffmpeg, which passes part of
the real output through and is then killed (SIGKILL) or stopped (SIGTERM -> exit 255).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

import media
from qwen_worker.pipeline import decode as d

FAKE_DIR = Path(__file__).parent / "fake_ffmpeg"


@pytest.fixture
def dying_ffmpeg(monkeypatch):
    """Put the dying ffmpeg first on PATH; returns a setter for its behaviour."""
    real = d.ffmpeg_binary()
    monkeypatch.setenv("FAKE_FFMPEG_REAL", real)
    monkeypatch.setenv("PATH", f"{FAKE_DIR}{os.pathsep}{os.environ['PATH']}")
    d.ffmpeg_binary.cache_clear()

    def configure(mode: str = "sigkill", after: int = 1 << 20, only_seeking: bool = False):
        monkeypatch.setenv("FAKE_FFMPEG_MODE", mode)
        monkeypatch.setenv("FAKE_FFMPEG_KILL_AFTER", str(after))
        monkeypatch.setenv("FAKE_FFMPEG_ONLY_SEEKING", "1" if only_seeking else "0")

    configure()
    assert d.ffmpeg_binary() == str(FAKE_DIR / "ffmpeg")
    yield configure
    d.ffmpeg_binary.cache_clear()


@pytest.mark.parametrize("mode", ["sigkill", "sigterm"])
@pytest.mark.parametrize("fmt,seconds", [("wav", 33.0), ("mp3", 130.0)])
def test_decoder_killed_mid_file_fails_instead_of_returning_the_start(
        tmp_path: Path, dying_ffmpeg, mode: str, fmt: str, seconds: float):
    path = media.make_audio(tmp_path / f"a.{fmt}", seconds)
    dying_ffmpeg(mode=mode, after=1 << 20)  # 1 MB of float32 = 16.4 s of the audio
    with pytest.raises(d.DecoderKilled):
        d.decode(path, max_seconds=600, workers=1)


def test_parallel_decode_with_one_piece_killed_fails(tmp_path: Path, dying_ffmpeg):
    path = media.make_audio(tmp_path / "long.flac", 150.0, rate=16000)
    info = d.probe(path)
    # Only the later pieces (which seek) die: without the exit-status check the first piece's
    # samples plus a short later piece would pass.
    dying_ffmpeg(after=200_000, only_seeking=True)
    with pytest.raises(d.DecoderKilled):
        d.decode(path, max_seconds=600, workers=2, info=info)


def test_the_dying_ffmpeg_passes_whole_decodes_through(tmp_path: Path, dying_ffmpeg):
    """The stand-in itself: below its byte limit it is the real decoder."""
    path = media.make_audio(tmp_path / "a.wav", 3.0)
    dying_ffmpeg(after=10 << 20)
    assert d.decode(path, max_seconds=60).size == 48_000


def _truncated_flac(tmp_path: Path, seconds: float, keep: float) -> Path:
    """A FLAC whose header (STREAMINFO) states `seconds` but whose frames stop after `keep`.

    (A WAV would not do: ffmpeg takes a WAV's duration from the file size.)
    """
    full = media.make_audio(tmp_path / "full.flac", seconds, rate=16000)
    data = full.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: int(len(data) * keep)])
    return cut


def test_file_ending_long_before_its_stated_duration_is_truncated(tmp_path: Path):
    path = _truncated_flac(tmp_path, 130.0, 0.5)
    assert d.probe(path).duration == pytest.approx(130.0, abs=0.1)
    with pytest.raises(d.TruncatedAudio, match=r"ends at 6\d\.\d s but the file states 130\.0 s"):
        d.decode(path, max_seconds=600)
    with pytest.raises(d.TruncatedAudio):  # the parallel path checks the total as well
        d.decode(path, max_seconds=600, workers=2)


def test_a_few_missing_milliseconds_are_not_truncation(tmp_path: Path):
    path = _truncated_flac(tmp_path, 30.0, 0.995)  # 0.15 s short: encoder padding territory
    assert d.decode(path, max_seconds=600).size == pytest.approx(30.0 * 16000, rel=0.01)


def test_bitrate_estimated_duration_is_no_promise():
    info = d.parse_probe(
        "Input #0, mp3, from 'x':\n  Duration: 00:10:00.00, start: 0.0, bitrate: 64 kb/s\n"
        "  Stream #0:0: Audio: mp3, 44100 Hz, mono, fltp, 64 kb/s\n"
        "[mp3 @ 0x1] Estimating duration from bitrate, this may be inaccurate\n")
    assert info.duration_estimated
    d._check_complete(120.0, info)  # no error: the stated 600 s was a guess
    with pytest.raises(d.TruncatedAudio):
        d._check_complete(120.0, d.parse_probe(
            "Input #0, flac, from 'x':\n  Duration: 00:10:00.00, start: 0.0, bitrate: 64 kb/s\n"
            "  Stream #0:0: Audio: flac, 44100 Hz, mono, s16\n"))


def test_cover_art_does_not_count_as_video():
    info = d.parse_probe(
        "Input #0, mp3, from 'x':\n  Duration: 00:10:00.00, start: 0.0, bitrate: 64 kb/s\n"
        "  Stream #0:0: Audio: mp3, 44100 Hz, mono, fltp, 64 kb/s\n"
        "  Stream #0:1: Video: mjpeg (Baseline), yuvj420p, 600x600, 90k tbn (attached pic)\n")
    assert not info.has_video


def _job(path: Path) -> dict:
    return {"id": "j", "input": {"audio_base64": base64.b64encode(path.read_bytes()).decode()}}


def test_worker_reports_a_killed_decoder_and_serves_the_next_job(worker, tmp_path, dying_ffmpeg):
    path = media.make_audio(tmp_path / "a.wav", 33.0, rate=16000)
    out = worker.handle(_job(path))
    assert out["error_code"] == "DECODE_INTERRUPTED", out
    assert list(Path(worker.settings.work_dir).iterdir()) == []
    dying_ffmpeg(after=1 << 30)  # the whole output passes: the real decoder's result
    ok = worker.handle(_job(path))
    assert "error" not in ok and ok["duration"] == pytest.approx(33.0, abs=0.05)


def test_an_ffmpeg_that_crashes_on_a_file_is_unreadable_not_interrupted(
        worker, tmp_path, dying_ffmpeg):
    """A decoder killed from outside is worth a retry (DECODE_INTERRUPTED); one that crashes
    by itself on the file (SIGSEGV: imageio-ffmpeg's static 7.0.2 does so on some MPEG-TS
    files) would crash again: AUDIO_UNREADABLE, saying so, whether it crashes reading the
    headers or part-way through the audio. The worker serves the next job."""
    path = media.make_audio(tmp_path / "a.wav", 33.0, rate=16000)
    dying_ffmpeg(mode="segv-probe")
    with pytest.raises(d.DecoderCrashed, match=r"crashed \(SIGSEGV\) reading the file's headers"):
        d.probe(path)
    out = worker.handle(_job(path))
    assert out["error_code"] == "AUDIO_UNREADABLE", out
    assert "ffmpeg crashed (SIGSEGV)" in out["error"]
    dying_ffmpeg(mode="segv", after=1 << 20)
    with pytest.raises(d.DecoderCrashed, match=r"crashed \(SIGSEGV\) decoding"):
        d.decode(path, max_seconds=600, workers=1)
    assert worker.handle(_job(path))["error_code"] == "AUDIO_UNREADABLE"
    dying_ffmpeg(mode="sigkill", after=1 << 30)  # the whole output passes: the real result
    ok = worker.handle(_job(path))
    assert "error" not in ok and ok["duration"] == pytest.approx(33.0, abs=0.05)
    assert list(Path(worker.settings.work_dir).iterdir()) == []


def test_worker_reports_a_truncated_file(worker, tmp_path):
    out = worker.handle(_job(_truncated_flac(tmp_path, 40.0, 0.5)))
    assert out["error_code"] == "AUDIO_TRUNCATED" and "cut short" in out["error"]
