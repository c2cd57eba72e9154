"""bench/concurrency: many jobs at once through runpod's production job loop, one slot vs many.

For each MAX_CONCURRENCY given, a fresh worker process (`python src/handler.py`, tiny generated
models: the compact-vocabulary English ASR model and the aligner, CPU) runs runpod's real job loop against the loopback stand-in of RunPod's job API
(tests/job_api.py). The same jobs are queued in every configuration: 30 s WAV clips, even jobs
as base64, odd jobs as loopback URLs (tests/http_server.py, DOWNLOAD_ALLOW_LOOPBACK=true).

Fairness: before the clock starts, each worker loads its models, passes runpod's fitness check
and serves one warm-up job of the same kind. Then the script waits for the machine to be quiet
(other processes on a 2-core machine would inflate wall times) and puts all N jobs on the queue
in one step, under the stand-in's lock: the worker, by then polling an empty queue, sees all of
them at its first take. The clock runs from that step to the arrival of the last result post
(`Post.at`, stamped by the stand-in in this process). A round during which other processes used
more than --max-other cores is run again (new job ids, same worker), up to --tries rounds.

Measured per configuration: jobs per second, per-job latency (queued -> result post) p50/p95,
engine calls (the worker's `engine asr|align call: N chunks of K jobs` log lines), whether every
job got a progress post, whether a progress post arrived after its job's result post, and
whether each result post's X-Request-ID header names its own job (runpod sets that header on a
session shared by all jobs). Every job must get exactly one result post whose text is the tiny
English model's transcript, once per chunk.

    .venv/bin/python bench/concurrency.py            # 16 jobs of 30 s, MAX_CONCURRENCY 1 and 8

Exit status 1 when a result is wrong, missing or posted twice, or a worker dies.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import resource
import shutil
import signal
import subprocess
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

ENGINE_CALL = re.compile(r"engine (asr|align) call: (\d+) chunks of (\d+) jobs in ([\d.]+) s")
LATE_GRACE_S = 1.0  # after the last result: time for any late progress post to arrive
CLK = os.sysconf("SC_CLK_TCK")


@dataclass
class RoundReport:
    concurrency: int
    jobs: int
    wall_s: float = float("nan")
    latencies: list[float] = field(default_factory=list)
    calls: dict[str, list[tuple[int, int, float]]] = field(
        default_factory=lambda: {"asr": [], "align": []})  # (chunks, jobs, seconds) per call
    takes: list[int] = field(default_factory=list)  # jobs handed out per job-take
    peak_running: int = 0  # most jobs at once between their first progress post and result
    idle_s: float = float("nan")  # clock time with jobs queued but none taken and unfinished
    progress_posts: int = 0
    no_progress: list[str] = field(default_factory=list)
    late_progress: dict[str, int] = field(default_factory=dict)  # job -> posts after its result
    id_mismatches: list[str] = field(default_factory=list)  # result posts only
    progress_id_mismatches: int = 0
    faults: list[str] = field(default_factory=list)  # wrong, missing or duplicate results
    other_cores: float = float("nan")  # CPU of other processes during the round, in cores
    worker_cpu_s: float = float("nan")  # the worker process and its ffmpeg children
    rounds: int = 1
    exit_code: int | None = None

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s

    def pct(self, q: float) -> float:
        s = sorted(self.latencies)
        return s[int(q * (len(s) - 1))] if s else float("nan")


# ---- machine noise -------------------------------------------------------------------------

def _busy_s() -> float:
    """CPU seconds the whole machine has been busy (all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process and its reaped children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def wait_until_quiet(max_cores: float, timeout: float) -> float:
    """Wait (up to `timeout`) for a second in which the machine used at most `max_cores`."""
    end = time.monotonic() + timeout
    said = False
    while True:
        b0, t0 = _busy_s(), time.monotonic()
        time.sleep(1.0)
        used = (_busy_s() - b0) / (time.monotonic() - t0)
        if used <= max_cores or time.monotonic() > end:
            return used
        if not said:
            print(f"  waiting for the machine to go quiet ({used:.2f} cores busy)...",
                  file=sys.stderr)
            said = True


# ---- jobs ----------------------------------------------------------------------------------

def expected_text(seconds: float) -> tuple[str, int]:
    """The tiny English model says ENGLISH for every chunk; the chunks of `seconds` of audio."""
    import numpy as np

    from qwen_worker.pipeline import chunking

    n = len(chunking.split(np.zeros(int(seconds * 16000), np.float32),
                           chunking.DEFAULT_CHUNK_SECONDS))
    return " ".join([ENGLISH] * n), n


def make_inputs(host, work: Path, n: int, seconds: float) -> list[dict]:
    """n job inputs of the same WAV clip: even jobs base64, odd jobs a loopback URL each."""
    wav = media.make_audio(work / "clip.wav", seconds, rate=16000).read_bytes()
    b64 = base64.b64encode(wav).decode()
    return [{"audio_base64": b64} if i % 2 == 0 else
            {"audio_url": host.file(f"/clip/{i:02d}.wav", wav, "audio/wav")}
            for i in range(n)]


def check_body(body: dict, want: str) -> str | None:
    """None when the result post is a correct transcript, else what is wrong with it."""
    if "error" in body:
        return f"error {str(body['error'])[:120]}"
    text = (body.get("output") or {}).get("text")
    return None if text == want else f"text {text!r}"


def _wait(api, worker, ids: list[str], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = api.results()
        if all(i in done for i in ids):
            return True
        if worker.proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _stop(worker) -> int | None:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    code = worker.proc.poll()
    worker.close()
    return code


def run_round(api, worker, log_path: Path, concurrency: int, tag: str, inputs: list[dict],
              want: str, timeout: float) -> RoundReport:
    """Queue every job at once, wait for all results, and read what the worker posted/logged."""
    report = RoundReport(concurrency, len(inputs))
    log_mark = log_path.stat().st_size
    ids = [f"c{concurrency}-{tag}-job-{i:02d}" for i in range(len(inputs))]
    busy0, self0, worker0 = _busy_s(), _self_cpu_s(), _proc_cpu_s(worker.proc.pid)
    with api.lock:  # all jobs on the queue before the worker can take one
        takes_mark = len(api.takes)
        queued_at = time.monotonic()
        api.queue.extend({"id": i, "input": inp} for i, inp in zip(ids, inputs))
    finished = _wait(api, worker, ids, timeout)
    window = time.monotonic() - queued_at
    if worker.proc.poll() is None:
        report.worker_cpu_s = _proc_cpu_s(worker.proc.pid) - worker0
        other = (_busy_s() - busy0) - report.worker_cpu_s - (_self_cpu_s() - self0)
        report.other_cores = max(other, 0.0) / window
    time.sleep(LATE_GRACE_S)
    with api.lock:
        posts = list(api.posts)
        takes = api.takes[takes_mark:]
        report.takes = [n for _, n in takes]
    if not finished:
        state = "died" if worker.proc.poll() is not None else "timed out"
        report.faults.append(f"worker {state}:\n{worker.log()[-3000:]}")
    with open(log_path, "rb") as f:
        f.seek(log_mark)
        for m in ENGINE_CALL.finditer(f.read().decode(errors="replace")):
            report.calls[m[1]].append((int(m[2]), int(m[3]), float(m[4])))

    spans, last = [], None
    for job_id in ids:
        mine = [p for p in posts if p.job_id == job_id]
        results = [p for p in mine if p.body.get("status") != "IN_PROGRESS"]
        progress = [p for p in mine if p.body.get("status") == "IN_PROGRESS"]
        report.progress_posts += len(progress)
        report.progress_id_mismatches += sum(p.request_id != job_id for p in progress)
        if not progress:
            report.no_progress.append(job_id)
        if not results:
            report.faults.append(f"{job_id}: no result post")
            continue
        if len(results) > 1:
            report.faults.append(f"{job_id}: {len(results)} result posts")
        first = results[0]
        if (bad := check_body(first.body, want)) is not None:
            report.faults.append(f"{job_id}: {bad}")
        if first.request_id != job_id:
            report.id_mismatches.append(f"{job_id}: X-Request-ID {first.request_id}")
        if late := sum(p.at > first.at for p in progress):
            report.late_progress[job_id] = late
        if progress:
            spans.append((min(p.at for p in progress), first.at))
        report.latencies.append(first.at - queued_at)
        last = first.at if last is None else max(last, first.at)
    report.peak_running = max((sum(s <= t < e for s, e in spans) for t, _ in spans), default=0)
    if last is not None and len(report.latencies) == len(ids):
        report.wall_s = last - queued_at
        report.idle_s = _idle(queued_at, takes, [queued_at + x for x in report.latencies])
    return report


def _idle(start: float, takes: list[tuple[float, int]], done: list[float]) -> float:
    """Seconds from `start` to the last result with no job taken and not yet posted back:
    runpod's take pacing (and the stand-in's poll) while jobs wait on the queue."""
    events = sorted([(t, n) for t, n in takes] + [(t, -1) for t in done])
    idle, in_flight, prev = 0.0, 0, start
    for t, n in events:
        if in_flight == 0:
            idle += t - prev
        in_flight += n
        prev = t
    return idle


def run_config(concurrency: int, dirs: dict, inputs: list[dict], want: str, tmp: Path,
               args) -> RoundReport:
    from job_api import JobApi, JobLoopWorker
    from worker_server import worker_env

    api = JobApi()
    env = worker_env(dirs["compact"], dirs["aligner"], tmp / f"work-c{concurrency}",
                     DOWNLOAD_ALLOW_LOOPBACK="true", MAX_CONCURRENCY=str(concurrency),
                     MAX_NEW_TOKENS=str(dirs["max_new_tokens"]))
    log_path = tmp / f"worker-c{concurrency}.log"
    worker = JobLoopWorker(api, env, log_path)
    report = RoundReport(concurrency, len(inputs))
    try:
        warm_id = f"c{concurrency}-warm-up"
        api.submit(warm_id, inputs[0])
        if not _wait(api, worker, [warm_id], args.timeout):
            report.faults.append(f"no warm-up result:\n{worker.log()[-3000:]}")
            return report
        if (bad := check_body(api.results()[warm_id], want)) is not None:
            report.faults.append(f"warm-up job: {bad}")
        faults = report.faults
        for n in range(1, args.tries + 1):
            wait_until_quiet(args.max_other, args.quiet_timeout)
            report = run_round(api, worker, log_path, concurrency, f"r{n}", inputs, want,
                               args.timeout)
            report.rounds = n
            faults += report.faults
            if report.faults or not report.other_cores > args.max_other or n == args.tries:
                break
            print(f"  MAX_CONCURRENCY={concurrency}: other processes used "
                  f"{report.other_cores:.2f} cores during round {n}; running it again",
                  file=sys.stderr)
        report.faults = faults
    finally:
        report.exit_code = _stop(worker)
        api.close()
    return report


# ---- report --------------------------------------------------------------------------------

def _shape(calls: list[tuple[int, int, float]]) -> str:
    """Calls grouped by size, largest first: '2 x (8 chunks of 8 jobs), 1 x (...)'."""
    counts: dict[tuple[int, int], int] = {}
    for chunks, jobs, _ in calls:
        counts[(chunks, jobs)] = counts.get((chunks, jobs), 0) + 1
    return ", ".join(f"{n} x ({c} chunks of {j} jobs)" for (c, j), n in
                     sorted(counts.items(), key=lambda kv: -kv[0][1])) or "none"


def print_report(reports: list[RoundReport], seconds: float, chunks: int) -> None:
    jobs = reports[0].jobs
    print(f"{jobs} jobs of {seconds:g} s audio ({chunks} chunk each), even jobs base64 WAV, odd "
          "jobs loopback URL; all queued at once after a warm-up job")
    print(f"p50/p95: latency queued -> result post, the {int(0.5 * (jobs - 1)) + 1}th and "
          f"{int(0.95 * (jobs - 1)) + 1}th of {jobs} sorted (the rule of bench/soak.py)")
    print()
    print("| MAX_CONCURRENCY | jobs/s | ASR calls | align calls | p50 s | p95 s | "
          "progress on every job | X-Request-ID mismatches | late progress posts |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for r in reports:
        print(f"| {r.concurrency} | {r.jobs_per_s:.2f} | {len(r.calls['asr'])} | "
              f"{len(r.calls['align'])} | {r.pct(0.5):.2f} | {r.pct(0.95):.2f} | "
              f"{'yes' if not r.no_progress else f'no ({len(r.no_progress)} without)'} | "
              f"{len(r.id_mismatches)} of {jobs} | {sum(r.late_progress.values())} |")
    print()
    for r in reports:
        print(f"MAX_CONCURRENCY={r.concurrency} (round {r.rounds}): wall {r.wall_s:.2f} s; "
              f"takes {'+'.join(map(str, r.takes))}; peak jobs running at once "
              f"{r.peak_running}; no job in flight for {r.idle_s:.2f} s; "
              f"ASR calls {_shape(r.calls['asr'])}, "
              f"{sum(c[2] for c in r.calls['asr']):.2f} s in all; align calls "
              f"{_shape(r.calls['align'])}, {sum(c[2] for c in r.calls['align']):.2f} s; "
              f"worker CPU {r.worker_cpu_s:.1f} s; other processes {r.other_cores:.2f} cores; "
              f"progress posts {r.progress_posts} (wrong X-Request-ID on "
              f"{r.progress_id_mismatches}); worker exit status after SIGTERM {r.exit_code}")
        for line in r.id_mismatches[:8]:
            print("  ", line)
        for job, n in list(r.late_progress.items())[:8]:
            print(f"   {job}: {n} progress posts after its result")
        for line in r.faults[:20]:
            print("  FAULT", line)
    base, top = reports[0], reports[-1]
    speed_up = top.jobs_per_s / base.jobs_per_s
    print()
    print(f"jobs/s speed-up {top.concurrency} vs {base.concurrency}: {speed_up:.2f}x; ASR calls "
          f"per job: {len(base.calls['asr']) / base.jobs:.3f} at {base.concurrency}, "
          f"{len(top.calls['asr']) / top.jobs:.3f} at {top.concurrency}")
    targets = [
        (f">= 3x jobs/s at {top.concurrency}", speed_up >= 3, f"{speed_up:.2f}x"),
        (f"<= {top.jobs // 2} ASR calls for {top.jobs} jobs at {top.concurrency}",
         len(top.calls["asr"]) <= top.jobs / 2, str(len(top.calls["asr"]))),
        ("progress on every job", all(not r.no_progress for r in reports),
         ", ".join(f"{r.concurrency}: {r.jobs - len(r.no_progress)}/{r.jobs}" for r in reports)),
    ]
    for name, ok, got in targets:
        print(f"target {name}: {'met' if ok else 'NOT met'} ({got})")


def main() -> int:
    from http_server import AudioHost
    from models import build_all

    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--timeout", type=float, default=600.0, help="per wait for results, s")
    ap.add_argument("--max-other", type=float, default=0.2,
                    help="cores other processes may use during a kept round")
    ap.add_argument("--tries", type=int, default=3, help="rounds per configuration at most")
    ap.add_argument("--quiet-timeout", type=float, default=300.0,
                    help="longest wait for a quiet machine before a round, s")
    ap.add_argument("--log-dir", type=Path, help="keep each worker's log here")
    args = ap.parse_args()
    want, chunks = expected_text(args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dirs = build_all(tmp / "models")
        # The compact-vocabulary model: the same transcript, without the full-vocabulary
        # logits for every prompt position that the EOS-capable tiny model computes (2 GB for
        # a batch of 8 clips of 30 s, which would make CPU batches cost more than GPU ones).
        import tiny_models
        from models import ENGLISH

        dirs["compact"] = tiny_models.build_compact_asr_model(tmp / "models" / "compact",
                                                              ENGLISH, "English")
        # Room to spare: an output near the limit would be retried as two halves (a repair).
        dirs["max_new_tokens"] = 2 * len(tiny_models.asr_output_pieces(ENGLISH, "English"))
        host = AudioHost()
        try:
            (tmp / "media").mkdir()
            inputs = make_inputs(host, tmp / "media", args.jobs, args.seconds)
            reports = [run_config(c, dirs, inputs, want, tmp, args) for c in args.concurrency]
        finally:
            host.close()
            if args.log_dir is not None:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                for log in tmp.glob("worker-c*.log"):
                    shutil.copy(log, args.log_dir / log.name)
    print_report(reports, args.seconds, chunks)
    return 1 if any(r.faults for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
