"""OpenAI's `audio.transcriptions` contract over the worker's job: form fields -> job input,
job output -> the response format asked for, error codes -> HTTP statuses and OpenAI's error
shape. No I/O here: src/server.py is the HTTP edge.

`verbose_json` carries OpenAI's field names. Of Whisper's per-segment values, those the models
give or that are defined on the text are filled in (`tokens` re-encoded by the ASR tokenizer,
`temperature` 0: decoding is greedy, `compression_ratio` as Whisper computes it, `seek` as the
segment's chunk offset in 10 ms frames); `avg_logprob` and `no_speech_prob` are null.

`diarized_json` has the shape of OpenAI's gpt-4o-transcribe-diarize answer (segments of one
speaker each, `type` "transcript.text.segment"); the labels are the diarizer's ("SPEAKER_00").
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable

from qwen_worker.base.errors import ErrorCode
from qwen_worker.base.languages import UnsupportedLanguage, normalize_language

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
GRANULARITIES = ("word", "segment")
FRAMES_PER_SECOND = 100  # Whisper's `seek` unit: mel frames of 10 ms

# A job's error code -> the HTTP status of the response that carries it.
STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.URL_NOT_ALLOWED: 400,
    ErrorCode.UNSUPPORTED_LANGUAGE: 400,
    ErrorCode.DIARIZATION_UNAVAILABLE: 400,
    ErrorCode.DOWNLOAD_FAILED: 422,
    ErrorCode.AUDIO_TOO_LARGE: 413,
    ErrorCode.AUDIO_TOO_LONG: 413,
    ErrorCode.AUDIO_UNREADABLE: 415,
    ErrorCode.AUDIO_FORMAT_REFUSED: 415,
    ErrorCode.AUDIO_TRUNCATED: 422,
    ErrorCode.DECODE_INTERRUPTED: 500,
    ErrorCode.ENGINE_ERROR: 500,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.DISK_FULL: 503,
    ErrorCode.WORKER_SHUTDOWN: 503,
}
# Codes of the server itself (no job ran): OpenAI's own for a bad key, ours otherwise.
INVALID_API_KEY = "invalid_api_key"
NOT_READY = "WORKER_NOT_READY"
UNHEALTHY = "WORKER_UNHEALTHY"
NOT_FOUND = "NOT_FOUND"

# Form fields: OpenAI's, then ours. Values are text; `file` is the only file part.
OPENAI_FIELDS = ("file", "model", "language", "prompt", "response_format",
                 "timestamp_granularities[]", "temperature", "stream", "chunking_strategy")
SPEAKER_FIELDS = ("num_speakers", "min_speakers", "max_speakers")
EXTRA_FIELDS = ("audio_url", "chunk_seconds", "subtitle", "diarize", *SPEAKER_FIELDS,
                "speaker_labels")


class FormError(ValueError):
    """A form field the server refuses: a 400 naming the field."""

    def __init__(self, message: str, param: str | None,
                 code: ErrorCode = ErrorCode.INVALID_INPUT):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class TranscriptionForm:
    model: str
    language: str | None  # as given (the worker normalises it); None: detect
    prompt: str
    response_format: str
    granularities: tuple[str, ...]
    audio_url: str | None
    chunk_seconds: float | None
    subtitle: dict[str, Any] | None
    diarize: bool = False  # asked for, or implied by diarized_json
    speakers: tuple[tuple[str, int], ...] = ()  # (field, value) of the speaker counts given
    speaker_labels: str | None = None


def error_body(message: str, code: str, status: int, param: str | None = None) -> dict:
    """OpenAI's error object; `type` as OpenAI sorts it (client error or server error)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def status_for(code: str) -> int:
    try:
        return STATUS[ErrorCode(code)]
    except ValueError:
        return 500


