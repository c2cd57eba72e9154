"""Decode any audio or video file that ffmpeg reads into float32 mono 16 kHz samples.

ffmpeg's raw output is read straight into one preallocated numpy buffer: no temporary WAV,
no second copy of the audio, no resampling in Python. Long files are decoded by several
ffmpeg processes over time ranges, each writing into its own slice of that buffer.
"""

from __future__ import annotations

import contextvars
import dataclasses
import mmap
import re
import shutil
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from qwen_worker.base.lifecycle import LIFETIME
from qwen_worker.base.types import SAMPLE_RATE

BYTES_PER_SAMPLE = 4  # float32
# Below this, one process is as fast as several (start-up cost dominates).
PARALLEL_MIN_SECONDS = 120.0
# Each process needs at least this much audio, so joints stay few.
PARALLEL_MIN_PIECE_SECONDS = 60.0
_READ_BLOCK = 1 << 20  # bytes per read from ffmpeg's pipe
SEEK_LEAD_SECONDS = 2.0
# Samples before each joint decoded twice, to check the pieces line up (see _decode_parallel).
JOINT_CHECK_SAMPLES = SAMPLE_RATE // 4
JOINT_TOLERANCE = 1e-4
# How far the decoded audio may fall short of the duration the container states before it
# counts as truncated: encoder delay and padding (AAC priming, Opus pre-skip) are milliseconds.
SHORTFALL_SECONDS = 2.0
SHORTFALL_FRACTION = 0.005
# ffmpeg's exit status after it caught SIGTERM/SIGINT and stopped early.
_FFMPEG_SIGNALLED = 255
# Signals of a process failing by itself, as against being stopped (SIGKILL, SIGTERM).
_CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                            signal.SIGABRT})


class DecodeError(Exception):
    """Base class: the input could not be turned into samples."""


class UnreadableAudio(DecodeError):
    """ffmpeg cannot read the data as any container or codec it knows."""


class NoAudioStream(DecodeError):
    """The container is readable but holds no audio stream (e.g. a silent video, an image)."""


class EmptyAudio(DecodeError):
    """The audio stream decodes to zero samples."""


class TruncatedAudio(DecodeError):
    """The stream ends well before the duration the container states."""


class DecoderKilled(DecodeError):
    """ffmpeg was killed from outside (a signal, the OOM killer) before it finished."""


class DecoderCrashed(UnreadableAudio):
    """ffmpeg itself crashed on the data (SIGSEGV and the like): this build cannot read it,
    and a retry on the same build would crash again."""


class FormatRefused(DecodeError):
    """The file is a playlist, manifest or other format that names further files or streams."""

    def __init__(self, demuxer: str):
        self.demuxer = demuxer
        what = REFERENCE_DEMUXERS.get(demuxer, "a format")
        super().__init__(f"the file is {what} ('{demuxer}'), which refers to other files or "
                         "streams; the worker opens only an audio or video file itself, never "
                         "what a file points to")


class AudioTooLong(DecodeError):
    """The audio is longer than the configured limit."""

    def __init__(self, seconds: float | None, limit: float):
        self.seconds = seconds
        self.limit = limit
        if seconds is None:
            super().__init__(f"the audio is longer than the {limit:.0f} s limit")
        else:
            super().__init__(f"the audio is {seconds:.0f} s long; the limit is {limit:.0f} s")


@dataclass(frozen=True)
class AudioInfo:
    """What the container says before decoding. duration is None when it does not say."""

    duration: float | None
    codec: str
    sample_rate: int | None
    channels: str
    container: str
    # ffmpeg guessed the duration from the bitrate (MP3 without an index): not a promise.
    duration_estimated: bool = False
    has_video: bool = False


