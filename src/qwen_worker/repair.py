"""Repairs of the two failures Qwen3 users meet most, planned here as pure functions.

1. Repetition loops and truncated output: a chunk whose output loops or reaches
   MAX_NEW_TOKENS is transcribed once more as two halves cut at its quietest point; the
   cleaner of the two results is kept (`split_at_quietest`, `prefer_halves`).
2. Collapsed word timestamps (Qwen3-ForcedAligner piling a run of words onto one instant,
   usually at the tail of long inputs): the run is aligned again on its own audio window,
   from the last good word's end to the next good word's start; if that is still collapsed,
   its words are spread evenly over the window (`find_collapsed`, `repair_window`,
   `spread_evenly`).

The pipeline makes the engine calls; everything here is chunk-time arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .chunking import Chunk, quietest_point
from .decode import SAMPLE_RATE
from .engine import AlignedToken, AsrOutput

# A run of at least this many words on one start time (or with zero duration) is a collapse;
# two short words can legitimately share an 80 ms aligner bin.
MIN_COLLAPSED_RUN = 3
_SAME = 1e-3  # seconds: the aligner reports times rounded to the millisecond
# The halves of a retried chunk are cut in its middle half, so neither is a sliver.
_CUT_LO, _CUT_HI = 0.25, 0.75


def needs_retry(out: AsrOutput) -> bool:
    return out.repetition_loop or out.hit_token_limit


def flaws(outputs: Sequence[AsrOutput]) -> int:
    return sum(int(o.repetition_loop) + int(o.hit_token_limit) for o in outputs)


def split_at_quietest(chunk: Chunk, audio) -> tuple[Chunk, Chunk]:
    """Two halves of a chunk, cut at the quietest 200 ms in its middle half (indexes unset)."""
    n = chunk.end - chunk.start
    cut = quietest_point(audio, chunk.start + int(n * _CUT_LO), chunk.start + int(n * _CUT_HI))
    return (Chunk(chunk.index, chunk.start, cut, audio[chunk.start:cut]),
            Chunk(chunk.index, cut, chunk.end, audio[cut:chunk.end]))


def prefer_halves(original: AsrOutput, halves: Sequence[AsrOutput]) -> bool:
    """The retry wins when its halves carry fewer flaws than the original output."""
    return flaws(halves) < flaws([original])


@dataclass(frozen=True)
class CollapsedSpan:
    """tokens[first:last + 1] collapsed; window is the chunk-time stretch they must lie in."""

    first: int
    last: int
    window_start: float
    window_end: float


def _collapsed_flags(tokens: Sequence[AlignedToken]) -> list[bool]:
    flags = [False] * len(tokens)
    i = 0
    while i < len(tokens):
        j = i
        while j + 1 < len(tokens) and abs(tokens[j + 1].start - tokens[i].start) < _SAME:
            j += 1
        if j - i + 1 >= MIN_COLLAPSED_RUN:
            flags[i:j + 1] = [True] * (j - i + 1)
        i = j + 1
    i = 0
    while i < len(tokens):  # zero-length words in a row, even at different starts
        j = i
        while j < len(tokens) and tokens[j].end - tokens[j].start < _SAME:
            j += 1
        if j - i >= MIN_COLLAPSED_RUN:
            flags[i:j] = [True] * (j - i)
        i = max(j, i + 1)
    return flags


def find_collapsed(tokens: Sequence[AlignedToken], chunk_seconds: float) -> list[CollapsedSpan]:
    """Runs of collapsed words, each with the window between its good neighbours."""
    flags = _collapsed_flags(tokens)
    spans = []
    i = 0
    while i < len(tokens):
        if not flags[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(tokens) and flags[j + 1]:
            j += 1
        lo = tokens[i - 1].end if i > 0 else 0.0
        hi = tokens[j + 1].start if j + 1 < len(tokens) else chunk_seconds
        if hi < lo:  # out-of-order neighbours: fall back to the whole gap they allow
            lo, hi = min(lo, hi), max(lo, hi)
        spans.append(CollapsedSpan(i, j, max(0.0, lo), min(chunk_seconds, hi)))
        i = j + 1
    return spans


def window_samples(chunk: Chunk, span: CollapsedSpan):
    a = int(round(span.window_start * SAMPLE_RATE))
    b = int(round(span.window_end * SAMPLE_RATE))
    return chunk.samples[a:b]


def repair_window(span: CollapsedSpan, words: Sequence[AlignedToken],
                  realigned: Sequence[AlignedToken] | None) -> tuple[list[AlignedToken], bool]:
    """The span's words in chunk time: the re-alignment if it is whole and not collapsed,
    else evenly spread over the window. Returns (tokens, realigned_ok)."""
    if (realigned is not None and [t.text for t in realigned] == [w.text for w in words]
            and not any(_collapsed_flags(realigned))):
        shifted = [AlignedToken(t.text, round(span.window_start + t.start, 3),
                                round(span.window_start + t.end, 3)) for t in realigned]
        if all(span.window_start - _SAME <= t.start <= t.end <= span.window_end + _SAME
               for t in shifted):
            return shifted, True
    return spread_evenly(words, span.window_start, span.window_end), False


def spread_evenly(words: Sequence[AlignedToken], start: float, end: float) -> list[AlignedToken]:
    """Equal slots over [start, end], in order: estimates, but never on top of each other."""
    step = (end - start) / max(len(words), 1)
    return [AlignedToken(w.text, round(start + k * step, 3), round(start + (k + 1) * step, 3))
            for k, w in enumerate(words)]
