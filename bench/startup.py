"""bench/startup: a cold worker as RunPod starts it, and the way it ends.

Each start is a fresh `python <src>/src/handler.py` (no flags: runpod's production job loop)
against the loopback stand-in of RunPod's job API (tests/job_api.py), under tests/reaper.py,
which reports every process the worker left behind when it exits. Models: bench/gpu.py's
full-size random-weight dirs (`--size`), the engines' shares those of a `--card` GiB card.

Per start, in order:
  first job     one 30 s job is queued before the process starts: seconds from the process's
                start to runpod's first job-take (the worker is then serving), and the worker's
                own phase lines (qwen_worker.startup; absent in sources older than them)
  alone, 64     (with --jobs) `--alone` 30 s jobs one at a time (p50), then 64 at once: jobs
                per second and GPU seconds per audio hour
  exit          SIGTERM on the idle worker: exit status, seconds to exit, whether the 8 s
                backstop fired, processes left; or (the last start with --kill-core) SIGKILL to
                an engine core with 9 jobs in flight: their errors, whether the worker ended by
                itself, processes left

Variants (`--variant NAME:SRC[:KEY=VALUE,...]`, SRC a source tree such as a `git worktree` of
the commit before) run in the order given, each `--starts` times with its own compile cache
folder (VLLM_CACHE_ROOT): the first start finds it empty (cold), the later ones warm.

    python bench/startup.py --variant before:/tmp/base --variant after:. --json $OUT/s.json
    .venv/bin/python bench/startup.py --smoke      # CPU: the stand-in vllm, tiny dirs
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "tests", ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from gpu import CARD_GIB, DeviceMemory, ensure_dirs, noise, settings_env, wav_bytes  # noqa: E402
from job_api import JobApi  # noqa: E402

PHASE = re.compile(r"start-up phase: (?P<name>.+?) (?P<seconds>[\d.]+) s \((?P<start>[\d.]+) -> "
                   r"(?P<end>[\d.]+) s after process start(?:; (?P<detail>.*))?\)")
READY = re.compile(r"start-up: (?P<what>.+?) (?P<seconds>[\d.]+) s after process start")
BACKSTOP = "after SIGTERM: exiting now"
CLIP_S = 30.0


def log(msg: str) -> None:
    print(f"[startup {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def phases(text: str) -> dict[str, Any]:
    """The worker's phase lines and ready lines, from its log."""
    found: dict[str, Any] = {m["name"]: {"s": float(m["seconds"]), "from": float(m["start"]),
                                         "to": float(m["end"]), "detail": m["detail"] or ""}
                             for m in PHASE.finditer(text)}
    for m in READY.finditer(text):
        found[m["what"]] = float(m["seconds"])
    return found


def descendants_matching(pid: int, needle: str) -> list[int]:
    import psutil

    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if needle in " ".join(child.cmdline()) or needle in child.name():
                out.append(child.pid)
        except psutil.Error:
            pass
    return out


class Start:
    """One worker process, from its start to its exit."""

    def __init__(self, api: JobApi, src: Path, env: dict[str, str], log_path: Path,
                 left_path: Path):
        self.api, self.log_path, self.left_path = api, log_path, left_path
        self._log = open(log_path, "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "reaper.py"), str(left_path), "--",
             sys.executable, str(src / "src" / "handler.py")],
            env={**env, **api.env()}, cwd=src, stdout=self._log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def worker_pid(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).children()[0].pid

    def wait_exit(self, timeout: float) -> tuple[int | None, float]:
        t = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, round(time.monotonic() - t, 2)
        return code, round(time.monotonic() - t, 2)

    def left(self) -> list[dict]:
        return json.loads(self.left_path.read_text()) if self.left_path.exists() else []

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._log.close()


def run_job(api: JobApi, job_id: str, audio: str, timeout: float) -> dict:
    api.submit(job_id, {"audio_base64": audio})
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = api.results()
        if job_id in done:
            return done[job_id]
        time.sleep(0.005)
    raise TimeoutError(f"job {job_id} had no result after {timeout} s")


