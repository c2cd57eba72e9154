"""A job's file is opened as one audio or video container, never as a reference to others.

ffmpeg follows what HLS playlists, DASH manifests, ffconcat lists, SDP files and image
sequences name: a 140-byte playlist sent as audio_base64 made the worker transcribe a file
already on its disk (issue 16). Each reference here names a sentinel: a real media file
watched with inotify for any open or read by any process, or a route on a loopback host that
counts requests. The controls show that ffmpeg without the worker's guard does open it (so
the sentinels can catch a read); the guarded entry points and the worker refuse with
FormatRefused / AUDIO_FORMAT_REFUSED, open nothing, and the worker serves the next job.
"""

from __future__ import annotations

import base64
import ctypes
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import media
from http_server import AudioHost
from models import ENGLISH
from qwen_worker.pipeline import decode as d
from qwen_worker.base.lifecycle import JOB_DIR_PREFIX

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux only")


class OpenWatch:
    """Counts opens and reads of one file by any process (inotify IN_OPEN | IN_ACCESS)."""

    _IN_ACCESS, _IN_OPEN = 0x1, 0x20

    def __init__(self, path: Path):
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0 or libc.inotify_add_watch(self._fd, os.fsencode(path),
                                                  self._IN_ACCESS | self._IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")

    def events(self) -> int:
        """Events since the last call; each is 16 bytes (a watch on a file carries no name)."""
        count = 0
        while True:
            try:
                count += len(os.read(self._fd, 65536)) // 16
            except BlockingIOError:
                return count

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class Sentinels:
    ts: Path  # real MPEG-TS audio, what the playlists and the concat list name
    m4a: Path  # real M4A audio, what the manifest names
    frames: Path  # img%03d.png: two real PNG frames
    host: AudioHost
    segment: str  # route on host serving ts: the playlist's http segment


def _sentinels(where: Path, host: AudioHost, route: str) -> Sentinels:
    ts = media.make_container(where / "sentinel.ts", 4.0, "ts")
    m4a = media.make_audio(where / "sentinel.m4a", 4.0)
    media.ffmpeg("-f", "lavfi", "-i", "color=c=red:s=8x8:r=5", "-frames:v", "2",
                 str(where / "img%03d.png"))
    host.file(route, ts.read_bytes(), "video/mp2t")
    return Sentinels(ts, m4a, where / "img%03d.png", host, route)


KINDS = ["hls absolute", "hls relative", "hls http", "dash", "ffconcat", "sdp"]


def _reference(kind: str, s: Sentinels, where: Path) -> tuple[bytes, Path | None]:
    """The bytes of `kind` for a file in directory `where`, and the sentinel file it names
    (None: it names a route on the host, or nothing that exists)."""
    if kind == "hls absolute":
        return media.hls_playlist(str(s.ts)), s.ts
    if kind == "hls relative":
        return media.hls_playlist(os.path.relpath(s.ts, where)), s.ts
    if kind == "hls http":
        return media.hls_playlist(s.host.url(s.segment)), None
    if kind == "dash":
        return media.dash_manifest(str(s.m4a)), s.m4a
    if kind == "ffconcat":  # the concat demuxer only follows plain names beside the list
        return media.ffconcat_list(s.ts.name), s.ts if s.ts.parent == where else None
    if kind == "sdp":
        return media.sdp_session(45_678), None
    raise ValueError(kind)


# --- ffmpeg's own guard, on every entry point of decode.py ---------------------------------

# Named as their makers name them, so that every ffmpeg build recognises them.
SUFFIX = {"hls absolute": "m3u8", "hls relative": "m3u8", "hls http": "m3u8", "dash": "mpd",
          "ffconcat": "ffconcat", "sdp": "sdp"}
DEMUXER = {"hls absolute": "hls", "hls relative": "hls", "hls http": "hls", "dash": "dash",
           "ffconcat": "concat", "sdp": "sdp", "image sequence": "image2"}


@pytest.fixture
def local(tmp_path, audio_host) -> Sentinels:
    return _sentinels(tmp_path, audio_host, "/segment.ts")


def _write_reference(kind: str, s: Sentinels) -> tuple[Path, Path | None]:
    """The reference file beside the sentinels (image sequences are a name pattern)."""
    if kind == "image sequence":
        return s.frames, s.frames.with_name("img001.png")
    body, sentinel = _reference(kind, s, s.ts.parent)
    path = s.ts.with_name(f"reference.{SUFFIX[kind]}")
    path.write_bytes(body)
    return path, sentinel


def _stated(seconds: float) -> d.AudioInfo:
    return d.AudioInfo(seconds, "aac", 44100, "mono", "mpegts")


# Every function of decode.py that starts ffmpeg on a job's file, each given the file alone
# (decode with `info` skips the probe; 200 s with 3 workers takes the parallel path).
ENTRY_POINTS: dict[str, Callable[[Path], object]] = {
    "probe": d.probe,
    "scan_duration": lambda p: d.scan_duration(p, 600),
    "decode": lambda p: d.decode(p, max_seconds=600, info=_stated(4.0)),
    "parallel decode": lambda p: d.decode(p, max_seconds=600, workers=3, info=_stated(200.0)),
}


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "sdp"] + ["image sequence"])
def test_control_ffmpeg_without_the_guard_opens_what_a_reference_names(local, kind):
    """The attack is real on this ffmpeg, and the sentinels see it."""
    path, sentinel = _write_reference(kind, local)
    # ffmpeg itself lets a local playlist open only file, crypto and data URLs; widened here
    # (to the loopback host) to show that the route counts a request when one is made.
    widen = ["-protocol_whitelist", "file,http,tcp"] if kind == "hls http" else []
    watch = OpenWatch(sentinel) if sentinel is not None else None
    try:
        subprocess.run([media.FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "quiet", *widen,
                        "-i", str(path), "-t", "1", "-f", "null", "-"], timeout=60)
        if watch is not None:
            assert watch.events() > 0
        else:
            assert local.host.hits.get(local.segment, 0) > 0
    finally:
        if watch is not None:
            watch.close()


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("kind", KINDS + ["image sequence"])
def test_every_entry_point_refuses_references_before_opening_them(local, kind, entry):
    path, sentinel = _write_reference(kind, local)
    watch = OpenWatch(sentinel) if sentinel is not None else None
    try:
        with pytest.raises(d.FormatRefused) as refused:
            ENTRY_POINTS[entry](path)
        assert refused.value.demuxer == DEMUXER[kind]
        assert "refers to other files or streams" in str(refused.value)
        if watch is not None:
            assert watch.events() == 0
    finally:
        if watch is not None:
            watch.close()
    assert local.host.hits.get(local.segment, 0) == 0


