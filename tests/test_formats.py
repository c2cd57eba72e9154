"""SRT and WebVTT writers load back in standard subtitle parsers with the same cues."""

from __future__ import annotations

import html
import io
import re
from datetime import timedelta

import srt
import webvtt

from qwen_worker.pipeline.formats import to_srt, to_text, to_vtt
from qwen_worker.base.types import Segment, Transcript

SEGMENTS = [
    Segment(0, 0.0, 2.5, "Hello, world."),
    Segment(1, 2.5, 3661.007, "Tom & Jerry <live> --> now"),
    Segment(2, 3700.0, 3701.5, "你好，世界。"),
]


def _transcript(segments=SEGMENTS) -> Transcript:
    return Transcript("Hello, world.", "English", ["English"], 3702.0, [], list(segments), [], [])


def test_srt_parses_back_to_the_same_cues():
    cues = list(srt.parse(to_srt(_transcript())))
    assert [c.index for c in cues] == [1, 2, 3]
    assert cues[1].start == timedelta(seconds=2.5)
    assert cues[1].end == timedelta(seconds=3661, milliseconds=7)
    assert cues[0].content == "Hello, world."
    assert cues[2].content == "你好，世界。"
    assert "01:01:01,007" in to_srt(_transcript())


def test_vtt_parses_back_to_the_same_cues():
    text = to_vtt(_transcript())
    assert text.startswith("WEBVTT\n")
    cues = webvtt.from_buffer(io.StringIO(text)).captions
    assert [(c.start, c.end) for c in cues] == [
        ("00:00:00.000", "00:00:02.500"), ("00:00:02.500", "01:01:01.007"),
        ("01:01:40.000", "01:01:41.500")]
    # Cue text is escaped per the WebVTT spec; unescaped it reads as written.
    assert html.unescape(cues[1].text) == "Tom & Jerry <live> --> now"
    timing = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}$")
    assert all("-->" not in ln for ln in text.splitlines() if not timing.match(ln))
    assert "<live>" not in text
    assert cues[2].text == "你好，世界。"


def test_empty_transcript_gives_valid_empty_files():
    empty = _transcript([])
    assert list(srt.parse(to_srt(empty))) == []
    assert webvtt.from_buffer(io.StringIO(to_vtt(empty))).captions == []
    assert to_text(Transcript("", "", [], 1.0, [], [], [], [])) == ""
