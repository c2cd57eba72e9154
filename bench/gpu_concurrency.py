"""bench/gpu_concurrency: GPU seconds per audio hour for many short jobs, one at a time
against sharing engine calls through the worker's scheduler; and the cost of the
collapsed-timestamp repair on a file without collapses.

Full-size Qwen3-ASR-0.6B and ForcedAligner-0.6B architectures with RANDOM weights (built by
bench/gpu_pipeline.py's `build_dirs`; nothing is downloaded), loaded through the worker's own
`load_engine`. Each job runs the worker's pipeline (`transcribe_samples`, ASR + alignment +
merge) in a thread of its own with a `SharedEngine` of one `BatchScheduler`, as a worker
with MAX_CONCURRENCY slots does; decoding and download are left out (they run on the CPU, in
parallel). Random weights never emit EOS: every clip decodes exactly MAX_NEW_TOKENS (100 ~
30 s of speech), and the token-limit flag is switched off so no clip is retried as halves.

    PYTHONPATH=src:tests:bench python3 bench/gpu_concurrency.py          # GPU, full size
    PYTHONPATH=src:tests:bench .venv/bin/python bench/gpu_concurrency.py --tiny  # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT / "tests", ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

SR = 16000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_jobs(engine, settings, clips: list[np.ndarray], concurrency: int, sync) -> dict:
    from qwen_worker.pipeline import Options, transcribe_samples
    from qwen_worker.scheduler import BatchScheduler

    scheduler = BatchScheduler(engine, gather_seconds=settings.scheduler_gather_s,
                               max_chunks=settings.scheduler_max_chunks)
    options = Options(language="English")
    service: list[float] = []
    finished: list[float] = []
    t0 = time.perf_counter()

    def job(samples: np.ndarray) -> None:
        started = time.perf_counter()
        transcribe_samples(samples, options, scheduler.engine_for_job())
        sync()
        service.append(time.perf_counter() - started)
        finished.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(job, clips))
    wall = time.perf_counter() - t0
    scheduler.close()
    audio_h = sum(c.size for c in clips) / SR / 3600
    return {"concurrency": concurrency, "jobs": len(clips), "wall_s": round(wall, 2),
            "gpu_s_per_audio_h": round(wall / audio_h, 1), "asr_calls": scheduler.calls["asr"],
            "align_calls": scheduler.calls["align"],
            "service_p50_s": round(statistics.median(service), 2),
            "service_p95_s": round(percentile(service, 0.95), 2),
            "end_to_end_p95_s": round(percentile(finished, 0.95), 2)}


def repair_cost(engine, sync, seconds: float, words: int) -> dict:
    """Aligner time for one file with and without the collapsed-timestamp check and repair."""
    from qwen_worker import chunking, pipeline, repair
    from qwen_worker.engine import AsrOutput

    import gpu_pipeline

    rng = np.random.default_rng(1)
    audio = rng.normal(0, 0.1, int(seconds * SR)).astype(np.float32)
    chunks = chunking.split(audio, 270.0)
    texts = [" ".join(rng.choice(gpu_pipeline.WORDS, words)) for _ in chunks]
    outputs = [AsrOutput("English", t, 900, False, False) for t in texts]
    views = [c.samples for c in chunks]
    engine.align(views[:1], texts[:1], ["English"])  # warm-up
    sync()
    t0 = time.perf_counter()
    aligned = [list(a) for a in engine.align(views, texts, ["English"] * len(views))]
    sync()
    align_s = time.perf_counter() - t0
    # The check alone is all a file without collapses pays for.
    t0 = time.perf_counter()
    spans = [s for c, a in zip(chunks, aligned) for s in repair.find_collapsed(a, c.duration)]
    check_s = time.perf_counter() - t0
    warnings: list[str] = []
    t0 = time.perf_counter()
    pipeline._repair_collapsed(chunks, outputs, aligned, engine, warnings)
    sync()
    repair_s = time.perf_counter() - t0
    return {"audio_s": seconds, "chunks": len(chunks), "words_per_chunk": words,
            "align_s": round(align_s, 3), "check_s": round(check_s, 4),
            "check_added_pct": round(100 * check_s / align_s, 3),
            "collapsed_spans_in_random_output": len(spans),
            "check_and_repair_s": round(repair_s, 3),
            "repair_added_pct": round(100 * repair_s / align_s, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with tiny dims")
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--workdir", default="/tmp/qwen_gpu_concurrency")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    import gpu_pipeline
    from qwen_worker.config import load_settings
    from qwen_worker.engine import load_engine

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    dims = gpu_pipeline.TINY if args.tiny else gpu_pipeline.FULL
    asr_dir, al_dir, _ = gpu_pipeline.build_dirs(Path(args.workdir), dims,
                                                 "cuda:0" if cuda else "cpu")
    env = {"ASR_MODEL": str(asr_dir), "ALIGNER_MODEL": str(al_dir), "ASR_BACKEND": "transformers",
           "ASR_DEVICE": device, "ASR_DTYPE": "bfloat16",
           "MAX_NEW_TOKENS": str(args.max_new_tokens)}
    settings = load_settings(env)
    t0 = time.perf_counter()
    engine = load_engine(settings)
    load_s = time.perf_counter() - t0
    # Random weights always run to the token limit and often repeat a token: without this,
    # every clip would be flagged and retried as two halves (the repair of real failures).
    engine.max_new_tokens = 1 << 30
    engine._fix_repetitions = lambda text: text

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.1, int(args.seconds * SR)).astype(np.float32)
             for _ in range(args.jobs)]
    run_jobs(engine, settings, clips[:2], 2, sync)  # warm-up
    rows = []
    for c in args.concurrency:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        row = run_jobs(engine, settings, clips, c, sync)
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    alone = run_jobs(engine, settings, clips[:1], 1, sync)["service_p50_s"]

    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"\ndevice {device_name}; torch {torch.__version__}; load_engine {load_s:.1f} s; "
          f"{args.jobs} jobs of {args.seconds:.0f} s, MAX_NEW_TOKENS {args.max_new_tokens}; "
          f"ASR_BATCH_SECONDS {settings.asr_batch_seconds:.0f}, SCHEDULER_MAX_CHUNKS "
          f"{settings.scheduler_max_chunks}; one job alone: {alone} s\n")
    print("| MAX_CONCURRENCY | GPU s / audio h | ASR calls | align calls | job p50 s | job p95 s "
          "| p95 / alone | peak GiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['concurrency']} | {r['gpu_s_per_audio_h']} | {r['asr_calls']} | "
              f"{r['align_calls']} | {r['service_p50_s']} | {r['service_p95_s']} | "
              f"{r['service_p95_s'] / alone:.2f} | {r['peak_gib']} |")
    if len(rows) >= 2:
        print(f"\nGPU time per audio hour: {rows[0]['gpu_s_per_audio_h'] / rows[-1]['gpu_s_per_audio_h']:.1f}x "
              f"lower at {rows[-1]['concurrency']} than at {rows[0]['concurrency']}")
    cost = repair_cost(engine, sync, 360.0 if args.tiny else 3600.0, 60 if args.tiny else 700)
    print(f"\ncollapsed-timestamp check and repair, {cost['audio_s']:.0f} s file: {json.dumps(cost)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "alone_s": alone,
                                               "repair": cost, "device": device_name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
