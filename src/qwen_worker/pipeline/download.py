"""The network edge: fetch audio_url through runpod's SSRF guard, or decode audio_base64.

Everything lands in the job's own temporary directory under a neutral file name: ffmpeg
would otherwise pick its demuxer from a (possibly lying) extension.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pybase64
import requests
from runpod.serverless.utils import rp_ssrf

from qwen_worker.base.errors import ErrorCode, WorkerError
from qwen_worker.base.lifecycle import LIFETIME

log = logging.getLogger(__name__)

INPUT_NAME = "input"  # neutral: no extension for ffmpeg to trust
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_NOT_AUDIO_TYPES = ("text/html", "application/xhtml+xml", "application/json", "text/xml",
                    "application/xml")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class DownloadPolicy:
    max_bytes: int
    total_seconds: float = 1800.0  # the whole download, retries included (slow big podcasts)
    connect_seconds: float = 10.0
    # Longest silence between two reads: 3 stalled attempts give up in under 50 s in all.
    read_seconds: float = 15.0
    max_redirects: int = 5
    attempts: int = 3
    backoff_seconds: float = 0.5


class _Transient(Exception):
    """Worth another attempt: a timeout, a reset, a cut body, a 5xx."""


def allow_loopback_for_local_testing() -> None:
    """Let the SSRF guard accept 127.0.0.0/8 and ::1 (and nothing else private).

    For local runs and tests only (env DOWNLOAD_ALLOW_LOOPBACK); much narrower than runpod's
    own RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS, which opens every private range and the
    metadata address.
    """
    strict = rp_ssrf.is_safe_address
    if getattr(strict, "loopback_allowed", False):
        return

    def is_safe_or_loopback(ip: str) -> bool:
        try:
            return strict(ip) or ipaddress.ip_address(ip).is_loopback
        except ValueError:
            return False

    is_safe_or_loopback.loopback_allowed = True  # type: ignore[attr-defined]
    rp_ssrf.is_safe_address = is_safe_or_loopback


def fetch_url(url: str, dest_dir: Path, policy: DownloadPolicy) -> Path:
    """Stream url to dest_dir/input, retrying transient failures with backoff."""
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise WorkerError(ErrorCode.URL_NOT_ALLOWED,
                          f"audio_url must be an http or https URL, not {scheme or 'no'} scheme")
    deadline = time.monotonic() + policy.total_seconds
    dest = dest_dir / INPUT_NAME
    delay = policy.backoff_seconds
    for attempt in range(1, policy.attempts + 1):
        LIFETIME.raise_if_stopping()
        try:
            _fetch_once(url, dest, policy, deadline)
            LIFETIME.raise_if_stopping()  # a body cut by a stop can look complete
            return dest
        except _Transient as exc:
            LIFETIME.raise_if_stopping()  # a stopped job's cut-off body is not worth a retry
            left = deadline - time.monotonic()
            if attempt == policy.attempts or left <= delay:
                raise WorkerError(ErrorCode.DOWNLOAD_FAILED,
                                  f"downloading the audio failed after {attempt} attempts: {exc}") from None
            log.warning("download attempt %d failed (%s); retrying in %.1f s", attempt, exc, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _fetch_once(url: str, dest: Path, policy: DownloadPolicy, deadline: float) -> None:
    try:
        response = rp_ssrf.safe_get(url, stream=True, max_bytes=policy.max_bytes,
                                    max_redirects=policy.max_redirects,
                                    timeout=(policy.connect_seconds, policy.read_seconds))
    except rp_ssrf.SSRFError as exc:
        raise _refusal(str(exc), policy) from None
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise _Transient(_reason(exc)) from None
    except requests.RequestException as exc:
        raise WorkerError(ErrorCode.DOWNLOAD_FAILED, f"the download failed: {_reason(exc)}") from None
    with response, LIFETIME.stopper(lambda: _shut_socket(response)):
        status = response.status_code
        if status in _RETRY_STATUS:
            raise _Transient(f"the server answered HTTP {status}")
        if status >= 400:
            raise WorkerError(ErrorCode.DOWNLOAD_FAILED, f"the server answered HTTP {status}")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type in _NOT_AUDIO_TYPES:
            raise WorkerError(ErrorCode.AUDIO_UNREADABLE,
                              f"the URL returned {content_type}, not audio")
        try:
            with open(dest, "wb") as out:
                for block in rp_ssrf.iter_content_capped(response, _BLOCK, policy.max_bytes):
                    out.write(block)
                    if time.monotonic() > deadline:
                        raise WorkerError(ErrorCode.DOWNLOAD_FAILED,
                                          f"the download took longer than {policy.total_seconds:.0f} s")
        except rp_ssrf.SSRFError as exc:
            raise _refusal(str(exc), policy) from None
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            # A stalled body surfaces as ConnectionError (read timeout), a cut one as
            # ChunkedEncodingError; both may succeed on a second try.
            raise _Transient(f"the body was cut off or stalled ({_reason(exc)})") from None
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and dest.stat().st_size < int(declared):
            raise _Transient(f"the body ended after {dest.stat().st_size} of {declared} bytes")


def _shut_socket(response: requests.Response) -> None:
    """Wake a read blocked on a silent server (from another thread: shutdown, not close).

    The socket is the response body's own (http.client hands it over and clears the
    connection's for `Connection: close` bodies), else the connection's.
    """
    raw = response.raw
    body = getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None)
    sock = getattr(body, "_sock", None) or getattr(getattr(raw, "_connection", None), "sock", None)
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _refusal(message: str, policy: DownloadPolicy) -> WorkerError:
    """Sort runpod's one SSRFError into our codes by its message."""
    if "size cap" in message:
        return WorkerError(ErrorCode.AUDIO_TOO_LARGE,
                           f"the audio is larger than the {policy.max_bytes}-byte download limit")
    if "non-public address" in message:
        hint = ""
        if _is_loopback(message.rsplit(" ", 1)[-1]):
            # Someone testing with a file server on the worker's own machine.
            hint = ("; to test against a server on the worker's own machine, start the worker "
                    "with DOWNLOAD_ALLOW_LOOPBACK=true (accepts 127.0.0.0/8 and ::1 only)")
        return WorkerError(ErrorCode.URL_NOT_ALLOWED,
                           "audio_url leads to a private, loopback or link-local address "
                           "(directly or by redirect)" + hint)
    if "scheme" in message or "no host" in message:
        return WorkerError(ErrorCode.URL_NOT_ALLOWED, "audio_url (or a redirect) is not an "
                           "http(s) URL with a host")
    if "redirects" in message:
        return WorkerError(ErrorCode.DOWNLOAD_FAILED,
                           f"the URL redirected more than {policy.max_redirects} times")
    if "could not resolve" in message or "no addresses" in message:
        return WorkerError(ErrorCode.DOWNLOAD_FAILED, "the audio_url host name does not resolve")
    return WorkerError(ErrorCode.DOWNLOAD_FAILED, "the download was refused by the URL guard")


