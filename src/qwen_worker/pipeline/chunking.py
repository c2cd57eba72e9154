"""Cut decoded audio into model-sized chunks at quiet points.

Chunks tile the audio exactly (no gap, no overlap) and are numpy views of the one decoded
buffer, never copies. Offsets are whole samples, so file time = offset + chunk time exactly.
"""

from __future__ import annotations

import numpy as np

from qwen_worker.base.types import DEFAULT_CHUNK_SECONDS, SAMPLE_RATE, Chunk

MIN_CHUNK_SECONDS = 30.0
# Qwen3-ForcedAligner takes at most 5 minutes per input.
MAX_CHUNK_SECONDS = 300.0
_FRAME = SAMPLE_RATE // 100  # 10 ms energy frames
_SMOOTH_FRAMES = 20  # quietness is judged over 200 ms, not one frame
# A final chunk shorter than this is avoided by cutting earlier (it would carry little context).
MIN_TAIL_SECONDS = 5.0


def search_window(target_seconds: float) -> float:
    """Half-width of the window searched for a quiet cut around each target boundary."""
    return max(3.0, min(20.0, 0.1 * target_seconds))


def quietest_point(audio: np.ndarray, lo: int, hi: int) -> int:
    """Sample index in [lo, hi) at the centre of the quietest 200 ms stretch."""
    frames = (hi - lo) // _FRAME
    if frames <= _SMOOTH_FRAMES:
        return (lo + hi) // 2
    window = audio[lo:lo + frames * _FRAME].reshape(frames, _FRAME)
    energy = np.einsum("ij,ij->i", window, window, dtype=np.float64)
    smooth = np.convolve(energy, np.ones(_SMOOTH_FRAMES), mode="valid")
    best = int(np.argmin(smooth))  # first of equally quiet stretches: deterministic
    return lo + (best + _SMOOTH_FRAMES // 2) * _FRAME


def split(audio: np.ndarray, target_seconds: float = DEFAULT_CHUNK_SECONDS) -> list[Chunk]:
    """Cut near every target_seconds at the quietest point; no chunk exceeds MAX_CHUNK_SECONDS."""
    if not MIN_CHUNK_SECONDS <= target_seconds <= MAX_CHUNK_SECONDS:
        raise ValueError(f"chunk length must be {MIN_CHUNK_SECONDS:.0f}-{MAX_CHUNK_SECONDS:.0f} s")
    total = audio.shape[0]
    half = search_window(target_seconds)
    longest = int(min(target_seconds + half, MAX_CHUNK_SECONDS) * SAMPLE_RATE)
    target = int(target_seconds * SAMPLE_RATE)
    min_tail = int(MIN_TAIL_SECONDS * SAMPLE_RATE)
    bounds = [0]
    while total - bounds[-1] > longest:
        start = bounds[-1]
        lo = start + target - int(half * SAMPLE_RATE)
        hi = min(start + longest, total - min_tail)
        bounds.append(quietest_point(audio, lo, hi))
    bounds.append(total)
    return [Chunk(i, s, e, audio[s:e]) for i, (s, e) in enumerate(zip(bounds, bounds[1:]))]
