"""Transcribe a file or URL with the worker and write NAME.txt, .srt, .vtt and .json.

    PYTHONPATH=src python -m qwen_worker.client episode.mp3 --endpoint ENDPOINT_ID
    PYTHONPATH=src python -m qwen_worker.client https://example.com/a.mp3 --endpoint ID --out subs/
    PYTHONPATH=src python -m qwen_worker.client clip.wav --local http://127.0.0.1:8000

Jobs go through runpod's own client (`runpod.Endpoint`, RUNPOD_API_KEY from the environment);
the progress bar shows what the worker posts (stage, chunks done of total) and the time since
submission; Ctrl-C cancels the job on the endpoint. Needs only `runpod` (and its `requests`).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import unquote, urlsplit

import requests

# RunPod caps a /run request body at 10 MB; base64 makes 3 bytes 4, and the JSON around the
# audio needs a little room: 7.5 MB of audio inline at most.
ENDPOINT_INLINE_BYTES = 7_500_000
# runpod's local server has no cap of its own: the worker's MAX_BASE64_BYTES default (20 MiB).
LOCAL_INLINE_BYTES = 20 * 1024**2
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class ClientError(Exception):
    """Something the user can fix; the message says how."""


@dataclass(frozen=True)
class Source:
    job_input: dict[str, str]  # {"audio_url": ...} or {"audio_base64": ...}
    name: str  # file names' stem
    directory: Path  # where outputs go unless --out


def source_from(arg: str, max_inline_bytes: int, how_to_run: str) -> Source:
    """A URL is passed on for the worker to download; a local file goes inline if it fits."""
    if re.match(r"(?i)https?://", arg):
        stem = Path(unquote(urlsplit(arg).path)).stem
        return Source({"audio_url": arg}, _safe_name(stem), Path.cwd())
    path = Path(arg)
    if not path.is_file():
        raise ClientError(f"{arg}: no such file (give a local audio file or an http(s) URL)")
    size = path.stat().st_size
    if size > max_inline_bytes:
        raise ClientError(
            f"{arg} is {size / 1e6:.1f} MB: at most {max_inline_bytes / 1e6:.1f} MB of audio "
            "can go inline (RunPod caps /run requests at 10 MB, and base64 adds a third). Put "
            "the file where the worker can download it (a bucket's presigned URL, any https "
            f"host) and pass the URL instead:\n  {how_to_run}")
    data = base64.b64encode(path.read_bytes()).decode()
    return Source({"audio_base64": data}, _safe_name(path.stem), path.parent)


def _safe_name(stem: str) -> str:
    return re.sub(r"[^\w.-]+", "_", stem).strip("._") or "transcript"


class ProgressBar:
    """One line on stderr: state or stage, a bar of chunks done, elapsed time. On a terminal it
    redraws in place; elsewhere (logs, pipes) it prints a line when the state changes."""

    WIDTH = 24

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last = ""
        self._state: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    def show(self, status: str, progress: Any = None) -> None:
        self._state = (status, progress)
        stage, done, total = status.lower().replace("_", " "), 0, 0
        if isinstance(progress, dict) and progress.get("stage"):
            stage = str(progress["stage"])
            done = int(progress.get("chunks_done") or 0)
            total = int(progress.get("chunks_total") or 0)
        line = f"{stage:<13}"
        if total:
            filled = round(self.WIDTH * done / total)
            line += f" [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} chunks"
        elapsed = int(time.monotonic() - self.started)
        with self._lock:
            if self.tty:
                self.stream.write(f"\r{line}  {elapsed // 60}:{elapsed % 60:02d}\033[K")
                self.stream.flush()
            elif line != self._last:
                self.stream.write(f"{line}  {elapsed // 60}:{elapsed % 60:02d}\n")
                self.stream.flush()
            self._last = line

    def tick(self) -> None:
        """Redraw with the new elapsed time (terminal only)."""
        if self.tty and self._state is not None:
            self.show(*self._state)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _endpoint(endpoint_id: str, base_url: str | None, api_key: str):
    import runpod

    if base_url is not None:
        runpod.endpoint_url_base = base_url.rstrip("/")
    return runpod.Endpoint(endpoint_id, api_key=api_key)


def run_on_endpoint(endpoint_id: str, job_input: dict[str, Any], api_key: str,
                    bar: ProgressBar, poll_seconds: float) -> dict[str, Any]:
    """/run, then /status until the job ends; Ctrl-C cancels it. Returns the final status."""
    endpoint = _endpoint(endpoint_id, None, api_key)
    job = endpoint.run({"input": job_input})
    bar.show("IN_QUEUE")
    try:
        while True:
            # The raw status: Job.status() keeps only the state, not the progress in "output".
            state = endpoint.rp_client.get(f"{endpoint_id}/status/{job.job_id}")
            if state.get("status") in FINAL:
                return state
            bar.show(state.get("status", "IN_QUEUE"), state.get("output"))
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        bar.done()
        print(f"cancelling job {job.job_id} ...", file=sys.stderr)
        job.cancel(timeout=10)
        raise


def run_locally(url: str, job_input: dict[str, Any], bar: ProgressBar) -> dict[str, Any]:
    """runpod's local test server (`--rp_serve_api`, a `docker run` of the image) runs a job
    inside /runsync (its /status is POST-only and runs the job again), so the job goes there.
    It posts no progress: the bar shows the time waited."""
    # runpod's client asks for {base}/{endpoint}/runsync; the local server serves /runsync at
    # its root, and "." is a path segment that HTTP clients remove.
    endpoint = _endpoint(".", url, "local")
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(1.0):
            bar.tick()

    bar.show("IN_PROGRESS")
    threading.Thread(target=ticker, daemon=True).start()
    try:
        return endpoint.rp_client.post("./runsync", {"input": job_input}, timeout=7 * 86400)
    except KeyboardInterrupt:
        bar.done()
        print("stopped waiting; runpod's local test server cannot cancel a job, it runs to its "
              "end there", file=sys.stderr)
        raise
    finally:
        stop.set()


def full_result(output: dict[str, Any]) -> dict[str, Any]:
    """The whole result: the output itself, or, when the worker uploaded it to its bucket, the
    JSON behind the presigned URL."""
    files = output.get("files")
    if not isinstance(files, dict) or "json" not in files:
        return output
    r = requests.get(files["json"]["url"], timeout=600)
    if r.status_code != 200:
        raise ClientError(f"the result was uploaded, but downloading it failed: HTTP "
                          f"{r.status_code} (presigned URLs expire at "
                          f"{files['json'].get('expires_at')})")
    return r.json()


def write_outputs(result: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def write(ext: str, text: str) -> None:
        path = out_dir / f"{name}.{ext}"
        path.write_text(text, encoding="utf-8")
        written.append(path)

    write("txt", result.get("text", "") + "\n")
    for fmt in ("srt", "vtt"):
        if isinstance(result.get(fmt), str):
            write(fmt, result[fmt])
    write("json", json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    return written


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qwen_worker.client",
        description="Transcribe audio with the Qwen3-ASR worker; writes NAME.txt, NAME.srt, "
                    "NAME.vtt and NAME.json beside the input (or under --out).")
    p.add_argument("audio", metavar="AUDIO_URL_OR_FILE")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", metavar="ID", help="RunPod endpoint id (RUNPOD_API_KEY "
                       "from the environment)")
    where.add_argument("--local", metavar="URL", help="a local worker: `python src/handler.py "
                       "--rp_serve_api` or `docker run` of the image, e.g. http://127.0.0.1:8000")
    p.add_argument("--out", type=Path, help="directory for the outputs")
    p.add_argument("--language", help="e.g. en, English, zh; default: detected")
    p.add_argument("--context", help="names, jargon, hot words for the model")
    p.add_argument("--no-words", action="store_true", help="skip word timestamps (faster)")
    p.add_argument("--chunk-seconds", type=float)
    p.add_argument("--diarize", action="store_true",
                   help="label speakers (needs an image built with WITH_DIARIZATION=1)")
    p.add_argument("--speakers", type=int, metavar="N", help="with --diarize: exactly N speakers")
    p.add_argument("--min-speakers", type=int, metavar="N")
    p.add_argument("--max-speakers", type=int, metavar="N")
    p.add_argument("--max-inline-mb", type=float,
                   help="largest local file sent inline (default 7.5 for --endpoint, 20 for "
                        "--local)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between status checks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    api_key = os.environ.get("RUNPOD_API_KEY", "").strip()
    if args.endpoint and not api_key:
        print("error: set RUNPOD_API_KEY (https://console.runpod.io/user/settings)",
              file=sys.stderr)
        return EXIT_USAGE
    limit = (args.max_inline_mb * 1e6 if args.max_inline_mb is not None
             else ENDPOINT_INLINE_BYTES if args.endpoint else LOCAL_INLINE_BYTES)
    target = f"--endpoint {args.endpoint}" if args.endpoint else f"--local {args.local}"
    try:
        source = source_from(args.audio, int(limit),
                             f"python -m qwen_worker.client 'https://.../FILE' {target}")
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    job_input: dict[str, Any] = {**source.job_input, "formats": ["srt", "vtt"]}
    for key, value in (("language", args.language), ("context", args.context),
                       ("chunk_seconds", args.chunk_seconds)):
        if value is not None:
            job_input[key] = value
    if args.no_words:
        job_input["word_timestamps"] = False
    if args.diarize:  # the counts without it are refused by the worker, with its reason
        job_input["diarize"] = True
    for key, value in (("num_speakers", args.speakers), ("min_speakers", args.min_speakers),
                       ("max_speakers", args.max_speakers)):
        if value is not None:
            job_input[key] = value

    bar = ProgressBar()
    run: Callable[[], dict[str, Any]] = (
        (lambda: run_on_endpoint(args.endpoint, job_input, api_key, bar, args.poll))
        if args.endpoint else (lambda: run_locally(args.local, job_input, bar)))
    try:
        state = run()
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (requests.RequestException, RuntimeError) as exc:  # runpod raises RuntimeError on 401
        bar.done()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    bar.done()
    if state.get("status") != "COMPLETED":
        print(f"job {state.get('status', 'FAILED').lower()}: {state.get('error', '')}",
              file=sys.stderr)
        return EXIT_JOB_FAILED
    try:
        result = full_result(state.get("output") or {})
    except (ClientError, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    for path in write_outputs(result, args.out or source.directory, source.name):
        print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
