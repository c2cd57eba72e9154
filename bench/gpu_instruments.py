"""bench/gpu instruments: what a phase measures and how its row is kept.

Device memory (NVML, sampled in a thread), CPU by process and thread (`Usage`), stack samples
(`StackSampler`, py-spy's `CoreProfile`), each engine core's torch allocator, the ballast that
confines the engines to a smaller card's memory, and `Results`: the rows, logged and written
as JSON as they come.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

CARD_GIB = 24.0  # the memory split is sized for a 24 GB card (`--card` for another size)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class DeviceMemory:
    """Peak device memory in use (all processes: the engines run in their own) via NVML."""

    def __init__(self) -> None:
        try:
            try:
                import pynvml
            except ImportError:
                from vllm.third_party import pynvml
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
            self.total_gib = pynvml.nvmlDeviceGetMemoryInfo(self._handle).total / 2**30
        except Exception:  # noqa: BLE001 - no GPU (smoke run)
            self._nvml = None
            self.total_gib = CARD_GIB
        self.offset = 0.0  # GiB a ballast holds (`confine`): not the worker's
        self.excluded: set[int] = set()
        self.peak = 0.0
        self.peak_by_pid: dict[int, float] = {}
        self.busy: list[float] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def used_gib(self) -> float:
        if self._nvml is None:
            return 0.0
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**30 - self.offset

    def free_gib(self) -> float:
        if self._nvml is None:
            return 0.0
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).free / 2**30

    def busy_percent(self) -> float:
        """NVML's share of its last sample period in which a kernel ran (any process)."""
        if self._nvml is None:
            return 0.0
        return float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def by_process(self) -> dict[int, float]:
        """GiB each CUDA process holds (NVML's count for it: what it reserved, not what it
        uses right now), so a peak above the engines' shares says which engine went over."""
        if self._nvml is None:
            return {}
        return {p.pid: (p.usedGpuMemory or 0) / 2**30
                for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
                if p.pid not in self.excluded}

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.used_gib())
            for pid, gib in self.by_process().items():
                self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0.0), gib)
            self.busy.append(self.busy_percent())

    def reset(self) -> None:
        self.peak = self.used_gib()
        self.peak_by_pid = self.by_process()
        self.busy = []

    def peaks(self, engine: Any) -> dict[str, float]:
        """The peak of each engine core since reset, by name (core_asr, core_aligner)."""
        names = {pid: name for name, pids in engine_processes(engine).items() for pid in pids}
        return {names.get(pid, str(pid)): round(gib, 2) for pid, gib in self.peak_by_pid.items()}

    def processes(self) -> int:
        """How many processes hold a CUDA context (the two engine cores; not the front end)."""
        return len(self.by_process())


_TICK = os.sysconf("SC_CLK_TCK")


def _thread_kind(name: str) -> str:
    return name.split("_")[0].split(" ")[0].rstrip("-0123456789") or "?"


