"""bench/base64_jobs: many jobs' `audio_base64` decoded at once, ours against the stdlib's.

N threads (default 64, as in bench/gpu.py's 64-job wave) each decode one 30 s 16 kHz WAV clip
sent as base64 (~1.3 MB of text) and write it to a job folder, all started together:

  ours      download.decode_base64 (pybase64's SIMD decoder, strict; whitespace removed only
            when the strict pass finds some)
  stdlib    what the worker did before: whitespace removed, then base64.b64decode(validate=True)

Both hold the GIL while they decode, so N jobs queue behind each other: the wall time of the
whole set is what the last job waits before its ffmpeg decode can start. Medians of --repeat
rounds, the two paths alternating; the decoded bytes are checked equal.

    .venv/bin/python bench/base64_jobs.py --jobs 64 --repeat 5
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from qwen_worker.pipeline.download import INPUT_NAME, decode_base64  # noqa: E402


def stdlib_decode(data: str, dest_dir: Path, max_bytes: int) -> Path:
    payload = "".join(data.strip().split())
    if len(payload) // 4 * 3 > max_bytes:
        raise ValueError("too large")
    dest = dest_dir / INPUT_NAME
    dest.write_bytes(base64.b64decode(payload, validate=True))
    return dest


def wave(decode, text: str, dirs: list[Path]) -> tuple[float, float]:
    """All jobs at once: (wall s of the set, median s of one job)."""
    start = threading.Barrier(len(dirs) + 1)
    took: list[float] = []

    def job(folder: Path) -> None:
        start.wait()
        t = time.perf_counter()
        decode(text, folder, 20 << 20)
        took.append(time.perf_counter() - t)

    threads = [threading.Thread(target=job, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, statistics.median(took)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    clip = os.urandom(44 + int(args.seconds * 16000) * 2)  # a WAV's size; content is irrelevant
    text = base64.b64encode(clip).decode()
    paths = {"ours (pybase64)": decode_base64, "stdlib (before)": stdlib_decode}
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"job-{i}" for i in range(args.jobs)]
        for d in dirs:
            d.mkdir()
        for _ in range(args.repeat):
            for name, decode in paths.items():
                rows[name].append(wave(decode, text, dirs))
                assert all((d / INPUT_NAME).read_bytes() == clip for d in dirs)
    print(f"{args.jobs} jobs at once, each {args.seconds:g} s of 16 kHz WAV as base64 "
          f"({len(text) / 1e6:.2f} MB of text); median of {args.repeat} rounds, "
          f"{len(os.sched_getaffinity(0))} cores, Python {sys.version.split()[0]}")
    print()
    print("| path | all jobs decoded, s | one job, median ms | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    base = statistics.median(w for w, _ in rows["stdlib (before)"])
    for (name, rs), decode in zip(rows.items(), paths.values()):
        wall = statistics.median(w for w, _ in rs)
        one = statistics.median(o for _, o in rs)
        speed = "baseline" if decode is stdlib_decode else f"{base / wall:.1f}x"
        print(f"| {name} | {wall:.3f} | {one * 1000:.1f} | {speed} |")


if __name__ == "__main__":
    main()
