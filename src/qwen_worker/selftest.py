"""Acceptance check of a built image on its machine, and the warm-up before the first job.

`python src/handler.py --self-test` loads the baked models the way the worker does,
transcribes a generated speech clip (espeak-ng, installed in the image) cut into two chunks,
checks what every transcript must satisfy, prints load time, RTF and GPU memory, and exits
non-zero on any failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from qwen_worker.base.config import Settings
from qwen_worker.base.types import SAMPLE_RATE, Options, Transcript
from qwen_worker.engines.base import Engine
from qwen_worker.pipeline.decode import decode
from qwen_worker.pipeline.transcribe import transcribe_samples

SPEECH = ("Welcome back to the show. Today we talk about speech recognition on graphics cards, "
          "and how a long podcast becomes a transcript with word timestamps. ")
SELF_TEST_SPEECH_REPEATS = 4  # about 40 s of espeak-ng speech: two chunks of at most 30 s
SELF_TEST_CHUNK_SECONDS = 30.0


def transcript_problems(t: Transcript, duration: float) -> list[str]:
    """What must hold for every transcript; an empty list when all of it does."""
    problems = []
    if abs(t.duration - duration) > 0.05:
        problems.append(f"duration {t.duration} s, the audio is {duration:.3f} s")
    times = [x for w in t.words for x in (w.start, w.end)]
    if any(b < a for a, b in zip(times, times[1:])):
        problems.append("word times go backwards")
    if times and (times[0] < 0 or times[-1] > t.duration + 1e-6):
        problems.append("word times outside the audio")
    if any(s.end < s.start for s in t.segments):
        problems.append("a segment ends before it starts")
    squash = re.compile(r"\s+")
    if squash.sub("", "".join(s.text for s in t.segments)) != squash.sub("", t.text):
        problems.append("the segments do not spell out the text")
    for c in t.chunks:
        if c.text and squash.sub("", c.text) not in squash.sub("", t.text):
            problems.append(f"chunk {c.index}'s text is missing from the transcript")
    return problems


def warm_up(engine: Engine) -> None:
    """One short transcription (the first call compiles kernels and fills caches); raises on failure."""
    rng = np.random.default_rng(0)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    clip = (0.1 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 0.01, t.size)).astype(np.float32)
    transcript = transcribe_samples(clip, Options(), engine)
    problems = transcript_problems(transcript, clip.size / SAMPLE_RATE)
    if problems:
        raise RuntimeError("warm-up transcript is inconsistent: " + "; ".join(problems))


def _speech_clip(work: Path) -> tuple[np.ndarray, str]:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        rng = np.random.default_rng(0)
        return rng.normal(0, 0.05, 40 * SAMPLE_RATE).astype(np.float32), "noise (no espeak-ng)"
    wav = work / "speech.wav"
    subprocess.run([espeak, "-w", str(wav), SPEECH * SELF_TEST_SPEECH_REPEATS], check=True,
                   capture_output=True, timeout=120)
    return decode(wav, max_seconds=600.0), "espeak-ng speech"


def _gpu_memory(device: str) -> str:
    if device != "cuda":
        return "no GPU"
    import torch

    # Through NVML: vLLM's engines run in processes of their own, and asking torch here would
    # create a CUDA context (~0.5 GiB) in this process, which otherwise never uses the GPU.
    try:
        try:
            import pynvml  # nvidia-ml-py, a vLLM requirement
        except ImportError:
            from vllm.third_party import pynvml  # vLLM's own copy
        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        used, total = info.used, info.total
    except ImportError:
        free, total = torch.cuda.mem_get_info()
        used = total - free
    figure = f"device in use {used / 2**30:.2f} of {total / 2**30:.1f} GiB"
    if torch.cuda.is_initialized():  # the transformers backend: its models are in here
        figure = f"this process peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, " + figure
    return figure


def run_self_test(settings: Settings, engine: Engine) -> int:
    """Print the start-up's phases, the checks and figures; 0 when every check passed."""
    from qwen_worker.base.clock import CLOCK

    load_seconds = CLOCK.now()
    print(f"self-test: backend {engine.backend}, ASR {engine.asr_model}, "
          f"aligner {engine.aligner_model}, device {settings.device}", flush=True)
    for line in CLOCK.lines():
        print(line)
    Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as work:
        clip, kind = _speech_clip(Path(work))
    duration = clip.size / SAMPLE_RATE
    t0 = time.perf_counter()
    try:
        transcript = transcribe_samples(
            clip, Options(chunk_seconds=SELF_TEST_CHUNK_SECONDS), engine)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        print(f"FAIL transcription raised {type(exc).__name__}: {exc}")
        return 1
    took = time.perf_counter() - t0
    problems = transcript_problems(transcript, duration)
    if len(transcript.chunks) < 2:
        problems.append(f"expected 2 chunks, got {len(transcript.chunks)}")
    if kind == "espeak-ng speech":
        if not transcript.text:
            problems.append("no text for a clip of speech")
        elif transcript.language in engine.aligner_languages and not transcript.words:
            problems.append(f"no word timestamps for {transcript.language}")
    print(f"ready {load_seconds:.1f} s after process start | clip {duration:.1f} s of {kind}, "
          f"{len(transcript.chunks)} chunks | transcribe {took:.2f} s | RTF {took / duration:.4f} "
          f"| GPU memory: {_gpu_memory(settings.device)}")
    print(f"language {transcript.language or '-'}; {len(transcript.words)} words; "
          f"{len(transcript.segments)} segments; text: {transcript.text[:120]!r}")
    for warning in transcript.warnings:
        print(f"warning: {warning}")
    for problem in problems:
        print(f"FAIL {problem}")
    print("self-test " + ("FAILED" if problems else "passed"), flush=True)
    return 1 if problems else 0
