"""bench/gpu phases: each a function from what it runs on (`Rig`) and what it sends
(`Workload`) to its row; `run_phases`, `run_variant` and `run_transformers` run them in order.

Every engine here is a twin of the loaded one with the benchmark's fixed-length output
(`VllmEngine.with_bench_options`): the loaded engine itself, as the worker runs it, serves the
start-up phase alone. The worker's code is imported inside the functions: under `--smoke` the
stand-in vllm must be on the path first.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np

from gpu_instruments import (
    CoreProfile,
    DeviceMemory,
    Results,
    StackSampler,
    Usage,
    cpu_model,
    memory_row,
    percentile,
)
from gpu_models import (
    fixed_length,
    fixed_output,
    noise,
    random_words,
    wav_bytes,
    word_token_ids,
)

PHASES = ("hour", "engines", "frontend", "one-call", "same-engine", "jobs", "steady", "no-repair",
          "during")
COLLAPSED = "had collapsed onto one instant"  # the worker's warning for each repaired run
STAGES = ("download", "decode", "asr", "align")
CLIP_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which phases run, and how (the command line's choices)."""

    chosen: frozenset[str]  # of PHASES
    levels: list[int]  # job concurrencies
    steady: int  # rounds of the clips at the top concurrency (1: no steady phase)
    alone: int | None  # jobs at concurrency 1 (None: all; 16 in a variant)
    during_at: list[float]  # seconds after the hour's start to send each short job
    card_gib: float

    @property
    def top(self) -> int:
        return max(self.levels)


@dataclasses.dataclass(frozen=True)
class Workload:
    """What the phases send: a long file (served over loopback) and its chunks, each with 700
    words to align, and the 30 s clips, also as jobs (audio_base64)."""

    hour_s: float
    hour_url: str
    chunks: list[np.ndarray]
    texts: list[str]
    clips: list[np.ndarray]
    jobs: list[dict]


@dataclasses.dataclass(frozen=True)
class Rig:
    """What the phases run on and measure with."""

    loaded: Any  # the engine load_engine gave: close this one
    engine: Any  # its twin with the benchmark's fixed-length output
    output: Any  # that twin's BenchOptions
    worker: Any  # a Worker over the twin
    settings: Any
    memory: DeviceMemory
    profile: Path | None  # py-spy's raw stacks of the one-call and top-concurrency phases
    profile_gil: Path | None  # ... of this process's GIL holders in the steady phase
    where: bool  # sample the threads' stacks in job phases
    alone: list[float]  # job seconds at concurrency 1: what the p50/p95 ratios divide by


def make_workload(host: Any, hour_s: float, clip_count: int) -> Workload:
    from qwen_worker.pipeline import chunking

    hour = noise(hour_s, 1)
    hour_url = host.file("/hour.wav", wav_bytes(hour), "audio/wav")
    chunks = [c.samples for c in chunking.split(hour, chunking.DEFAULT_CHUNK_SECONDS)]
    clips = [noise(CLIP_SECONDS, 100 + i) for i in range(clip_count)]
    jobs = [{"id": f"clip-{i}", "input": {"audio_base64": base64.b64encode(
        wav_bytes(c)).decode(), "language": "English"}} for i, c in enumerate(clips)]
    return Workload(hour_s, hour_url, chunks, [random_words(700, i) for i in range(len(chunks))],
                    clips, jobs)


def make_rig(loaded: Any, settings: Any, memory: DeviceMemory, profile: Path | None,
             profile_gil: Path | None, where: bool) -> Rig:
    """The benchmark's engine (random words of a fixed length: `fixed_output`) and a worker
    over it."""
    from qwen_worker.engines.vllm.engine import BenchOptions
    from qwen_worker.jobs.worker import Worker

    output = BenchOptions(sampling_overrides=fixed_output(word_token_ids(loaded.tokenize)))
    engine = loaded.with_bench_options(output)
    return Rig(loaded, engine, output, Worker(settings, engine), settings, memory, profile,
               profile_gil, where, [])


# -- job helpers ------------------------------------------------------------------------------

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
        raise RuntimeError(f"{phase}: {len(failed)} jobs failed, "
                           f"first: {json.dumps(failed[0])[:400]}")


# -- phases -----------------------------------------------------------------------------------

