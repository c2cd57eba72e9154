"""decode -> chunk -> transcribe (one batch) -> align (bounded batches) -> merge."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qwen_worker.base.types import (
    SAMPLE_RATE,
    AlignedToken,
    Options,
    Progress,
    SpeakerCount,
    Timings,
    Transcript,
    Turn,
)
from qwen_worker.engines.base import DiarizationError, Engine, engine_call
from qwen_worker.pipeline import chunking, repair
from qwen_worker.pipeline.decode import decode
from qwen_worker.pipeline.merge import merge_chunks
from qwen_worker.pipeline.speakers import DiarizationUnavailable, TurnSource, diarize_transcript


def transcribe_file(path: Path, options: Options, engine: Engine, *, max_audio_seconds: float,
                    decode_workers: int = 1,
                    timings: Timings | None = None, progress: Progress | None = None,
                    diarizer: TurnSource | None = None,
                    repair_collapsed_times: bool = True) -> Transcript:
    """Transcribe one audio or video file that ffmpeg can read."""
    timings = timings if timings is not None else Timings()
    if progress is not None:
        progress("decoding", 0, 0)
    t0 = time.perf_counter()
    samples = decode(path, max_seconds=max_audio_seconds, workers=decode_workers)
    timings.decode = time.perf_counter() - t0
    return transcribe_samples(samples, options, engine, timings=timings, progress=progress,
                              diarizer=diarizer, repair_collapsed_times=repair_collapsed_times)


def transcribe_samples(samples: np.ndarray, options: Options, engine: Engine,
                       timings: Timings | None = None, progress: Progress | None = None,
                       diarizer: TurnSource | None = None,
                       repair_collapsed_times: bool = True) -> Transcript:
    """Transcribe float32 mono 16 kHz samples; with `options.diarize`, also who spoke when.

    repair_collapsed_times: False leaves collapsed word times as the aligner gave them
    (benchmarks only: what the repair costs a job)."""
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
    outputs = engine_call("transcription", lambda: engine.transcribe(
        views, [options.language] * len(chunks), [context] * len(chunks)))
    chunks, outputs = repair.retry_flawed(samples, chunks, outputs, options.language, context, engine,
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
            aligned = engine_call("alignment", lambda: engine.align(
                [views[i] for i in alignable], [outputs[i].text for i in alignable],
                [outputs[i].language for i in alignable]))
            for i, tokens in zip(alignable, aligned, strict=True):
                alignments[i] = list(tokens)
            if repair_collapsed_times:
                repair.repair_collapsed(chunks, outputs, alignments, engine, warnings)
            if progress is not None:
                progress("aligning", len(alignable), len(alignable))
        timings.align = time.perf_counter() - t0
    transcript = merge_chunks(chunks, outputs, alignments, samples.shape[0] / SAMPLE_RATE,
                              warnings, options.subtitle)
    if options.diarize:
        if progress is not None:
            progress("diarizing", 0, 1)
        t0 = time.perf_counter()
        turns = engine_call("speaker diarization",
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