def one_start(args: argparse.Namespace, name: str, src: Path, env: dict[str, str],
              cache: Path, n: int, measure: bool, kill_core: bool, out: Path,
              audio: str) -> dict[str, Any]:
    api = JobApi()
    tag = f"{name}-{n}"
    row: dict[str, Any] = {"variant": name, "start": n,
                           "cache": "cold" if not any(cache.rglob("*")) else "warm"}
    api.submit(f"{tag}-first", {"audio_base64": audio})
    start = Start(api, src, {**env, "VLLM_CACHE_ROOT": str(cache)}, out / f"{tag}.log",
                  out / f"{tag}-left.json")
    try:
        while not api.takes:
            if start.proc.poll() is not None:
                raise RuntimeError(f"{tag}: the worker exited during start-up:\n"
                                   + start.text()[-3000:])
            if time.monotonic() - start.t0 > args.timeout:
                raise TimeoutError(f"{tag}: no job taken after {args.timeout} s")
            time.sleep(0.01)
        row["first_job_taken_s"] = round(api.takes[0][0] - start.t0, 1)
        api.wait_for(1, 600)
        row["phases"] = phases(start.text())
        log(f"{tag}: first job taken {row['first_job_taken_s']} s after process start")
        if measure:
            alone = []
            for i in range(args.alone):
                t = time.monotonic()
                run_job(api, f"{tag}-alone-{i}", audio, 300)
                alone.append(time.monotonic() - t)
            row["alone_p50_s"] = round(statistics.median(alone), 3)
            before = len(api.results())
            t = time.monotonic()
            for i in range(args.jobs):
                api.submit(f"{tag}-many-{i}", {"audio_base64": audio})
            api.wait_for(before + args.jobs, 900)
            wall = time.monotonic() - t
            row["jobs"] = args.jobs
            row["jobs_per_s"] = round(args.jobs / wall, 2)
            row["gpu_s_per_audio_h"] = round(wall / (args.jobs * CLIP_S / 3600), 2)
            failed = [k for k, v in api.results().items() if v.get("status") == "FAILED"
                      or "error" in (v.get("output") or {})]
            row["failed_jobs"] = len(failed)
        if kill_core:
            cores = descendants_matching(start.worker_pid(), "EngineCore")
            row["engine_cores"] = len(cores)
            before = len(api.results())
            os.kill(cores[0], signal.SIGKILL)
            for i in range(9):
                api.submit(f"{tag}-dead-{i}", {"audio_base64": audio})
            done = api.wait_for(before + 9, 120)
            outs = [done[f"{tag}-dead-{i}"].get("output") or {} for i in range(9)]
            row["after_kill"] = sorted({f"{o.get('error_code')}"
                                        f"{' refresh_worker' if o.get('refresh_worker') else ''}"
                                        for o in outs})
            code, waited = start.wait_exit(30)
            row["ended_by_itself"] = code is not None
            if code is None:
                start.proc.send_signal(signal.SIGTERM)
                code, waited = start.wait_exit(30)
            row["exit"], row["exit_s"] = code, waited
        else:
            start.proc.send_signal(signal.SIGTERM)
            row["exit"], row["exit_s"] = start.wait_exit(60)
        row["backstop"] = BACKSTOP in start.text()
        row["left"] = start.left()
    finally:
        start.close()
        api.close()
    log(f"{tag}: {json.dumps({k: v for k, v in row.items() if k != 'phases'})}")
    return row


def print_table(rows: list[dict]) -> None:
    cols = ("variant", "start", "cache", "first_job_taken_s", "alone_p50_s", "jobs_per_s",
            "gpu_s_per_audio_h", "exit", "exit_s", "backstop", "left")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [str(len(r[c])) if c == "left" and c in r else str(r.get(c, "-")) for c in cols]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        p = r.get("phases") or {}
        lines = [f"{k} {v['s']} ({v['from']}->{v['to']}{'; ' + v['detail'] if v['detail'] else ''})"
                 for k, v in p.items() if isinstance(v, dict)]
        ready = {k: v for k, v in p.items() if not isinstance(v, dict)}
        print(f"{r['variant']}-{r['start']} ({r['cache']}): " + "; ".join(lines) + f" {ready}")
        if r.get("after_kill"):
            print(f"  after an engine core was killed: {r['after_kill']}, ended by itself: "
                  f"{r['ended_by_itself']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--size", choices=["0.6b", "1.7b"], default="0.6b")
    ap.add_argument("--dirs", type=Path, default=Path(tempfile.gettempdir()) / "bench-models")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:SRC[:K=V,...]")
    ap.add_argument("--starts", type=int, default=2, help="starts per variant (1st cold)")
    ap.add_argument("--jobs", type=int, default=64, help="jobs at once on the last start")
    ap.add_argument("--alone", type=int, default=8)
    ap.add_argument("--kill-core", action="store_true",
                    help="the last start of the last variant ends by a killed engine core")
    ap.add_argument("--card", type=float, default=CARD_GIB)
    ap.add_argument("--timeout", type=float, default=540.0)
    ap.add_argument("--cache-root", type=Path,
                    default=Path(tempfile.gettempdir()) / "bench-startup-cache")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true", help="CPU: the stand-in vllm, tiny dirs")
    args = ap.parse_args()
    variants = args.variant or ["this:."]
    base = args.dirs / ("tiny" if args.smoke else args.size)
    ensure_dirs(base, "tiny" if args.smoke else args.size, "cpu" if args.smoke else "cuda")
    out = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    total = CARD_GIB if args.smoke else DeviceMemory().total_gib
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(settings_env(base / "asr", base / "aligner", total, "vllm", out / "work",
                            args.card))
    env.update(MAX_NEW_TOKENS="100", PYTHONUNBUFFERED="1", DOWNLOAD_ALLOW_LOOPBACK="false",
               RUNPOD_LOG_LEVEL="INFO")
    if args.smoke:
        env.update(ASR_DEVICE="cpu", ASR_DTYPE="float32", VLLM_FRONTEND_PROCESSES="2",
                   PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "stand_ins"),
                                               env.get("PYTHONPATH", "")]))
    audio = base64.b64encode(wav_bytes(noise(CLIP_S, 0))).decode()
    rows = []
    for v, spec in enumerate(variants):
        name, src, *rest = spec.split(":", 2)
        extra = dict(kv.split("=", 1) for kv in rest[0].split(",")) if rest else {}
        cache = args.cache_root / name
        for n in range(args.starts):
            last = n == args.starts - 1
            rows.append(one_start(args, name, Path(src).resolve(), {**env, **extra}, cache, n,
                                  measure=last and args.jobs > 0,
                                  kill_core=last and args.kill_core and v == len(variants) - 1,
                                  out=out, audio=audio))
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