def startup(results: Results, settings: Any, memory: DeviceMemory) -> Any:
    """load_engine to ready, the fitness check's warm-up clip and the self-test, as the worker
    starts; the loaded engine."""
    from qwen_worker.base.clock import CLOCK
    from qwen_worker.engines.load import load_engine
    from qwen_worker.selftest import run_self_test, warm_up

    t0 = time.perf_counter()
    engine = load_engine(settings)
    ready_s = time.perf_counter() - t0
    with CLOCK.phase("fitness check"):
        warm_up(engine)  # what the fitness check runs
    self_test_rc = run_self_test(settings, engine)
    results.record("startup", {
        "ready_s": round(ready_s, 1),
        # the worker's own phase lines (qwen_worker.startup), seconds each
        "phases": {name: round(end - start, 1) for name, (start, end, _) in CLOCK.phases.items()},
        "phase_details": {name: detail for name, (_, _, detail) in CLOCK.phases.items()},
        "self_test": "passed" if self_test_rc == 0 else "FAILED",
        "device_gib": round(memory.used_gib(), 2),
        **memory_row(memory, engine),
        "cuda_processes": memory.processes(),
        "frontend_processes": settings.vllm_frontend_processes,
        # the engine loops and the job path are CPU work: hosts differ
        "cpu": cpu_model(), "cores": os.cpu_count()})
    return engine


def hour_job(rig: Rig, load: Workload) -> dict:
    rig.memory.reset()
    wall, _, (out,) = run_jobs(rig.worker, [{"id": "hour", "input": {
        "audio_url": load.hour_url, "language": "English"}}], 1)
    check_outputs([out], "hour")
    return {"wall_s": round(wall, 2), **out["timings"], "words": len(out.get("words", [])),
            **collapsed_spans([out]),
            "warnings": out.get("warnings", [])[:3], **memory_row(rig.memory, rig.engine)}


def engine_calls(which: Any, name: str, rig: Rig, load: Workload) -> dict:
    """The hour's chunks through one engine's transcribe and align (700 words a chunk)."""
    rig.memory.reset()
    with Usage(which, rig.memory) as asr_usage:
        t0 = time.perf_counter()
        which.transcribe(load.chunks, ["English"] * len(load.chunks), [""] * len(load.chunks))
        asr_s = time.perf_counter() - t0
    with Usage(which, rig.memory) as align_usage:
        t0 = time.perf_counter()
        which.align(load.chunks, load.texts, ["English"] * len(load.chunks))
        align_s = time.perf_counter() - t0
    return {"chunks": len(load.chunks), f"{name}_asr_s": round(asr_s, 2),
            f"{name}_align_s": round(align_s, 2), "audio_h": round(load.hour_s / 3600, 3),
            "asr_usage": asr_usage.row, "align_usage": align_usage.row}


def front_end(rig: Rig, load: Workload) -> dict:
    """vLLM's input processing alone (the front-end processes): the clips' ASR inputs, then
    the hour's chunks, each set sent at once."""
    from qwen_worker.engines.base import padded
    from qwen_worker.engines.prompts import asr_prompt

    front = rig.engine._front
    prompt, n = asr_prompt("", "English"), front.processes
    row: dict[str, Any] = {"processes": n}
    for name, audio in (("clips", load.clips), ("hour_chunks", load.chunks)):
        t0 = time.perf_counter()
        futures = [front.prepare("asr", f"fe-{name}-{i}", prompt, padded(a))
                   for i, a in enumerate(audio)]
        for future in futures:
            future.result()
        wall = time.perf_counter() - t0
        row[f"{name}_s"] = round(wall, 3)
        row[f"{name}_ms_each"] = round(1000 * wall * min(n, len(audio)) / len(audio), 1)
    return row


def one_call(rig: Rig, load: Workload) -> dict:
    """The clips as one transcribe and one align call: our engine class without jobs."""
    engine, clips = rig.engine, load.clips
    texts = [random_words(100, i) for i in range(len(clips))]
    with CoreProfile(engine, rig.profile, "one-call-asr"), \
            Usage(engine, rig.memory) as asr_usage:
        t0 = time.perf_counter()
        engine.transcribe(clips, ["English"] * len(clips), [""] * len(clips))
        asr_s = time.perf_counter() - t0
    with CoreProfile(engine, rig.profile, "one-call-align"), \
            Usage(engine, rig.memory) as align_usage:
        t0 = time.perf_counter()
        engine.align(clips, texts, ["English"] * len(clips))
        align_s = time.perf_counter() - t0
    audio_h = len(clips) * CLIP_SECONDS / 3600
    return {"clips": len(clips), "asr_s": round(asr_s, 3), "align_s": round(align_s, 3),
            "gpu_s_per_audio_h": round((asr_s + align_s) / audio_h, 2),
            "asr_usage": asr_usage.row, "align_usage": align_usage.row}


