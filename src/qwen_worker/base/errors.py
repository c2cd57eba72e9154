"""The closed set of error codes a job can fail with, and the one exception that carries them."""

from __future__ import annotations

from enum import Enum
from typing import Callable


class ErrorCode(str, Enum):
    INVALID_INPUT = "INVALID_INPUT"
    URL_NOT_ALLOWED = "URL_NOT_ALLOWED"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    AUDIO_TOO_LARGE = "AUDIO_TOO_LARGE"
    AUDIO_TOO_LONG = "AUDIO_TOO_LONG"
    AUDIO_UNREADABLE = "AUDIO_UNREADABLE"
    AUDIO_FORMAT_REFUSED = "AUDIO_FORMAT_REFUSED"
    AUDIO_TRUNCATED = "AUDIO_TRUNCATED"
    DECODE_INTERRUPTED = "DECODE_INTERRUPTED"
    UNSUPPORTED_LANGUAGE = "UNSUPPORTED_LANGUAGE"
    ENGINE_ERROR = "ENGINE_ERROR"
    DIARIZATION_UNAVAILABLE = "DIARIZATION_UNAVAILABLE"
    DISK_FULL = "DISK_FULL"
    RESULT_UPLOAD_FAILED = "RESULT_UPLOAD_FAILED"
    WORKER_SHUTDOWN = "WORKER_SHUTDOWN"
    INTERNAL_ERROR = "INTERNAL_ERROR"


# One line each, for README and for clients.
DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_INPUT: "The input is malformed: unknown keys, wrong types, values out of range, "
                             "not exactly one audio source, or base64 that does not decode.",
    ErrorCode.URL_NOT_ALLOWED: "audio_url is not http(s), or points at a private, loopback, "
                               "link-local, CGNAT or metadata address (also after a redirect).",
    ErrorCode.DOWNLOAD_FAILED: "The audio could not be fetched: HTTP error, timeout, stalled or cut "
                               "body, too many redirects, unresolvable host (after retries).",
    ErrorCode.AUDIO_TOO_LARGE: "The download or base64 audio is over MAX_DOWNLOAD_BYTES / "
                               "MAX_BASE64_BYTES.",
    ErrorCode.AUDIO_TOO_LONG: "The audio is longer than MAX_AUDIO_SECONDS.",
    ErrorCode.AUDIO_UNREADABLE: "The data is not audio ffmpeg can decode (HTML, JSON, random bytes, "
                                "an image), has no audio stream, holds no samples, ffmpeg exits "
                                "with an error part-way, or ffmpeg crashes on it.",
    ErrorCode.AUDIO_FORMAT_REFUSED: "The file is a playlist, manifest or other reference to "
                                    "further files or streams (HLS/M3U, DASH, ffconcat, SDP, "
                                    "image sequence); refused before anything it names is opened.",
    ErrorCode.AUDIO_TRUNCATED: "The audio stream ends well before the duration its container "
                               "states: the file is cut short or damaged.",
    ErrorCode.DECODE_INTERRUPTED: "The ffmpeg decoder was killed from outside the worker (a signal, "
                                  "the out-of-memory killer) before the end of the audio; retry.",
    ErrorCode.UNSUPPORTED_LANGUAGE: "language is not 'auto', one of the 30 Qwen3-ASR languages, "
                                    "or one of their ISO 639-1/639-3 codes.",
    ErrorCode.ENGINE_ERROR: "The model failed on this file; no partial transcript is returned. "
                            "On a fatal GPU error the worker is also replaced (refresh_worker).",
    ErrorCode.DIARIZATION_UNAVAILABLE: "diarize was asked for, but this worker was built "
                                       "without the speaker diarization model.",
    ErrorCode.DISK_FULL: "The worker's disk (WORK_DIR) is full; the worker is replaced "
                         "(refresh_worker). Retry the job.",
    ErrorCode.RESULT_UPLOAD_FAILED: "The result was to go to the bucket (BUCKET_ENDPOINT_URL) but "
                                    "the upload failed (refused, unreachable, no such bucket); "
                                    "fix the bucket or unset it, and retry the job.",
    ErrorCode.WORKER_SHUTDOWN: "The worker was told to stop (SIGTERM) while the job ran; its "
                               "download and decoder were stopped. Retry the job.",
    ErrorCode.INTERNAL_ERROR: "An unexpected fault in the worker; details are in the worker log.",
}


def in_cause_chain(exc: BaseException, matches: Callable[[BaseException], bool]) -> bool:
    """Whether exc, or anything it was raised from or during, matches."""
    seen: BaseException | None = exc
    while seen is not None:
        if matches(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class WorkerError(Exception):
    """A failure to report to the caller: a stable code and one sentence for a person."""

    def __init__(self, code: ErrorCode, message: str, *, refresh_worker: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.refresh_worker = refresh_worker

    def to_output(self) -> dict:
        # The code leads the string: runpod's /runsync keeps only "error" of a failed job.
        out = {"error": f"{self.code.value}: {self.message}", "error_code": self.code.value}
        if self.refresh_worker:
            out["refresh_worker"] = True
        return out