def _reason(exc: BaseException) -> str:
    # Exception texts of requests can carry full URLs with credentials: keep the class only.
    return type(exc).__name__


def decode_base64(data: str, dest_dir: Path, max_bytes: int) -> Path:
    """audio_base64 (plain or a data: URL) -> dest_dir/input, size-capped before decoding.

    pybase64 (SIMD; vLLM's own dependency): the standard library's decoder held the GIL ~9 ms
    per 30 s WAV clip on the H200's host, and 64 clips arriving at once queued ~0.6 s of it in
    front of every job's decode (BENCHMARKS.md, "Ingest"). Whitespace (MIME line breaks) is
    removed only when the strict decode finds some, which keeps the clean case one pass."""
    payload = data.strip()
    if payload.startswith("data:"):
        header, sep, payload = payload.partition(",")
        if not sep or not header.endswith(";base64"):
            raise WorkerError(ErrorCode.INVALID_INPUT, "audio_base64 data: URL must be base64-encoded")
    if len(payload) // 4 * 3 > max_bytes:  # before any copy: whitespace only makes it shorter
        payload = "".join(payload.split())
        if len(payload) // 4 * 3 > max_bytes:
            raise WorkerError(ErrorCode.AUDIO_TOO_LARGE,
                              f"audio_base64 decodes to more than {max_bytes} bytes")
    try:
        raw = pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raw = _decode_lenient("".join(payload.split()))
    dest = dest_dir / INPUT_NAME
    dest.write_bytes(raw)
    return dest


def _decode_lenient(payload: str) -> bytes:
    """The standard library's reading is the contract (it accepts, e.g., padding after a whole
    last quantum, which pybase64 refuses); pybase64 first, as that is the common case."""
    try:
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise WorkerError(ErrorCode.INVALID_INPUT, "audio_base64 is not valid base64") from None
