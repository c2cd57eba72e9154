"""The aligner's raw output to word times: one class per `<timestamp>` token, repaired.

Qwen3-ForcedAligner gives two `<timestamp>` tokens per word (start, end), each classified into
80 ms bins. Its times are meant to never go backwards; where they do, qwen-asr keeps the longest
non-decreasing run (the first one found, as its quadratic dynamic programme finds it) and fills
the others: one or two outliers from the nearer kept neighbour, longer runs evenly between the
kept neighbours. This module computes exactly that in O(n log n): qwen-asr's version is
quadratic in pure Python (0.15 s for one 270 s chunk of 700 words, holding the GIL that the
engines' event loop needs); tests check that both agree on every input.
"""

from __future__ import annotations

from typing import Sequence


def _first_longest_run(values: Sequence[float]) -> list[bool]:
    """Which positions belong to the longest non-decreasing subsequence that qwen-asr picks:
    each element extends the longest run ending at or below its value (the earliest such
    element on ties), and the run is traced back from the earliest element of greatest length."""
    n = len(values)
    ranks = {v: r for r, v in enumerate(sorted(set(values)), start=1)}
    size = len(ranks)
    # Fenwick tree over value ranks holding the best (length, -index) seen so far.
    tree: list[tuple[int, int]] = [(0, 1)] * (size + 1)
    length = [0] * n
    parent = [-1] * n
    for i, v in enumerate(values):
        r = ranks[v]
        best = (0, 1)
        k = r
        while k > 0:
            if tree[k] > best:
                best = tree[k]
            k -= k & -k
        length[i] = best[0] + 1
        parent[i] = -best[1] if best[0] > 0 else -1
        mark = (length[i], -i)
        k = r
        while k <= size:
            if mark > tree[k]:
                tree[k] = mark
            k += k & -k
    kept = [False] * n
    i = length.index(max(length))
    while i != -1:
        kept[i] = True
        i = parent[i]
    return kept


def repair(values: Sequence[float]) -> list[int]:
    """qwen-asr's `fix_timestamp`: times (ms) that never go backwards, truncated to int."""
    n = len(values)
    if n == 0:
        return []
    kept = _first_longest_run(values)
    result = [float(v) for v in values]
    i = 0
    while i < n:
        if kept[i]:
            i += 1
            continue
        j = i
        while j < n and not kept[j]:
            j += 1
        left = result[i - 1] if i > 0 else None  # kept: runs are maximal
        right = result[j] if j < n else None
        if j - i <= 2:  # an outlier or two: the nearer neighbour, the left one on a tie
            for k in range(i, j):
                near_left = (k - (i - 1)) <= (j - k)
                result[k] = (right if left is None else left if right is None
                             else left if near_left else right)
        elif left is not None and right is not None:  # a longer run: evenly in between
            step = (right - left) / (j - i + 1)
            for k in range(i, j):
                result[k] = left + step * (k - i + 1)
        else:
            for k in range(i, j):
                result[k] = left if left is not None else right
        i = j
    return [int(v) for v in result]


def word_spans(words: Sequence[str], classes: Sequence[int], segment_ms: float
               ) -> list[tuple[str, float, float]]:
    """(word, start s, end s) from the class at each of the words' 2 timestamps."""
    if len(classes) != 2 * len(words):
        raise ValueError(f"{len(classes)} timestamps for {len(words)} words")
    ms = repair([c * segment_ms for c in classes])
    return [(w, round(ms[2 * i] / 1000.0, 3), round(ms[2 * i + 1] / 1000.0, 3))
            for i, w in enumerate(words)]

