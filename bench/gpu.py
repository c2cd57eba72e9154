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

This file is the command line; gpu_models builds the dirs and the inputs, gpu_instruments
measures and keeps the rows, gpu_phases runs the phases (through public engine options only:
`BenchOptions`, `with_bench_options`, `probe`, the worker's `repair_collapsed_times`).

    python bench/gpu.py --size 0.6b --transformers --json $OUT/gpu-0.6b.json   # GPU machine
    .venv/bin/python bench/gpu.py --smoke          # CPU: the stand-in vllm, tiny dims, few jobs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT / "tests", ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# bench/startup.py imports CARD_GIB, DeviceMemory, ensure_dirs, noise, settings_env, wav_bytes
from gpu_instruments import CARD_GIB, DeviceMemory, Results, confine  # noqa: E402
from gpu_models import build_dirs, ensure_dirs, noise, settings_env, wav_bytes  # noqa: E402,F401
from gpu_phases import (  # noqa: E402
    PHASES,
    Plan,
    make_rig,
    make_workload,
    run_phases,
    run_transformers,
    run_variant,
    startup,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    args = ap.parse_args(argv)
    chosen = set(args.phases.split(","))
    if chosen - set(PHASES):
        ap.error(f"unknown phases: {sorted(chosen - set(PHASES))}")
    return args


def engine_env(args: argparse.Namespace, memory: DeviceMemory, work: Path) -> dict:
    """The worker's environment for the bench: the dirs, the card's memory shares, and any
    VLLM_ setting of this environment (e.g. VLLM_ENFORCE_EAGER=true for a quick run)."""
    base = args.dirs / args.size
    env = settings_env(base / "asr", base / "aligner", memory.total_gib, "vllm", work, args.card)
    if args.smoke:
        env.update(ASR_BACKEND="vllm", ASR_DEVICE="cpu", ASR_DTYPE="float32")
    env.update({k: v for k, v in os.environ.items() if k.startswith("VLLM_") and
                k not in ("VLLM_USE_FLASHINFER_SAMPLER", "VLLM_WORKER_MULTIPROC_METHOD")})
    return env


def main() -> int:
    args = parse_args()
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

    levels = [int(c) for c in args.concurrency.split(",")]
    plan = Plan(frozenset(args.phases.split(",")), levels, args.steady, args.alone,
                [float(x) for x in args.during_at.split(",")], args.card)
    results = Results(args.json, size=args.size)
    memory = DeviceMemory()
    ensure_dirs(args.dirs / args.size, "tiny" if args.smoke else args.size,
                "cpu" if args.smoke else "cuda")
    env = engine_env(args, memory, Path(tempfile.mkdtemp(prefix="bench-work-")))
    settings = load_settings(env)
    allow_loopback_for_local_testing()

    ballast = confine(memory, args.card) if args.confine else {}
    if ballast:
        results.record("confined", {k: v for k, v in ballast.items() if k != "proc"})
    idle_gib = memory.used_gib()
    memory.reset()  # from here on: the engines' processes, not the one that built the dirs
    rig = make_rig(startup(results, settings, memory), settings, memory, args.profile,
                   args.profile_gil, args.where)
    host = AudioHost()
    load = make_workload(host, args.hour, args.jobs)
    try:
        run_phases(results, rig, load, plan)
        for spec in args.variant:
            rig = run_variant(results, rig, load, plan, spec, env, idle_gib, args.profile,
                              args.profile_gil)
        if args.transformers:
            run_transformers(results, rig, load, env, args.smoke)
    finally:
        host.close()
        rig.loaded.close()
        if ballast:
            ballast["proc"].stdin.close()
            ballast["proc"].wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
