"""bench/gpu: the worker on a GPU (vLLM 0.22), through its own load path and job path.

Full-size Qwen3-ASR (0.6B or 1.7B) and Qwen3-ForcedAligner-0.6B ARCHITECTURES with RANDOM
weights (nothing is downloaded; the dirs are written by a child process, see `build_dirs`),
loaded with the worker's `load_engine` under the settings of a 24 GB card: each engine's memory
share is the worker's default fraction of 24 GiB, whatever the card. Random weights give
meaningless words, so output lengths are fixed the way the engine floors were measured: 900
tokens per 270 s chunk, 100 per 30 s clip (EOS ignored), drawn at random from ~250 English
word tokens so the aligner gets a realistic prompt (~900 words per chunk) and no chunk loops.

Phases (each row of the printed table; `--json` keeps them all):
  startup     load_engine to ready (both engines, warm-up included), the fitness check's
              warm-up clip, and `run_self_test` (structure checks: random weights, noise)
  hour        one 1 h WAV through Worker.handle (loopback download, decode, ASR, alignment,
              merge): the job's own timings
  engines     the same 14 chunks through engine.transcribe and engine.align (700 words each),
              vLLM against the transformers backend (`--transformers`) in the same run
  agreement   same weights, same inputs: aligner probabilities (cosine, max |diff| against
              softmax of the transformers logits) and the ASR's first-token log-probabilities
  frontend    vLLM's input processing alone (the front-end processes): the clips, the chunks
  one-call    the 64 clips as one transcribe and one align call (our engine class, no jobs)
  same-engine A/B on one engine: the aligner's classes within the audio or all 5000; the ASR
              greedy (as the worker decodes) or with the benchmark's fixed-length sampling
  jobs-N      64 jobs of 30 s (audio_base64) through Worker.handle at concurrency N: GPU
              seconds per audio hour, p50/p95 of a job against alone, peak device memory
  steady-N    the 64 clips sent `--steady` times over with N jobs in flight throughout
  no-repair   jobs-N and steady-N (those chosen) again without the collapse repair: random
              weights collapse the aligner's times, so each job aligns its collapsed runs a
              second time (a front-end pass and an aligner request more); real weights rarely
              collapse, so these rows bound what the repair costs the job rows
              (`collapsed_spans_per_job` says how many runs each job repaired)
  during      30 s jobs sent while a 1 h job runs (`--during-at`: 1 s after its start by
              default): their latency against alone

Every phase row also says where its time went (`Usage`: CPU by process and thread, the engine
cores' loop share, the GPU's busy share). `--variant` restarts the engines with other settings
and runs the engine and job phases again in the same run; `--profile DIR` records the engine
cores and this process with py-spy during the one-call and top-concurrency job phases, and
`--profile-gil DIR` this process's GIL-holding stacks alone during the steady phase;
`--phases` picks phases (a short device run: `--phases one-call,jobs,during --alone 16`).

    python bench/gpu.py --size 0.6b --transformers --json $OUT/gpu-0.6b.json   # GPU machine
    .venv/bin/python bench/gpu.py --smoke          # CPU: the stand-in vllm, tiny dims, few jobs
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT / "tests", ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

SR = 16000
CARD_GIB = 24.0  # the memory split is sized for a 24 GB card (`--card` for another size)
TOKENS_PER_SECOND = 900 / 270  # fixed output: 900 tokens per 270 s chunk, 100 per 30 s
EOS_IDS = (151645, 151643)

_ENCODER = dict(encoder_attention_heads=16, encoder_ffn_dim=4096, d_model=1024,
                encoder_layers=24, downsample_hidden_size=480)
_TEXT = dict(num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
             mrope_section=[24, 20, 20])
DIMS = {
    "0.6b": dict(asr_audio=dict(encoder_layers=18, d_model=896, encoder_attention_heads=14,
                                encoder_ffn_dim=3584, output_dim=1024, downsample_hidden_size=480),
                 aligner_audio=dict(_ENCODER, output_dim=1024),
                 text=dict(_TEXT, hidden_size=1024, intermediate_size=3072)),
    "1.7b": dict(asr_audio=dict(_ENCODER, output_dim=2048),
                 aligner_audio=dict(_ENCODER, output_dim=1024),
                 text=dict(_TEXT, hidden_size=2048, intermediate_size=6144),
                 aligner_text=dict(_TEXT, hidden_size=1024, intermediate_size=3072)),
    "tiny": dict(asr_audio=dict(encoder_layers=1, d_model=32, encoder_attention_heads=2,
                                encoder_ffn_dim=64, output_dim=64, downsample_hidden_size=16),
                 aligner_audio=dict(encoder_layers=1, d_model=32, encoder_attention_heads=2,
                                    encoder_ffn_dim=64, output_dim=64, downsample_hidden_size=16),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           mrope_section=[4, 2, 2])),
}
WORDS = ("the of and to in is that it was for on are as with his they at be this from have or "
         "by one had not but what all were when we there can an your which their said if do "
         "will each about how up out them then she many some so these would other into has more "
         "her two like him see time could no make than first been its who now people my made "
         "over did down only way find use may water long little very after words called just "
         "where most know get through back much before go good new write our used me man too "
         "any day same right look think also around another came come work three word must "
         "because does part even place well such here take why things help put years different "
         "away again off went old number great tell men say small every found still between "
         "name should home big give air line set own under read last never us left end along "
         "while might next sound below saw something thought both few those always looked show "
         "large often together asked house world going want school important until form food "
         "keep children feet land side without boy once animals life enough took sometimes four "
         "head above kind began almost live page got earth need far hand high year mother light "
         "parts country father let night following picture being study second eyes soon times "
         "story boys since white days ever paper hard near sentence better best across during "
         "today others however sure means knew try told young miles sun ways thing whole hear "
         "example heard several change answer room sea against top turned learn point city play "
         "toward five using himself usually").split()


PHASES = ("hour", "engines", "frontend", "one-call", "same-engine", "jobs", "steady", "no-repair",
          "during")
COLLAPSED = "had collapsed onto one instant"  # the worker's warning for each repaired run


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- model dirs (a child process: CUDA there, never in the process that starts vLLM) --------

def _thinker(dims: dict, audio_key: str, text_key: str, vocab: int, tied: bool) -> dict:
    import tiny_models as tm

    ids = tm._ASR_SPECIAL_IDS
    text = dims.get(text_key, dims["text"])
    return dict(
        audio_config=dict(num_mel_bins=128, n_window=50, n_window_infer=800, conv_chunksize=500,
                          max_source_positions=1500, activation_function="gelu",
                          **dims[audio_key]),
        text_config=dict(vocab_size=vocab, hidden_size=text["hidden_size"],
                         intermediate_size=text["intermediate_size"],
                         num_hidden_layers=text["num_hidden_layers"],
                         num_attention_heads=text["num_attention_heads"],
                         num_key_value_heads=text["num_key_value_heads"],
                         head_dim=text["head_dim"], hidden_act="silu",
                         max_position_embeddings=65536, rms_norm_eps=1e-6, rope_theta=1e6,
                         rope_scaling={"rope_type": "default", "interleaved": True,
                                       "mrope_section": list(text["mrope_section"])},
                         tie_word_embeddings=tied, pad_token_id=ids[tm.ENDOFTEXT]),
        audio_token_id=ids[tm.AUDIO_PAD], audio_start_token_id=ids[tm.AUDIO_START],
        audio_end_token_id=ids[tm.AUDIO_END])


def build_dirs(base: Path, size: str, device: str) -> None:
    """Random-weight ASR and aligner dirs with the real vocabulary sizes and special-token ids
    (a small byte-level BPE tokenizer in which each benchmark word is one token)."""
    import torch
    import tiny_models as tm
    from qwen_asr.core.transformers_backend import (Qwen3ASRConfig,
                                                    Qwen3ASRForConditionalGeneration)

    dims = DIMS[size]
    # Each word alone (aligner prompts) and after a space (generated text) is one token.
    extra = list(dict.fromkeys(t for w in WORDS for t in (tm._bl(w), tm._bl(" " + w))))

    def save(path: Path, config: dict, seed: int, edit: Callable[[Any], None]) -> None:
        path.mkdir(parents=True, exist_ok=True)
        tm._write_tokenizer_files(path, tm._ASR_SPECIAL_IDS, tm._ASR_ADDED_IDS, extra)
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen3ASRForConditionalGeneration(Qwen3ASRConfig(**config))
        model = model.to(torch.bfloat16).eval()
        edit(model)
        model.save_pretrained(str(path), safe_serialization=True)

    def no_eos(model: Any) -> None:  # greedy decoding never ends early (transformers side)
        with torch.no_grad():
            for i in EOS_IDS:
                model.thinker.lm_head.weight[i].zero_()
        gen = model.generation_config
        gen.eos_token_id, gen.bos_token_id, gen.do_sample = list(EOS_IDS), None, False
        gen.pad_token_id = tm._ASR_SPECIAL_IDS[tm.ENDOFTEXT]

    save(base / "asr", dict(thinker_config=_thinker(dims, "asr_audio", "text", 151936,
                                                    size == "0.6b" or size == "tiny"),
                            support_languages=None), 0, no_eos)
    aligner = _thinker(dims, "aligner_audio", "aligner_text", 152064, False)
    aligner.update(model_type="qwen3_forced_aligner", classify_num=5000)
    save(base / "aligner", dict(thinker_config=aligner, support_languages=None,
                                timestamp_token_id=tm._ASR_ADDED_IDS[tm.TIMESTAMP],
                                timestamp_segment_time=80), 1, lambda m: None)
    cfg_path = base / "aligner" / "config.json"  # save_pretrained drops the thinker's type
    cfg = json.loads(cfg_path.read_text())
    cfg["thinker_config"].update(model_type="qwen3_forced_aligner", classify_num=5000)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (base / "done").write_text(size)


def ensure_dirs(base: Path, size: str, device: str) -> None:
    if (base / "done").exists():
        return
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--build", str(base), "--size", size,
                    "--build-device", device], check=True)
    log(f"built {size} dirs in {time.perf_counter() - t0:.1f} s")


# -- measuring helpers ------------------------------------------------------------------------

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


def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * SR)).astype(np.float32)


def random_words(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


# -- phases -----------------------------------------------------------------------------------

def settings_env(asr: Path, aligner: Path, total_gib: float, backend: str, work: Path,
                 card_gib: float = CARD_GIB) -> dict:
    from qwen_worker.base.config import load_settings

    defaults = load_settings({"ASR_BACKEND": "vllm", "ASR_DEVICE": "cuda"})
    scale = card_gib / total_gib  # the fractions of the card's memory, on this card
    return {"ASR_MODEL": str(asr), "ALIGNER_MODEL": str(aligner), "ASR_BACKEND": backend,
            "ASR_DEVICE": "cuda" if backend == "vllm" or total_gib != card_gib else "cpu",
            "VLLM_GPU_MEMORY_UTILIZATION": f"{defaults.vllm_gpu_memory_utilization * scale:.4f}",
            "VLLM_ALIGNER_GPU_MEMORY_UTILIZATION":
                f"{defaults.vllm_aligner_gpu_memory_utilization * scale:.4f}",
            "MAX_CONCURRENCY": "64", "DOWNLOAD_ALLOW_LOOPBACK": "true", "WORK_DIR": str(work),
            "MAX_DOWNLOAD_BYTES": str(1 << 30)}


def fixed_length(samples: int) -> dict[str, Any]:
    """Exactly the bench's output length for this much audio (EOS ignored)."""
    return dict(max_tokens=max(1, round(samples / SR * TOKENS_PER_SECOND)), ignore_eos=True)


