"""Who spoke when: the diarizer's speaker turns, and their merge into words and segments."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    """One speaker's exclusive stretch of the file (no overlap with other turns), in seconds."""

    start: float
    end: float
    speaker: str  # "SPEAKER_00", "SPEAKER_01", ... in order of first appearance


@dataclass(frozen=True)
class SpeakerCount:
    """What the request says about the number of speakers: an exact count, or bounds."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
