"""ffmpeg decoding: every container the worker promises, its errors, and the parallel path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import media
from qwen_worker.pipeline import decode as d


@pytest.mark.parametrize("fmt", sorted(media.FORMATS))
def test_every_audio_format_decodes_to_16k_mono_float32(tmp_path: Path, fmt: str):
    path = media.make_audio(tmp_path / f"a.{fmt}", 3.0, channels=2)
    samples = d.decode(path, max_seconds=60)
    assert samples.dtype == np.float32 and samples.ndim == 1
    # Encoders add at most a few ms of priming; the length is 3 s at 16 kHz.
    assert abs(samples.size - 48_000) < 0.03 * 16_000
    # 0.3 amplitude tone survives: the audio is real, not zeros.
    assert 0.15 < float(np.abs(samples[8000:40000]).max()) < 0.5


@pytest.mark.parametrize("suffix", ["mp4", "mov"])
def test_video_with_audio_track_decodes_its_audio(tmp_path: Path, suffix: str):
    path = media.make_video(tmp_path / f"v.{suffix}", 3.0)
    samples = d.decode(path, max_seconds=60)
    assert abs(samples.size - 48_000) < 0.03 * 16_000
    assert float(np.abs(samples).max()) > 0.05  # lavfi sine: amplitude 1/8


def test_video_without_audio_raises_no_audio_stream(tmp_path: Path):
    path = media.make_video(tmp_path / "silent.mp4", 2.0, with_audio=False)
    with pytest.raises(d.NoAudioStream):
        d.decode(path, max_seconds=60)


def test_random_bytes_raise_unreadable(tmp_path: Path):
    path = tmp_path / "noise.bin"
    path.write_bytes(np.random.default_rng(1).bytes(50_000))
    with pytest.raises(d.UnreadableAudio):
        d.decode(path, max_seconds=60)


def test_zero_length_audio_raises_empty(tmp_path: Path):
    path = tmp_path / "empty.wav"
    media.ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(path))
    with pytest.raises(d.EmptyAudio):
        d.decode(path, max_seconds=60)


def test_too_long_is_refused_from_the_header_before_decoding(tmp_path: Path):
    path = media.make_audio(tmp_path / "long.flac", 30.0)
    with pytest.raises(d.AudioTooLong) as err:
        d.decode(path, max_seconds=10)
    assert err.value.seconds == pytest.approx(30.0, abs=0.1)


def test_too_long_is_refused_while_decoding_when_the_header_is_silent(tmp_path: Path):
    path = media.make_audio(tmp_path / "long.wav", 30.0)
    info = d.probe(path)
    unknown = d.AudioInfo(None, info.codec, info.sample_rate, info.channels, info.container)
    with pytest.raises(d.AudioTooLong):
        d.decode(path, max_seconds=10, info=unknown)


def test_extension_is_not_trusted(tmp_path: Path):
    real = media.make_audio(tmp_path / "a.ogg", 2.0)
    liar = tmp_path / "a.mp3"
    os.rename(real, liar)
    assert d.probe(liar).codec == "vorbis"
    assert abs(d.decode(liar, max_seconds=60).size - 32_000) < 500


def test_parallel_decode_equals_single_process_decode(tmp_path: Path):
    path = media.make_audio(tmp_path / "long.mp3", 250.0, channels=2)
    info = d.probe(path)
    single = d.decode(path, max_seconds=1000, workers=1, info=info)
    bounds = d._plan_pieces(round(info.duration * d.SAMPLE_RATE), 3)
    assert len(bounds) > 2, "the file must really be split"
    parallel = d.decode(path, max_seconds=1000, workers=3, info=info)
    assert abs(parallel.size - single.size) <= len(bounds) - 2
    n = min(parallel.size, single.size)
    away = np.ones(n, dtype=bool)
    for joint in bounds[1:-1]:
        away[max(0, joint - 2):joint + 2] = False
    np.testing.assert_array_equal(parallel[:n][away], single[:n][away])


def test_probe_parses_ffmpeg_header_lines():
    info = d.parse_probe(
        "Input #0, mp3, from 'x':\n  Duration: 01:02:03.50, start: 0.025057, bitrate: 128 kb/s\n"
        "  Stream #0:0: Audio: mp3 (mp3float), 44100 Hz, stereo, fltp, 128 kb/s\n"
    )
    assert info == d.AudioInfo(3723.5, "mp3", 44100, "stereo", "mp3")
    assert d.parse_probe("Input #0, ogg, from 'x':\n  Duration: N/A\n"
                         "  Stream #0:0: Audio: opus, 48000 Hz, mono\n").duration is None


def test_stream_without_duration_is_measured_from_packets(tmp_path: Path):
    path = tmp_path / "live.webm"
    media.ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=40", "-c:a", "libopus",
                 "-f", "webm", "-live", "1", str(path))
    assert d.probe(path).duration is None  # the header does not say
    assert d.scan_duration(path, 100) == pytest.approx(40.0, abs=0.1)
    with pytest.raises(d.AudioTooLong):
        d.decode(path, max_seconds=30)
    assert abs(d.decode(path, max_seconds=60).size - 640_000) < 800


def test_parallel_decode_falls_back_when_seeking_is_not_exact(tmp_path: Path):
    # VBR MP3 without a Xing index: ffmpeg seeks by estimate, so pieces would not line up.
    cbr = media.make_audio(tmp_path / "cbr.mp3", 250.0)
    vbr = tmp_path / "vbr.mp3"
    media.ffmpeg("-i", str(cbr), "-c:a", "libmp3lame", "-q:a", "4", "-write_xing", "0", str(vbr))
    info = d.probe(vbr)
    assert d._decode_parallel(vbr, info.duration, 3, 10**9, 600) is None
    single = d.decode(vbr, max_seconds=1000, workers=1, info=info)
    np.testing.assert_array_equal(d.decode(vbr, max_seconds=1000, workers=3, info=info), single)
