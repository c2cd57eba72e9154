"""Test audio made on the spot with ffmpeg (and espeak-ng where installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"

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


def tone_with_gaps(seconds: float, gaps: list[float], rate: int = 44100) -> str:
    """lavfi source: a 440 Hz tone with light noise, silent for 1 s starting at each gap time."""
    silent = "*".join(f"(1-between(t,{g},{g + 1}))" for g in gaps) or "1"
    expr = f"0.3*sin(2*PI*440*t)*{silent}"
    return f"aevalsrc='{expr}':s={rate}:d={seconds}"


def make_audio(path: Path, seconds: float, fmt: str | None = None, gaps: list[float] = (),
               rate: int = 44100, channels: int = 1) -> Path:
    fmt = fmt or path.suffix.lstrip(".")
    ffmpeg("-f", "lavfi", "-i", tone_with_gaps(seconds, list(gaps), rate),
           "-ac", str(channels), *FORMATS[fmt], "-f", _muxer(fmt), str(path))
    return path


def _muxer(fmt: str) -> str:
    return {"m4a": "mp4", "opus": "ogg", "ogg": "ogg", "mp3": "mp3", "wav": "wav",
            "flac": "flac", "webm": "webm"}[fmt]


def make_video(path: Path, seconds: float, with_audio: bool = True) -> Path:
    """A tiny mp4/mov: 16x16 colour video, with or without an AAC track."""
    args = ["-f", "lavfi", "-i", f"color=c=blue:s=16x16:d={seconds}:r=5"]
    if with_audio:
        args += ["-f", "lavfi", "-i", tone_with_gaps(seconds, [])]
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
