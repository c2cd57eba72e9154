"""Repairs: looping or truncated chunks are transcribed again as two halves; collapsed word
timestamps are aligned again on their own audio, else spread evenly. End to end through the
worker with thin scripted wrappers over the real tiny-model engine."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

import media
from models import ENGLISH, settings_for
from qwen_worker.pipeline import repair
from qwen_worker.base.types import SAMPLE_RATE
from qwen_worker.base.types import AlignedToken, AsrOutput
from qwen_worker.jobs.worker import Worker

T = AlignedToken


def test_a_run_of_words_on_one_instant_is_found_with_its_window():
    tokens = [T("a", 0.0, 0.2), T("b", 0.3, 0.5), T("c", 0.9, 0.9), T("d", 0.9, 0.9),
              T("e", 0.9, 0.9), T("f", 0.9, 0.9)]
    (span,) = repair.find_collapsed(tokens, chunk_seconds=4.0)
    assert (span.first, span.last, span.window_start, span.window_end) == (2, 5, 0.5, 4.0)


def test_zero_length_runs_count_and_two_words_in_one_bin_do_not():
    two = [T("a", 0.0, 0.08), T("b", 0.0, 0.08), T("c", 0.2, 0.3)]
    assert repair.find_collapsed(two, 1.0) == []
    zero = [T("a", 0.0, 0.1), T("b", 0.2, 0.2), T("c", 0.3, 0.3), T("d", 0.4, 0.4),
            T("e", 0.9, 1.0)]
    (span,) = repair.find_collapsed(zero, 2.0)
    assert (span.first, span.last, span.window_start, span.window_end) == (1, 3, 0.1, 0.9)


def test_repair_window_takes_a_clean_realignment_else_spreads_evenly():
    span = repair.CollapsedSpan(1, 3, 2.0, 5.0)
    words = [T(w, 2.5, 2.5) for w in ("x", "y", "z")]
    good = [T("x", 0.1, 0.5), T("y", 0.6, 1.0), T("z", 1.2, 2.0)]
    fixed, ok = repair.repair_window(span, words, good)
    assert ok and [(t.start, t.end) for t in fixed] == [(2.1, 2.5), (2.6, 3.0), (3.2, 4.0)]
    for bad in (None, good[:2], [T(w, 0.4, 0.4) for w in ("x", "y", "z")]):
        fixed, ok = repair.repair_window(span, words, bad)
        assert not ok and [(t.start, t.end) for t in fixed] == [(2.0, 3.0), (3.0, 4.0), (4.0, 5.0)]


class Scripted:
    """The real tiny-model engine, with scripted faults on top (for the tests only)."""

    def __init__(self, real, loop_longer_than: float | None = None,
                 collapse_calls: int = 0, collapse_tail: int = 3):
        self._real = real
        self.loop_longer_than = loop_longer_than
        self.collapse_calls = collapse_calls  # how many align calls collapse their chunks' tails
        self.collapse_tail = collapse_tail
        self.transcribe_calls: list[list[float]] = []
        self.align_calls: list[list[float]] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def transcribe(self, chunks, languages, context):
        self.transcribe_calls.append([round(c.size / SAMPLE_RATE, 2) for c in chunks])
        real = self._real.transcribe(chunks, languages, context)
        limit = self.loop_longer_than
        return [AsrOutput("English", "again " * 30, 256, True, True)
                if limit is not None and c.size > limit * SAMPLE_RATE else out
                for c, out in zip(chunks, real)]

    def align(self, chunks, texts, languages):
        self.align_calls.append([round(c.size / SAMPLE_RATE, 2) for c in chunks])
        out = self._real.align(chunks, texts, languages)
        if len(self.align_calls) > self.collapse_calls:
            return out
        collapsed = []
        for tokens in out:  # the tail piles onto the start of its first word
            k = len(tokens) - self.collapse_tail
            at = tokens[k].start
            collapsed.append(tokens[:k] + [T(t.text, at, at) for t in tokens[k:]])
        return collapsed


@pytest.fixture
def worker_with(model_dirs, english_engine, tmp_path):
    def make(repair_collapsed_times: bool = True, **script) -> Worker:
        settings = settings_for(model_dirs["english"], model_dirs["aligner"],
                                WORK_DIR=str(tmp_path / "jobs"))
        return Worker(settings, Scripted(english_engine, **script),
                      repair_collapsed_times=repair_collapsed_times)
    return make


def _job(tmp_path: Path, seconds: float, **extra) -> dict:
    path = media.make_audio(tmp_path / "a.wav", seconds, gaps=[seconds / 2 - 0.5], rate=16000)
    return {"id": "r", "input": {"audio_base64": base64.b64encode(path.read_bytes()).decode(),
                                 **extra}}


def test_a_looping_chunk_is_transcribed_again_as_two_halves(worker_with, tmp_path):
    worker = worker_with(loop_longer_than=40.0)
    out = worker.handle(_job(tmp_path, 60.0, chunk_seconds=60))
    assert "error" not in out, out
    first, retry = worker.engine.transcribe_calls
    assert first == [60.0] and len(retry) == 2 and sum(retry) == pytest.approx(60.0, abs=0.01)
    assert out["text"] == f"{ENGLISH} {ENGLISH}"
    assert len(out["chunks"]) == 2 and out["chunks"][1]["start"] == pytest.approx(29.5, abs=1.0)
    (warning,) = [w for w in out["warnings"] if "transcribed again" in w]
    assert warning.startswith("chunk 0 (0.0-60.0 s): the output reached the MAX_NEW_TOKENS")
    assert "repeated itself in a loop" in warning and warning.endswith(": fixed")
    assert len(out["words"]) == 12


def test_a_chunk_that_still_loops_is_retried_once_and_kept(worker_with, tmp_path):
    worker = worker_with(loop_longer_than=10.0)
    out = worker.handle(_job(tmp_path, 60.0, chunk_seconds=60))
    assert len(worker.engine.transcribe_calls) == 2  # never more than one retry
    assert out["text"].split() == ["again"] * 30  # the first result, kept
    assert any("not better, kept the first result" in w for w in out["warnings"])
    assert len(out["chunks"]) == 1


def test_collapsed_tail_is_aligned_again_on_its_own_audio(worker_with, tmp_path):
    worker = worker_with(collapse_calls=1)
    out = worker.handle(_job(tmp_path, 10.0))
    assert "error" not in out, out
    main, again = worker.engine.align_calls
    # Window: from the 3rd word's end (0.96 + 0.24 s) to the chunk's end.
    assert again == [pytest.approx(10.0 - 1.2, abs=0.01)]
    starts = [w["start"] for w in out["words"]]
    assert starts == [0.0, 0.48, 0.96, 1.2, 1.68, 2.16]  # 1.2 + the aligner's 0, 0.48, 0.96
    (warning,) = [w for w in out["warnings"] if "collapsed" in w]
    assert warning == ("chunk 0 (0.0-10.0 s): 3 word timestamps (1.2-10.0 s) had collapsed onto "
                       "one instant; aligned again on their own audio")


def test_a_worker_told_not_to_repair_keeps_the_collapsed_times(worker_with, tmp_path):
    """repair_collapsed_times=False (benchmarks: what the repair costs a job): the aligner's
    times as they came, no second alignment, no warning."""
    worker = worker_with(collapse_calls=1, repair_collapsed_times=False)
    out = worker.handle(_job(tmp_path, 10.0))
    assert "error" not in out, out
    assert len(worker.engine.align_calls) == 1
    assert len({w["start"] for w in out["words"][3:]}) == 1
    assert not [w for w in out["warnings"] if "collapsed" in w]


def test_still_collapsed_after_realignment_is_spread_evenly(worker_with, tmp_path):
    worker = worker_with(collapse_calls=2)
    out = worker.handle(_job(tmp_path, 10.0))
    assert len(worker.engine.align_calls) == 2
    tail = out["words"][3:]
    assert [(w["start"], w["end"]) for w in tail] == [
        (1.2, pytest.approx(4.133, abs=1e-3)), (pytest.approx(4.133, abs=1e-3),
                                                 pytest.approx(7.067, abs=1e-3)),
        (pytest.approx(7.067, abs=1e-3), 10.0)]
    assert any("spread evenly over that stretch: their times are estimates" in w
               for w in out["warnings"])
