"""A job's output, built in one place: the transcript's fields, then what the job adds (models,
timings, real-time factor, the subtitle and text files asked for). Every interface renders from
this: the queue result (`results.deliver` may upload or trim it), the HTTP API's OpenAI
formats (`api.openai.render`). Fields: docs/output.md."""

from __future__ import annotations

from typing import Any, Sequence

from qwen_worker.base.types import Timings, Transcript
from qwen_worker.engines.base import Engine
from qwen_worker.pipeline.formats import WRITERS


def build_output(transcript: Transcript, engine: Engine, timings: Timings, *, download_s: float,
                 total_s: float, formats: Sequence[str], diarized: bool) -> dict[str, Any]:
    output = transcript.to_dict()
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