@pytest.mark.parametrize("body", [
    b"#EXTM3U\n#EXTINF:4,\n/srv/a.ts\n",  # a plain M3U: no HLS tags, so no ffmpeg reads it
    b'<?xml version="1.0"?>\n<MPD type="static"><Period/></MPD>\n',  # no profile: likewise
])
def test_playlists_ffmpeg_does_not_recognise_are_refused_alike(tmp_path, body):
    """The code does not depend on whether this ffmpeg build knows the playlist."""
    path = tmp_path / "input"
    path.write_bytes(body)
    with pytest.raises(d.FormatRefused):
        d.probe(path)


# --- what is allowed ------------------------------------------------------------------------

# A file of each kind the worker promises, and the demuxer ffmpeg must pick for it.
ALLOWED = {
    "mp3": "mp3", "m4a": "mov,mp4,m4a,3gp,3g2,mj2", "mp4": "mov,mp4,m4a,3gp,3g2,mj2",
    "mov": "mov,mp4,m4a,3gp,3g2,mj2", "webm": "matroska,webm", "ogg": "ogg", "opus": "ogg",
    "wav": "wav", "flac": "flac", "aac": "aac", "ts": "mpegts", "wma": "asf", "aiff": "aiff",
    "caf": "caf", "avi": "avi", "flv": "flv", "mpg": "mpeg",
}


