"""The job input contract: a declarative schema (runpod's validator) and the typed request."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from runpod.serverless.utils.rp_validator import validate

from qwen_worker.base.errors import ErrorCode, WorkerError
from qwen_worker.base.languages import UnsupportedLanguage, normalize_language
from qwen_worker.base.types import Options, SpeakerCount, SubtitleOptions
from qwen_worker.pipeline.chunking import (
    DEFAULT_CHUNK_SECONDS,
    MAX_CHUNK_SECONDS,
    MIN_CHUNK_SECONDS,
)

FORMATS = ("srt", "vtt", "txt")
MAX_URL_CHARS = 8192
# The `subtitle` object: key -> (integer only, lowest, highest).
SUBTITLE_KEYS: dict[str, tuple[bool, float, float]] = {
    "max_line_width": (True, 10, 100),
    "max_line_count": (True, 1, 3),
    "max_cue_seconds": (False, 1, 30),
}
SPEAKER_KEYS = ("num_speakers", "min_speakers", "max_speakers")
# More than a pipeline is made to tell apart (community-1's clustering is tuned for meetings
# and podcasts); a larger count only makes pyannote's clustering fail.
MAX_SPEAKERS = 20
SPEAKER_LABELS = ("prefix", "none")  # diarized SRT/VTT/txt: the speaker shown, or not


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SPEAKERS)


def _subtitle_problems(value: Any) -> list[str]:
    """What is wrong with a `subtitle` object (a nested dict rp_validator does not look into)."""
    if not isinstance(value, dict):
        return ["subtitle must be an object"]
    problems = []
    for key, v in value.items():
        if key not in SUBTITLE_KEYS:
            problems.append(f"unknown key {key!r} in subtitle")
            continue
        integer, lo, hi = SUBTITLE_KEYS[key]
        if not (_number(v) and (isinstance(v, int) or not integer) and lo <= v <= hi):
            kind = "an integer" if integer else "a number"
            problems.append(f"subtitle.{key} must be {kind} from {lo:g} to {hi:g}")
    if problems:
        problems.append("subtitle takes " + ", ".join(SUBTITLE_KEYS))
    return problems


def _schema(max_context_chars: int) -> dict[str, dict[str, Any]]:
    # rp_validator skips constraints when a value has the default's type, so every constrained
    # key defaults to None and the real default is filled in by `parse_request`.
    return {
        "audio_url": {"type": str, "required": False, "default": None,
                      "constraints": lambda v: v is None or (isinstance(v, str)
                                                             and 0 < len(v) <= MAX_URL_CHARS)},
        "audio_base64": {"type": str, "required": False, "default": None,
                         "constraints": lambda v: v is None or (isinstance(v, str) and len(v) > 0)},
        "language": {"type": str, "required": False, "default": None},
        "context": {"type": str, "required": False, "default": None,
                    "constraints": lambda v: v is None or (isinstance(v, str)
                                                           and len(v) <= max_context_chars)},
        "word_timestamps": {"type": bool, "required": False, "default": True},
        "formats": {"type": list, "required": False, "default": None,
                    "constraints": lambda v: v is None or (isinstance(v, list)
                                                           and all(f in FORMATS for f in v))},
        "chunk_seconds": {"type": (int, float), "required": False, "default": None,
                          "constraints": lambda v: v is None or (
                              _number(v) and MIN_CHUNK_SECONDS <= v <= MAX_CHUNK_SECONDS)},
        "subtitle": {"type": dict, "required": False, "default": None,
                     "constraints": lambda v: not isinstance(v, dict) or not _subtitle_problems(v)},
        "diarize": {"type": bool, "required": False, "default": False},
        **{key: {"type": int, "required": False, "default": None, "constraints": _count}
           for key in SPEAKER_KEYS},
        "speaker_labels": {"type": str, "required": False, "default": None,
                           "constraints": lambda v: v is None or v in SPEAKER_LABELS},
    }


HINTS = {
    "context": "context must be a string of at most {max_context_chars} characters",
    "formats": f"formats must be a list drawn from {list(FORMATS)}",
    "chunk_seconds": f"chunk_seconds must be a number from {MIN_CHUNK_SECONDS:.0f} "
                     f"to {MAX_CHUNK_SECONDS:.0f}",
    **{key: f"{key} must be an integer from 1 to {MAX_SPEAKERS}" for key in SPEAKER_KEYS},
    "speaker_labels": f"speaker_labels must be one of {list(SPEAKER_LABELS)}",
}


@dataclass(frozen=True)
class Request:
    audio_url: str | None
    audio_base64: str | None
    options: Options
    formats: tuple[str, ...]


def parse_request(job_input: Any, max_context_chars: int, uploaded: bool = False) -> Request:
    """uploaded: the audio is already in the job's directory (the HTTP server's file upload),
    so the input must name no other source."""
    if not isinstance(job_input, dict):
        raise WorkerError(ErrorCode.INVALID_INPUT, "input must be a JSON object")
    result = validate(job_input, _schema(max_context_chars))  # a fresh schema: validate() mutates it
    if "errors" in result:
        raise WorkerError(ErrorCode.INVALID_INPUT,
                          _explain(result["errors"], max_context_chars, job_input.get("subtitle")))
    v = result["validated_input"]
    if uploaded and (v["audio_url"] is not None or v["audio_base64"] is not None):
        raise WorkerError(ErrorCode.INVALID_INPUT, "give either a file or audio_url, not both")
    if not uploaded and (v["audio_url"] is None) == (v["audio_base64"] is None):
        raise WorkerError(ErrorCode.INVALID_INPUT,
                          "give exactly one of audio_url and audio_base64")
    speakers = _speaker_count(v)
    try:
        language = normalize_language(v["language"])
    except UnsupportedLanguage as exc:
        raise WorkerError(ErrorCode.UNSUPPORTED_LANGUAGE, str(exc)) from None
    options = Options(
        language=language,
        context=v["context"] or "",
        word_timestamps=v["word_timestamps"],
        chunk_seconds=float(v["chunk_seconds"] or DEFAULT_CHUNK_SECONDS),
        max_context_chars=max_context_chars,
        subtitle=SubtitleOptions(**(v["subtitle"] or {}),
                                 speaker_labels=v["speaker_labels"] != "none"),
        diarize=v["diarize"],
        speakers=speakers,
    )
    return Request(v["audio_url"], v["audio_base64"], options,
                   tuple(dict.fromkeys(v["formats"] or ())))


def _speaker_count(v: dict[str, Any]) -> SpeakerCount:
    """The speaker keys' rules across keys (each key's own type and range are checked above)."""
    given = [key for key in (*SPEAKER_KEYS, "speaker_labels") if v[key] is not None]
    if given and not v["diarize"]:
        raise WorkerError(ErrorCode.INVALID_INPUT,
                          f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} "
                          "only with diarize: true")
    if v["diarize"] and not v["word_timestamps"]:
        raise WorkerError(ErrorCode.INVALID_INPUT, "diarize needs word_timestamps: speakers "
                          "are given word by word, from the words' times")
    count = SpeakerCount(v["num_speakers"], v["min_speakers"], v["max_speakers"])
    if count.num_speakers is not None and (count.min_speakers is not None
                                           or count.max_speakers is not None):
        raise WorkerError(ErrorCode.INVALID_INPUT, "give either num_speakers or "
                          "min_speakers/max_speakers, not both")
    if (count.min_speakers is not None and count.max_speakers is not None
            and count.min_speakers > count.max_speakers):
        raise WorkerError(ErrorCode.INVALID_INPUT, "min_speakers must not exceed max_speakers")
    return count


def _explain(errors: list[str], max_context_chars: int, subtitle: Any = None) -> str:
    """Turn the validator's messages into one sentence that names every offending key."""
    parts = []
    for err in errors:
        key = err.split(" ", 1)[0]
        if key == "subtitle" and err.endswith("does not meet the constraints."):
            parts.extend(_subtitle_problems(subtitle))
        elif err.endswith("does not meet the constraints.") and key in HINTS:
            parts.append(HINTS[key].format(max_context_chars=max_context_chars))
        elif err.startswith("Unexpected input."):
            parts.append(f"unknown key {err.split('. ', 1)[1].split(' is ', 1)[0]!r}")
        else:
            # "<key> should be <class 'bool'> type, not <class 'str'>." -> "... should be bool, not str"
            parts.append(re.sub(r"<class '([^']+)'> type", r"\1", err)
                         .replace("<class '", "").replace("'>", "").rstrip("."))
    return "; ".join(parts)
