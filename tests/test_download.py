"""The network edge against a loopback server: retries, caps, redirects and the SSRF guard.

Only loopback is ever connected to; private and metadata addresses are checked by address
classification, or refused by the guard before any connection (netguard enforces this too).
"""

from __future__ import annotations

import base64
import time

import pytest
from runpod.serverless.utils import rp_ssrf

from qwen_worker.pipeline.download import (DownloadPolicy, allow_loopback_for_local_testing,
                                           decode_base64, fetch_url)
from qwen_worker.base.errors import ErrorCode, WorkerError

BODY = b"ID3" + bytes(range(256)) * 40
FAST = DownloadPolicy(max_bytes=1 << 20, read_seconds=1.0, backoff_seconds=0.05)


@pytest.fixture
def loopback_allowed(monkeypatch):
    monkeypatch.setattr(rp_ssrf, "is_safe_address", rp_ssrf.is_safe_address)
    allow_loopback_for_local_testing()


def _code(call) -> ErrorCode:
    with pytest.raises(WorkerError) as err:
        call()
    return err.value.code


@pytest.mark.parametrize("ip", ["169.254.169.254", "10.0.0.1", "172.16.5.4", "192.168.1.10",
                                "100.64.0.1", "0.0.0.0", "fd00::1", "fe80::1", "::ffff:10.0.0.1",
                                "::ffff:169.254.169.254", "127.0.0.1", "::1"])
def test_private_metadata_and_loopback_addresses_are_not_public(ip):
    assert rp_ssrf.is_safe_address(ip) is False


def test_loopback_allowance_opens_loopback_only(loopback_allowed):
    assert rp_ssrf.is_safe_address("127.0.0.1") and rp_ssrf.is_safe_address("::1")
    for ip in ("169.254.169.254", "10.0.0.1", "192.168.1.10", "fd00::1", "100.64.0.1"):
        assert rp_ssrf.is_safe_address(ip) is False


def test_guard_on_refuses_loopback_url(audio_host, tmp_path):
    url = audio_host.file("/a.mp3", BODY)
    with pytest.raises(WorkerError) as err:
        fetch_url(url, tmp_path, FAST)
    assert err.value.code is ErrorCode.URL_NOT_ALLOWED
    # Someone testing locally learns the one setting that lets the worker fetch it.
    assert "DOWNLOAD_ALLOW_LOOPBACK=true" in str(err.value)
    assert audio_host.hits == {}  # refused before connecting


def test_a_private_address_is_refused_without_the_loopback_hint(audio_host, tmp_path):
    # Refused by address before any connection (netguard would stop one anyway).
    with pytest.raises(WorkerError) as err:
        fetch_url("http://10.0.0.1:9/a.mp3", tmp_path, FAST)
    assert err.value.code is ErrorCode.URL_NOT_ALLOWED
    assert "DOWNLOAD_ALLOW_LOOPBACK" not in str(err.value)


def test_guard_on_refuses_ipv6_loopback(tmp_path):
    url = "http://[::1]:9/a.mp3"
    assert _code(lambda: fetch_url(url, tmp_path, FAST)) is ErrorCode.URL_NOT_ALLOWED


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/a.mp3",
                                 "gopher://127.0.0.1:70/_x", "data:audio/mpeg;base64,SUQz",
                                 "/local/path.mp3"])
def test_other_schemes_are_refused(url, tmp_path, loopback_allowed):
    assert _code(lambda: fetch_url(url, tmp_path, FAST)) is ErrorCode.URL_NOT_ALLOWED


def test_download_lands_under_a_neutral_name(audio_host, tmp_path, loopback_allowed):
    path = fetch_url(audio_host.file("/talk.mp3", BODY) + "?sig=abc", tmp_path, FAST)
    assert path.name == "input" and path.read_bytes() == BODY


def test_404_fails_without_retry(audio_host, tmp_path, loopback_allowed):
    url = audio_host.status("/gone", 404)
    assert _code(lambda: fetch_url(url, tmp_path, FAST)) is ErrorCode.DOWNLOAD_FAILED
    assert audio_host.hits["/gone"] == 1


def test_500_every_time_fails_after_retries(audio_host, tmp_path, loopback_allowed):
    url = audio_host.status("/broken", 500)
    assert _code(lambda: fetch_url(url, tmp_path, FAST)) is ErrorCode.DOWNLOAD_FAILED
    assert audio_host.hits["/broken"] == FAST.attempts


def test_500_then_success_is_retried(audio_host, tmp_path, loopback_allowed):
    url = audio_host.fail_then_serve("/flaky", 1, BODY)
    assert fetch_url(url, tmp_path, FAST).read_bytes() == BODY
    assert audio_host.hits["/flaky"] == 2


def test_stalled_body_gives_up(audio_host, tmp_path, loopback_allowed):
    url = audio_host.stall("/stall", BODY, after=1000, seconds=5)
    t0 = time.monotonic()
    assert _code(lambda: fetch_url(url, tmp_path, FAST)) is ErrorCode.DOWNLOAD_FAILED
    assert time.monotonic() - t0 < FAST.attempts * (FAST.read_seconds + 1) + 1


def test_default_policy_gives_up_on_a_stall_within_60_seconds():
    policy = DownloadPolicy(max_bytes=1)
    backoffs = sum(policy.backoff_seconds * 2 ** i for i in range(policy.attempts - 1))
    assert policy.attempts * policy.read_seconds + backoffs < 60