# The only demuxers ffmpeg may use on a job's file (names as `ffmpeg -demuxers` lists them):
# containers that carry their own audio. ffmpeg checks the probed demuxer against this list
# before that demuxer reads anything, so an HLS playlist, DASH manifest, ffconcat list, SDP
# file or image sequence never opens the files or addresses it names.
ALLOWED_DEMUXERS: tuple[str, ...] = (
    "mp3",
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "ogg",  # Vorbis, Opus, FLAC in Ogg
    "wav",
    "flac",
    "aac",  # ADTS
    "mpegts",
    "asf",  # WMA, WMV
    "aiff",
    "caf",
    "avi",
    "flv",
    "mpeg",  # program streams: .mpg, .vob
)
# Refused demuxers that read other files or streams: FormatRefused. Any other refused demuxer
# (an image, a container not listed) is UnreadableAudio, like data ffmpeg does not know.
REFERENCE_DEMUXERS: dict[str, str] = {
    "hls": "an M3U/HLS playlist",
    "dash": "a DASH manifest",
    "concat": "an ffconcat list",
    "sdp": "an SDP session description",
    "rtp": "an RTP session",
    "rtsp": "an RTSP session",
    "image2": "an image sequence",
    "imf": "an IMF composition playlist",
    "avisynth": "an AviSynth script",
    "vapoursynth": "a VapourSynth script",
}
# Input options for every ffmpeg that opens a job's file: the file is a local path, so no
# other protocol (http, tcp, udp, pipe) is needed for it.
INPUT_GUARD: tuple[str, ...] = ("-format_whitelist", ",".join(ALLOWED_DEMUXERS),
                                "-protocol_whitelist", "file")
# ffmpeg names the refused demuxer only in its log line's prefix: "[hls @ 0x55...] Format not ...".
_REFUSED_RE = re.compile(r"^\[([^\]@]+?) @ [^\]]*\] Format not on whitelist", re.MULTILINE)


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """ffmpeg from PATH, else the static binary that the imageio-ffmpeg wheel ships."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise DecodeError("ffmpeg not found on PATH and imageio-ffmpeg is not installed") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


_INPUT_RE = re.compile(r"^Input #0, ([^,]+(?:,[^,]+)*?), from ", re.MULTILINE)
_DURATION_RE = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.MULTILINE)
# A real video track; cover art in MP3/M4A is an "(attached pic)" video stream and does not count.
_VIDEO_RE = re.compile(r"^\s*Stream #0:\d+.*?: Video: (?!.*attached pic).*$", re.MULTILINE)
_AUDIO_RE = re.compile(r"^\s*Stream #0:\d+.*?: Audio: ([^,\s]+)[^,]*(?:, (\d+) Hz)?(?:, ([^,]+))?", re.MULTILINE)


def parse_probe(stderr: str) -> AudioInfo:
    """Read container, duration and first audio stream from `ffmpeg -i` output."""
    container = _INPUT_RE.search(stderr)
    if container is None:
        raise UnreadableAudio("the data is not a recognised audio or video format")
    audio = _AUDIO_RE.search(stderr)
    if audio is None:
        raise NoAudioStream("the file has no audio stream")
    duration = None
    found = _DURATION_RE.search(stderr)
    if found:  # "Duration: N/A" does not match: a stream that does not say
        h, m, s = found.groups()
        duration = int(h) * 3600 + int(m) * 60 + float(s)
    return AudioInfo(
        duration=duration,
        codec=audio.group(1),
        sample_rate=int(audio.group(2)) if audio.group(2) else None,
        channels=(audio.group(3) or "").strip(),
        container=container.group(1),
        duration_estimated="Estimating duration from bitrate" in stderr,
        has_video=_VIDEO_RE.search(stderr) is not None,
    )


def raise_if_refused(stderr: str) -> None:
    """Raise if ffmpeg refused the file's demuxer (not in ALLOWED_DEMUXERS) before reading it."""
    found = _REFUSED_RE.search(stderr)
    if found is None:
        return
    demuxer = found.group(1).strip()
    if demuxer in REFERENCE_DEMUXERS:
        raise FormatRefused(demuxer)
    raise UnreadableAudio(f"the data reads as '{demuxer}', which is not an audio or video "
                          "container the worker opens")


def reference_by_signature(path: Path) -> str | None:
    """'hls' or 'dash' by the file's first bytes, else None.

    Some ffmpeg builds do not recognise these at all (an HLS playlist without an .m3u8 name
    since ffmpeg 7, DASH without libxml2): without this the same playlist would be
    AUDIO_FORMAT_REFUSED on one build and AUDIO_UNREADABLE on another.
    """
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"#EXTM3U"):
        return "hls"
    if head.startswith(b"<") and b"<MPD" in head:
        return "dash"
    return None


