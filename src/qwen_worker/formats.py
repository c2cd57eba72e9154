"""Writers over one Transcript: SRT, WebVTT and plain text."""

from __future__ import annotations

from typing import Callable

from .merge import Segment, Transcript


def _clock(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _cue_text(segment: Segment) -> str:
    # A blank line ends a cue in both formats, and "-->" would read as a timing line.
    lines = [ln.strip() for ln in segment.text.replace("-->", "->").splitlines()]
    return "\n".join(ln for ln in lines if ln)


def _cues(transcript: Transcript) -> list[Segment]:
    return [s for s in transcript.segments if _cue_text(s)]


def to_srt(transcript: Transcript) -> str:
    blocks = []
    for n, seg in enumerate(_cues(transcript), start=1):
        blocks.append(f"{n}\n{_clock(seg.start, ',')} --> {_clock(seg.end, ',')}\n{_cue_text(seg)}\n")
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    blocks = ["WEBVTT\n"]
    for seg in _cues(transcript):
        # "&" and "<" start entities and tags in cue text.
        text = _cue_text(seg).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        blocks.append(f"{_clock(seg.start, '.')} --> {_clock(seg.end, '.')}\n{text}\n")
    return "\n".join(blocks)


def to_text(transcript: Transcript) -> str:
    return transcript.text + ("\n" if transcript.text else "")


WRITERS: dict[str, Callable[[Transcript], str]] = {"srt": to_srt, "vtt": to_vtt, "txt": to_text}
