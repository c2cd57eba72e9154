"""The aligner's timestamp repair (timestamps.repair) computes exactly what qwen-asr's
`fix_timestamp` computes, on every input, in O(n log n)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor

import numpy as np

from qwen_worker.engines.timestamps import repair, word_spans

QWEN = Qwen3ForceAlignProcessor()


def qwen_asr_repair(values: list[float]) -> list[int]:
    return QWEN.fix_timestamp(np.asarray(values, dtype=np.float64))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=60))  # few bins: many ties and dips
def test_equals_qwen_asr_with_many_ties(bins):
    values = [b * 80.0 for b in bins]
    assert repair(values) == qwen_asr_repair(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4999), min_size=1, max_size=120))
def test_equals_qwen_asr_on_random_classes(bins):
    values = [b * 80.0 for b in bins]
    assert repair(values) == qwen_asr_repair(values)


@pytest.mark.parametrize("values", [
    [0.0],
    [80.0, 0.0],  # the first run wins the tie
    [0.0, 800.0, 160.0, 240.0],  # one outlier between kept neighbours
    [0.0, 4000.0, 4000.0, 4000.0, 4000.0, 320.0],  # a long run: evenly in between
    [4000.0, 4000.0, 4000.0, 0.0, 80.0, 160.0, 240.0],  # a long run with no left neighbour
    [0.0, 80.0, 160.0, 0.0, 0.0, 0.0],  # a long run with no right neighbour
])
def test_named_cases(values):
    assert repair(values) == qwen_asr_repair(values)


def test_a_long_chunk_is_cheap_and_still_equal():
    rng = np.random.default_rng(0)
    values = list(np.sort(rng.integers(0, 3375, 1400)).astype(float) * 80)
    values[::50] = [0.0] * len(values[::50])
    assert repair(values) == qwen_asr_repair(values)


def test_word_spans_take_two_timestamps_per_word_in_seconds():
    assert word_spans(["Hello", "world"], [0, 5, 6, 12], 80.0) == [
        ("Hello", 0.0, 0.4), ("world", 0.48, 0.96)]
    with pytest.raises(ValueError, match="3 timestamps for 2 words"):
        word_spans(["Hello", "world"], [0, 5, 6], 80.0)
