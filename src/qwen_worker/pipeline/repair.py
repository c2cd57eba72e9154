"""Repairs of the two failures Qwen3 users meet most, planned here as pure functions.

1. Repetition loops and truncated output: a chunk whose output loops or reaches
   MAX_NEW_TOKENS is transcribed once more as two halves cut at its quietest point; the
   cleaner of the two results is kept (`split_at_quietest`, `prefer_halves`).
2. Collapsed word timestamps (Qwen3-ForcedAligner piling a run of words onto one instant,
   usually at the tail of long inputs): the run is aligned again on its own audio window,
   from the last good word's end to the next good word's start; if that is still collapsed,
   its words are spread evenly over the window (`find_collapsed`, `repair_window`,
   `spread_evenly`).

The pipeline calls `retry_flawed` after transcription and `repair_collapsed` after alignment;
each makes one batched engine call for all the chunks that need it. Times are chunk time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from qwen_worker.base.languages import is_unspaced
from qwen_worker.base.types import SAMPLE_RATE, AlignedToken, AsrOutput, Chunk
from qwen_worker.engines.base import Engine, engine_call
from qwen_worker.pipeline.chunking import quietest_point

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


# -- the repairs, run: the pipeline calls each once per file ----------------------------------

def _where(chunk: Chunk) -> str:
    return f"chunk {chunk.index} ({chunk.offset:.1f}-{chunk.offset + chunk.duration:.1f} s)"


def _flaw_text(out: AsrOutput) -> str:
    parts = []
    if out.hit_token_limit:
        parts.append(f"reached the MAX_NEW_TOKENS limit ({out.output_tokens} tokens)")
    if out.repetition_loop:
        parts.append("repeated itself in a loop")
    return " and ".join(parts)


def retry_flawed(samples: np.ndarray, chunks: list[Chunk], outputs: list[AsrOutput],
                  language: str | None, context: str, engine: Engine, warnings: list[str]
                  ) -> tuple[list[Chunk], list[AsrOutput]]:
    """Transcribe each looping or truncated chunk once more as two halves, all halves in one
    call; keep the cleaner result. A kept retry becomes two chunks, re-numbered in order."""
    todo = [i for i, out in enumerate(outputs) if needs_retry(out)]
    if not todo:
        return chunks, outputs
    halves = {i: split_at_quietest(chunks[i], samples) for i in todo}
    flat = [h for i in todo for h in halves[i]]
    retried = engine_call("transcription", lambda: engine.transcribe(
        [h.samples for h in flat], [language] * len(flat), [context] * len(flat)))
    new_chunks: list[Chunk] = []
    new_outputs: list[AsrOutput] = []
    for i, (chunk, out) in enumerate(zip(chunks, outputs)):
        if i not in halves:
            new_chunks.append(chunk)
            new_outputs.append(out)
            continue
        k = todo.index(i)
        pair = retried[2 * k:2 * k + 2]
        cut = halves[i][0].end / SAMPLE_RATE
        told = (f"{_where(chunk)}: the output {_flaw_text(out)}; transcribed again as two "
                f"halves cut at {cut:.1f} s: ")
        if prefer_halves(out, pair):
            new_chunks.extend(halves[i])
            new_outputs.extend(pair)
            warnings.append(told + ("fixed" if flaws(pair) == 0 else
                                    "better, but still flawed; the text there may be incomplete"))
        else:
            new_chunks.append(chunk)
            new_outputs.append(out)
            warnings.append(told + "not better, kept the first result; the text there may be "
                            "incomplete")
    renumbered = [Chunk(n, c.start, c.end, c.samples) for n, c in enumerate(new_chunks)]
    return renumbered, new_outputs


def repair_collapsed(chunks: list[Chunk], outputs: list[AsrOutput],
                      alignments: list[list[AlignedToken] | None], engine: Engine,
                      warnings: list[str]) -> None:
    """Align each run of collapsed word times again on its own audio (one batched call);
    spread a run evenly over its window when that is still collapsed. In place."""
    found = [(i, span) for i, tokens in enumerate(alignments) if tokens
             for span in find_collapsed(tokens, chunks[i].duration)]
    if not found:
        return
    texts = []
    for i, span in found:
        words = alignments[i][span.first:span.last + 1]
        texts.append(("" if is_unspaced(outputs[i].language) else " ").join(w.text for w in words))
    realigned = engine_call("alignment", lambda: engine.align(
        [window_samples(chunks[i], span) for i, span in found], texts,
        [outputs[i].language for i, _ in found]))
    for (i, span), again in zip(found, realigned, strict=True):
        words = alignments[i][span.first:span.last + 1]
        fixed, aligned_ok = repair_window(span, words, again)
        alignments[i][span.first:span.last + 1] = fixed
        offset = chunks[i].offset
        warnings.append(
            f"{_where(chunks[i])}: {len(words)} word timestamps "
            f"({offset + span.window_start:.1f}-{offset + span.window_end:.1f} s) had collapsed "
            "onto one instant; " + ("aligned again on their own audio" if aligned_ok else
                                    "spread evenly over that stretch: their times are estimates"))
