"""Results of any size: with a bucket, the requested subtitle and text files are uploaded
(presigned URLs in `files`), and a result too large for RunPod's payload limit goes there whole
(the output is then a summary); without a bucket, an over-limit result sheds its bulkiest parts
until it fits.

A long transcript never fails a job for its size; a result that was to be uploaded and could
not be fails with RESULT_UPLOAD_FAILED, never returned short without saying so.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from qwen_worker.base.config import Bucket, Settings
from qwen_worker.base.errors import ErrorCode, WorkerError

log = logging.getLogger(__name__)

# The bulky parts of a result: what an uploaded result's summary leaves to the files, and what
# an inline result drops, in this order, until it fits (words are the largest and the least
# read; segments carry the subtitles' timing; chunks repeat the text).
DROP_ORDER = ("words", "segments", "chunks", "vtt", "srt", "txt")
# What is uploaded besides the whole result, when the job asked for it.
FILE_FORMATS = ("srt", "vtt", "txt")
CONTENT_TYPES = {
    "json": "application/json; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}
COUNTED = ("words", "segments", "chunks")

_clients: dict[Bucket, Any] = {}
_clients_lock = threading.Lock()


def result_bytes(output: dict[str, Any]) -> int:
    """The result's size as runpod sends it to RunPod (rp_http: ensure_ascii=False, UTF-8)."""
    return len(json.dumps(output, ensure_ascii=False).encode())


def deliver(output: dict[str, Any], settings: Settings, job_id: str) -> dict[str, Any]:
    """The job's output as returned to RunPod. With a bucket: whole, plus URLs of its
    uploaded subtitle/text files, when it fits; else uploaded whole with a summary returned
    (always, with RESULT_UPLOAD=always). Without one: whole when it fits, else trimmed with a
    warning."""
    size = result_bytes(output)
    limit = settings.result_max_bytes
    if settings.bucket is not None:
        if size <= limit and settings.result_upload == "auto":
            bodies = _format_files(output)
            if not bodies:
                return output
            stem = _stem(settings, job_id)
            with_files = {**output, "files": _put(bodies, stem, size, settings)}
            if result_bytes(with_files) <= limit:
                return with_files
        return upload(output, size, settings, job_id)
    if size > limit:
        return trim(output, size, limit)
    return output


def trim(output: dict[str, Any], size: int, limit: int) -> dict[str, Any]:
    """Drop `words`, then `segments` (then chunks, vtt, srt) until the result fits; the
    warning and `omitted` name what went."""
    kept = dict(output)
    dropped: list[str] = []
    for key in DROP_ORDER:
        if result_bytes(kept) <= limit:
            break
        if not kept.get(key):  # absent or empty: dropping it gains nothing
            continue
        del kept[key]
        dropped.append(key)
        note = (f"the result ({size:,} bytes) is over RESULT_MAX_BYTES ({limit:,}): dropped "
                f"{', '.join(dropped)} to fit; configure a bucket (BUCKET_ENDPOINT_URL, "
                "BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY) to receive whole results")
        kept["warnings"] = [*output.get("warnings", []), note]
        kept["omitted"] = list(dropped)
    final = result_bytes(kept)
    if final > limit:  # only the text and the metadata are left: send them, RunPod may refuse
        log.warning("result still %d bytes after dropping %s", final, dropped)
        kept["warnings"] = [*kept.get("warnings", output.get("warnings", [])),
                            f"the result is {final:,} bytes even without its words, segments, "
                            "chunks and subtitles; RunPod may refuse it"]
    if dropped:
        log.warning("result of %d bytes over RESULT_MAX_BYTES: dropped %s", size, dropped)
    return kept


def upload(output: dict[str, Any], size: int, settings: Settings, job_id: str
           ) -> dict[str, Any]:
    """Upload the whole result (and each subtitle/text format it holds) and return a summary
    with a presigned URL per file."""
    bodies = {"json": json.dumps(output, ensure_ascii=False).encode(), **_format_files(output)}
    files = _put(bodies, _stem(settings, job_id), size, settings)
    summary = {k: v for k, v in output.items() if k not in DROP_ORDER}
    summary["counts"] = {k: len(output[k]) for k in COUNTED if isinstance(output.get(k), list)}
    summary["files"] = files
    if result_bytes(summary) > settings.result_max_bytes:  # only with a tiny limit
        summary.pop("text", None)
        summary["warnings"] = [*summary.get("warnings", []),
                               "the text is left out of this summary for its size: it is in "
                               "files.json"]
    log.info("result of %d bytes uploaded whole", size)
    return summary


def _format_files(output: dict[str, Any]) -> dict[str, bytes]:
    """The subtitle and text files the job asked for."""
    return {fmt: output[fmt].encode() for fmt in FILE_FORMATS if isinstance(output.get(fmt), str)}


def _stem(settings: Settings, job_id: str) -> str:
    assert settings.bucket is not None
    return f"{settings.bucket.prefix}{_safe(job_id)}-{uuid.uuid4().hex[:8]}/transcript"


def _put(bodies: dict[str, bytes], stem: str, size: int, settings: Settings
         ) -> dict[str, dict[str, Any]]:
    """Upload each body as `stem.FORMAT`; a presigned URL, size and expiry for each."""
    bucket = settings.bucket
    assert bucket is not None
    expires = settings.result_url_expiry_s
    expires_at = (datetime.now(timezone.utc) + timedelta(seconds=expires)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    files = {}
    try:
        client = _client(bucket)
        for fmt, body in bodies.items():
            key = f"{stem}.{fmt}"
            client.put_object(Bucket=bucket.name, Key=key, Body=body,
                              ContentType=CONTENT_TYPES[fmt])
            url = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket.name, "Key": key}, ExpiresIn=expires)
            files[fmt] = {"url": url, "bytes": len(body), "expires_at": expires_at}
    except Exception as exc:  # noqa: BLE001 - botocore's many errors: one code, the reason
        log.error("result upload to bucket %s at %s failed", bucket.name, bucket.endpoint_url,
                  exc_info=True)
        raise WorkerError(ErrorCode.RESULT_UPLOAD_FAILED,
                          f"the result ({size:,} bytes) could not be uploaded to bucket "
                          f"{bucket.name!r} at {bucket.endpoint_url}: {_reason(exc)}") from None
    log.info("uploaded %s.{%s}", stem, ",".join(bodies))
    return files


def _safe(job_id: str) -> str:
    """A job id as a key segment: RunPod's ids are safe already; anything else is made so."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:100] or "job"


def _reason(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{err.get('Code', 'error')} (HTTP {status}): {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _client(bucket: Bucket) -> Any:
    """One S3 client per bucket for the worker's life (clients are thread-safe; making one
    is not, and costs ~100 ms)."""
    with _clients_lock:
        client = _clients.get(bucket)
        if client is None:
            import boto3
            from botocore.config import Config

            # Explicit credentials and region: boto3 looks nothing up (no instance metadata).
            client = boto3.session.Session().client(
                "s3", endpoint_url=bucket.endpoint_url, region_name=bucket.region,
                aws_access_key_id=bucket.access_key_id,
                aws_secret_access_key=bucket.secret_access_key,
                config=Config(signature_version="s3v4", connect_timeout=10, read_timeout=120,
                              retries={"max_attempts": 3, "mode": "standard"},
                              s3={"addressing_style": "path" if bucket.path_style
                                  else "virtual"}))
            _clients[bucket] = client
        return client