def fixed_output(word_ids: list[int]) -> Callable[[int], dict[str, Any]]:
    """Exactly n tokens (EOS ignored), sampled among the word tokens: random words, no loops."""
    def overrides(samples: int) -> dict[str, Any]:
        return dict(fixed_length(samples), temperature=1.0, allowed_token_ids=word_ids)
    return overrides


def run_jobs(worker: Any, jobs: list[dict], concurrency: int) -> tuple[float, list[float], list]:
    """Jobs through Worker.handle from `concurrency` threads; (wall s, job seconds, outputs).
    Each output gets "started": its job's start, in seconds after the first job's."""
    took: list[float] = []
    outputs: list[Any] = []
    t0 = time.perf_counter()

    def one(job: dict) -> None:
        t = time.perf_counter()
        out = worker.handle(job)
        took.append(time.perf_counter() - t)
        outputs.append({**out, "started": t - t0})

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, jobs))
    return time.perf_counter() - t0, took, outputs


STAGES = ("download", "decode", "asr", "align")


def timeline(outputs: list[dict]) -> dict[str, list[float]]:
    """When the jobs' stages ended, in seconds after the first job started: [first, median,
    last] each (a job's start plus its stage timings: the short gaps between stages, counted
    in `rest`, are left out). Shows how the jobs' requests reach the engines: together or
    strung out."""
    ends: dict[str, list[float]] = {}
    for out in outputs:
        t = out["started"]
        for stage in STAGES:
            t += out["timings"][stage]
            ends.setdefault(stage, []).append(t)
        ends.setdefault("job", []).append(out["started"] + out["timings"]["total"])
    return {f"{k}_end_s": [round(min(v), 3), round(percentile(v, 0.5), 3), round(max(v), 3)]
            for k, v in ends.items()}