def _one(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise FormError(f"{name} was given {len(values)} times", name)
    return values[0]


def parse_form(fields: dict[str, list[str]], *, has_file: bool) -> TranscriptionForm:
    """The text fields of a transcription request (the file part is streamed elsewhere)."""
    _refuse_speaker_fields(fields)
    unknown = sorted(set(fields) - set(OPENAI_FIELDS) - set(EXTRA_FIELDS)
                     - {"timestamp_granularities"})
    if unknown:
        raise FormError(f"unknown form field {unknown[0]!r}; this server takes "
                        + ", ".join(OPENAI_FIELDS + EXTRA_FIELDS), unknown[0])
    if (_one(fields, "stream") or "false").strip().lower() not in ("false", "0"):
        raise FormError("stream is not supported; the whole transcript comes in one response",
                        "stream")

    audio_url = _one(fields, "audio_url")
    if has_file == (audio_url is not None):
        raise FormError("give exactly one of file and audio_url", "file")

    response_format = (_one(fields, "response_format") or "json").strip()
    if response_format not in RESPONSE_FORMATS:
        raise FormError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                        f"not {response_format!r}", "response_format")

    raw_granularities = (fields.get("timestamp_granularities[]", [])
                         + fields.get("timestamp_granularities", []))
    granularities = tuple(dict.fromkeys(g.strip() for g in raw_granularities))
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        raise FormError(f"timestamp_granularities[] takes word and segment, not {bad[0]!r}",
                        "timestamp_granularities[]")
    if granularities and response_format != "verbose_json":
        raise FormError("timestamp_granularities[] needs response_format verbose_json",
                        "timestamp_granularities[]")

    temperature = _one(fields, "temperature")
    if temperature is not None:
        try:
            value = float(temperature)
        except ValueError:
            value = math.nan
        if value != 0.0:
            raise FormError(f"temperature must be 0 (decoding is greedy), not {temperature!r}",
                            "temperature")

    language = _one(fields, "language")
    if language is not None:
        try:
            normalize_language(language)
        except UnsupportedLanguage as exc:
            raise FormError(str(exc), "language", ErrorCode.UNSUPPORTED_LANGUAGE) from None

    chunk_seconds = None
    raw_chunk = _one(fields, "chunk_seconds")
    if raw_chunk is not None:
        try:
            chunk_seconds = float(raw_chunk)
        except ValueError:
            raise FormError(f"chunk_seconds must be a number, not {raw_chunk!r}",
                            "chunk_seconds") from None

    subtitle = None
    raw_subtitle = _one(fields, "subtitle")
    if raw_subtitle is not None:
        try:
            subtitle = json.loads(raw_subtitle)
        except json.JSONDecodeError:
            subtitle = None
        if not isinstance(subtitle, dict):
            raise FormError('subtitle must be a JSON object, e.g. {"max_line_width": 32}',
                            "subtitle")

    raw_diarize = (_one(fields, "diarize") or "false").strip().lower()
    if raw_diarize not in ("true", "false", "1", "0"):
        raise FormError(f"diarize must be true or false, not {raw_diarize!r}", "diarize")
    if raw_diarize in ("false", "0") and _one(fields, "diarize") is not None \
            and response_format == "diarized_json":
        raise FormError("diarized_json is a diarized answer: leave out diarize=false",
                        "diarize")
    if raw_diarize in ("true", "1") and response_format in ("json", "text"):
        # Their shapes have no place for speakers: the diarizer's work would be thrown away.
        raise FormError(f"response_format={response_format} carries no speakers: with diarize "
                        "use diarized_json, verbose_json, srt or vtt", "response_format")
    speakers = []
    for name in SPEAKER_FIELDS:
        raw = _one(fields, name)
        if raw is not None:
            try:
                speakers.append((name, int(raw)))
            except ValueError:
                raise FormError(f"{name} must be an integer, not {raw!r}", name) from None

    return TranscriptionForm(
        model=(_one(fields, "model") or "").strip(), language=language,
        prompt=_one(fields, "prompt") or "", response_format=response_format,
        granularities=granularities or ("segment",), audio_url=audio_url,
        chunk_seconds=chunk_seconds, subtitle=subtitle,
        diarize=raw_diarize in ("true", "1") or response_format == "diarized_json",
        speakers=tuple(speakers), speaker_labels=_one(fields, "speaker_labels"))


def _refuse_speaker_fields(fields: dict[str, list[str]]) -> None:
    """OpenAI's diarization fields this server cannot honour, refused by name."""
    for name in fields:
        if name.startswith("known_speaker_"):
            raise FormError(f"{name} is not supported: the diarizer labels speakers "
                            "SPEAKER_00, SPEAKER_01, ... in order of first appearance; "
                            "name them from the answer", name)
        if name.startswith("chunking_strategy["):  # an object: server_vad and its settings
            raise FormError("chunking_strategy takes only auto: the worker cuts the audio "
                            "itself (chunk_seconds sets the chunk length)", "chunking_strategy")
    raw = _one(fields, "chunking_strategy")
    if raw is not None and raw.strip() != "auto":
        raise FormError(f"chunking_strategy takes only auto, not {raw!r}: the worker cuts the "
                        "audio itself (chunk_seconds sets the chunk length)", "chunking_strategy")


