"""Quiet-point chunking: exact tiling, views, limits."""

from __future__ import annotations

import numpy as np
import pytest

import media
from qwen_worker.pipeline import chunking


def test_ten_minutes_make_three_chunks_cut_in_the_silences():
    audio = media.samples_with_gaps(600.0, gaps=[262.0, 531.0])
    chunks = chunking.split(audio, 270.0)
    assert len(chunks) == 3
    assert chunks[0].start == 0 and chunks[-1].end == audio.size
    for a, b in zip(chunks, chunks[1:]):
        assert a.end == b.start  # no gap, no overlap
    # Cuts land inside the 1 s silences.
    assert 262.0 <= chunks[1].offset <= 263.0
    assert 531.0 <= chunks[2].offset <= 532.0
    assert chunks[1].offset == chunks[1].start / 16000


def test_chunks_are_views_of_the_decoded_buffer():
    audio = media.samples_with_gaps(400.0, gaps=[])
    for c in chunking.split(audio, 120.0):
        assert np.shares_memory(c.samples, audio)
        assert c.samples.size == c.end - c.start


@pytest.mark.parametrize("target", [30.0, 90.0, 270.0, 300.0])
def test_no_chunk_exceeds_the_aligner_limit(target):
    audio = media.samples_with_gaps(1000.0, gaps=[])
    chunks = chunking.split(audio, target)
    assert max(c.duration for c in chunks) <= chunking.MAX_CHUNK_SECONDS
    assert sum(c.samples.size for c in chunks) == audio.size
    assert min(c.duration for c in chunks) >= chunking.MIN_TAIL_SECONDS


def test_short_audio_is_one_chunk():
    audio = media.samples_with_gaps(12.3, gaps=[])
    (only,) = chunking.split(audio)
    assert only.start == 0 and only.end == audio.size


@pytest.mark.parametrize("bad", [29.0, 301.0])
def test_chunk_length_outside_30_to_300_is_refused(bad):
    with pytest.raises(ValueError):
        chunking.split(np.zeros(16000, np.float32), bad)


def test_cuts_fall_in_the_pauses_of_real_speech(tmp_path):
    from qwen_worker.pipeline.decode import decode

    text = " ".join(f"Sentence number {i} talks about chunking long podcasts at quiet points."
                    for i in range(40))
    wav = media.speech(tmp_path / "speech.wav", text)
    if wav is None:
        pytest.skip("espeak-ng is not installed (CI installs it)")
    audio = decode(wav, max_seconds=3600)
    assert audio.size > 100 * 16000
    chunks = chunking.split(audio, 30.0)
    frame = 160
    energy = np.square(audio[: audio.size // frame * frame].reshape(-1, frame)).mean(axis=1)
    speaking = np.median(energy[energy > 0])
    for c in chunks[1:]:
        at = c.start // frame
        # The 200 ms around each cut is far quieter than typical speech.
        assert energy[at - 10:at + 10].mean() < 0.05 * speaking
