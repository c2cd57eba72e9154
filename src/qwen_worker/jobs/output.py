"""A job's output, built in one place: the transcript's fields, then what the job adds (models,
timings, real-time factor, the subtitle and text files asked for). Every interface renders from
this: the queue result (`results.deliver` may upload or trim it), the HTTP API's OpenAI
formats (`api.openai.render`). Fields: docs/output.md."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

from qwen_worker.base.types import Timings, Transcript
from qwen_worker.engines.base import Engine
from qwen_worker.pipeline.formats import WRITERS


def build_output(transcript: Transcript, engine: Engine, timings: Timings, *, download_s: float,
                 total_s: float, formats: Sequence[str], diarized: bool) -> dict[str, Any]:
    output = transcript_fields(transcript)
    output["model"] = {"asr": engine.asr_model, "aligner": engine.aligner_model,
                       "backend": engine.backend}
    output["timings"] = {"download": round(download_s, 3), "decode": round(timings.decode, 3),
                         "asr": round(timings.asr, 3), "align": round(timings.align, 3),
                         "total": round(total_s, 3)}
    if diarized:
        output["timings"]["diarize"] = round(timings.diarize, 3)
    output["rtf"] = round(total_s / transcript.duration, 4) if transcript.duration else None
    for fmt in formats:
        output[fmt] = WRITERS[fmt](transcript)
    return output


def transcript_fields(transcript: Transcript) -> dict[str, Any]:
    """The transcript's part of the output (docs/output.md): undiarized output has no speaker
    fields at all; diarized output names one on every word and segment (null where none)."""
    diarized = transcript.speakers is not None
    words = []
    for w in transcript.words:
        word = {"word": w.word, "start": w.start, "end": w.end, "space": w.space}
        if diarized:
            word["speaker"] = w.speaker
        words.append(word)
    segments = []
    for s in transcript.segments:
        segment = asdict(s)
        if not diarized:  # undiarized output stays as it was
            del segment["speaker"]
        segments.append(segment)
    out = {
        "text": transcript.text,
        "language": transcript.language,
        "languages": list(transcript.languages),
        "duration": transcript.duration,
        "words": words,
        "segments": segments,
        "chunks": [asdict(c) for c in transcript.chunks],
        "warnings": list(transcript.warnings),
    }
    if diarized:
        out["speakers"] = [dict(s) for s in transcript.speakers]
    return out
