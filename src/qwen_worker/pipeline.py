"""decode -> chunk -> transcribe (one batch) -> align (bounded batches) -> merge."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np

from . import chunking, repair
from .decode import SAMPLE_RATE, AudioInfo, decode
from .engine import AlignedToken, AsrOutput, DiarizationError, Engine, EngineError
from .languages import is_unspaced
from .merge import SubtitleOptions, Transcript, merge_chunks
from .speakers import (DiarizationUnavailable, SpeakerCount, Turn, TurnSource,
                       diarize_transcript)


@dataclass(frozen=True)
class Options:
    language: str | None = None  # canonical Qwen3-ASR name; None detects per chunk
    context: str = ""
    word_timestamps: bool = True
    chunk_seconds: float = chunking.DEFAULT_CHUNK_SECONDS
    max_context_chars: int = 2000
    subtitle: SubtitleOptions = SubtitleOptions()  # cue limits for segments, SRT and VTT
    diarize: bool = False  # who spoke when: speakers on words, segments and cues
    speakers: SpeakerCount = SpeakerCount()


# progress(stage, done, total): "decoding", "transcribing", "aligning", "diarizing"
Progress = Callable[[str, int, int], None]


@dataclass
class Timings:
    decode: float = 0.0
    asr: float = 0.0
    align: float = 0.0
    diarize: float = 0.0


def transcribe_file(path: Path, options: Options, engine: Engine, *, max_audio_seconds: float,
                    decode_workers: int = 1, info: AudioInfo | None = None,
                    timings: Timings | None = None, progress: Progress | None = None,
                    diarizer: TurnSource | None = None) -> Transcript:
    """Transcribe one audio or video file that ffmpeg can read."""
    timings = timings if timings is not None else Timings()
    if progress is not None:
        progress("decoding", 0, 0)
    t0 = time.perf_counter()
    samples = decode(path, max_seconds=max_audio_seconds, workers=decode_workers, info=info)
    timings.decode = time.perf_counter() - t0
    return transcribe_samples(samples, options, engine, timings=timings, progress=progress,
                              diarizer=diarizer)


def transcribe_samples(samples: np.ndarray, options: Options, engine: Engine,
                       timings: Timings | None = None, progress: Progress | None = None,
                       diarizer: TurnSource | None = None) -> Transcript:
    """Transcribe float32 mono 16 kHz samples; with `options.diarize`, also who spoke when."""
    timings = timings if timings is not None else Timings()
    if options.diarize and diarizer is None:
        raise DiarizationUnavailable("diarize was asked for, but this worker has no diarizer")
    warnings: list[str] = []
    context = options.context
    if len(context) > options.max_context_chars:
        context = context[: options.max_context_chars]
        warnings.append(f"context was cut to {options.max_context_chars} characters")
    context, told = engine.fit_context(context)
    warnings.extend(told)

    chunks = chunking.split(samples, options.chunk_seconds)
    views = [c.samples for c in chunks]

    if progress is not None:
        progress("transcribing", 0, len(chunks))
    t0 = time.perf_counter()
    outputs = _run_engine("transcription", lambda: engine.transcribe(
        views, [options.language] * len(chunks), [context] * len(chunks)))
    chunks, outputs = _retry_flawed(samples, chunks, outputs, options.language, context, engine,
                                    warnings)
    views = [c.samples for c in chunks]
    timings.asr = time.perf_counter() - t0
    if progress is not None:
        progress("transcribing", len(chunks), len(chunks))

    alignments: list[list[AlignedToken] | None] = [None] * len(chunks)
    if options.word_timestamps:
        todo = [i for i, out in enumerate(outputs) if out.text]
        alignable = [i for i in todo if outputs[i].language in engine.aligner_languages]
        skipped = sorted({outputs[i].language or "unknown" for i in todo if i not in alignable})
        if skipped:
            warnings.append(
                "no word timestamps for " + ", ".join(skipped) + ": Qwen3-ForcedAligner supports only "
                + ", ".join(sorted(engine.aligner_languages)) + "; cue times there are estimated from character counts"
            )
        t0 = time.perf_counter()
        if alignable:
            if progress is not None:
                progress("aligning", 0, len(alignable))
            aligned = _run_engine("alignment", lambda: engine.align(
                [views[i] for i in alignable], [outputs[i].text for i in alignable],
                [outputs[i].language for i in alignable]))
            for i, tokens in zip(alignable, aligned, strict=True):
                alignments[i] = list(tokens)
            _repair_collapsed(chunks, outputs, alignments, engine, warnings)
            if progress is not None:
                progress("aligning", len(alignable), len(alignable))
        timings.align = time.perf_counter() - t0
    transcript = merge_chunks(chunks, outputs, alignments, samples.shape[0] / SAMPLE_RATE,
                              warnings, options.subtitle)
    if options.diarize:
        if progress is not None:
            progress("diarizing", 0, 1)
        t0 = time.perf_counter()
        turns = _run_engine("speaker diarization",
                            lambda: diarizer.diarize(samples, options.speakers),
                            DiarizationError)
        transcript = diarize_transcript(transcript, turns)
        untimed = sorted({outputs[i].language or "unknown" for i, a in enumerate(alignments)
                          if a is None and outputs[i].text})
        transcript.warnings.extend(_speaker_warnings(options.speakers, turns, untimed))
        timings.diarize = time.perf_counter() - t0
        if progress is not None:
            progress("diarizing", 1, 1)
    return transcript


def _speaker_warnings(count: SpeakerCount, turns: list[Turn], untimed: list[str]) -> list[str]:
    """What a diarized job should know: fewer or more speakers than asked for, and speakers
    placed by estimated times (text without word timestamps)."""
    found = len({t.speaker for t in turns})
    told = []
    if count.num_speakers is not None and found != count.num_speakers:
        told.append(f"{count.num_speakers} speakers were asked for; {found} found (the audio "
                    "gave no more to tell apart)")
    elif count.min_speakers is not None and found < count.min_speakers:
        told.append(f"at least {count.min_speakers} speakers were asked for; {found} found")
    elif count.max_speakers is not None and found > count.max_speakers:
        told.append(f"at most {count.max_speakers} speakers were asked for; {found} found")
    if untimed:
        told.append("speakers of the text without word timestamps (" + ", ".join(untimed)
                    + ") follow estimated times")
    return told


def _run_engine(stage: str, call, error: type[EngineError] = EngineError):
    try:
        return call()
    except error:
        raise
    except Exception as exc:  # any model failure fails the whole file, never part of it
        raise error(f"{stage} failed: {type(exc).__name__}: {exc}") from exc


def _where(chunk: chunking.Chunk) -> str:
    return f"chunk {chunk.index} ({chunk.offset:.1f}-{chunk.offset + chunk.duration:.1f} s)"


def _flaw_text(out: AsrOutput) -> str:
    parts = []
    if out.hit_token_limit:
        parts.append(f"reached the MAX_NEW_TOKENS limit ({out.output_tokens} tokens)")
    if out.repetition_loop:
        parts.append("repeated itself in a loop")
    return " and ".join(parts)


def _retry_flawed(samples: np.ndarray, chunks: list[chunking.Chunk], outputs: list[AsrOutput],
                  language: str | None, context: str, engine: Engine, warnings: list[str]
                  ) -> tuple[list[chunking.Chunk], list[AsrOutput]]:
    """Transcribe each looping or truncated chunk once more as two halves, all halves in one
    call; keep the cleaner result. A kept retry becomes two chunks, re-numbered in order."""
    todo = [i for i, out in enumerate(outputs) if repair.needs_retry(out)]
    if not todo:
        return chunks, outputs
    halves = {i: repair.split_at_quietest(chunks[i], samples) for i in todo}
    flat = [h for i in todo for h in halves[i]]
    retried = _run_engine("transcription", lambda: engine.transcribe(
        [h.samples for h in flat], [language] * len(flat), [context] * len(flat)))
    new_chunks: list[chunking.Chunk] = []
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
        if repair.prefer_halves(out, pair):
            new_chunks.extend(halves[i])
            new_outputs.extend(pair)
            warnings.append(told + ("fixed" if repair.flaws(pair) == 0 else
                                    "better, but still flawed; the text there may be incomplete"))
        else:
            new_chunks.append(chunk)
            new_outputs.append(out)
            warnings.append(told + "not better, kept the first result; the text there may be "
                            "incomplete")
    renumbered = [chunking.Chunk(n, c.start, c.end, c.samples) for n, c in enumerate(new_chunks)]
    return renumbered, new_outputs


def _repair_collapsed(chunks: list[chunking.Chunk], outputs: list[AsrOutput],
                      alignments: list[list[AlignedToken] | None], engine: Engine,
                      warnings: list[str]) -> None:
    """Align each run of collapsed word times again on its own audio (one batched call);
    spread a run evenly over its window when that is still collapsed. In place."""
    found = [(i, span) for i, tokens in enumerate(alignments) if tokens
             for span in repair.find_collapsed(tokens, chunks[i].duration)]
    if not found:
        return
    texts = []
    for i, span in found:
        words = alignments[i][span.first:span.last + 1]
        texts.append(("" if is_unspaced(outputs[i].language) else " ").join(w.text for w in words))
    realigned = _run_engine("alignment", lambda: engine.align(
        [repair.window_samples(chunks[i], span) for i, span in found], texts,
        [outputs[i].language for i, _ in found]))
    for (i, span), again in zip(found, realigned, strict=True):
        words = alignments[i][span.first:span.last + 1]
        fixed, aligned_ok = repair.repair_window(span, words, again)
        alignments[i][span.first:span.last + 1] = fixed
        offset = chunks[i].offset
        warnings.append(
            f"{_where(chunks[i])}: {len(words)} word timestamps "
            f"({offset + span.window_start:.1f}-{offset + span.window_end:.1f} s) had collapsed "
            "onto one instant; " + ("aligned again on their own audio" if aligned_ok else
                                    "spread evenly over that stretch: their times are estimates"))