def probe(path: Path, timeout_s: float = 60.0) -> AudioInfo:
    """Headers only: fast even for hours of audio. Refuses playlists and other references
    (FormatRefused) before anything they name is opened."""
    proc = subprocess.Popen([ffmpeg_binary(), "-hide_banner", "-nostdin", *INPUT_GUARD,
                             "-i", str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    with LIFETIME.stopper(proc.kill):
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise UnreadableAudio("reading the file's headers timed out") from None
    LIFETIME.raise_if_stopping()
    _raise_if_died(proc.returncode, "reading the file's headers")
    text = stderr.decode("utf-8", "replace")
    raise_if_refused(text)
    if _INPUT_RE.search(text) is None:  # not recognised: a playlist this ffmpeg does not know?
        reference = reference_by_signature(path)
        if reference is not None:
            raise FormatRefused(reference)
    return parse_probe(text)


def _ffmpeg_args(path: Path, start: float, length: float | None) -> list[str]:
    """ffmpeg writing float32 mono 16 kHz from `start` seconds, for `length` seconds or to the end."""
    args = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", *INPUT_GUARD]
    if start > 0:
        # Seek the input to a little before `start`, then let ffmpeg decode and drop the lead-in:
        # the decoder is warmed up (MP3 bit reservoir) by the joint, so the samples equal a
        # decode from the beginning. Seeking straight to `start` differs for ~1600 samples.
        lead = min(start, SEEK_LEAD_SECONDS)
        args += ["-ss", f"{start - lead:.6f}", "-i", str(path), "-ss", f"{lead:.6f}"]
    else:
        args += ["-i", str(path)]
    if length is not None:
        args += ["-t", f"{length:.6f}"]
    # -flush_packets 0: ffmpeg otherwise flushes the pipe after every ~1.7 KB packet, waking
    # the reader ~125,000 times per audio hour (measured ~1.3 s of CPU per hour).
    args += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(SAMPLE_RATE),
             "-flush_packets", "0", "-f", "f32le", "pipe:1"]
    return args


def _run_into(args: list[str], buf: np.ndarray, start: int, limit: int | None,
              timeout_s: float, grow: bool, head: np.ndarray | None = None
              ) -> tuple[np.ndarray, int]:
    """Stream ffmpeg's samples into buf[start:]; returns (buf, samples written).

    With `head`, the first head.size samples go there instead (they are not counted).

    With grow=True the buffer is enlarged when full (duration unknown or understated), up to
    `limit` samples, past which _TooManySamples is raised; with grow=False writing stops at
    the end of the buffer and the rest of the output is discarded.
    """
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    with LIFETIME.stopper(proc.kill):  # a stopped job's decoder dies at once
        return _read_into(proc, buf, start, limit, timeout_s, grow, head)


def _read_into(proc: subprocess.Popen, buf: np.ndarray, start: int, limit: int | None,
               timeout_s: float, grow: bool, head: np.ndarray | None) -> tuple[np.ndarray, int]:
    timed_out = threading.Event()

    def kill_on_timeout() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_s, kill_on_timeout)
    timer.start()
    stderr_chunks: list[bytes] = []
    err_reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()),
                                  daemon=True)
    err_reader.start()
    pos = start * BYTES_PER_SAMPLE
    over_limit = False
    finished = False
    try:
        if head is not None:
            view, filled = memoryview(head).cast("B"), 0
            while filled < head.nbytes:
                n = proc.stdout.readinto(view[filled:])
                if not n:
                    break
                filled += n
        while True:
            room = buf.nbytes - pos
            if room <= 0:
                if not grow:
                    if not proc.stdout.read(_READ_BLOCK):
                        break
                    continue
                if limit is not None and buf.size >= limit:
                    over_limit = True
                    break
                new_size = max(buf.size * 2, buf.size + _READ_BLOCK // BYTES_PER_SAMPLE)
                buf = _grow(buf, new_size if limit is None else min(new_size, limit))
                continue
            view = memoryview(buf).cast("B")[pos:pos + min(room, _READ_BLOCK)]
            n = proc.stdout.readinto(view)
            if not n:
                break
            pos += n
        finished = True
    finally:
        if over_limit or not finished:  # refused, or interrupted (SIGTERM raises in here)
            proc.kill()
        proc.stdout.close()
        proc.wait()
        timer.cancel()
        err_reader.join(timeout=5)
    if over_limit:
        raise _TooManySamples()
    if timed_out.is_set():
        raise UnreadableAudio(f"decoding took longer than {timeout_s:.0f} s")
    LIFETIME.raise_if_stopping()
    # Whatever it wrote is only the start of the audio: never pass that off as the file.
    _raise_if_died(proc.returncode, "decoding")
    if proc.returncode != 0:
        stderr = b"".join(stderr_chunks).decode("utf-8", "replace")
        raise_if_refused(stderr)
        raise UnreadableAudio(_first_line(stderr) or "ffmpeg could not decode the audio")
    return buf, pos // BYTES_PER_SAMPLE - start


def _raise_if_died(returncode: int, doing: str) -> None:
    """A crash of ffmpeg on the data (DecoderCrashed) or a stop from outside (DecoderKilled)."""
    if returncode < 0 and -returncode in _CRASH_SIGNALS:
        raise DecoderCrashed(f"ffmpeg crashed ({signal.Signals(-returncode).name}) {doing}: "
                             "this ffmpeg build cannot read the file")
    if returncode < 0 or returncode == _FFMPEG_SIGNALLED:
        raise DecoderKilled(f"the decoder was stopped from outside (exit status {returncode})")


class _TooManySamples(Exception):
    pass


def _buffer(size: int) -> np.ndarray:
    """An uninitialised float32 buffer on anonymous memory with ordinary pages.

    numpy asks for transparent huge pages on large arrays; on hosts that defragment memory on
    demand, the first writes into a fresh 230 MB buffer then stall in the kernel (measured
    0.6 s of system time per audio hour, against 0.1 s with ordinary pages).
    """
    return np.frombuffer(mmap.mmap(-1, max(size, 1) * BYTES_PER_SAMPLE), dtype=np.float32)


def _grow(buf: np.ndarray, size: int) -> np.ndarray:
    bigger = _buffer(size)
    bigger[: buf.size] = buf
    return bigger


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _plan_pieces(total: int, workers: int) -> list[int]:
    """Sample boundaries of equal pieces, [0, b1, ..., total], each joint on a whole second.

    A whole second is a whole number of samples at every input rate, so every process's
    resampler starts in the same phase as a single decode would be at that point.
    """
    n = max(1, min(workers, int(total / (PARALLEL_MIN_PIECE_SECONDS * SAMPLE_RATE))))
    inner = [round(k * total / n / SAMPLE_RATE) * SAMPLE_RATE for k in range(1, n)]
    return [0, *inner, total]


def scan_duration(path: Path, max_seconds: float, timeout_s: float = 300.0) -> float:
    """Length of the first audio stream from its packets (stream copy, no decoding).

    For containers whose header does not say (live WebM, some streams): reading packet
    timestamps is I/O-bound, so a 100-hour file is refused in seconds, before any sample
    is allocated. Raises AudioTooLong as soon as the running length passes max_seconds, and
    FormatRefused for a playlist or other reference (nothing it names is opened).
    """
    args = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", *INPUT_GUARD,
            "-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "null", "-progress", "pipe:1",
            "-stats_period", "0.2", "-"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    stderr_chunks: list[str] = []
    err_reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()),
                                  daemon=True)
    err_reader.start()
    seconds = 0.0
    try:
        with LIFETIME.stopper(proc.kill):
            for line in proc.stdout:
                key, _, value = line.strip().partition("=")
                if key == "out_time_us" and value.lstrip("-").isdigit():
                    seconds = max(seconds, int(value) / 1e6)
                    if seconds > max_seconds:
                        raise AudioTooLong(None, max_seconds)
    finally:
        proc.kill()
        proc.stdout.close()
        proc.wait()
        timer.cancel()
        err_reader.join(timeout=5)
    LIFETIME.raise_if_stopping()
    raise_if_refused("".join(stderr_chunks))
    return seconds


