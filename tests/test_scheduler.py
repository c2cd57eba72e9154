"""The scheduler in-process: shared calls, routing and order, isolation, fatal errors and
dropped requests, with a scripted engine whose outputs name their inputs (routing is then
checkable), and once with the real tiny-model engine under concurrent worker jobs."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import media
from models import ENGLISH, settings_for
from qwen_worker.base.types import AlignedToken, AsrOutput
from qwen_worker.engines.load import load_engine
from qwen_worker.base.lifecycle import LIFETIME, JobCancelled, JobScope
from qwen_worker.engines.scheduler import BatchScheduler
from qwen_worker.jobs.worker import Worker

SR = 16000


def clip(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


class NamingEngine:
    """Each output names its chunk (length in seconds and context), so a misrouted result shows."""

    backend = "scripted"
    asr_model = aligner_model = "scripted"
    aligner_languages = frozenset({"English"})

    def __init__(self, poison: float | None = None, fatal: bool = False, delay: float = 0.0):
        self.poison = poison  # a chunk of this many seconds breaks any call it is in
        self.fatal = fatal
        self.delay = delay
        self.calls: list[list[str]] = []

    def transcribe(self, chunks, languages, contexts):
        names = [f"{c.size / SR:g}s:{ctx}" for c, ctx in zip(chunks, contexts)]
        self.calls.append(names)
        time.sleep(self.delay)
        if self.poison is not None and any(c.size == int(self.poison * SR) for c in chunks):
            raise RuntimeError("CUDA error: an illegal memory access" if self.fatal
                               else "shape mismatch in attention")
        return [AsrOutput("English", n, 3, False, False) for n in names]

    def align(self, chunks, texts, languages):
        self.calls.append([f"align:{t}" for t in texts])
        return [[AlignedToken(t, 0.0, c.size / SR)] for c, t in zip(chunks, texts)]

    def fit_context(self, context):
        return context, []


def _wait_until(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"not after {timeout} s"
        time.sleep(0.01)


def _submit_together(scheduler: BatchScheduler, requests: list[tuple[list[float], str]]):
    """Each request from its own thread (a job), all at once; returns results or exceptions."""
    barrier = threading.Barrier(len(requests))

    def job(seconds: list[float], context: str):
        engine = scheduler.engine_for_job()
        barrier.wait()
        try:
            return engine.transcribe([clip(s) for s in seconds], ["English"] * len(seconds),
                                     [context] * len(seconds))
        except Exception as exc:  # noqa: BLE001 - returned for the assertions
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: job(*r), requests))


def test_concurrent_jobs_share_one_call_and_each_gets_its_own_results_in_order():
    engine = NamingEngine()
    scheduler = BatchScheduler(engine, gather_seconds=0.3, max_chunks=64)
    requests = [([1, 2, 3], "a"), ([4], "b"), ([5, 6], "c"), ([7, 8, 9, 10], "d")]
    results = _submit_together(scheduler, requests)
    assert scheduler.calls["asr"] == 1 and len(engine.calls) == 1
    assert sorted(engine.calls[0]) == sorted(f"{s}s:{ctx}" for ss, ctx in requests for s in ss)
    for (seconds, ctx), result in zip(requests, results):
        assert [o.text for o in result] == [f"{s}s:{ctx}" for s in seconds]


def test_calls_hold_at_most_max_chunks_but_never_split_a_job():
    engine = NamingEngine()
    scheduler = BatchScheduler(engine, gather_seconds=0.3, max_chunks=4)
    results = _submit_together(scheduler, [([1, 2, 3], "a"), ([4, 5], "b"), ([11] * 9, "long")])
    assert all(not isinstance(r, Exception) for r in results)
    assert sorted(len(c) for c in engine.calls) == [2, 3, 9]  # the 9-chunk file went whole


def test_a_failing_job_is_found_and_only_it_fails():
    engine = NamingEngine(poison=7)
    scheduler = BatchScheduler(engine, gather_seconds=0.3, max_chunks=64)
    requests = [([1, 2], "a"), ([7], "bad"), ([3], "c"), ([4, 5], "d")]
    results = _submit_together(scheduler, requests)
    assert isinstance(results[1], RuntimeError) and "shape mismatch" in str(results[1])
    for i in (0, 2, 3):
        seconds, ctx = requests[i]
        assert [o.text for o in results[i]] == [f"{s}s:{ctx}" for s in seconds]
    assert len(engine.calls[0]) == 6  # the shared call, then smaller ones around the bad job
    assert sum(1 for call in engine.calls if "7s:bad" in call) == 3  # 4 jobs -> 2 -> 1


def test_a_fatal_gpu_error_fails_every_job_in_flight_and_later_ones():
    engine = NamingEngine(poison=7, fatal=True)
    scheduler = BatchScheduler(engine, gather_seconds=0.3, max_chunks=64)
    results = _submit_together(scheduler, [([1], "a"), ([7], "bad"), ([3], "c")])
    assert all(isinstance(r, RuntimeError) and "CUDA error" in str(r) for r in results)
    assert len(engine.calls) == 1  # no hunting for a culprit on a broken GPU
    with pytest.raises(RuntimeError, match="fatal GPU error") as later:
        scheduler.engine_for_job().transcribe([clip(1)], ["English"], [""])
    assert "CUDA error" in str(later.value.__cause__)


def test_a_stopped_jobs_queued_request_never_reaches_the_engine():
    engine = NamingEngine(delay=1.0)
    scheduler = BatchScheduler(engine, gather_seconds=0.0, max_chunks=1)
    busy = threading.Thread(target=lambda: scheduler.engine_for_job().transcribe(
        [clip(1)], ["English"], ["busy"]))
    busy.start()
    _wait_until(lambda: engine.calls)  # the engine is now in the 1 s call
    scope = JobScope("stopped")
    outcome = {}

    def job():
        with LIFETIME.job(scope):
            try:
                scheduler.engine_for_job().transcribe([clip(2)], ["English"], ["stopped"])
            except JobCancelled as exc:
                outcome["raised"] = exc

    t = threading.Thread(target=job)
    t.start()
    _wait_until(lambda: scheduler._queue)  # its request waits for the engine
    scope.stop(JobCancelled)
    t.join(5)
    busy.join(5)
    # A request queued after it is served, and so is everything queued before.
    scheduler.engine_for_job().transcribe([clip(3)], ["English"], ["after"])
    assert isinstance(outcome.get("raised"), JobCancelled)
    assert engine.calls == [["1s:busy"], ["3s:after"]]


def test_align_requests_are_batched_apart_from_asr():
    engine = NamingEngine()
    scheduler = BatchScheduler(engine, gather_seconds=0.3, max_chunks=64)
    barrier = threading.Barrier(3)

    def asr():
        barrier.wait()
        return scheduler.engine_for_job().transcribe([clip(1)], ["English"], ["x"])

    def align(text):
        barrier.wait()
        return scheduler.engine_for_job().align([clip(2)], [text], ["English"])

    with ThreadPoolExecutor(3) as pool:
        a = pool.submit(asr)
        b, c = pool.submit(align, "p"), pool.submit(align, "q")
        assert a.result()[0].text == "1s:x"
        assert b.result()[0][0].text == "p" and c.result()[0][0].text == "q"
    assert scheduler.calls == {"asr": 1, "align": 1}


def test_concurrent_worker_jobs_share_engine_calls_with_the_real_engine(model_dirs, tmp_path):
    settings = settings_for(model_dirs["english"], model_dirs["aligner"],
                            WORK_DIR=str(tmp_path / "jobs"), SCHEDULER_GATHER_MS="400")
    worker = Worker(settings, load_engine(settings))
    jobs = []
    for i, seconds in enumerate([4.0, 6.0, 8.0, 5.0]):
        wav = media.make_audio(tmp_path / f"{i}.wav", seconds, rate=16000).read_bytes()
        jobs.append({"id": f"j{i}", "input": {"audio_base64": base64.b64encode(wav).decode()}})
    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(worker.handle, jobs))
    for out, seconds in zip(outs, [4.0, 6.0, 8.0, 5.0]):
        assert out["text"] == ENGLISH and out["duration"] == pytest.approx(seconds, abs=0.01)
    assert worker.scheduler.calls["asr"] < len(jobs)
    assert worker.scheduler.calls["align"] < len(jobs)
    assert list((tmp_path / "jobs").iterdir()) == []


def test_transformers_generate_calls_are_bounded_by_padded_audio(model_dirs, monkeypatch):
    settings = settings_for(model_dirs["english"], model_dirs["aligner"],
                            ASR_BATCH_SECONDS="60", ASR_BATCH_SIZE="3")
    engine = load_engine(settings)
    seen: list[list[float]] = []
    real = engine._model._infer_asr

    def infer(contexts, wavs, languages):
        seen.append([w.size / SR for w in wavs])
        return real(contexts, wavs, languages)

    monkeypatch.setattr(engine._model, "_infer_asr", infer)
    lengths = [30, 10, 10, 10, 20]
    outs = engine.transcribe([clip(s) for s in lengths], ["English"] * 5, [""] * 5)
    # Longest first; 2 x 30 s fits 60 s of padded audio, 3 x 30 s does not; at most 3 a call.
    assert seen == [[30, 20], [10, 10, 10]]
    assert [o.text for o in outs] == [ENGLISH] * 5  # back in the callers' order


def test_a_stopped_job_stops_waiting_for_a_call_already_running():
    engine = NamingEngine(delay=3.0)
    scheduler = BatchScheduler(engine, gather_seconds=0.0, max_chunks=8)
    scope = JobScope("long call")
    threading.Timer(0.5, scope.stop, args=(JobCancelled,)).start()
    started = time.monotonic()
    with pytest.raises(JobCancelled), LIFETIME.job(scope):
        scheduler.engine_for_job().transcribe([clip(1)], ["English"], [""])
    assert time.monotonic() - started < 1.5  # not the 3 s call
    assert engine.calls == [["1s:"]]  # the call ran; its result is simply dropped


def test_closing_during_the_gather_wait_ends_the_engine_thread_cleanly(monkeypatch):
    crashes = []
    monkeypatch.setattr(threading, "excepthook", crashes.append)
    scheduler = BatchScheduler(NamingEngine(), gather_seconds=1.0, max_chunks=8)
    waiter = ThreadPoolExecutor(1).submit(
        scheduler.engine_for_job().transcribe, [clip(1)], ["English"], [""])
    _wait_until(lambda: scheduler._queue)  # in the gather wait
    scheduler.close()
    with pytest.raises(BaseException, match="shutting down"):
        waiter.result(5)
    scheduler._thread.join(5)  # past the gather wait's end, where it crashed
    assert not scheduler._thread.is_alive() and crashes == []  # no IndexError on an empty queue
