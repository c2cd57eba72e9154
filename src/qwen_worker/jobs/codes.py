"""Every failure a job can meet -> its error code and the sentence the caller reads: one table
(docs/errors.md). The stages raise their own exceptions; only this table knows the codes."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Callable

from qwen_worker.base.errors import ErrorCode, WorkerError, in_cause_chain
from qwen_worker.engines.base import DiarizationError, EngineError, is_fatal_gpu_error
from qwen_worker.pipeline.decode import (
    AudioTooLong,
    DecodeError,
    DecoderCrashed,
    DecoderKilled,
    EmptyAudio,
    FormatRefused,
    NoAudioStream,
    TruncatedAudio,
)
from qwen_worker.pipeline.speakers import DiarizationUnavailable


@dataclass(frozen=True)
class Rule:
    raised: type[BaseException] | tuple[type[BaseException], ...]
    code: ErrorCode
    message: str | None = None  # None: the exception's own message (written for the caller)
    # What the operator's log says (with the traceback); None: the input's fault, logged briefly.
    note: Callable[[Exception], str] | None = None


# First match wins: subclasses before their bases.
RULES: tuple[Rule, ...] = (
    Rule(DiarizationUnavailable, ErrorCode.DIARIZATION_UNAVAILABLE),
    Rule(AudioTooLong, ErrorCode.AUDIO_TOO_LONG),
    # a playlist or manifest: nothing it names was opened
    Rule(FormatRefused, ErrorCode.AUDIO_FORMAT_REFUSED,
         note=lambda e: f"refused a {getattr(e, 'demuxer', '?')} file"),
    Rule((NoAudioStream, EmptyAudio, DecoderCrashed), ErrorCode.AUDIO_UNREADABLE),
    Rule(TruncatedAudio, ErrorCode.AUDIO_TRUNCATED),
    Rule(DecoderKilled, ErrorCode.DECODE_INTERRUPTED, "the decoder was stopped before the end "
         "of the audio (killed from outside); retry the job", note=lambda e: f"decoder killed: {e}"),
    Rule(DecodeError, ErrorCode.AUDIO_UNREADABLE, "the data is not audio that ffmpeg can decode"),
    Rule(DiarizationError, ErrorCode.ENGINE_ERROR, "speaker diarization failed on this audio; no "
         "partial transcript is returned", note=lambda e: f"engine failure: {e}"),
    Rule(EngineError, ErrorCode.ENGINE_ERROR, "the model failed on this audio; no partial "
         "transcript is returned", note=lambda e: f"engine failure: {e}"),
)


def is_disk_full(exc: BaseException) -> bool:
    return in_cause_chain(exc, lambda e: isinstance(e, OSError)
                          and e.errno in (errno.ENOSPC, errno.EDQUOT))


def code_for(exc: Exception) -> tuple[WorkerError, str | None]:
    """The error the caller gets for `exc`, and the operator's note when it is a fault of the
    worker or the model rather than of the input (logged with its traceback)."""
    if isinstance(exc, WorkerError):
        return exc, None
    for rule in RULES:
        if isinstance(exc, rule.raised):
            refresh = rule.code is ErrorCode.ENGINE_ERROR and is_fatal_gpu_error(exc)
            return (WorkerError(rule.code, rule.message or str(exc), refresh_worker=refresh),
                    rule.note(exc) if rule.note else None)
    if is_disk_full(exc):
        return WorkerError(ErrorCode.DISK_FULL, "the worker's disk is full; the worker will be "
                           "replaced, retry the job", refresh_worker=True), \
            "the disk under WORK_DIR is full"
    # A bug must not take the worker down or leak paths; a fatal GPU error replaces the worker.
    fatal = is_fatal_gpu_error(exc)
    return WorkerError(ErrorCode.ENGINE_ERROR if fatal else ErrorCode.INTERNAL_ERROR,
                       "the worker hit an unexpected error; see the worker log",
                       refresh_worker=fatal), f"unexpected {type(exc).__name__}: {exc}"