def decode(path: Path, *, max_seconds: float, workers: int = 1, info: AudioInfo | None = None,
           timeout_s: float = 900.0) -> np.ndarray:
    """Decode to float32 mono 16 kHz. Refuses audio over max_seconds before or while decoding."""
    info = info if info is not None else probe(path)
    if info.duration is None:
        info = dataclasses.replace(info, duration=scan_duration(path, max_seconds) or None)
    if info.duration is not None and info.duration > max_seconds:
        raise AudioTooLong(info.duration, max_seconds)
    limit = int(max_seconds * SAMPLE_RATE) + 1
    samples = None
    if workers > 1 and info.duration is not None and info.duration >= PARALLEL_MIN_SECONDS:
        samples = _decode_parallel(path, info.duration, workers, limit, timeout_s)
    if samples is None:
        samples = _decode_single(path, info.duration, limit, timeout_s, max_seconds)
    if samples.size == 0:
        raise EmptyAudio("the audio stream contains no samples")
    _check_complete(samples.size / SAMPLE_RATE, info)
    return samples


def _check_complete(seconds: float, info: AudioInfo) -> None:
    """Refuse a stream that ends well before its stated duration (a cut or damaged file).

    Skipped where the stated duration is no promise: estimated from the bitrate, or a
    container with video, whose duration may be the video's.
    """
    if info.duration is None or info.duration_estimated or info.has_video:
        return
    missing = info.duration - seconds
    if missing > max(SHORTFALL_SECONDS, SHORTFALL_FRACTION * info.duration):
        raise TruncatedAudio(f"the audio stream ends at {seconds:.1f} s but the file states "
                             f"{info.duration:.1f} s: it is cut short or damaged")


