"""Writers over one Transcript: SRT, WebVTT and plain text."""

from __future__ import annotations

import re
from typing import Callable

from qwen_worker.base.types import Segment, Transcript
from qwen_worker.pipeline.speakers import speaker_runs
from qwen_worker.pipeline.subtitles import join_words, wrap


def _clock(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _lines(transcript: Transcript, segment: Segment) -> list[str]:
    # One line of segment text -> at most max_line_count lines; never a blank line, which
    # would end the cue in both formats.
    return wrap(segment.text, transcript.subtitle)


def _srt_line(line: str) -> str:
    # SRT has no escapes; "-->" would read as a timing line ("--->" too, hence the regex).
    return re.sub(r"-{2,}>", "->", line)


def _vtt_line(line: str) -> str:
    # "&" and "<" start entities and tags in WebVTT cue text, and a cue must not contain
    # "-->": escaping ">" too removes it without changing what is shown.
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _labelled(transcript: Transcript, segment: Segment) -> str | None:
    """The speaker a cue shows: only on a diarized transcript with labels on."""
    if transcript.speakers is None or not transcript.subtitle.speaker_labels:
        return None
    return segment.speaker


def to_srt(transcript: Transcript) -> str:
    blocks = []
    for seg in transcript.segments:
        lines = _lines(transcript, seg)
        if lines:
            speaker = _labelled(transcript, seg)
            if speaker is not None:  # SRT has no speaker markup: the convention is a prefix
                lines[0] = f"{speaker}: {lines[0]}"
            text = "\n".join(_srt_line(ln) for ln in lines)
            blocks.append(f"{len(blocks) + 1}\n{_clock(seg.start, ',')} --> "
                          f"{_clock(seg.end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    blocks = ["WEBVTT\n"]
    for seg in transcript.segments:
        lines = _lines(transcript, seg)
        if lines:
            text = "\n".join(_vtt_line(ln) for ln in lines)
            speaker = _labelled(transcript, seg)
            if speaker is not None:  # a voice span: players show or style the speaker
                text = f"<v {_vtt_line(speaker)}>{text}"
            blocks.append(f"{_clock(seg.start, '.')} --> {_clock(seg.end, '.')}\n{text}\n")
    return "\n".join(blocks)


def to_text(transcript: Transcript) -> str:
    if transcript.speakers is not None and transcript.subtitle.speaker_labels:
        # One line per change of speaker, as a script reads.
        lines = ((run[0].speaker, join_words(run)) for run in speaker_runs(transcript.pieces))
        return "".join((f"{speaker}: " if speaker else "") + text + "\n"
                       for speaker, text in lines if text)
    return transcript.text + ("\n" if transcript.text else "")


WRITERS: dict[str, Callable[[Transcript], str]] = {"srt": to_srt, "vtt": to_vtt, "txt": to_text}
