"""Who spoke when: the diarizer's speaker turns, and their merge into words and segments."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from qwen_worker.base.types import Segment, SpeakerCount, Turn, Word
from qwen_worker.pipeline.subtitles import build_segments, can_cut

if TYPE_CHECKING:
    from qwen_worker.base.types import Transcript


# A word that overlaps no turn takes the nearest one within this gap (a word spoken in a short
# pause the diarizer left between turns); farther away, it has no speaker.
NEAREST_TURN_SECONDS = 0.5


class DiarizationUnavailable(Exception):
    """Diarization was asked for, but this worker has no diarizer."""


class TurnSource(Protocol):
    """What the pipeline needs of a diarizer (diarize.Diarizer is one)."""

    def diarize(self, samples: np.ndarray, count: SpeakerCount) -> list[Turn]: ...


def assign_speakers(words: Sequence[Word], turns: Sequence[Turn],
                    tolerance: float = NEAREST_TURN_SECONDS) -> list[str | None]:
    """Each word's speaker: the turn it overlaps most (the earlier on a tie), else the nearest
    turn within `tolerance`, else None. `turns` are exclusive and sorted; `words` in time
    order (a word out of order only moves the pointer back a little): one sweep over both."""
    out: list[str | None] = []
    j = 0  # the first turn that may still reach a word: turns before it end too early
    for w in words:
        # Reach is measured as the gap is (w.start - t.end), so a turn exactly `tolerance`
        # away is found whatever the rounding of w.start - tolerance would be.
        while j > 0 and w.start - turns[j - 1].end <= tolerance:
            j -= 1
        while j < len(turns) and w.start - turns[j].end > tolerance:
            j += 1
        best: tuple[float, float] | None = None  # (-overlap, gap) of the best turn so far
        speaker = None
        k = j
        while k < len(turns) and turns[k].start - w.end <= tolerance:
            t = turns[k]
            overlap = min(t.end, w.end) - max(t.start, w.start)
            gap = max(t.start - w.end, w.start - t.end, 0.0)
            key = (-max(overlap, 0.0), gap)
            if gap <= tolerance and (best is None or key < best):
                best, speaker = key, t.speaker
            k += 1
        out.append(speaker)
    return out


def talk_time(turns: Sequence[Turn]) -> list[dict]:
    """Each speaker's label and seconds spoken, in order of first appearance."""
    seconds: dict[str, float] = {}
    for t in turns:
        seconds[t.speaker] = seconds.get(t.speaker, 0.0) + max(0.0, t.end - t.start)
    return [{"speaker": label, "seconds": round(s, 3)} for label, s in seconds.items()]


def speaker_runs(pieces: Sequence[Word]) -> list[list[Word]]:
    """Consecutive words of one speaker. A change where the text has no place to cut (inside
    "3.5", say) stays in the run before it: a cue never cuts a token."""
    runs: list[list[Word]] = []
    for w in pieces:
        if runs and (w.speaker == runs[-1][-1].speaker or not can_cut(runs[-1][-1], w)):
            runs[-1].append(w)
        else:
            runs.append([w])
    return runs


def diarize_transcript(transcript: Transcript, turns: Sequence[Turn]) -> Transcript:
    """The transcript with speakers: every word (aligned, estimated or untimed) gets the
    speaker of its time, segments are cut again at speaker changes with the same cue limits
    and carry their speaker, and `speakers` lists the talk time of each. Text, times and
    words are otherwise unchanged."""
    if transcript.segments and not transcript.pieces:  # re-cutting would lose the text
        raise ValueError("the transcript has no pieces to cut segments from (see merge_chunks)")
    turns = sorted(turns, key=lambda t: (t.start, t.end))
    labelled = [replace(w, speaker=s)
                for w, s in zip(transcript.pieces, assign_speakers(transcript.pieces, turns))]
    # `words` are the aligned pieces again: the same times give the same speakers.
    words = [replace(w, speaker=s)
             for w, s in zip(transcript.words, assign_speakers(transcript.words, turns))]
    segments: list[Segment] = []
    runs = speaker_runs(labelled)
    for i, run in enumerate(runs):
        until = runs[i + 1][0].start if i + 1 < len(runs) else transcript.duration
        for seg in build_segments(run, transcript.subtitle, until=round(until, 3)):
            segments.append(replace(seg, id=len(segments), speaker=run[0].speaker))
    return replace(transcript, words=words, segments=segments, pieces=labelled,
                   speakers=talk_time(turns))