def same_engine(rig: Rig, load: Workload) -> dict:
    """A/B on one engine, each side twice, interleaved: the clips' alignment asking for
    all 5000 classes against only those within the audio (each after the clips' ASR, whose
    features it reuses); their ASR decoding greedily (as the worker does) against the
    benchmark's fixed-length sampling (temperature 1 among the word tokens)."""
    clips = load.clips
    english, blank = ["English"] * len(clips), [""] * len(clips)
    texts = [random_words(100, i) for i in range(len(clips))]
    audio_h = len(clips) * CLIP_SECONDS / 3600
    took: dict[str, list[float]] = {}

    def timed(name: str, call: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        call()
        took.setdefault(name, []).append(time.perf_counter() - t0)

    # Twins of the one engine: the same engine cores, only the requests' params differ.
    greedy = rig.engine.with_bench_options(
        dataclasses.replace(rig.output, sampling_overrides=fixed_length))
    for _ in range(2):
        for within in (False, True):
            side = rig.engine.with_bench_options(
                dataclasses.replace(rig.output, align_within_audio=within))
            timed("asr_sampled", lambda: side.transcribe(clips, english, blank))
            timed(f"align_{'within' if within else 'all'}_classes",
                  lambda: side.align(clips, texts, english))
        timed("asr_greedy", lambda: greedy.transcribe(clips, english, blank))
    return {f"{k}_s": round(min(v), 3) for k, v in took.items()} | {
        f"{k}_gpu_s_per_audio_h": round(min(v) / audio_h, 2) for k, v in took.items()}


def job_batch(rig: Rig, load: Workload, conc: int, top: int, rounds: int = 1,
              count: int | None = None) -> dict:
    """The clips as jobs, `conc` at a time; `rounds` > 1 sends them that many times over,
    so that `conc` jobs are in flight throughout (a busy worker) rather than one wave."""
    batch = [{**job, "id": f"{job['id']}-r{r}"} for r in range(rounds)
             for job in load.jobs[:count]]
    rig.memory.reset()
    where = StackSampler() if rig.where else contextlib.nullcontext()
    profile = (CoreProfile(rig.engine, rig.profile, f"jobs-{conc}") if conc == top and rounds == 1
               else CoreProfile(rig.engine, rig.profile_gil, f"steady-{conc}", gil_only=True)
               if rounds > 1 else contextlib.nullcontext())
    with profile, Usage(rig.engine, rig.memory) as usage, where:
        wall, took, outs = run_jobs(rig.worker, batch, conc)
    check_outputs(outs, f"jobs-{conc}")
    alone = rig.alone
    if not alone:
        alone.extend(took)
    audio_h = len(batch) * CLIP_SECONDS / 3600

    def mean(stage: str) -> float:
        return round(float(np.mean([o["timings"][stage] for o in outs])), 3)

    return {"jobs": len(batch), "wall_s": round(wall, 2),
            "gpu_s_per_audio_h": round(wall / audio_h, 2),
            "p50_s": round(percentile(took, 0.5), 3), "p95_s": round(percentile(took, 0.95), 3),
            "p50_vs_alone": round(percentile(took, 0.5) / percentile(alone, 0.5), 2),
            "p95_vs_alone": round(percentile(took, 0.95) / percentile(alone, 0.5), 2),
            "asr_s_mean": mean("asr"), "align_s_mean": mean("align"),
            "decode_s_mean": mean("decode"),
            # the rest of a job: validation, merge, formats (and waiting for the GIL)
            "rest_s_mean": round(float(np.mean([o["timings"]["total"] - sum(
                o["timings"][k] for k in STAGES) for o in outs])), 3),
            **collapsed_spans(outs),
            "timeline": timeline(outs) if conc > 1 else {},
            **memory_row(rig.memory, rig.engine), **usage.row,
            "where": where.top() if rig.where else []}


def during(rig: Rig, load: Workload, during_at: list[float]) -> dict:
    """Short jobs sent while a 1 h job runs, one after another, each at its offset
    (`--during-at`) after the hour started or as soon as the one before ended: where a
    short job lands in the hour (its prefill, its decoding, its alignment) matters."""
    engine, worker = rig.engine, rig.worker
    rig.memory.reset()
    shorts: list[tuple[float, float, dict]] = []
    pauses = engine.asr_pause.pauses if hasattr(engine, "asr_pause") else 0
    with ThreadPoolExecutor(2) as pool, Usage(engine, rig.memory) as usage:
        t_long = time.perf_counter()
        long_future = pool.submit(worker.handle, {"id": "hour-2", "input": {
            "audio_url": load.hour_url, "language": "English"}})
        for n, offset in enumerate(during_at):
            time.sleep(max(0.0, t_long + offset - time.perf_counter()))
            sent = time.perf_counter() - t_long
            if long_future.done():
                break  # the hour ended: the rest would run alone
            out = pool.submit(worker.handle, {**load.jobs[n % len(load.jobs)],
                                              "id": f"short-{n}"}).result()
            shorts.append((sent, time.perf_counter() - t_long - sent, out))
        long_out = long_future.result()
        long_s = time.perf_counter() - t_long
    check_outputs([long_out] + [out for _, _, out in shorts], "during")
    if not shorts:
        raise RuntimeError("the hour ended before the first short job was due")
    base = percentile(rig.alone, 0.5) if rig.alone else float("nan")
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
            **memory_row(rig.memory, engine), **usage.row}


