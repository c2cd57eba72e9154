"""The OpenAI-compatible server (src/server.py) end to end: the real entry point on a loopback
port with the real qwen-asr code on tiny generated models, spoken to with OpenAI's own Python
client, with curl (README's examples, run as written) and with raw sockets for disconnects."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urlparse

import openai
import pytest
import requests
import srt
import uvicorn
import webvtt
from urllib3 import encode_multipart_formdata

import media
from api_server import ApiServer
from models import ENGLISH, ENGLISH_WORDS, settings_for
from worker_server import NETGUARD, ROOT, free_port, worker_env

KEY = "test-key-1234"
MAX_BYTES = 2 << 20  # the server's MAX_DOWNLOAD_BYTES here: uploads over it are refused
README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def api(model_dirs, tmp_path_factory):
    work = tmp_path_factory.mktemp("api-jobs")
    env = worker_env(model_dirs["english"], model_dirs["aligner"], work,
                     DOWNLOAD_ALLOW_LOOPBACK="true", SERVER_API_KEY=KEY,
                     MAX_DOWNLOAD_BYTES=str(MAX_BYTES), MAX_AUDIO_SECONDS="120")
    srv = ApiServer(env, tmp_path_factory.mktemp("log") / "api.log")
    srv.work_dir = work
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=api.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    return media.make_audio(tmp_path_factory.mktemp("audio") / "talk.mp3", 8.0)


@pytest.fixture(scope="module")
def direct(model_dirs, tmp_path_factory, audio):
    """The worker's own job output for the same audio (the queue handler's path), with the
    tokenizer the server uses: what every response format must agree with."""
    from qwen_worker.api.http import load_worker

    settings = settings_for(model_dirs["english"], model_dirs["aligner"],
                            WORK_DIR=str(tmp_path_factory.mktemp("direct-jobs")))
    worker, tokenize = load_worker(settings)
    out = worker.handle({"id": "direct", "input": {
        "audio_base64": base64.b64encode(audio.read_bytes()).decode(), "formats": ["srt", "vtt"]}})
    assert out["text"] == ENGLISH, out
    return {"output": out, "tokenize": tokenize, "worker": worker}


def _transcribe(client, audio: Path, **kwargs):
    with open(audio, "rb") as f:
        return client.audio.transcriptions.create(model="whisper-1", file=f, **kwargs)


def _error(exc_info) -> dict:
    """The `error` object of a failed call (the client hands over the object itself)."""
    body = exc_info.value.body
    return body["error"] if "error" in body else body


# ---- start-up ------------------------------------------------------------------------------

def test_ping_answers_204_while_the_models_load_then_200(api):
    # The entry point binds before it loads: the first answer came while loading.
    assert api.pings[0] == 204 and api.pings[-1] == 200
    assert set(api.pings) == {204, 200}
    health = api.health()
    assert health["status"] == "ready" and health["jobs"] == {"running": 0, "max_concurrency": 2}


def test_loading_state_is_held_until_the_models_are_there(model_dirs, tmp_path, audio):
    """The app's states with loading held open (a gate before the real loader): 204 and 503
    WORKER_NOT_READY while loading, 200 and a transcript after, over real HTTP (uvicorn)."""
    from qwen_worker.api.http import ServerState, create_app, load_worker

    settings = settings_for(model_dirs["english"], model_dirs["aligner"], WORK_DIR=str(tmp_path))
    state = ServerState(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port,
                                           log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    gate = threading.Event()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.05)
        state.start_loading(lambda s: (gate.wait(), load_worker(s))[1])
        assert requests.get(url + "/ping", timeout=5).status_code == 204
        health = requests.get(url + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "loading"
        with open(audio, "rb") as f:
            r = requests.post(url + "/v1/audio/transcriptions", files={"file": f}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "WORKER_NOT_READY"
        gate.set()
        while requests.get(url + "/ping", timeout=5).status_code != 200:
            time.sleep(0.1)
        with open(audio, "rb") as f:
            r = requests.post(url + "/v1/audio/transcriptions", files={"file": f},
                              data={"response_format": "text"}, timeout=120)
        assert r.status_code == 200 and r.text == ENGLISH + "\n"
    finally:
        gate.set()
        server.should_exit = True
        thread.join(30)
    assert list(tmp_path.iterdir()) == []


# ---- every response format through OpenAI's client --------------------------------------

def test_json(client, audio, direct):
    result = _transcribe(client, audio)
    assert isinstance(result, openai.types.audio.Transcription)
    assert result.text == direct["output"]["text"] == ENGLISH


def test_text(client, audio, direct):
    result = _transcribe(client, audio, response_format="text", language="en")
    assert result == direct["output"]["text"] + "\n"


def test_srt_parses_and_equals_the_jobs(client, audio, direct):
    result = _transcribe(client, audio, response_format="srt")
    assert result == direct["output"]["srt"]
    cues = list(srt.parse(result))
    assert " ".join(c.content.replace("\n", " ") for c in cues) == ENGLISH
    assert [(c.start.total_seconds(), c.end.total_seconds()) for c in cues] == [
        pytest.approx((s["start"], s["end"]), abs=1e-3) for s in direct["output"]["segments"]]


def test_vtt_parses_and_equals_the_jobs(client, audio, direct):
    result = _transcribe(client, audio, response_format="vtt")
    assert result == direct["output"]["vtt"]
    cues = webvtt.from_buffer(io.StringIO(result)).captions
    assert " ".join(c.text.replace("\n", " ") for c in cues) == ENGLISH
    assert [(_vtt_seconds(c.start), _vtt_seconds(c.end)) for c in cues] == [
        pytest.approx((s["start"], s["end"]), abs=1e-3) for s in direct["output"]["segments"]]


def _vtt_seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


SEGMENT_KEYS = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                "compression_ratio", "no_speech_prob"}


def _check_words(words, duration: float, expected: list[dict]) -> None:
    assert [w.word for w in words] == ENGLISH_WORDS == [w["word"] for w in expected]
    assert [(w.start, w.end) for w in words] == [(w["start"], w["end"]) for w in expected]
    for w in words:
        assert 0.0 <= w.start <= w.end <= duration
    starts = [w.start for w in words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # increasing


def _check_segments(segments, expected: list[dict], tokenize) -> None:
    assert [s.model_dump().keys() for s in segments] == [SEGMENT_KEYS] * len(expected)
    assert len(segments) >= 2
    for seg, want in zip(segments, expected, strict=True):
        assert (seg.id, seg.start, seg.end, seg.text) == (want["id"], want["start"],
                                                           want["end"], want["text"])
        assert seg.tokens == tokenize(seg.text) and seg.tokens
        assert all(isinstance(t, int) for t in seg.tokens)
        raw = seg.text.encode()
        assert seg.compression_ratio == pytest.approx(len(raw) / len(zlib.compress(raw)))
        assert seg.temperature == 0.0
        assert seg.avg_logprob is None and seg.no_speech_prob is None  # not given: null
        assert seg.seek == 0  # an 8 s file is one chunk, decoded from 0 s
    assert " ".join(s.text for s in segments) == ENGLISH


@pytest.mark.parametrize("granularities", [None, ["segment"], ["word"], ["word", "segment"]])
def test_verbose_json(client, audio, direct, granularities):
    kwargs = {} if granularities is None else {"timestamp_granularities": granularities}
    result = _transcribe(client, audio, response_format="verbose_json", **kwargs)
    assert isinstance(result, openai.types.audio.TranscriptionVerbose)
    out = direct["output"]
    assert (result.task, result.language, result.text) == ("transcribe", "english", ENGLISH)
    assert result.duration == out["duration"] == pytest.approx(8.0, abs=0.05)
    wanted = granularities or ["segment"]
    if "word" in wanted:
        _check_words(result.words, result.duration, out["words"])
    else:
        assert result.words is None  # as OpenAI: words only when asked for
    if "segment" in wanted:
        _check_segments(result.segments, out["segments"], direct["tokenize"])
    else:
        assert result.segments is None


def test_verbose_json_raw_field_names(api, audio):
    """The JSON itself, not the client's model of it: OpenAI's names, nulls where we have none."""
    with open(audio, "rb") as f:
        r = requests.post(api.url + "/v1/audio/transcriptions", headers=_auth(),
                          files={"file": f}, timeout=120,
                          data={"response_format": "verbose_json", "model": "whisper-1",
                                "timestamp_granularities[]": ["word", "segment"]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert {"task", "language", "duration", "text", "segments", "words"} <= set(body)
    assert set(body["segments"][0]) == SEGMENT_KEYS
    assert set(body["words"][0]) == {"word", "start", "end"}
    assert body["segments"][0]["avg_logprob"] is None
    assert body["segments"][0]["no_speech_prob"] is None
    assert r.headers["x-model"] == body["model"]  # the model that ran, whatever was asked


# ---- errors --------------------------------------------------------------------------------

def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize("kwargs,status,code,param", [
    ({"temperature": 0.4}, 400, "INVALID_INPUT", "temperature"),
    ({"response_format": "xml"}, 400, "INVALID_INPUT", "response_format"),
    ({"language": "klingon"}, 400, "UNSUPPORTED_LANGUAGE", "language"),
    ({"timestamp_granularities": ["word"]}, 400, "INVALID_INPUT", "timestamp_granularities[]"),
    ({"timestamp_granularities": ["sentence"], "response_format": "verbose_json"}, 400,
     "INVALID_INPUT", "timestamp_granularities[]"),
    ({"extra_body": {"chunk_seconds": "2"}}, 400, "INVALID_INPUT", None),  # below 5 s
    ({"extra_body": {"subtitle": "[1]"}}, 400, "INVALID_INPUT", "subtitle"),
    ({"extra_body": {"speakers": "2"}}, 400, "INVALID_INPUT", "speakers"),  # unknown field
    # This server's worker is built without diarization.
    ({"response_format": "verbose_json", "extra_body": {"diarize": "true"}}, 400,
     "DIARIZATION_UNAVAILABLE", None),
    # json (the default) has no place for speakers.
    ({"extra_body": {"diarize": "true"}}, 400, "INVALID_INPUT", "response_format"),
])
def test_bad_fields_are_400_with_our_code(client, audio, api, kwargs, status, code, param):
    with pytest.raises(openai.APIStatusError) as exc_info:
        _transcribe(client, audio, **kwargs)
    assert exc_info.value.status_code == status
    err = _error(exc_info)
    assert (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error")
    assert err["message"]
    assert list(api.work_dir.iterdir()) == []  # nothing left behind


def test_diarized_json_on_a_server_built_without_diarization_is_400(client, audio):
    with pytest.raises(openai.BadRequestError) as exc_info:
        _transcribe(client, audio, response_format="diarized_json")
    error = _error(exc_info)
    assert error["code"] == "DIARIZATION_UNAVAILABLE"
    assert "built without speaker diarization" in error["message"]
    assert _transcribe(client, audio, response_format="text") == ENGLISH + "\n"


def test_temperature_zero_is_accepted(client, audio):
    assert _transcribe(client, audio, temperature=0).text == ENGLISH


def test_file_over_the_cap_is_413(client, tmp_path, api):
    big = tmp_path / "big.mp3"
    big.write_bytes(media.make_audio(tmp_path / "a.mp3", 8.0).read_bytes() * (MAX_BYTES // 60000))
    assert big.stat().st_size > MAX_BYTES
    with pytest.raises(openai.APIStatusError) as exc_info:
        _transcribe(client, big)
    assert exc_info.value.status_code == 413
    assert (_error(exc_info)["code"], _error(exc_info)["param"]) == ("AUDIO_TOO_LARGE", "file")
    assert list(api.work_dir.iterdir()) == []


def test_not_audio_is_415_with_our_code(client, tmp_path):
    bad = tmp_path / "notes.mp3"
    bad.write_text("<html><body>not audio</body></html>\n" * 50)
    with pytest.raises(openai.APIStatusError) as exc_info:
        _transcribe(client, bad)
    assert exc_info.value.status_code == 415
    assert _error(exc_info)["code"] == "AUDIO_UNREADABLE"


def test_refused_url_is_400_and_the_server_serves_on(api, client, audio):
    r = requests.post(api.url + "/v1/audio/transcriptions", headers=_auth(), timeout=60,
                      files={"audio_url": (None, "file:///etc/passwd")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "URL_NOT_ALLOWED"
    assert _transcribe(client, audio).text == ENGLISH


@pytest.mark.parametrize("fields", [
    {"audio_url": (None, "http://127.0.0.1:1/a.mp3"), "file": ("a.mp3", b"x")},  # both
    {"model": (None, "whisper-1")},  # neither
])
def test_exactly_one_audio_source(api, fields):
    r = requests.post(api.url + "/v1/audio/transcriptions", headers=_auth(), files=fields,
                      timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "give exactly one of file and audio_url"


def test_not_multipart_is_400(api):
    r = requests.post(api.url + "/v1/audio/transcriptions", headers=_auth(),
                      json={"file": "x"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_INPUT"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {KEY}"}])
def test_auth_missing_or_wrong_is_401(api, audio, headers):
    with open(audio, "rb") as f:
        r = requests.post(api.url + "/v1/audio/transcriptions", headers=headers,
                          files={"file": f}, timeout=30)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_key_through_the_client(api, audio):
    wrong = openai.OpenAI(base_url=api.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        _transcribe(wrong, audio)


def test_ping_and_health_need_no_key(api):
    assert requests.get(api.url + "/ping", timeout=5).status_code == 200
    assert requests.get(api.url + "/health", timeout=5).status_code == 200


def test_unknown_route_is_an_openai_error(api):
    r = requests.get(api.url + "/v1/nothing", headers=_auth(), timeout=5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


# ---- many at once, and a client that leaves -------------------------------------------------

def test_concurrent_requests_all_answer(client, audio):
    results: list = [None] * 6
    errors: list = []

    def one(i: int) -> None:
        try:
            results[i] = _transcribe(client, audio, response_format="text")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [ENGLISH + "\n"] * len(results)


def test_disconnect_stops_the_job(api, host):
    """The job is stuck in a download that stalls (15 s without a byte counts as stalled and is
    retried, 3 attempts). The client hangs up: the job's download is cut at once and not
    retried, because the job was stopped, and its directory is removed."""
    path = "/srv/stall.mp3"
    url = host.stall(path, b"\xff" * 200_000, after=4096, seconds=90)
    body, content_type = encode_multipart_formdata({"audio_url": url, "model": "whisper-1"})
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    conn.request("POST", "/v1/audio/transcriptions", body=body,
                 headers={"Content-Type": content_type, **_auth()})
    while host.hits.get(path, 0) == 0 or api.health()["jobs"]["running"] == 0:
        time.sleep(0.1)
    conn.close()  # the client goes away without reading an answer
    deadline = time.monotonic() + 120  # bounds the loop only: without a stop, ~50 s and 3 hits
    while api.health()["jobs"]["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    while list(api.work_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert api.health()["jobs"]["running"] == 0
    assert host.hits[path] == 1  # stopped, not failed and retried
    assert list(api.work_dir.iterdir()) == []
    assert "the client disconnected; stopping its work" in api.log()
    assert re.search(r"job http-\w+: its work stopped", api.log())


def test_a_url_that_cannot_be_fetched_is_422_with_our_code(api, host):
    url = host.file("/present.mp3", b"x")  # the host is up; this path is not served
    r = requests.post(api.url + "/v1/audio/transcriptions", headers=_auth(), timeout=120,
                      files={"audio_url": (None, url.replace("present", "absent"))})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "DOWNLOAD_FAILED" and "404" in error["message"]


def test_answers_are_whole_whatever_the_queue_results_limit(model_dirs, tmp_path, audio, host):
    """RESULT_MAX_BYTES is RunPod's payload limit for queue jobs; an HTTP answer has none. A
    server set to trim queue results still answers with every word, for an uploaded file and
    for an audio_url."""
    work = tmp_path / "jobs"
    work.mkdir()
    env = worker_env(model_dirs["english"], model_dirs["aligner"], work,
                     DOWNLOAD_ALLOW_LOOPBACK="true", RESULT_MAX_BYTES="1000")
    srv = ApiServer(env, tmp_path / "api.log")
    try:
        url = host.file("/whole/talk.mp3", audio.read_bytes(), "audio/mpeg")
        for source in ({"file": ("talk.mp3", audio.read_bytes())}, {"audio_url": (None, url)}):
            fields = [*source.items(), ("response_format", (None, "verbose_json")),
                      ("timestamp_granularities[]", (None, "word")),
                      ("timestamp_granularities[]", (None, "segment"))]
            r = requests.post(srv.url + "/v1/audio/transcriptions", files=fields, timeout=120)
            assert r.status_code == 200, r.text
            body = r.json()
            assert "omitted" not in body  # the job output (~1.5 kB) is over the 1000 bytes
            assert len(body["words"]) == len(ENGLISH.split())
            assert body["segments"] and body["text"] == ENGLISH
    finally:
        srv.close()


# ---- README -------------------------------------------------------------------------------

def _readme_curls() -> list[str]:
    section = README.split("## OpenAI-compatible server\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    return [b.strip() for b in blocks if b.lstrip().startswith("curl ")]


def test_readme_curl_examples_run_as_written(api, audio, host, tmp_path, direct):
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run README's examples")
    examples = _readme_curls()
    assert len(examples) == 4
    (tmp_path / "audio.mp3").write_bytes(audio.read_bytes())
    remote = host.file("/readme/episode-212.mp3", audio.read_bytes())
    out = direct["output"]
    for example in examples:
        # The README's placeholders -> this test's loopback server and audio host.
        command = (example.replace("http://localhost:8000", api.url)
                   .replace("https://example.com/episode-212.mp3", remote))
        hosts = {urlparse(u).hostname for u in re.findall(r"https?://[^\s'\"]+", command)}
        assert hosts == {"127.0.0.1"}, command  # nothing but loopback
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True,
                                text=True, timeout=180, env={"PATH": os.environ["PATH"],
                                                             "SERVER_API_KEY": KEY})
        assert result.returncode == 0, (command, result.stderr)
        fmt = re.search(r"response_format=(\w+)", command).group(1)
        text = result.stdout
        if "> audio.srt" in command:
            text = (tmp_path / "audio.srt").read_text()
        if fmt == "json":
            assert json.loads(text)["text"] == ENGLISH
        elif fmt == "verbose_json":
            body = json.loads(text)
            assert [w["word"] for w in body["words"]] == ENGLISH_WORDS
            assert [s["text"] for s in body["segments"]] == [s["text"] for s in out["segments"]]
        elif fmt == "srt":
            cues = list(srt.parse(text))
            assert all(len(line) <= 32 for c in cues for line in c.content.split("\n"))
            assert all("\n" not in c.content for c in cues)  # max_line_count 1
            assert " ".join(c.content for c in cues) == ENGLISH
        else:
            assert fmt == "vtt"
            cues = webvtt.from_buffer(io.StringIO(text)).captions
            assert " ".join(c.text.replace("\n", " ") for c in cues) == ENGLISH
    assert host.hits["/readme/episode-212.mp3"] == 1


def test_readme_python_example_runs(api, audio, tmp_path):
    code = README.split("## OpenAI-compatible server\n", 1)[1].split("```python\n", 1)[1]
    code = code.split("```", 1)[0].replace("http://localhost:8000", api.url)
    code = code.replace('"your SERVER_API_KEY, or any text"', repr(KEY))
    (tmp_path / "audio.mp3").write_bytes(audio.read_bytes())
    # The example's process may talk to loopback only, as this one (netguard).
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(NETGUARD)})
    assert result.returncode == 0, result.stderr
    text, start, end = result.stdout.strip().rsplit(" ", 2)
    assert text == ENGLISH and 0.0 <= float(start) < float(end)


# ---- the form contract, without a server ----------------------------------------------------

def test_form_fields_map_onto_the_job_input():
    from qwen_worker.api.openai import job_input, parse_form

    form = parse_form({"model": ["whisper-1"], "language": ["English"], "prompt": ["Qwen"],
                       "temperature": ["0.0"], "response_format": ["srt"],
                       "chunk_seconds": ["90"], "subtitle": ['{"max_line_width": 20}'],
                       "stream": ["false"]}, has_file=True)
    assert job_input(form) == {"language": "English", "context": "Qwen",
                               "word_timestamps": True, "formats": ["srt"],
                               "chunk_seconds": 90.0, "subtitle": {"max_line_width": 20}}
    # json and text need no word times: the aligner pass is skipped.
    assert job_input(parse_form({}, has_file=True))["word_timestamps"] is False


@pytest.mark.parametrize("fields,param", [
    ({"stream": ["true"]}, "stream"),
    ({"language": ["en", "de"]}, "language"),
    ({"temperature": ["hot"]}, "temperature"),
    ({"chunk_seconds": ["long"]}, "chunk_seconds"),
])
def test_form_refusals_name_the_field(fields, param):
    from qwen_worker.api.openai import FormError, parse_form

    with pytest.raises(FormError) as exc_info:
        parse_form(fields, has_file=True)
    assert exc_info.value.param == param


def test_compression_ratio_flags_repetition_as_whisper_does():
    from qwen_worker.api.openai import compression_ratio

    assert compression_ratio("thank you " * 40) > 2.4  # Whisper's threshold for a loop
    assert compression_ratio(ENGLISH) < 2.4