def job_input(form: TranscriptionForm) -> dict[str, Any]:
    """The worker's job input for the form; the worker validates ranges and keys again."""
    job: dict[str, Any] = {
        "language": form.language,
        "context": form.prompt,
        # Word times cost an aligner pass; they also place segment and cue times, and each
        # word's speaker.
        "word_timestamps": form.diarize or form.response_format in ("srt", "vtt",
                                                                    "verbose_json"),
    }
    if form.response_format in ("srt", "vtt"):
        job["formats"] = [form.response_format]
    if form.audio_url is not None:
        job["audio_url"] = form.audio_url
    if form.chunk_seconds is not None:
        job["chunk_seconds"] = form.chunk_seconds
    if form.subtitle is not None:
        job["subtitle"] = form.subtitle
    if form.diarize:
        job["diarize"] = True
    # Given without diarize too: the worker refuses them by name.
    job.update(form.speakers)
    if form.speaker_labels is not None:
        job["speaker_labels"] = form.speaker_labels
    return {key: value for key, value in job.items() if value is not None}


def openai_language(name: str, asked: str | None) -> str | None:
    """OpenAI writes the language's English name in lower case ("english"). A file without
    speech has no detected language: the one asked for, else null."""
    if name:
        return name.lower()
    canonical = normalize_language(asked) if asked else None
    return canonical.lower() if canonical else None


def compression_ratio(text: str) -> float:
    """Whisper's: UTF-8 bytes over zlib-compressed bytes (high for repetitive text)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw))


def _seek(start: float, chunks: list[dict[str, Any]]) -> int:
    """The offset of the chunk the segment starts in (the window it was decoded from)."""
    offset = 0.0
    for chunk in chunks:
        if chunk["start"] <= start + 1e-6:
            offset = chunk["start"]
    return round(offset * FRAMES_PER_SECOND)


def verbose_json(form: TranscriptionForm, output: dict[str, Any],
                 tokenize: Callable[[str], list[int]], served_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": openai_language(output["language"], form.language),
        "duration": output["duration"],
        "text": output["text"],
    }
    diarized = "speakers" in output
    if "segment" in form.granularities:
        body["segments"] = [{
            "id": seg["id"],
            "seek": _seek(seg["start"], output["chunks"]),
            "start": seg["start"],
            "end": seg["end"],
            "text": seg["text"],
            "tokens": tokenize(seg["text"]),
            "temperature": 0.0,
            "avg_logprob": None,
            "compression_ratio": compression_ratio(seg["text"]),
            "no_speech_prob": None,
            **({"speaker": seg["speaker"]} if diarized else {}),
        } for seg in output["segments"]]
    if "word" in form.granularities:
        body["words"] = [{"word": w["word"], "start": w["start"], "end": w["end"],
                          **({"speaker": w["speaker"]} if diarized else {})}
                         for w in output["words"]]
    body["usage"] = {"type": "duration", "seconds": output["duration"]}
    body["model"] = served_model
    body["warnings"] = output["warnings"]
    return body


def diarized_json(output: dict[str, Any], served_model: str) -> dict[str, Any]:
    """OpenAI's diarized answer; a segment no speaker turn reaches has speaker null."""
    return {
        "task": "transcribe",
        "duration": output["duration"],
        "text": output["text"],
        "segments": [{"type": "transcript.text.segment", "id": f"seg_{seg['id']}",
                      "start": seg["start"], "end": seg["end"], "text": seg["text"],
                      "speaker": seg["speaker"]} for seg in output["segments"]],
        "usage": {"type": "duration", "seconds": output["duration"]},
        "speakers": output["speakers"],
        "model": served_model,
        "warnings": output["warnings"],
    }


def render(form: TranscriptionForm, output: dict[str, Any],
           tokenize: Callable[[str], list[int]], served_model: str) -> tuple[str, str]:
    """(body, media type) of a successful response."""
    fmt = form.response_format
    if fmt == "verbose_json":
        body = verbose_json(form, output, tokenize, served_model)
        return json.dumps(body, ensure_ascii=False), "application/json"
    if fmt == "diarized_json":
        return json.dumps(diarized_json(output, served_model), ensure_ascii=False), \
            "application/json"
    if fmt == "json":
        return json.dumps({"text": output["text"],
                           "usage": {"type": "duration", "seconds": output["duration"]},
                           "model": served_model, "warnings": output["warnings"]},
                          ensure_ascii=False), "application/json"
    if fmt == "text":
        return output["text"] + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return output["srt"], "application/x-subrip; charset=utf-8"
    return output["vtt"], "text/vtt; charset=utf-8"
