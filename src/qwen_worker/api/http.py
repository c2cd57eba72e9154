"""The OpenAI-compatible HTTP API (entry point: src/server.py): the same worker, engine and job
path as the queue handler.

`POST /v1/audio/transcriptions` takes OpenAI's multipart form (qwen_worker.api.openai);
`GET /ping` answers RunPod's load balancer (204 while the models load, 200 when ready) and
`GET /health` says the same in JSON. uvicorn serves many connections on one event loop; every
job runs in one of the worker's job threads, and the upload is parsed and written off the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import logging
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from qwen_worker.api.openai import (
    INVALID_API_KEY,
    NOT_FOUND,
    NOT_READY,
    UNHEALTHY,
    FormError,
    error_body,
    job_input,
    parse_form,
    render,
    status_for,
)
from qwen_worker.base.clock import CLOCK
from qwen_worker.base.config import Settings
from qwen_worker.base.errors import ErrorCode
from qwen_worker.base.lifecycle import SHUTDOWN_GRACE_SECONDS
from qwen_worker.engines.diarizer import load_configured
from qwen_worker.engines.load import load_engine
from qwen_worker.jobs.worker import Worker
from qwen_worker.pipeline.download import INPUT_NAME
from qwen_worker.startup import configure, load_failure

log = logging.getLogger("server")

Tokenize = Callable[[str], list[int]]
Loader = Callable[[Settings], tuple[Worker, Tokenize]]

MAX_FIELD_BYTES = 1 << 20  # one text field (a prompt of MAX_CONTEXT_CHARS fits many times)
MAX_PARTS = 64
PARSE_BLOCK = 1 << 20  # body bytes handed to the parser thread at a time
# After the file passed its cap the rest of the body is read and dropped, up to this much, so
# that the client (which sends its whole body before it reads) gets the 413, not a reset.
DRAIN_BYTES = 256 << 20


def load_worker(settings: Settings) -> tuple[Worker, Tokenize]:
    """The engine (as the handler loads it), the worker over it, and the ASR tokenizer for
    verbose_json's `tokens` (the engine's own: each tokenizer is loaded once)."""
    engine = load_engine(settings)
    diarizer = load_configured(settings)
    # No RunPod job API behind this entry point: nothing to post progress to.
    return Worker(dataclasses.replace(settings, progress_updates=False), engine,
                  diarizer), engine.tokenize


class ServerState:
    """What the routes share: the worker once loaded, and why it cannot serve, if it cannot."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker: Worker | None = None
        self.tokenize: Tokenize | None = None
        self.failed: str | None = None  # the models did not load
        self.unhealthy: str | None = None  # a job hit an error after which the GPU is suspect
        self.running = 0

    def start_loading(self, load: Loader, on_failure: Callable[[], None] = lambda: None
                      ) -> threading.Thread:
        """Load in a thread: /ping answers 204 meanwhile."""
        def run() -> None:
            try:
                self.worker, self.tokenize = load(self.settings)
            except Exception as exc:  # noqa: BLE001 - one line saying what to change
                self.failed = load_failure(self.settings, exc)
                log.error("start-up failed: %s", self.failed)
                on_failure()
                return
            log.info("ready: %s (%s backend)", self.worker.engine.asr_model,
                     self.worker.engine.backend)
            CLOCK.ready("ready for requests")

        thread = threading.Thread(target=run, name="load-models", daemon=True)
        thread.start()
        return thread


def openai_error(status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, code, status, param), status_code=status,
                        headers=headers)


def authorized(request: Request, key: str) -> bool:
    if not key:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Constant-time: the comparison must not tell how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              key.encode())


class UploadTooLarge(Exception):
    pass