def _threads_cpu() -> dict[str, float]:
    """This process's live threads: Python thread kind -> CPU seconds (threads not started by
    Python, such as tokenizers' or torch's pools, count as "native")."""
    names = {t.native_id: _thread_kind(t.name) for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = names.get(int(tid), "native")
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return out


def engine_processes(engine: Any) -> dict[str, list[int]]:
    """The engine-core processes of a VllmEngine: {"core_asr": [pid], "core_aligner": [pid]}."""
    groups: dict[str, list[int]] = {}
    for name in ("asr", "aligner"):
        try:
            core = getattr(engine, f"_{name}").engine_core
            groups[f"core_{name}"] = [p.pid for p in core.resources.engine_manager.processes]
        except AttributeError:  # the stand-in, or another vLLM layout
            pass
    return groups


_BALLAST = """
import sys, torch
target = int(float(sys.argv[1]) * 2**30)
held = []
while True:  # allocate until only `target` bytes of the device are free
    free, _ = torch.cuda.mem_get_info()
    if free - target < 2**26:
        break
    held.append(torch.empty(min(free - target, 2**30), dtype=torch.uint8, device="cuda"))
print(round(torch.cuda.mem_get_info()[0] / 2**30, 3), flush=True)
sys.stdin.read()  # held until the bench ends (its end closes this pipe)
"""


def confine(memory: DeviceMemory, card_gib: float) -> dict[str, Any]:
    """On a GPU larger than the card, a ballast process holds the rest of its memory, so the
    engines find free what the card would have: its total less what its driver keeps (~0.3
    GiB). An engine that grows past that fails as it would on the card (or its allocator frees
    its cache and retries first: `num_alloc_retries` in `allocator`)."""
    target = card_gib - 0.3
    if memory.free_gib() <= target + 0.5:
        return {}
    before = memory.used_gib()
    proc = subprocess.Popen([sys.executable, "-c", _BALLAST, str(target)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    free = float(proc.stdout.readline() or "nan")
    memory.excluded.add(proc.pid)
    memory.offset = memory.used_gib() - before
    return {"proc": proc, "card_gib": card_gib, "free_gib": free,
            "ballast_gib": round(memory.offset, 2)}


def _allocator_stats(_worker: Any) -> dict[str, float]:
    """Runs in an engine core (vLLM's collective_rpc): what its torch allocator holds, GiB.
    NVML sees `reserved`; `allocated` is what tensors use; a gap between them is cached
    blocks. `num_alloc_retries`: times cudaMalloc failed and the cache was freed to retry."""
    import torch

    stats = torch.cuda.memory_stats()
    row = {name: round(stats.get(f"{key}_bytes.all.{when}", 0) / 2**30, 2)
           for name, key, when in (("allocated_peak", "allocated", "peak"),
                                   ("reserved_peak", "reserved", "peak"),
                                   ("reserved_now", "reserved", "current"))}
    row.update(retries=stats.get("num_alloc_retries", 0), ooms=stats.get("num_ooms", 0))
    torch.cuda.reset_peak_memory_stats()
    return row


def allocator(engine: Any) -> dict[str, Any]:
    """Each engine core's torch allocator since the last call (peaks reset), by engine."""
    try:
        import cloudpickle

        fn = cloudpickle.dumps(_allocator_stats)  # vLLM's run_method takes pickled callables
        return {f"core_{name}": engine._loop.submit(
                    getattr(engine, f"_{name}").collective_rpc(fn)).result(60)[0]
                for name in ("asr", "aligner")}
    except Exception as exc:  # noqa: BLE001 - the stand-in has no engine core
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def memory_row(memory: DeviceMemory, engine: Any) -> dict[str, Any]:
    """A row's memory columns: the device's peak and each engine's since `memory.reset`
    (NVML), and each engine's allocator since the last row."""
    return {"peak_gib": round(memory.peak, 2), "peak_gib_by_engine": memory.peaks(engine),
            "allocator": allocator(engine)}


class CoreProfile:
    """py-spy (if on PATH) recording each engine core's threads and this process's during a
    phase, as raw stacks (`NAME-core_asr.txt`, `NAME-main.txt`, ...) in `out`: what the engine
    loops do between GPU steps, and what the worker's own threads do meanwhile."""

    def __init__(self, engine: Any, out: Path | None, name: str, gil_only: bool = False):
        # gil_only: this process alone, and only the stacks that hold its GIL (`--gil`), at
        # 100 Hz: what keeps a GIL-bound worker busy, with the engines left unsampled.
        groups = ({"main": [os.getpid()]} if gil_only else
                  {**engine_processes(engine), "main": [os.getpid()]})
        self._targets = ([] if out is None or shutil.which("py-spy") is None else
                         [(out / f"{name}-{group}.txt", pid)
                          for group, pids in groups.items() for pid in pids])
        self._extra = ["--gil", "--rate", "100"] if gil_only else ["--rate", "200"]
        self._running: list[subprocess.Popen] = []

    def __enter__(self) -> "CoreProfile":
        for path, pid in self._targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._running.append(subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), *self._extra, "--format", "raw",
                 "--threads", "--nonblocking", "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if self._running:
            time.sleep(1.0)  # attached before the phase starts
        return self

    def __exit__(self, *exc: Any) -> None:
        for proc in self._running:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        for proc in self._running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Usage:
    """Where a phase's time went: CPU seconds of this process (by thread kind; threads that
    ended within the phase, the job threads, as "ended"), of each engine core (and its busiest
    thread, the loop that feeds the GPU), of the front-end processes, of the children reaped
    meanwhile (ffmpeg); and the GPU's mean busy share (NVML)."""

    def __init__(self, engine: Any, memory: "DeviceMemory"):
        self._engine = engine
        self._memory = memory

    def _processes(self) -> dict[str, list[int]]:
        try:
            import psutil
        except ImportError:  # vLLM needs it; a machine without it measures this process only
            return {}
        groups = engine_processes(self._engine)
        front = getattr(getattr(self._engine, "_front", None), "_pool", None)
        if front is not None:
            groups["frontend"] = list(getattr(front, "_processes", {}) or {})
        known = {pid for pids in groups.values() for pid in pids}
        groups["other"] = [c.pid for c in psutil.Process().children(recursive=True)
                           if c.pid not in known]
        return groups

    @staticmethod
    def _cpu(pid: int) -> tuple[float, dict[int, float]]:
        """(process CPU seconds, each thread's)."""
        import psutil

        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            return (times.user + times.system,
                    {t.id: t.user_time + t.system_time for t in proc.threads()})
        except psutil.Error:
            return 0.0, {}

    def _snapshot(self) -> dict[str, Any]:
        import resource

        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"t": time.perf_counter(), "process": time.process_time(),
                "threads": _threads_cpu(), "reaped": reaped.ru_utime + reaped.ru_stime,
                "procs": {pid: (group, self._cpu(pid))
                          for group, pids in self._processes().items() for pid in pids}}

    def __enter__(self) -> "Usage":
        self._memory.busy = []
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc: Any) -> None:
        end, start = self._snapshot(), self._start
        wall = end["t"] - start["t"]
        threads = {k: v - start["threads"].get(k, 0.0) for k, v in end["threads"].items()}
        threads = {k: v for k, v in threads.items() if v >= 0.005}
        main = end["process"] - start["process"]
        threads["ended"] = max(0.0, main - sum(threads.values()))
        groups: dict[str, float] = {}
        busiest: dict[str, float] = {}
        working: dict[str, int] = {}
        for pid, (group, (cpu, threads_cpu)) in end["procs"].items():
            before = start["procs"].get(pid, (group, (0.0, {})))[1]
            groups[group] = groups.get(group, 0.0) + cpu - before[0]
            if group.startswith("core_"):
                used = [v - before[1].get(tid, 0.0) for tid, v in threads_cpu.items()]
                busiest[group] = max(used, default=0.0)
                working[group] = sum(1 for u in used if u >= 0.05 * wall)
        busy = self._memory.busy
        self.row = {
            "cpu_s": {"main": round(main, 2),
                      **{k: round(v, 2) for k, v in groups.items()},
                      "reaped": round(end["reaped"] - start["reaped"], 2)},
            "main_threads_s": {k: round(v, 2) for k, v in sorted(threads.items(),
                                                                 key=lambda kv: -kv[1])},
            # the engine-core loop's share of the phase: near 1.0, it is what the GPU waits on
            "core_loop_share": {k: round(v / wall, 2) for k, v in busiest.items()},
            # threads of each engine core busy at least 5% of the phase (torch's CPU pool?)
            "core_threads_working": working,
            "gpu_busy_pct": round(sum(busy) / len(busy), 1) if busy else None,
        }


class StackSampler:
    """Where this process's threads are during a phase: every 10 ms, each thread's innermost
    frame in the worker's code or in vLLM, counted by thread kind (a poor man's py-spy)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "StackSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(0.01):
            names = {t.ident: t.name for t in threading.enumerate()}
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                kind = _thread_kind(names.get(ident, "?"))
                while frame is not None and not any(
                        k in frame.f_code.co_filename for k in ("qwen_worker", "/vllm/")):
                    frame = frame.f_back
                where = ("-" if frame is None else
                         f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
                         f":{frame.f_code.co_name}")
                key = f"{kind} {where}"
                self.counts[key] = self.counts.get(key, 0) + 1

    def top(self, n: int = 12) -> list[str]:
        """The n most seen places, as thread-seconds of the phase."""
        ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])[:n]
        return [f"{count * 0.01:.1f}s {key}" for key, count in ranked]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Results:
    """The run's rows by phase name: each logged as it comes, and the whole written to `path`
    (JSON) after every row, so a run cut short keeps what it measured."""

    def __init__(self, path: Path | None, **first: Any):
        self.rows: dict[str, Any] = dict(first)
        self._path = path

    def record(self, name: str, row: dict) -> None:
        self.rows[name] = row
        log(f"{name}: {json.dumps(row)}")
        if self._path:
            self._path.write_text(json.dumps(self.rows, indent=1))

    def phase(self, name: str, run: Callable[[], dict]) -> None:
        """One phase; a failure is recorded and the next phase still runs."""
        try:
            self.record(name, run())
        except Exception as exc:  # noqa: BLE001 - reported in the results
            import traceback

            traceback.print_exc()
            self.record(name, {"error": f"{type(exc).__name__}: {exc}"[:500]})
