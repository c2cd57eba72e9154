"""Test audio made on the spot with ffmpeg (and espeak-ng where installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from qwen_worker.pipeline.decode import ffmpeg_binary

FFMPEG = ffmpeg_binary()  # PATH, else the imageio-ffmpeg wheel: pip alone sets up tests

# container/codec arguments for every format the worker must read
FORMATS: dict[str, list[str]] = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "m4a": ["-c:a", "aac", "-b:a", "64k"],
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis"],
    "opus": ["-c:a", "libopus", "-b:a", "32k"],
    "webm": ["-c:a", "libopus", "-b:a", "32k"],
}


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args],
                   check=True)


def tone_with_gaps(seconds: float, gaps: list[float], rate: int = 44100) -> np.ndarray:
    """A 440 Hz tone (amplitude 0.3) over light noise, digitally silent for 1 s at each gap."""
    t = np.arange(int(seconds * rate), dtype=np.float64) / rate
    audio = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    audio += np.random.default_rng(0).normal(0, 0.01, t.size)
    for g in gaps:
        audio[int(g * rate):int((g + 1) * rate)] = 0.0
    return audio.astype(np.float32)


def encode(path: Path, audio: np.ndarray, rate: int, fmt: str, channels: int = 1) -> Path:
    """Encode mono float32 samples with ffmpeg (fed through a pipe) into `fmt`."""
    subprocess.run(
        [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
         "-f", "f32le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0",
         "-ac", str(channels), *FORMATS[fmt], "-f", _muxer(fmt), str(path)],
        input=audio.tobytes(), check=True)
    return path


def make_audio(path: Path, seconds: float, fmt: str | None = None, gaps: list[float] = (),
               rate: int = 44100, channels: int = 1) -> Path:
    fmt = fmt or path.suffix.lstrip(".")
    return encode(path, tone_with_gaps(seconds, list(gaps), rate), rate, fmt, channels)


def _muxer(fmt: str) -> str:
    return {"m4a": "mp4", "opus": "ogg", "ogg": "ogg", "mp3": "mp3", "wav": "wav",
            "flac": "flac", "webm": "webm"}[fmt]


def make_video(path: Path, seconds: float, with_audio: bool = True) -> Path:
    """A tiny mp4/mov: 16x16 colour video, with or without an AAC track."""
    args = ["-f", "lavfi", "-i", f"color=c=blue:s=16x16:d={seconds}:r=5"]
    if with_audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    args += ["-c:v", "mpeg4", "-shortest"] if with_audio else ["-c:v", "mpeg4"]
    if with_audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    ffmpeg(*args, str(path))
    return path


def speech(path: Path, text: str) -> Path | None:
    """espeak-ng speech as WAV, or None where espeak-ng is not installed."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return None
    subprocess.run([espeak, "-w", str(path), text], check=True)
    return path


def samples_with_gaps(seconds: float, gaps: list[float], seed: int = 0) -> np.ndarray:
    """float32 16 kHz noise with exact digital silence for 1 s at each gap."""
    rng = np.random.default_rng(seed)
    audio = rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    for g in gaps:
        audio[int(g * 16000):int((g + 1) * 16000)] = 0.0
    return audio


# Further containers the worker opens (decode.ALLOWED_DEMUXERS): muxer and codec arguments.
CONTAINERS: dict[str, tuple[str, list[str]]] = {
    "aac": ("adts", ["-c:a", "aac", "-b:a", "64k"]),
    "ts": ("mpegts", ["-c:a", "aac", "-b:a", "64k"]),
    "wma": ("asf", ["-c:a", "wmav2", "-b:a", "64k"]),
    "aiff": ("aiff", ["-c:a", "pcm_s16be"]),
    "caf": ("caf", ["-c:a", "alac"]),
    "avi": ("avi", ["-c:a", "libmp3lame", "-b:a", "64k"]),
    "flv": ("flv", ["-c:a", "aac", "-b:a", "64k"]),
    "mpg": ("mpeg", ["-c:a", "mp2", "-b:a", "128k"]),
    "wv": ("wv", ["-c:a", "wavpack"]),  # real audio, but not a container the worker opens
}


def make_container(path: Path, seconds: float, kind: str, channels: int = 1) -> Path:
    """The tone of make_audio in one of CONTAINERS, chosen by `kind` (a file extension)."""
    muxer, codec = CONTAINERS[kind]
    subprocess.run(
        [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
         "-f", "f32le", "-ar", "44100", "-ac", "1", "-i", "pipe:0",
         "-ac", str(channels), *codec, "-f", muxer, str(path)],
        input=tone_with_gaps(seconds, []).tobytes(), check=True)
    return path


# Files that name other files or addresses: ffmpeg opens what they name unless refused.
def hls_playlist(segment: str) -> bytes:
    """The playlist of issue 16: one 4 s segment, named by a path (absolute or relative) or URL."""
    return (f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\n{segment}\n"
            "#EXT-X-ENDLIST\n").encode()


def dash_manifest(base_url: str) -> bytes:
    """A static DASH manifest whose one audio representation is the file at base_url."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" minBufferTime="PT1S"'
        ' profiles="urn:mpeg:dash:profile:isoff-on-demand:2011" mediaPresentationDuration="PT4S">\n'
        ' <Period duration="PT4S"><AdaptationSet mimeType="audio/mp4" contentType="audio">\n'
        '  <Representation id="a" bandwidth="64000" codecs="mp4a.40.2" audioSamplingRate="44100">\n'
        f'   <BaseURL>{base_url}</BaseURL>\n'
        '  </Representation>\n </AdaptationSet></Period>\n</MPD>\n').encode()


def ffconcat_list(*names: str) -> bytes:
    """An ffconcat list of files relative to its own directory."""
    return ("ffconcat version 1.0\n" + "".join(f"file {n}\n" for n in names)).encode()


def sdp_session(port: int) -> bytes:
    """An SDP description of a PCMU audio stream over RTP to 127.0.0.1:port."""
    return (f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=audio\nc=IN IP4 127.0.0.1\nt=0 0\n"
            f"m=audio {port} RTP/AVP 0\na=rtpmap:0 PCMU/8000\n").encode()
