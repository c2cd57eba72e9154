"""The whole pipeline on CPU: real ffmpeg, real qwen-asr (transformers backend) running tiny
generated models whose outputs are scripted, so text, offsets and word times are exact."""

from __future__ import annotations

from pathlib import Path

import pytest

import media
import tiny_models
from models import CHINESE, ENGLISH, ENGLISH_WORDS, engine_for
from qwen_worker.base.types import SAMPLE_RATE
from qwen_worker.engines.base import EngineError
from qwen_worker.base.types import Options
from qwen_worker.pipeline.transcribe import transcribe_file, transcribe_samples

LIMIT = 6 * 3600.0


@pytest.fixture(scope="module")
def english(english_engine):
    return english_engine


@pytest.fixture(scope="module")
def ten_minute_mp3(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "talk.mp3"
    return media.make_audio(path, 600.0, gaps=[262.0, 531.0], rate=16000)


def _word_times(offset: float) -> list[tuple[float, float]]:
    return [(round(offset + s, 3), round(offset + e, 3))
            for s, e in tiny_models.expected_word_times(len(ENGLISH_WORDS))]


def test_ten_minute_mp3_gives_three_chunks_with_exact_offsets_and_shifted_words(
        english, ten_minute_mp3):
    t = transcribe_file(ten_minute_mp3, Options(), english, max_audio_seconds=LIMIT,
                        decode_workers=2)
    assert len(t.chunks) == 3
    offsets = [c.start for c in t.chunks]
    assert 262.0 <= offsets[1] <= 263.0 and 531.0 <= offsets[2] <= 532.0
    # Offsets are whole samples: exact to the sample.
    assert all(round(o * SAMPLE_RATE) == o * SAMPLE_RATE for o in offsets)
    assert [c.end for c in t.chunks] == offsets[1:] + [t.duration]
    assert t.duration == pytest.approx(600.0, abs=0.05)

    assert t.text == " ".join([ENGLISH] * 3)
    assert t.language == "English" and t.languages == ["English"]
    assert [w.word for w in t.words] == ENGLISH_WORDS * 3
    got = [(w.start, w.end) for w in t.words]
    assert got == [x for o in offsets for x in _word_times(o)]
    assert [s.text for s in t.segments] == ["Hello, world.", "This is a test."] * 3
    assert t.segments[2].start == t.words[6].start == offsets[1]
    assert t.warnings == []
    times = [x for w in t.words for x in (w.start, w.end)]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= t.duration


def test_chinese_chunks_join_without_spaces(model_dirs):
    engine = engine_for(model_dirs["chinese"], model_dirs["aligner"])
    t = transcribe_samples(media.samples_with_gaps(100.0, [40.0]), Options(chunk_seconds=40),
                           engine)
    assert len(t.chunks) >= 2
    assert t.text == CHINESE * len(t.chunks)
    assert t.language == "Chinese"
    assert [w.word for w in t.words[:4]] == ["你", "好，", "世", "界。"]
    assert t.segments[0].text == "你好，世界。" and t.segments[1].text == "这是测试。"


@pytest.mark.parametrize("language", ["English", "en", "eng", "ENGLISH"])
def test_forced_language_by_name_or_code(english, language):
    from qwen_worker.base.languages import normalize_language

    t = transcribe_samples(media.samples_with_gaps(20.0, []),
                           Options(language=normalize_language(language)), english)
    assert t.language == "English" and t.text == ENGLISH and len(t.words) == 6


def test_language_the_aligner_lacks_gives_text_without_words_and_says_why(english):
    t = transcribe_samples(media.samples_with_gaps(20.0, []), Options(language="Thai"), english)
    assert t.text == ENGLISH and t.words == []
    # No word times: cues are the chunk's sentences, their times estimated over the chunk.
    assert [s.text for s in t.segments] == ["Hello, world.", "This is a test."]
    assert t.segments[0].start == 0.0 and t.segments[-1].end <= t.duration
    assert any("estimated" in w for w in t.warnings)
    assert any("Thai" in w and "aligner" in w.lower() for w in t.warnings)


def test_word_timestamps_off_skips_the_aligner(english, monkeypatch):
    monkeypatch.setattr(english._model.forced_aligner, "align",
                        lambda **kw: pytest.fail("aligner must not run"))
    t = transcribe_samples(media.samples_with_gaps(20.0, []),
                           Options(word_timestamps=False), english)
    assert t.text == ENGLISH and t.words == []


def test_output_at_the_token_limit_is_named_in_warnings(model_dirs):
    engine = engine_for(model_dirs["looping"], model_dirs["aligner"], MAX_NEW_TOKENS="40")
    t = transcribe_samples(media.samples_with_gaps(70.0, [35.0]), Options(chunk_seconds=35),
                           engine)
    assert len(t.chunks) == 2
    for chunk in t.chunks:
        assert any(w.startswith(f"chunk {chunk.index} ") and "MAX_NEW_TOKENS" in w
                   for w in t.warnings)
        assert any(w.startswith(f"chunk {chunk.index} ") and "loop" in w for w in t.warnings)


def test_silence_gives_empty_text_not_an_error(model_dirs):
    engine = engine_for(model_dirs["silent"], model_dirs["aligner"])
    t = transcribe_samples(media.samples_with_gaps(10.0, [0.0, 1.0, 2.0]) * 0, Options(), engine)
    assert t.text == "" and t.words == [] and t.segments == [] and t.language == ""
    assert t.duration == 10.0


def test_aligner_failure_on_one_chunk_fails_the_whole_file(model_dirs, monkeypatch):
    engine = engine_for(model_dirs["english"], model_dirs["aligner"], ALIGNER_BATCH_SIZE="1")
    real_align = engine._model.forced_aligner.align
    calls = []

    def flaky(**kw):
        calls.append(kw)
        if len(calls) == 2:
            raise RuntimeError("boom on chunk 1")
        return real_align(**kw)

    monkeypatch.setattr(engine._model.forced_aligner, "align", flaky)
    with pytest.raises(EngineError, match="alignment failed"):
        transcribe_samples(media.samples_with_gaps(100.0, [40.0]), Options(chunk_seconds=40),
                           engine)
    assert len(calls) == 2


def test_asr_returning_too_few_outputs_fails_the_file(english, monkeypatch):
    real = english._model._infer_asr
    monkeypatch.setattr(english._model, "_infer_asr", lambda c, w, l: real(c, w, l)[:-1])
    with pytest.raises(EngineError):
        transcribe_samples(media.samples_with_gaps(100.0, [40.0]), Options(chunk_seconds=40),
                           english)


def test_all_chunks_go_to_the_model_in_one_call(english, monkeypatch):
    real = english._model._infer_asr
    batches = []

    def spy(contexts, wavs, langs):
        batches.append(len(wavs))
        return real(contexts, wavs, langs)

    monkeypatch.setattr(english._model, "_infer_asr", spy)
    t = transcribe_samples(media.samples_with_gaps(200.0, []), Options(chunk_seconds=40,
                                                                       context="Qwen, RunPod"),
                           english)
    assert batches == [len(t.chunks)] and len(t.chunks) >= 4