def agreement(vllm_engine: Any, tf_engine: Any, chunk: np.ndarray) -> dict:
    """Same weights and inputs on both backends: aligner probabilities and ASR first-token
    log-probabilities (argmax alone means little: random weights collapse it)."""
    import torch
    from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor
    from vllm import PoolingParams, SamplingParams

    from qwen_worker.engines.prompts import asr_prompt

    _, prompt = Qwen3ForceAlignProcessor().encode_timestamp(random_words(60, 7), "English")
    pooled = vllm_engine.probe("aligner", prompt, chunk, PoolingParams(
        task="token_classify"))  # all classes, as the transformers side
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
    out = vllm_engine.probe("asr", text, chunk, SamplingParams(
        temperature=0.0, max_tokens=1, logprobs=20, detokenize=False))
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


# -- phase sequences --------------------------------------------------------------------------

def no_repair(results: Results, rig: Rig, load: Workload, plan: Plan, prefix: str) -> None:
    """The same job path with the collapse repair turned off (the worker's
    `repair_collapsed_times`): what the job rows cost where the aligner's times do not
    collapse, as with real weights."""
    if "no-repair" not in plan.chosen:
        return
    from qwen_worker.jobs.worker import Worker

    bare = dataclasses.replace(rig, worker=Worker(rig.settings, rig.engine,
                                                  repair_collapsed_times=False))
    top = plan.top
    if "jobs" in plan.chosen:
        results.phase(f"{prefix}no-repair/jobs-{top}", lambda: job_batch(bare, load, top, top))
    if "steady" in plan.chosen and plan.steady > 1:
        results.phase(f"{prefix}no-repair/steady-{top}",
                      lambda: job_batch(bare, load, top, top, plan.steady))
    if "during" in plan.chosen:  # against a job alone without the repair too
        unrepaired = dataclasses.replace(bare, alone=[])
        results.phase(f"{prefix}no-repair/jobs-1",
                      lambda: job_batch(unrepaired, load, 1, top, count=plan.alone or 16))
        results.phase(f"{prefix}no-repair/during",
                      lambda: during(unrepaired, load, plan.during_at))


def run_phases(results: Results, rig: Rig, load: Workload, plan: Plan) -> None:
    """The baseline: every chosen phase on the engine as started."""
    def phase_if(name: str, run: Callable[[], dict], key: str | None = None) -> None:
        if (key or name) in plan.chosen:
            results.phase(name, run)

    top = plan.top
    phase_if("hour", lambda: hour_job(rig, load))
    phase_if("engines", lambda: engine_calls(rig.engine, "vllm", rig, load))
    if rig.engine.backend == "vllm":  # the front end and the A/B options are vLLM's
        phase_if("frontend", lambda: front_end(rig, load))
    phase_if("one-call", lambda: one_call(rig, load))
    if rig.engine.backend == "vllm":
        phase_if("same-engine", lambda: same_engine(rig, load))
    for conc in plan.levels:
        phase_if(f"jobs-{conc}", lambda conc=conc: job_batch(
            rig, load, conc, top, count=plan.alone if conc == 1 else None), key="jobs")
    if plan.steady > 1:
        phase_if(f"steady-{top}", lambda: job_batch(rig, load, top, top, plan.steady),
                 key="steady")
    no_repair(results, rig, load, plan, "")
    phase_if("during", lambda: during(rig, load, plan.during_at))