def _decode_single(path: Path, duration: float | None, limit: int, timeout_s: float,
                   max_seconds: float) -> np.ndarray:
    expected = int((duration if duration is not None else 60.0) * SAMPLE_RATE) + SAMPLE_RATE
    buf = _buffer(min(expected, limit))
    # -t stops ffmpeg itself just past the limit when the container understates the length.
    args = _ffmpeg_args(path, 0.0, max_seconds + 1.0)
    try:
        buf, n = _run_into(args, buf, 0, limit, timeout_s, grow=True)
    except _TooManySamples:
        raise AudioTooLong(None, max_seconds) from None
    if n >= limit:
        raise AudioTooLong(n / SAMPLE_RATE, max_seconds)
    return buf[:n]


def _decode_parallel(path: Path, duration: float, workers: int, limit: int,
                     timeout_s: float) -> np.ndarray | None:
    """Decode equal time ranges concurrently into one buffer; None if the pieces do not tile.

    Each piece after the first also decodes a short overlap before its start, which must equal
    the end of the previous piece: a file whose seeking is not sample-exact (such as a VBR MP3
    without a Xing index) fails this check and falls back to one process.
    """
    total = int(round(duration * SAMPLE_RATE))
    bounds = _plan_pieces(total, workers)
    if len(bounds) <= 2:
        return None
    # The last piece reads to the end of the stream, whose true length may differ from the header.
    slack = SAMPLE_RATE * 5
    buf = _buffer(min(total + slack, limit))
    heads = {k: np.empty(JOINT_CHECK_SAMPLES, np.float32) for k in range(1, len(bounds) - 1)}

    def run_piece(k: int) -> int:
        start, end = bounds[k], bounds[k + 1]
        last = k == len(bounds) - 2
        head = heads.get(k)
        first = start - (head.size if head is not None else 0)
        length = None if last else (end - first) / SAMPLE_RATE
        slot = buf[: (buf.size if last else end)]
        _, n = _run_into(_ffmpeg_args(path, first / SAMPLE_RATE, length), slot, start,
                         None, timeout_s, grow=False, head=head)
        return n

    with ThreadPoolExecutor(max_workers=len(bounds) - 1) as pool:
        # Each piece runs in the job's context, so stopping the job kills its process too.
        futures = [pool.submit(contextvars.copy_context().run, run_piece, k)
                   for k in range(len(bounds) - 1)]
        lengths = [f.result() for f in futures]
    for k, n in enumerate(lengths[:-1]):
        expected = bounds[k + 1] - bounds[k]
        if n < expected - 1:
            return None  # seeking landed short: fall back to one process
        if n == expected - 1:
            # One sample short at a joint: repeat the last one rather than leave garbage.
            buf[bounds[k + 1] - 1] = buf[bounds[k + 1] - 2]
    for k, head in heads.items():
        tail = buf[bounds[k] - head.size:bounds[k]]
        if not np.allclose(head, tail, rtol=0, atol=JOINT_TOLERANCE):
            return None  # the pieces do not line up: fall back to one process
    end = bounds[-2] + lengths[-1]
    if end >= buf.size and buf.size < limit:
        return None  # the header understated the length: let the growing decoder handle it
    if end >= limit:
        raise AudioTooLong(end / SAMPLE_RATE, limit / SAMPLE_RATE)
    return buf[:end]