def test_the_allowed_list_is_exactly_the_tested_containers():
    assert set(ALLOWED.values()) == set(d.ALLOWED_DEMUXERS)


def _make(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"a.{kind}"
    if kind in ("mp4", "mov"):
        return media.make_video(path, 3.0)
    if kind in media.FORMATS:
        return media.make_audio(path, 3.0, channels=2)
    return media.make_container(path, 3.0, kind, channels=2)


@pytest.mark.parametrize("kind", sorted(ALLOWED))
def test_every_allowed_container_decodes(tmp_path, kind):
    path = _make(tmp_path, kind)
    assert d.probe(path).container == ALLOWED[kind]
    samples = d.decode(path, max_seconds=60)
    # 3 s, give or take encoder priming and padding: kept whole by containers without an edit
    # list (ADTS, MPEG-TS, FLV carry AAC's 2048+ extra samples at 44.1 kHz, about 0.045 s).
    assert abs(samples.size - 48_000) < 0.06 * 16_000
    assert float(abs(samples).max()) > 0.05


@pytest.mark.parametrize("kind", ["wv", "png"])
def test_other_formats_ffmpeg_knows_are_unreadable_not_opened(tmp_path, kind):
    if kind == "png":
        path = tmp_path / "x.png"
        media.ffmpeg("-f", "lavfi", "-i", "color=c=red:s=8x8", "-frames:v", "1", str(path))
    else:
        path = media.make_container(tmp_path / "a.wv", 2.0, "wv")
    with pytest.raises(d.UnreadableAudio, match="not an audio or video container the worker"):
        d.probe(path)
    with pytest.raises(d.UnreadableAudio):
        d.decode(path, max_seconds=60, info=_stated(2.0))


# --- through the worker (runpod's local API server) ---------------------------------------

@pytest.fixture(scope="module")
def remote(host, jobs_dir, tmp_path_factory) -> Sentinels:
    # Beside jobs_dir, which must stay empty: a job's file is jobs_dir/job-*/input.
    return _sentinels(tmp_path_factory.mktemp("sentinels"), host, "/iso/segment.ts")


@pytest.fixture(scope="module")
def valid_url(host, tmp_path_factory) -> str:
    return host.file("/iso/ok.mp3",
                     media.make_audio(tmp_path_factory.mktemp("ok") / "ok.mp3", 5.0).read_bytes())


@pytest.mark.parametrize("source", ["audio_base64", "audio_url"])
@pytest.mark.parametrize("kind", KINDS)
def test_worker_refuses_references_opens_nothing_and_serves_the_next_job(
        server, host, jobs_dir, remote, valid_url, kind, source):
    # Relative names resolve against the job's own directory, jobs_dir/job-*.
    body, sentinel = _reference(kind, remote, jobs_dir / f"{JOB_DIR_PREFIX}x")
    if source == "audio_base64":
        job = {"audio_base64": base64.b64encode(body).decode()}
    else:
        job = {"audio_url": host.file(f"/iso/{kind.replace(' ', '-')}", body, "text/plain")}
    watch = OpenWatch(sentinel) if sentinel is not None else None
    try:
        result = server.runsync(job)
        assert result["status"] == "FAILED", result
        assert result["error"].startswith("AUDIO_FORMAT_REFUSED: the file is "), result["error"]
        assert f"('{DEMUXER[kind]}')" in result["error"]
        assert "/tmp" not in result["error"] and "Traceback" not in result["error"]
        if watch is not None:
            assert watch.events() == 0, "the worker opened the file the reference names"
    finally:
        if watch is not None:
            watch.close()
    assert host.hits.get(remote.segment, 0) == 0
    assert list(jobs_dir.iterdir()) == []
    ok = server.runsync({"audio_url": valid_url})
    assert ok["status"] == "COMPLETED" and ok["output"]["text"] == ENGLISH, ok