class _FormReader:
    """python-multipart callbacks: text fields into memory (capped), the `file` part straight
    into the job directory (capped at MAX_DOWNLOAD_BYTES, as downloads are)."""

    def __init__(self, dest: Path, max_bytes: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.fields: dict[str, list[str]] = {}
        self.has_file = False
        self.file_bytes = 0
        self.too_large = False
        self.ended = False
        self.error: FormError | None = None
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._out: Any = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value_cb, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _fail(self, message: str, param: str | None) -> None:
        if self.error is None:
            self.error = FormError(message, param)

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            self._fail(f"the form has more than {MAX_PARTS} parts", None)
        self._headers = {}
        self._name = None
        self._value = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name = bytearray()
        self._header_value = bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        try:
            self._name = options.get(b"name", b"").decode("utf-8")
        except UnicodeDecodeError:
            self._name = ""
        if not self._name:
            self._fail("a form part has no name", None)
        elif self._name == "file":
            if self.has_file:
                self._fail("file was given more than once", "file")
            elif self.error is None:
                self.has_file = True
                self._out = open(self.dest, "wb")  # noqa: SIM115 - closed in _part_end/close

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None or self._name is None:
            return
        size = end - start
        if self._out is not None:
            self.file_bytes += size
            if self.file_bytes > self.max_bytes:
                self.too_large = True
                self.close()
                return
            self._out.write(data[start:end])
        elif self._name != "file":
            if len(self._value) + size > MAX_FIELD_BYTES:
                self._fail(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes",
                           self._name)
                return
            self._value += data[start:end]

    def _part_end(self) -> None:
        if self._name == "file":
            self.close()
        elif self._name and self.error is None:
            try:
                value = self._value.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(f"form field {self._name!r} is not UTF-8 text", self._name)
                return
            self.fields.setdefault(self._name, []).append(value)
        self._name = None

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


async def read_form(request: Request, dest: Path, max_bytes: int) -> _FormReader:
    """Stream the multipart body: the parser and the disk writes run off the event loop."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise FormError("the request must be multipart/form-data (a file upload), as OpenAI's "
                        "audio.transcriptions takes it", None)
    reader = _FormReader(dest, max_bytes)
    parser = MultipartParser(boundary, reader.callbacks())
    pending = bytearray()
    received = 0
    try:
        async for block in request.stream():
            received += len(block)
            if reader.too_large or reader.error is not None:
                if received > max_bytes + DRAIN_BYTES:
                    break  # enough: stop reading, the client may see a reset
                continue  # the answer is known: drop the rest
            pending += block
            if len(pending) >= PARSE_BLOCK:
                await asyncio.to_thread(parser.write, bytes(pending))
                pending.clear()
        if pending and not reader.too_large and reader.error is None:
            await asyncio.to_thread(parser.write, bytes(pending))
    except MultipartParseError:
        raise FormError("the multipart body is malformed", None) from None
    finally:
        reader.close()
    if reader.too_large:
        raise UploadTooLarge()
    if reader.error is not None:
        raise reader.error
    if not reader.ended:
        raise FormError("the multipart body ended before its closing boundary", None)
    return reader


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read: only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_job(request: Request, worker: Worker, job: dict[str, Any],
                  upload_dir: Path | None) -> dict[str, Any] | None:
    """The job's output, or None when the client went away first: then the job is stopped
    (its download, decoders and engine requests; handle_async stops its JobScope)."""
    # whole: an HTTP answer has no payload limit (no upload, no trimming).
    task = asyncio.ensure_future(worker.handle_async(job, upload_dir, whole=True))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        log.info("job %s: the client disconnected; stopping its work", job["id"])
        return None
    finally:
        for t in (task, gone):
            t.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="Qwen3-ASR worker (OpenAI-compatible)", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = state
    settings = state.settings

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_INPUT.value
        return openai_error(exc.status_code, str(exc.detail), code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed unexpectedly")
        return openai_error(500, "the server hit an unexpected error; see its log",
                            ErrorCode.INTERNAL_ERROR.value)

    @app.get("/ping")
    async def ping() -> Response:
        if state.failed or state.unhealthy:
            return JSONResponse({"status": "unhealthy"}, status_code=503)
        if state.worker is None:
            return Response(status_code=204)
        return JSONResponse({"status": "healthy"})

    @app.get("/health")
    async def health() -> JSONResponse:
        body: dict[str, Any] = {"status": "loading", "backend": settings.backend,
                                "asr_model": settings.asr_model,
                                "aligner_model": settings.aligner_model,
                                "jobs": {"running": state.running,
                                         "max_concurrency": settings.max_concurrency}}
        if state.failed or state.unhealthy:
            body["status"] = "unhealthy"
            body["reason"] = state.failed or state.unhealthy
        elif state.worker is not None:
            body["status"] = "ready"
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        if not authorized(request, settings.server_api_key):
            return openai_error(401, "missing or wrong API key: send 'Authorization: Bearer "
                                "<SERVER_API_KEY>'", INVALID_API_KEY,
                                headers={"WWW-Authenticate": "Bearer"})
        worker, tokenize = state.worker, state.tokenize
        if state.failed or state.unhealthy:
            return openai_error(503, f"the worker cannot serve: {state.failed or state.unhealthy}",
                                UNHEALTHY)
        if worker is None or tokenize is None:
            return openai_error(503, "the models are still loading; retry shortly", NOT_READY,
                                headers={"Retry-After": "10"})
        upload_dir = await asyncio.to_thread(worker.new_upload_dir)
        state.running += 1
        try:
            return await _transcribe(request, worker, tokenize, upload_dir)
        finally:
            state.running -= 1
            await asyncio.to_thread(shutil.rmtree, upload_dir, True)

    async def _transcribe(request: Request, worker: Worker, tokenize: Tokenize,
                          upload_dir: Path) -> Response:
        try:
            reader = await read_form(request, upload_dir / INPUT_NAME,
                                     settings.max_download_bytes)
            form = parse_form(reader.fields, has_file=reader.has_file)
        except UploadTooLarge:
            return openai_error(413, f"the file is larger than the {settings.max_download_bytes}"
                                "-byte limit (MAX_DOWNLOAD_BYTES)",
                                ErrorCode.AUDIO_TOO_LARGE.value, "file")
        except FormError as exc:
            return openai_error(status_for(exc.code.value), exc.message, exc.code.value,
                                exc.param)
        except ClientDisconnect:
            log.info("a client disconnected during its upload")
            return Response(status_code=400)  # nobody reads it
        job = {"id": f"http-{uuid.uuid4().hex[:12]}", "input": job_input(form)}
        output = await run_job(request, worker, job, upload_dir if reader.has_file else None)
        if output is None:
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        if "error_code" in output:
            return _job_error(output)
        body, media_type = await asyncio.to_thread(render, form, output, tokenize,
                                                   worker.engine.asr_model)
        return Response(body, media_type=media_type,
                        headers={"X-Model": worker.engine.asr_model})

    def _job_error(output: dict[str, Any]) -> JSONResponse:
        code = output["error_code"]
        message = output["error"].split(": ", 1)[-1]
        if output.get("refresh_worker"):
            # RunPod would replace a queue worker now; a load balancer replaces an unhealthy one.
            state.unhealthy = f"{code}: {message}"
            log.error("marked unhealthy after %s: /ping now answers 503", code)
        return openai_error(status_for(code), message, code,
                            "file" if code.startswith("AUDIO_") else None)

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    return parser.parse_args(argv)


def serve_http(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = configure()
    state = ServerState(settings)
    config = uvicorn.Config(create_app(state), host=args.host, port=args.port, log_config=None,
                            log_level=settings.log_level.lower(),
                            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS) - 1)
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    async def serve() -> None:
        serving = asyncio.ensure_future(server.serve())
        # Bind first, then load: /ping answers 204 while the models load.
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            state.start_loading(load_worker, on_failure=stop)
        await serving

    asyncio.run(serve())
    return 1 if state.failed else 0