def test_body_without_length_past_the_cap_is_cut(audio_host, tmp_path, loopback_allowed):
    url = audio_host.endless("/endless", b"\0" * 65536, max_seconds=10)
    policy = DownloadPolicy(max_bytes=1 << 20, read_seconds=2.0)
    assert _code(lambda: fetch_url(url, tmp_path, policy)) is ErrorCode.AUDIO_TOO_LARGE


def test_declared_length_over_the_cap_is_refused_before_reading(audio_host, tmp_path,
                                                                 loopback_allowed):
    url = audio_host.declared("/huge", 50 * (1 << 30))
    t0 = time.monotonic()
    assert _code(lambda: fetch_url(url, tmp_path, FAST)) is ErrorCode.AUDIO_TOO_LARGE
    assert time.monotonic() - t0 < 2  # the server holds the body back for 5 s


def test_too_many_redirects(audio_host, tmp_path, loopback_allowed):
    for i in range(10):
        audio_host.redirect(f"/r{i}", f"/r{i + 1}")
    audio_host.file("/r10", BODY)
    assert _code(lambda: fetch_url(audio_host.url("/r0"), tmp_path, FAST)) is ErrorCode.DOWNLOAD_FAILED
    assert fetch_url(audio_host.url("/r6"), tmp_path, FAST).read_bytes() == BODY  # 4 hops is fine


@pytest.mark.parametrize("target", ["http://10.0.0.1/a.mp3", "http://169.254.169.254/latest/meta-data/",
                                    "http://[fd00::1]/a.mp3", "file:///etc/passwd"])
def test_redirect_to_private_or_metadata_is_refused(audio_host, tmp_path, loopback_allowed, target):
    url = audio_host.redirect("/jump", target)
    assert _code(lambda: fetch_url(url, tmp_path, FAST)) is ErrorCode.URL_NOT_ALLOWED


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/json"])
def test_html_or_json_is_not_audio(audio_host, tmp_path, loopback_allowed, ctype):
    url = audio_host.file("/page", b"<!doctype html><html></html>", content_type=ctype)
    assert _code(lambda: fetch_url(url, tmp_path, FAST)) is ErrorCode.AUDIO_UNREADABLE


def test_base64_plain_and_data_url(tmp_path):
    b64 = base64.b64encode(BODY).decode()
    assert decode_base64(b64, tmp_path, 1 << 20).read_bytes() == BODY
    assert decode_base64(f"data:audio/mpeg;base64,{b64}", tmp_path, 1 << 20).read_bytes() == BODY


def test_base64_errors(tmp_path):
    assert _code(lambda: decode_base64("not base64!!", tmp_path, 1 << 20)) is ErrorCode.INVALID_INPUT
    big = base64.b64encode(b"\0" * 5000).decode()
    assert _code(lambda: decode_base64(big, tmp_path, 4000)) is ErrorCode.AUDIO_TOO_LARGE
    # Whitespace does not count against the cap; what it wraps does.
    exact = base64.b64encode(b"\0" * 4998).decode()  # no padding: 4998 bytes exactly
    wrapped = "\r\n".join(exact[i:i + 76] for i in range(0, len(exact), 76))
    assert decode_base64(wrapped, tmp_path, 4998).read_bytes() == b"\0" * 4998
    assert _code(lambda: decode_base64(wrapped, tmp_path, 4997)) is ErrorCode.AUDIO_TOO_LARGE


def _stdlib_reading(text: str) -> bytes | None:
    """What the worker accepted before it took pybase64: the standard library's strict decode
    of the payload with all whitespace removed (None: refused)."""
    import binascii

    payload = text.strip()
    if payload.startswith("data:"):
        header, sep, payload = payload.partition(",")
        if not sep or not header.endswith(";base64"):
            return None
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _reading(text: str, tmp_path) -> bytes | None:
    try:
        return decode_base64(text, tmp_path, 1 << 20).read_bytes()
    except WorkerError as exc:
        assert exc.code is ErrorCode.INVALID_INPUT
        return None


def test_base64_accepts_and_refuses_what_the_standard_library_does(tmp_path):
    """pybase64 (SIMD) in place of the standard library's decoder: the same bytes for every
    valid payload, wrapped or not, and the same refusals (a property test over generated
    payloads: valid ones with whitespace of several kinds put anywhere, and near-base64 text)."""
    from hypothesis import example, given, settings
    from hypothesis import strategies as st

    spaces = st.sampled_from([" ", "\n", "\r\n", "\t", "\u00a0", "\u2028", ""])

    @st.composite
    def wrapped(draw) -> str:
        text = base64.b64encode(draw(st.binary(max_size=300))).decode()
        for _ in range(draw(st.integers(0, 6))):
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(spaces) + text[at:]
        return draw(st.sampled_from(["", "data:audio/wav;base64,"])) + text + draw(spaces)

    near = st.text(alphabet=st.sampled_from(list("QUJDRA+/=aZ09 \n\t!-_\u00e9\u00a0")),
                   max_size=40)

    @settings(max_examples=400, deadline=None)
    @given(st.one_of(wrapped(), near))
    @example("0000=")  # padding after a whole last quantum: pybase64 alone refused it
    def same(text: str) -> None:
        assert _reading(text, tmp_path) == _stdlib_reading(text)

    same()
    assert _reading("QUJD\r\nRA==", tmp_path) == b"ABCD"  # MIME line breaks
    assert _reading("QUJDRA=", tmp_path) is None  # missing padding
    assert _reading("QUJD-RA==", tmp_path) is None  # URL-safe alphabet: not ours
