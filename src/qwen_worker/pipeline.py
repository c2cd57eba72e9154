"""decode -> chunk -> transcribe (one batch) -> align (bounded batches) -> merge."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import chunking
from .decode import SAMPLE_RATE, AudioInfo, decode
from .engine import AlignedToken, AsrOutput, Engine, EngineError
from .merge import Transcript, merge_chunks


@dataclass(frozen=True)
class Options:
    language: str | None = None  # canonical Qwen3-ASR name; None detects per chunk
    context: str = ""
    word_timestamps: bool = True
    chunk_seconds: float = chunking.DEFAULT_CHUNK_SECONDS
    max_context_chars: int = 2000


@dataclass
class Timings:
    decode: float = 0.0
    asr: float = 0.0
    align: float = 0.0


def transcribe_file(path: Path, options: Options, engine: Engine, *, max_audio_seconds: float,
                    decode_workers: int = 1, info: AudioInfo | None = None,
                    timings: Timings | None = None) -> Transcript:
    """Transcribe one audio or video file that ffmpeg can read."""
    timings = timings if timings is not None else Timings()
    t0 = time.perf_counter()
    samples = decode(path, max_seconds=max_audio_seconds, workers=decode_workers, info=info)
    timings.decode = time.perf_counter() - t0
    return transcribe_samples(samples, options, engine, timings=timings)


def transcribe_samples(samples: np.ndarray, options: Options, engine: Engine,
                       timings: Timings | None = None) -> Transcript:
    """Transcribe float32 mono 16 kHz samples."""
    timings = timings if timings is not None else Timings()
    warnings: list[str] = []
    context = options.context
    if len(context) > options.max_context_chars:
        context = context[: options.max_context_chars]
        warnings.append(f"context was cut to {options.max_context_chars} characters")
    context, cut = engine.fit_context(context)
    if cut:
        warnings.append("context was cut to MAX_CONTEXT_TOKENS tokens")

    chunks = chunking.split(samples, options.chunk_seconds)
    views = [c.samples for c in chunks]

    t0 = time.perf_counter()
    outputs = _run_engine("transcription", lambda: engine.transcribe(
        views, [options.language] * len(chunks), context))
    timings.asr = time.perf_counter() - t0
    warnings.extend(_quality_warnings(chunks, outputs))

    alignments: list[list[AlignedToken] | None] = [None] * len(chunks)
    if options.word_timestamps:
        todo = [i for i, out in enumerate(outputs) if out.text]
        alignable = [i for i in todo if outputs[i].language in engine.aligner_languages]
        skipped = sorted({outputs[i].language or "unknown" for i in todo if i not in alignable})
        if skipped:
            warnings.append(
                "no word timestamps for " + ", ".join(skipped) + ": Qwen3-ForcedAligner supports only "
                + ", ".join(sorted(engine.aligner_languages)) + "; segments there span whole chunks"
            )
        t0 = time.perf_counter()
        if alignable:
            aligned = _run_engine("alignment", lambda: engine.align(
                [views[i] for i in alignable], [outputs[i].text for i in alignable],
                [outputs[i].language for i in alignable]))
            for i, tokens in zip(alignable, aligned, strict=True):
                alignments[i] = tokens
        timings.align = time.perf_counter() - t0
    return merge_chunks(chunks, outputs, alignments, samples.shape[0] / SAMPLE_RATE, warnings)


def _run_engine(stage: str, call):
    try:
        return call()
    except EngineError:
        raise
    except Exception as exc:  # any model failure fails the whole file, never part of it
        raise EngineError(f"{stage} failed: {type(exc).__name__}: {exc}") from exc


def _quality_warnings(chunks: list[chunking.Chunk], outputs: list[AsrOutput]) -> list[str]:
    warnings = []
    for chunk, out in zip(chunks, outputs):
        where = f"chunk {chunk.index} ({chunk.offset:.1f}-{chunk.offset + chunk.duration:.1f} s)"
        if out.hit_token_limit:
            warnings.append(f"{where}: output reached the MAX_NEW_TOKENS limit "
                            f"({out.output_tokens} tokens); its text may be cut short")
        if out.repetition_loop:
            warnings.append(f"{where}: the model repeated itself in a loop; the repeats were "
                            "collapsed and the text there may be incomplete")
    return warnings
