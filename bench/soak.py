"""bench/soak: many jobs, valid and hostile mixed, through the real worker process.

The worker runs behind runpod's local API server (tests/worker_server.py) with tiny generated
models; inputs come from a loopback host. Every job must end in its expected outcome; the
worker process's RSS, open file descriptors and threads are read from /proc after a warm-up
round (the baseline) and at the end, and nothing may be left in WORK_DIR or as a child process.

    .venv/bin/python bench/soak.py --jobs 260          # prints a table; exit 1 on any fault

tests/test_soak.py runs the same driver with 40 jobs in CI.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import media  # noqa: E402
from models import ENGLISH  # noqa: E402

OK = "COMPLETED"


@dataclass(frozen=True)
class ProcessState:
    rss_mb: float
    fds: int
    threads: int
    children: int


def process_state(pid: int) -> ProcessState:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    children = sum(len(t.read_text().split()) for t in Path(f"/proc/{pid}/task").glob("*/children"))
    return ProcessState(rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
                        fds=len(os.listdir(f"/proc/{pid}/fd")),
                        threads=int(fields["Threads"]), children=children)


def corpus(host, work: Path) -> list[tuple[str, dict, str]]:
    """(name, job input, expected status or error code), valid and hostile mixed."""
    mp3 = media.make_audio(work / "a.mp3", 8.0).read_bytes()
    wav = media.make_audio(work / "a.wav", 4.0).read_bytes()
    flac = media.make_audio(work / "cut.flac", 40.0, rate=16000).read_bytes()
    long_mp3 = media.make_audio(work / "long.mp3", 150.0, rate=8000).read_bytes()
    h = host
    return [
        ("mp3 url", {"audio_url": h.file("/s/a.mp3", mp3)}, OK),
        ("random bytes", {"audio_url": h.file("/s/random", bytes(range(251)) * 200,
                                              "application/octet-stream")}, "AUDIO_UNREADABLE"),
        ("wav base64 + srt/vtt", {"audio_base64": base64.b64encode(wav).decode(),
                                  "formats": ["srt", "vtt"], "language": "en"}, OK),
        ("html page", {"audio_url": h.file("/s/page", b"<html><body>hi</body></html>",
                                           "text/html")}, "AUDIO_UNREADABLE"),
        ("404", {"audio_url": h.status("/s/404", 404)}, "DOWNLOAD_FAILED"),
        ("redirect to private", {"audio_url": h.redirect("/s/priv", "http://10.0.0.7/a.mp3")},
         "URL_NOT_ALLOWED"),
        ("metadata address", {"audio_url": "http://169.254.169.254/latest/meta-data/"},
         "URL_NOT_ALLOWED"),
        ("truncated flac", {"audio_url": h.file("/s/cut.flac", flac[: len(flac) // 2],
                                                "audio/flac")}, "AUDIO_TRUNCATED"),
        ("over MAX_AUDIO_SECONDS", {"audio_url": h.file("/s/long.mp3", long_mp3)},
         "AUDIO_TOO_LONG"),
        ("unknown key", {"audio_url": h.url("/s/a.mp3"), "speed": 2}, "INVALID_INPUT"),
        ("unknown language", {"audio_url": h.url("/s/a.mp3"), "language": "klingon"},
         "UNSUPPORTED_LANGUAGE"),
        ("base64 over the cap", {"audio_base64": base64.b64encode(b"\0" * (3 << 20)).decode()},
         "AUDIO_TOO_LARGE"),
        ("no-extension url with query", {"audio_url": h.url("/s/a.mp3") + "?sig=a%2Fb"}, OK),
    ]


def outcome(result: dict) -> str:
    if result.get("status") == OK:
        return OK if result["output"].get("text") == ENGLISH else "WRONG_TEXT"
    return str(result.get("error", "")).split(":", 1)[0] or str(result.get("status"))


@dataclass
class SoakReport:
    jobs: int = 0
    unexpected: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    baseline: ProcessState | None = None  # after the warm-up round
    end: ProcessState | None = None
    leftovers: list[str] = field(default_factory=list)

    @property
    def rss_growth_mb(self) -> float:
        return self.end.rss_mb - self.baseline.rss_mb


def run_soak(server, host, jobs_dir: Path, n_jobs: int, work: Path) -> SoakReport:
    cases = corpus(host, work)
    report = SoakReport()
    for i in range(n_jobs):
        name, job, expected = cases[i % len(cases)]
        t0 = time.monotonic()
        got = outcome(server.runsync(job))
        report.seconds.append(time.monotonic() - t0)
        if got != expected:
            report.unexpected.append(f"job {i} ({name}): {got}, expected {expected}")
        if i + 1 == len(cases):
            report.baseline = process_state(server.proc.pid)
    report.jobs = n_jobs
    report.end = process_state(server.proc.pid)
    report.leftovers = sorted(p.name for p in jobs_dir.iterdir())
    return report


def print_table(r: SoakReport) -> None:
    p50 = statistics.median(r.seconds)
    p95 = sorted(r.seconds)[int(0.95 * (len(r.seconds) - 1))]
    print(f"jobs {r.jobs}, unexpected outcomes {len(r.unexpected)}, job seconds p50 {p50:.2f} "
          f"p95 {p95:.2f}, leftovers in WORK_DIR {len(r.leftovers)}")
    print("| worker process | after warm-up round (baseline) | after all jobs | change |")
    print("| --- | ---: | ---: | ---: |")
    for label, attr in (("RSS MB", "rss_mb"), ("open fds", "fds"), ("threads", "threads"),
                        ("child processes", "children")):
        a, b = getattr(r.baseline, attr), getattr(r.end, attr)
        print(f"| {label} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    for line in r.unexpected[:20]:
        print("UNEXPECTED", line)


def main() -> int:
    from http_server import AudioHost
    from models import build_all
    from worker_server import WorkerServer, worker_env

    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=260)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dirs = build_all(tmp / "models")
        jobs_dir = tmp / "jobs"
        jobs_dir.mkdir()
        env = worker_env(dirs["english"], dirs["aligner"], jobs_dir, DOWNLOAD_ALLOW_LOOPBACK="true",
                         MAX_DOWNLOAD_BYTES=str(8 << 20), MAX_BASE64_BYTES=str(2 << 20),
                         MAX_AUDIO_SECONDS="120")
        host = AudioHost()
        server = WorkerServer(env, tmp / "worker.log")
        try:
            (tmp / "media").mkdir()
            report = run_soak(server, host, jobs_dir, args.jobs, tmp / "media")
        finally:
            server.close()
            host.close()
    print_table(report)
    faults = report.unexpected or report.leftovers or report.end.children
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