def collapsed_spans(outputs: list[dict]) -> dict[str, float]:
    """How many runs of collapsed word times the jobs repaired (each a second alignment)."""
    spans = [sum(COLLAPSED in w for w in o.get("warnings", [])) for o in outputs]
    return {"collapsed_spans_per_job": round(float(np.mean(spans)), 2),
            "jobs_repaired_pct": round(100.0 * sum(n > 0 for n in spans) / len(spans), 1)}


def check_outputs(outputs: list[dict], phase: str) -> None:
    failed = [o for o in outputs if "error" in o or "error_code" in o]
    if failed:
        raise RuntimeError(f"{phase}: {len(failed)} jobs failed, first: {json.dumps(failed[0])[:400]}")


def agreement(vllm_engine: Any, tf_engine: Any, chunk: np.ndarray) -> dict:
    """Same weights and inputs on both backends: aligner probabilities and ASR first-token
    log-probabilities (argmax alone means little: random weights collapse it)."""
    import torch
    from vllm import PoolingParams, SamplingParams

    from qwen_worker.engines.prompts import asr_prompt

    words, prompt = vllm_engine._aligner_text.encode_timestamp(random_words(60, 7), "English")
    mm = {"audio": chunk}
    pooled = vllm_engine._run(lambda: vllm_engine._encode(
        "probe-align", {"prompt": prompt, "multi_modal_data": mm}, 0,
        PoolingParams(task="token_classify")))  # all classes, as the transformers side
    v_rows = pooled.outputs.data.float().cpu()
    aligner = tf_engine._model.forced_aligner
    inputs = aligner.processor(text=[prompt], audio=[chunk], return_tensors="pt", padding=True)
    inputs = inputs.to(aligner.model.device).to(aligner.model.dtype)
    with torch.inference_mode():
        logits = aligner.model.thinker(**inputs).logits[0]
    mask = inputs["input_ids"][0] == aligner.timestamp_token_id
    t_rows = torch.softmax(logits[mask].float(), -1).cpu()
    cos = torch.nn.functional.cosine_similarity(v_rows, t_rows, dim=-1)

    text = asr_prompt("", "English")
    out = vllm_engine._run(lambda: vllm_engine._generate(
        "probe-asr", {"prompt": text, "multi_modal_data": mm},
        SamplingParams(temperature=0.0, max_tokens=1, logprobs=20, detokenize=False), 0))
    v_top = out.outputs[0].logprobs[0]  # token id -> Logprob
    model = tf_engine._model
    asr_in = model.processor(text=[text], audio=[chunk], return_tensors="pt", padding=True)
    asr_in = asr_in.to(model.model.device).to(model.model.dtype)
    with torch.inference_mode():
        last = model.model.thinker(**asr_in).logits[0, -1].float()
    t_logp = torch.log_softmax(last, -1).cpu()
    diffs = [abs(lp.logprob - float(t_logp[tok])) for tok, lp in v_top.items()]
    return {"aligner_rows": int(v_rows.shape[0]), "aligner_cosine_min": float(cos.min()),
            "aligner_max_abs_diff": float((v_rows - t_rows).abs().max()),
            "aligner_top1_same": float((v_rows.argmax(-1) == t_rows.argmax(-1)).float().mean()),
            "asr_first_token_same": int(max(v_top, key=lambda t: v_top[t].logprob))
                                    == int(t_logp.argmax()),
            "asr_logprob_max_abs_diff": max(diffs), "asr_logprob_mean_abs_diff":
                sum(diffs) / len(diffs)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["0.6b", "1.7b", "tiny"], default="0.6b")
    ap.add_argument("--dirs", type=Path, default=Path(tempfile.gettempdir()) / "bench-models")
    ap.add_argument("--transformers", action="store_true", help="also the transformers backend")
    ap.add_argument("--concurrency", default="1,16,32,64")
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--steady", type=int, default=4,
                    help="then the jobs this many times over at the highest concurrency")
    ap.add_argument("--hour", type=float, default=3600.0, help="seconds of the long file")
    ap.add_argument("--card", type=float, default=CARD_GIB, metavar="GIB",
                    help="the engines' memory shares are the defaults' fractions of this card")
    ap.add_argument("--confine", action="store_true",
                    help="on a larger GPU, leave the engines only the card's memory (a ballast "
                         "process holds the rest): does the worker fit the card?")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="then restart the engines with these settings (the worker's env keys; "
                         "memory shares of a 24 GB card) and run the engine and job phases "
                         "again: against the same baseline")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="record the engine cores with py-spy (on PATH) during the one-call and "
                         "the top-concurrency job phases, raw stacks into DIR")
    ap.add_argument("--profile-gil", type=Path, metavar="DIR",
                    help="record this process's GIL-holding stacks with py-spy during the "
                         "steady phase (the engines unsampled), raw stacks into DIR")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help=f"which of {','.join(PHASES)} to run (jobs-1 gives `alone`)")
    ap.add_argument("--alone", type=int,
                    help="jobs at concurrency 1 (default: all --jobs; 16 in a variant)")
    ap.add_argument("--during-at", default="1",
                    help="seconds after the hour's start to send each short job (e.g. 1,4,7)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--where", action="store_true", help="sample the threads' stacks in job phases")
    ap.add_argument("--smoke", action="store_true", help="CPU: stand-in vllm, tiny dims")
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build-device", default="cuda", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build_dirs(args.build, args.size, args.build_device)
        return 0
    if args.smoke:
        sys.path.insert(0, str(ROOT / "tests" / "stand_ins"))
        args.size, args.jobs, args.hour = "tiny", 8, 600.0
        os.environ["ASR_DTYPE"] = "float32"

    from http_server import AudioHost
    from qwen_worker.base.config import load_settings
    from qwen_worker.pipeline.download import allow_loopback_for_local_testing
    from qwen_worker.engines.load import load_engine
    from qwen_worker.selftest import run_self_test, warm_up
    from qwen_worker.jobs.worker import Worker

    results: dict[str, Any] = {"size": args.size}
    levels = [int(c) for c in args.concurrency.split(",")]  # job concurrencies
    top = max(levels)
    chosen = set(args.phases.split(","))
    if chosen - set(PHASES):
        ap.error(f"unknown phases: {sorted(chosen - set(PHASES))}")
    during_at = [float(x) for x in args.during_at.split(",")]
    memory = DeviceMemory()
    base = args.dirs / args.size
    ensure_dirs(base, "tiny" if args.smoke else args.size, "cpu" if args.smoke else "cuda")
    work = Path(tempfile.mkdtemp(prefix="bench-work-"))
    env = settings_env(base / "asr", base / "aligner", memory.total_gib, "vllm", work, args.card)
    if args.smoke:
        env.update(ASR_BACKEND="vllm", ASR_DEVICE="cpu", ASR_DTYPE="float32")
    # Engine settings from the environment win (e.g. VLLM_ENFORCE_EAGER=true for a quick run).
    env.update({k: v for k, v in os.environ.items() if k.startswith("VLLM_") and
                k not in ("VLLM_USE_FLASHINFER_SAMPLER", "VLLM_WORKER_MULTIPROC_METHOD")})
    settings = load_settings(env)
    allow_loopback_for_local_testing()

    def record(name: str, row: dict) -> None:
        results[name] = row
        log(f"{name}: {json.dumps(row)}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    def phase(name: str, run: Callable[[], dict]) -> None:
        """One phase; a failure is recorded and the next phase still runs."""
        try:
            record(name, run())
        except Exception as exc:  # noqa: BLE001 - reported in the results
            import traceback

            traceback.print_exc()
            record(name, {"error": f"{type(exc).__name__}: {exc}"[:500]})

    ballast = confine(memory, args.card) if args.confine else {}
    if ballast:
        record("confined", {k: v for k, v in ballast.items() if k != "proc"})
    idle_gib = memory.used_gib()
    memory.reset()  # from here on: the engines' processes, not the one that built the dirs
    from qwen_worker.base.clock import CLOCK

    t0 = time.perf_counter()
    engine = load_engine(settings)
    startup = time.perf_counter() - t0
    with CLOCK.phase("fitness check"):
        warm_up(engine)  # what the fitness check runs
    self_test_rc = run_self_test(settings, engine)
    record("startup", {"ready_s": round(startup, 1),
                       # the worker's own phase lines (qwen_worker.startup), seconds each
                       "phases": {name: round(end - start, 1)
                                  for name, (start, end, _) in CLOCK.phases.items()},
                       "phase_details": {name: detail
                                         for name, (_, _, detail) in CLOCK.phases.items()},
                       "self_test": "passed" if self_test_rc == 0 else "FAILED",
                       "device_gib": round(memory.used_gib(), 2),
                       **memory_row(memory, engine),
                       "cuda_processes": memory.processes(),
                       "frontend_processes": settings.vllm_frontend_processes,
                       # the engine loops and the job path are CPU work: hosts differ
                       "cpu": cpu_model(), "cores": os.cpu_count()})

    tokenizer = engine._tokenizer
    word_ids = sorted({i for w in WORDS for i in tokenizer(" " + w, add_special_tokens=False)["input_ids"]})
    if len(word_ids) != len(set(WORDS)):
        raise RuntimeError("each word after a space must be one token of the bench tokenizer")
    engine.sampling_overrides = fixed_output(word_ids)
    worker = Worker(settings, engine)
    host = AudioHost()
    hour = noise(args.hour, 1)
    hour_url = host.file("/hour.wav", wav_bytes(hour), "audio/wav")
    from qwen_worker.pipeline import chunking

    chunks = [c.samples for c in chunking.split(hour, chunking.DEFAULT_CHUNK_SECONDS)]
    texts = [random_words(700, i) for i in range(len(chunks))]
    english = ["English"] * len(chunks)
    clips = [noise(30.0, 100 + i) for i in range(args.jobs)]
    jobs = [{"id": f"clip-{i}", "input": {"audio_base64": base64.b64encode(
        wav_bytes(c)).decode(), "language": "English"}} for i, c in enumerate(clips)]
    alone: list[float] = []

    def hour_job() -> dict:
        memory.reset()
        wall, _, (out,) = run_jobs(worker, [{"id": "hour", "input": {
            "audio_url": hour_url, "language": "English"}}], 1)
        check_outputs([out], "hour")
        return {"wall_s": round(wall, 2), **out["timings"], "words": len(out.get("words", [])),
                **collapsed_spans([out]),
                "warnings": out.get("warnings", [])[:3], **memory_row(memory, engine)}

    def engine_calls(which: Any, name: str) -> dict:
        """The hour's chunks through one engine's transcribe and align (700 words a chunk)."""
        memory.reset()
        with Usage(which, memory) as asr_usage:
            t0 = time.perf_counter()
            which.transcribe(chunks, english, [""] * len(chunks))
            asr_s = time.perf_counter() - t0
        with Usage(which, memory) as align_usage:
            t0 = time.perf_counter()
            which.align(chunks, texts, english)
            align_s = time.perf_counter() - t0
        return {"chunks": len(chunks), f"{name}_asr_s": round(asr_s, 2),
                f"{name}_align_s": round(align_s, 2), "audio_h": round(args.hour / 3600, 3),
                "asr_usage": asr_usage.row, "align_usage": align_usage.row}

    def front_end() -> dict:
        """vLLM's input processing alone (the front-end processes): the clips' ASR inputs, then
        the hour's chunks, each set sent at once."""
        from qwen_worker.engines.base import padded
        from qwen_worker.engines.prompts import asr_prompt

        prompt, n = asr_prompt("", "English"), engine._front.processes
        row: dict[str, Any] = {"processes": n}
        for name, audio in (("clips", clips), ("hour_chunks", chunks)):
            t0 = time.perf_counter()
            futures = [engine._front.prepare("asr", f"fe-{name}-{i}", prompt, padded(a))
                       for i, a in enumerate(audio)]
            for future in futures:
                future.result()
            wall = time.perf_counter() - t0
            row[f"{name}_s"] = round(wall, 3)
            row[f"{name}_ms_each"] = round(1000 * wall * min(n, len(audio)) / len(audio), 1)
        return row

    def one_call() -> dict:
        """The clips as one transcribe and one align call: our engine class without jobs."""
        texts = [random_words(100, i) for i in range(len(clips))]
        with CoreProfile(engine, args.profile, "one-call-asr"), Usage(engine, memory) as asr_usage:
            t0 = time.perf_counter()
            engine.transcribe(clips, ["English"] * len(clips), [""] * len(clips))
            asr_s = time.perf_counter() - t0
        with CoreProfile(engine, args.profile, "one-call-align"), \
                Usage(engine, memory) as align_usage:
            t0 = time.perf_counter()
            engine.align(clips, texts, ["English"] * len(clips))
            align_s = time.perf_counter() - t0
        audio_h = len(clips) * 30.0 / 3600
        return {"clips": len(clips), "asr_s": round(asr_s, 3), "align_s": round(align_s, 3),
                "gpu_s_per_audio_h": round((asr_s + align_s) / audio_h, 2),
                "asr_usage": asr_usage.row, "align_usage": align_usage.row}

    def same_engine() -> dict:
        """A/B on one engine, each side twice, interleaved: the clips' alignment asking for
        all 5000 classes against only those within the audio (each after the clips' ASR, whose
        features it reuses); their ASR decoding greedily (as the worker does) against the
        benchmark's fixed-length sampling (temperature 1 among the word tokens)."""
        english, blank = ["English"] * len(clips), [""] * len(clips)
        texts = [random_words(100, i) for i in range(len(clips))]
        audio_h = len(clips) * 30.0 / 3600
        took: dict[str, list[float]] = {}

        def timed(name: str, call: Callable[[], Any]) -> None:
            t0 = time.perf_counter()
            call()
            took.setdefault(name, []).append(time.perf_counter() - t0)

        sampled = engine.sampling_overrides
        try:
            for _ in range(2):
                for within in (False, True):
                    engine.within_audio = within
                    timed("asr_sampled", lambda: engine.transcribe(clips, english, blank))
                    timed(f"align_{'within' if within else 'all'}_classes",
                          lambda: engine.align(clips, texts, english))
                engine.sampling_overrides = fixed_length
                timed("asr_greedy", lambda: engine.transcribe(clips, english, blank))
                engine.sampling_overrides = sampled
        finally:
            engine.within_audio = True
            engine.sampling_overrides = sampled
        return {f"{k}_s": round(min(v), 3) for k, v in took.items()} | {
            f"{k}_gpu_s_per_audio_h": round(min(v) / audio_h, 2) for k, v in took.items()}

    def job_batch(conc: int, rounds: int = 1, count: int | None = None) -> dict:
        """The clips as jobs, `conc` at a time; `rounds` > 1 sends them that many times over,
        so that `conc` jobs are in flight throughout (a busy worker) rather than one wave."""
        batch = [{**job, "id": f"{job['id']}-r{r}"} for r in range(rounds)
                 for job in jobs[:count]]
        memory.reset()
        where = StackSampler() if args.where else contextlib.nullcontext()
        profile = (CoreProfile(engine, args.profile, f"jobs-{conc}") if conc == top and rounds == 1
                   else CoreProfile(engine, args.profile_gil, f"steady-{conc}", gil_only=True)
                   if rounds > 1 else contextlib.nullcontext())
        with profile, Usage(engine, memory) as usage, where:
            wall, took, outs = run_jobs(worker, batch, conc)
        check_outputs(outs, f"jobs-{conc}")
        if not alone:
            alone.extend(took)
        audio_h = len(batch) * 30.0 / 3600
        return {"jobs": len(batch), "wall_s": round(wall, 2),
                "gpu_s_per_audio_h": round(wall / audio_h, 2),
                "p50_s": round(percentile(took, 0.5), 3), "p95_s": round(percentile(took, 0.95), 3),
                "p50_vs_alone": round(percentile(took, 0.5) / percentile(alone, 0.5), 2),
                "p95_vs_alone": round(percentile(took, 0.95) / percentile(alone, 0.5), 2),
                "asr_s_mean": round(float(np.mean([o["timings"]["asr"] for o in outs])), 3),
                "align_s_mean": round(float(np.mean([o["timings"]["align"] for o in outs])), 3),
                "decode_s_mean": round(float(np.mean([o["timings"]["decode"] for o in outs])), 3),
                # the rest of a job: validation, merge, formats (and waiting for the GIL)
                "rest_s_mean": round(float(np.mean([o["timings"]["total"] - sum(
                    o["timings"][k] for k in STAGES) for o in outs])), 3),
                **collapsed_spans(outs),
                "timeline": timeline(outs) if conc > 1 else {},
                **memory_row(memory, engine), **usage.row, "where": where.top() if args.where else []}

    def during() -> dict:
        """Short jobs sent while a 1 h job runs, one after another, each at its offset
        (`--during-at`) after the hour started or as soon as the one before ended: where a
        short job lands in the hour (its prefill, its decoding, its alignment) matters."""
        memory.reset()
        shorts: list[tuple[float, float, dict]] = []
        pauses = engine.asr_pause.pauses if hasattr(engine, "asr_pause") else 0
        with ThreadPoolExecutor(2) as pool, Usage(engine, memory) as usage:
            t_long = time.perf_counter()
            long_future = pool.submit(worker.handle, {"id": "hour-2", "input": {
                "audio_url": hour_url, "language": "English"}})
            for n, offset in enumerate(during_at):
                time.sleep(max(0.0, t_long + offset - time.perf_counter()))
                sent = time.perf_counter() - t_long
                if long_future.done():
                    break  # the hour ended: the rest would run alone
                out = pool.submit(worker.handle, {**jobs[n % len(jobs)],
                                                  "id": f"short-{n}"}).result()
                shorts.append((sent, time.perf_counter() - t_long - sent, out))
            long_out = long_future.result()
            long_s = time.perf_counter() - t_long
        check_outputs([long_out] + [out for _, _, out in shorts], "during")
        if not shorts:
            raise RuntimeError("the hour ended before the first short job was due")
        base = percentile(alone, 0.5) if alone else float("nan")
        took = [s for _, s, _ in shorts]
        return {"short_s": round(percentile(took, 0.5), 3), "alone_p50_s": round(base, 3),
                "vs_alone": round(percentile(took, 0.5) / base, 2),
                "each": [{"sent_s": round(sent, 2), "took_s": round(s, 3),
                          "vs_alone": round(s / base, 2),
                          **{k: round(out["timings"][k], 3) for k in ("decode", "asr", "align")}}
                         for sent, s, out in shorts],
                "long_s": round(long_s, 2),
                # the ASR engine's pauses for the short jobs' alignment (vllm_engine.AsrPause)
                "asr_pauses": (engine.asr_pause.pauses - pauses
                               if hasattr(engine, "asr_pause") else None),
                **memory_row(memory, engine), **usage.row}

    def phase_if(name: str, run: Callable[[], dict], key: str | None = None) -> None:
        if (key or name) in chosen:
            phase(name, run)

    try:
        phase_if("hour", hour_job)
        phase_if("engines", lambda: engine_calls(engine, "vllm"))
        if hasattr(engine, "_front"):
            phase_if("frontend", front_end)
        phase_if("one-call", one_call)
        if hasattr(engine, "within_audio"):
            phase_if("same-engine", same_engine)
        for conc in levels:
            phase_if(f"jobs-{conc}", lambda conc=conc: job_batch(
                conc, count=args.alone if conc == 1 else None), key="jobs")
        if args.steady > 1:
            phase_if(f"steady-{top}", lambda: job_batch(top, args.steady), key="steady")
        def no_repair(prefix: str) -> None:
            """The same job path with the repair pass taken out (bench only): what the job rows
            cost where the aligner's times do not collapse, as with real weights."""
            if "no-repair" not in chosen:
                return
            with mock.patch("qwen_worker.pipeline.repair.repair_collapsed", lambda *a, **k: None):
                if "jobs" in chosen:
                    phase(f"{prefix}no-repair/jobs-{top}", lambda: job_batch(top))
                if "steady" in chosen and args.steady > 1:
                    phase(f"{prefix}no-repair/steady-{top}", lambda: job_batch(top, args.steady))
                if "during" in chosen:  # against a job alone without the repair too
                    kept = list(alone)
                    alone.clear()
                    phase(f"{prefix}no-repair/jobs-1", lambda: job_batch(1, count=args.alone or 16))
                    phase(f"{prefix}no-repair/during", during)
                    alone[:] = kept

        no_repair("")
        phase_if("during", during)
        profile_root, gil_root = args.profile, args.profile_gil  # a folder for each variant
        for spec in args.variant:
            name, _, pairs = spec.partition(":")
            overrides = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
            for key in overrides:  # given as shares of a 24 GB card, as the defaults are
                if key.endswith("GPU_MEMORY_UTILIZATION"):
                    overrides[key] = f"{float(overrides[key]) * args.card / memory.total_gib:.4f}"
            # Also in this environment, until the variant ends: the engine processes started
            # next inherit it (variables the worker's settings do not hold; their torch threads
            # are VLLM_ENGINE_THREADS, which overrides OMP_NUM_THREADS there unless 0).
            variant_env = mock.patch.dict(os.environ, overrides)
            variant_env.start()
            args.profile = profile_root / name if profile_root else None
            args.profile_gil = gil_root / name if gil_root else None
            engine.close()
            released = time.perf_counter()
            while memory.used_gib() > idle_gib + 1.0 and time.perf_counter() - released < 60:
                time.sleep(0.5)
            t0 = time.perf_counter()
            try:
                settings = load_settings({**env, **overrides})
                engine = load_engine(settings)
            except Exception as exc:  # noqa: BLE001 - e.g. a share too small: say so, go on
                record(f"{name}/startup", {"error": f"{type(exc).__name__}: {exc}"[:600],
                                           "settings": overrides})
                variant_env.stop()
                continue  # `engine` is the one closed above (closing it again is harmless)
            record(f"{name}/startup", {"ready_s": round(time.perf_counter() - t0, 1),
                                       "settings": overrides,
                                       "device_gib": round(memory.used_gib(), 2),
                                       **memory_row(memory, engine)})
            engine.sampling_overrides = fixed_output(word_ids)
            worker = Worker(settings, engine)
            alone.clear()
            # The job phases first: a run cut by the device's time limit keeps those.
            phase_if(f"{name}/jobs-1", lambda: job_batch(1, count=args.alone or 16), key="jobs")
            phase_if(f"{name}/jobs-{top}", lambda: job_batch(top), key="jobs")
            phase_if(f"{name}/during", during, key="during")
            if args.steady > 1:
                phase_if(f"{name}/steady-{top}", lambda: job_batch(top, args.steady),
                         key="steady")
            no_repair(f"{name}/")
            phase_if(f"{name}/one-call", one_call, key="one-call")
            phase_if(f"{name}/engines", lambda: engine_calls(engine, "vllm"), key="engines")
            variant_env.stop()
        if args.transformers:
            tf_settings = load_settings({**env, "ASR_BACKEND": "transformers",
                                         "MAX_NEW_TOKENS": "900",
                                         "ASR_DEVICE": "cpu" if args.smoke else "cuda"})
            tf = load_engine(tf_settings)
            phase("transformers", lambda: engine_calls(tf, "transformers"))
            if not args.smoke:  # the stand-in computes no probabilities
                phase("agreement", lambda: agreement(engine, tf, noise(30.0, 5)))
    finally:
        host.close()
        engine.close()
        if ballast:
            ballast["proc"].stdin.close()
            ballast["proc"].wait(30)
    return 0

if __name__ == "__main__":
    sys.exit(main())
