"""bench/diarize: the speaker diarizer (qwen_worker.engines.diarizer) on long audio, per audio hour.

community-1's ARCHITECTURES and hyper-parameters (PyanNet segmentation, WeSpeaker ResNet34
embedding, VBx with a 128-dim PLDA, its config.yaml and batch sizes) with RANDOM weights
(tests/tiny_diarization.py writes the folder; nothing is downloaded), loaded through the
worker's `load_diarizer`, run on pyannote's bundled 30 s two-speaker clip tiled to 1 h and 3 h
(as the worker calls it: one float32 16 kHz buffer in memory). Random weights make the speaker
count meaningless (see the turns/speakers columns), not the work: every 10 s window is segmented
and every (window, local speaker) pair is embedded whatever the weights say.

Per input: seconds, seconds per audio hour, peak GPU memory (torch.cuda.max_memory_allocated and
max_memory_reserved, reset before each input), the same per audio hour, peak host RSS, against
the targets (<= 30 s and <= 6 GiB per audio hour). A 30 s warm-up run comes first (not counted).

    python bench/diarize.py --json $OUT/diarize.json                 # GPU: 1 h and 3 h
    python bench/diarize.py --embedding-batch-size 8 --hours 1       # a memory bound, on GPU
    .venv/bin/python bench/diarize.py --device cpu --minutes 1 --size tiny   # quick local check
    .venv/bin/python bench/diarize.py --device cpu --minutes 1   # full size on CPU: ~6 min

On the GPU machine (torch 2.11.0 there, no pyannote): the vLLM set of
../shared/tools/vllm-on-gpu (it brings soundfile, huggingface-hub, transformers), then the
wheels of scripts/diarize-wheels.sh (its header says how to carry and install them).
CPU figures here (2 shared cores, 2026-12-02): tiny, 1 min of audio: 38 s; full size, 1 min:
244 s (the 30 s warm-up 121 s); peak RSS 2.7 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

SR = 16000
TARGET_S_PER_HOUR = 30.0
TARGET_GIB_PER_HOUR = 6.0
GIB = 1024**3


def log(message: str) -> None:
    print(f"[diarize {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tiled(sample: np.ndarray, seconds: float) -> np.ndarray:
    """The clip repeated to `seconds` (float32, 16 kHz)."""
    n = int(seconds * SR)
    return np.resize(sample, n).astype(np.float32, copy=False)


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB


def measure(diarizer, samples: np.ndarray, count, device: str) -> dict:
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    turns = diarizer.diarize(samples, count)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    hours = len(samples) / SR / 3600
    row = {"audio_hours": round(hours, 4), "seconds": round(seconds, 2),
           "s_per_audio_hour": round(seconds / hours, 2), "turns": len(turns),
           "speakers": len({t.speaker for t in turns}), "peak_rss_gib": round(_peak_rss_gib(), 2)}
    if cuda:
        allocated = torch.cuda.max_memory_allocated() / GIB
        reserved = torch.cuda.max_memory_reserved() / GIB
        row.update(peak_allocated_gib=round(allocated, 3), peak_reserved_gib=round(reserved, 3),
                   reserved_gib_per_audio_hour=round(reserved / hours, 3))
    row["meets_targets"] = (row["s_per_audio_hour"] <= TARGET_S_PER_HOUR
                            and row.get("reserved_gib_per_audio_hour", 0.0)
                            <= TARGET_GIB_PER_HOUR)
    return row


def table(rows: list[dict]) -> str:
    head = (f"{'audio h':>8} {'seconds':>9} {'s/audio h':>10} {'alloc GiB':>10} "
            f"{'reserv GiB':>11} {'GiB/audio h':>12} {'RSS GiB':>8} {'turns':>7} {'spk':>4}  ok")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['audio_hours']:>8.3f} {r['seconds']:>9.1f} {r['s_per_audio_hour']:>10.1f} "
            f"{r.get('peak_allocated_gib', float('nan')):>10.2f} "
            f"{r.get('peak_reserved_gib', float('nan')):>11.2f} "
            f"{r.get('reserved_gib_per_audio_hour', float('nan')):>12.2f} "
            f"{r['peak_rss_gib']:>8.2f} {r['turns']:>7} {r['speakers']:>4}  "
            f"{'yes' if r['meets_targets'] else 'NO'}")
    lines.append(f"targets: <= {TARGET_S_PER_HOUR:g} s and <= {TARGET_GIB_PER_HOUR:g} GiB "
                 "(reserved) per audio hour")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default where available) or cpu")
    ap.add_argument("--hours", default="1,3", help="input lengths in hours, comma-separated")
    ap.add_argument("--minutes", type=float, help="one input of this many minutes instead")
    ap.add_argument("--size", choices=("full", "tiny"), default="full",
                    help="full: community-1's architectures; tiny: the tests' small networks")
    ap.add_argument("--embedding-batch-size", type=int, default=None,
                    help="default: the worker's DIARIZATION_EMBEDDING_BATCH_SIZE default")
    ap.add_argument("--num-speakers", type=int, default=None)
    ap.add_argument("--dir", type=Path, default=None, help="where the pipeline folder is written")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the folder is local; nothing is fetched
    import torch

    import tiny_diarization
    from qwen_worker.base.config import load_settings
    from qwen_worker.engines.diarizer import load_diarizer
    from qwen_worker.base.types import SpeakerCount

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.embedding_batch_size or load_settings({}).diarization_embedding_batch_size
    lengths = ([args.minutes * 60] if args.minutes is not None
               else [float(h) * 3600 for h in args.hours.split(",") if h.strip()])
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-diarize-")) / "pipeline"
    t0 = time.perf_counter()
    tiny_diarization.build_pipeline_dir(folder, size=args.size)
    log(f"{args.size} pipeline folder written in {time.perf_counter() - t0:.1f} s: {folder}")
    t0 = time.perf_counter()
    diarizer = load_diarizer(folder, device, embedding_batch_size=batch)
    load_s = time.perf_counter() - t0
    log(f"loaded on {device} in {load_s:.1f} s (embedding batch {batch})")

    sample = tiny_diarization.sample_audio()
    count = SpeakerCount(num_speakers=args.num_speakers)
    warm = measure(diarizer, sample, count, device)
    log(f"warm-up (30 s, not counted): {json.dumps(warm)}")
    result = {"device": device, "size": args.size, "embedding_batch_size": batch,
              "torch": torch.__version__, "load_s": round(load_s, 2), "rows": []}
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    for seconds in lengths:
        log(f"{seconds / 3600:.3f} audio hours ...")
        row = measure(diarizer, tiled(sample, seconds), count, device)
        log(json.dumps(row))
        result["rows"].append(row)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    print(table(result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