def run_variant(results: Results, rig: Rig, load: Workload, plan: Plan, spec: str,
                env: dict, idle_gib: float, profile_root: Path | None,
                gil_root: Path | None) -> Rig:
    """`--variant NAME:KEY=VALUE,...`: the engines restarted with these settings, the job and
    engine phases again. The rig the next phases run on: the variant's, or (it failed to
    start) the one given, its engine closed."""
    from qwen_worker.base.config import load_settings
    from qwen_worker.engines.load import load_engine

    name, _, pairs = spec.partition(":")
    overrides = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    memory = rig.memory
    for key in overrides:  # given as shares of a 24 GB card, as the defaults are
        if key.endswith("GPU_MEMORY_UTILIZATION"):
            overrides[key] = f"{float(overrides[key]) * plan.card_gib / memory.total_gib:.4f}"
    # Also in this environment, until the variant ends: the engine processes started next
    # inherit it (variables the worker's settings do not hold; their torch threads are
    # VLLM_ENGINE_THREADS, which overrides OMP_NUM_THREADS there unless 0).
    with mock.patch.dict(os.environ, overrides):
        rig.loaded.close()
        released = time.perf_counter()
        while memory.used_gib() > idle_gib + 1.0 and time.perf_counter() - released < 60:
            time.sleep(0.5)
        t0 = time.perf_counter()
        try:
            settings = load_settings({**env, **overrides})
            loaded = load_engine(settings)
        except Exception as exc:  # noqa: BLE001 - e.g. a share too small: say so, go on
            results.record(f"{name}/startup", {"error": f"{type(exc).__name__}: {exc}"[:600],
                                               "settings": overrides})
            return rig  # its engine is closed (closing it again is harmless)
        results.record(f"{name}/startup", {"ready_s": round(time.perf_counter() - t0, 1),
                                           "settings": overrides,
                                           "device_gib": round(memory.used_gib(), 2),
                                           **memory_row(memory, loaded)})
        rig = make_rig(loaded, settings, memory, profile_root / name if profile_root else None,
                       gil_root / name if gil_root else None, rig.where)

        def phase_if(phase: str, run: Callable[[], dict], key: str) -> None:
            if key in plan.chosen:
                results.phase(f"{name}/{phase}", run)

        top = plan.top
        # The job phases first: a run cut by the device's time limit keeps those.
        phase_if("jobs-1", lambda: job_batch(rig, load, 1, top, count=plan.alone or 16), "jobs")
        phase_if(f"jobs-{top}", lambda: job_batch(rig, load, top, top), "jobs")
        phase_if("during", lambda: during(rig, load, plan.during_at), "during")
        if plan.steady > 1:
            phase_if(f"steady-{top}", lambda: job_batch(rig, load, top, top, plan.steady),
                     "steady")
        no_repair(results, rig, load, plan, f"{name}/")
        phase_if("one-call", lambda: one_call(rig, load), "one-call")
        phase_if("engines", lambda: engine_calls(rig.engine, "vllm", rig, load), "engines")
    return rig


def run_transformers(results: Results, rig: Rig, load: Workload, env: dict,
                     smoke: bool) -> None:
    """The hour's chunks through the transformers backend (same weights), and how its
    probabilities agree with vLLM's."""
    from qwen_worker.base.config import load_settings
    from qwen_worker.engines.load import load_engine

    tf = load_engine(load_settings({**env, "ASR_BACKEND": "transformers", "MAX_NEW_TOKENS": "900",
                                    "ASR_DEVICE": "cpu" if smoke else "cuda"}))
    results.phase("transformers", lambda: engine_calls(tf, "transformers", rig, load))
    if not smoke:  # the stand-in computes no probabilities
        results.phase("agreement", lambda: agreement(rig.engine, tf, noise(CLIP_SECONDS, 5)))
