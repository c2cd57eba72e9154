"""Self-check of tests/tiny_models.py: the real qwen-asr code (transformers backend, CPU) loads
the generated directories and returns exactly the scripted text, language and word times."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models

torch = pytest.importorskip("torch")
qwen_asr = pytest.importorskip("qwen_asr")

ENGLISH = "Hello, world. This is a test."
CHINESE = "你好，世界。这是测试。"
MAX_NEW_TOKENS = 64
EOS_IDS = (151643, 151645)


def _clip(seconds: float = 10.0, seed: int = 0) -> tuple[np.ndarray, int]:
    noise = np.random.default_rng(seed).normal(0.0, 0.05, int(16000 * seconds))
    return (np.zeros(int(16000 * seconds), np.float32) + noise.astype(np.float32), 16000)


def _load(asr_dir, aligner_dir=None, max_new_tokens: int = MAX_NEW_TOKENS):
    kwargs = {}
    if aligner_dir is not None:
        kwargs = {"forced_aligner": str(aligner_dir),
                  "forced_aligner_kwargs": {"dtype": torch.float32, "device_map": "cpu"}}
    return qwen_asr.Qwen3ASRModel.from_pretrained(
        str(asr_dir), max_new_tokens=max_new_tokens, dtype=torch.float32, device_map="cpu",
        **kwargs)


def _generated_ids(model, wav: np.ndarray, language: str | None) -> list[int]:
    """Token ids generate() produced for one clip (the same call qwen-asr makes)."""
    prompt = model._build_text_prompt(context="", force_language=language)
    inputs = model.processor(text=[prompt], audio=[wav], return_tensors="pt", padding=True)
    inputs = inputs.to(model.model.device).to(model.model.dtype)
    out = model.model.generate(**inputs, max_new_tokens=model.max_new_tokens)
    return out.sequences[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "english": tiny_models.build_asr_model(root / "en", ENGLISH),
        "chinese": tiny_models.build_asr_model(root / "zh", CHINESE, language="Chinese"),
        "compact": tiny_models.build_compact_asr_model(root / "en-compact", ENGLISH),
        "looping": tiny_models.build_looping_asr_model(root / "loop"),
        "aligner": tiny_models.build_aligner_model(root / "aligner"),
    }


@pytest.fixture(scope="module")
def english(dirs):
    return _load(dirs["english"], dirs["aligner"])


def test_english_script_with_detected_and_forced_language(english):
    clips = [_clip(seed=1), _clip(seed=2)]
    for language in (None, "English"):
        results = english.transcribe(clips, language=language)
        assert [(r.language, r.text) for r in results] == [("English", ENGLISH)] * 2
    (french,) = english.transcribe(_clip(1.0), language="french")
    assert (french.language, french.text) == ("French", ENGLISH)


def test_generation_really_stops_at_im_end(english):
    wav = _clip(2.0)[0]
    pieces = tiny_models.asr_output_pieces(ENGLISH)
    ids = _generated_ids(english, wav, None)
    assert len(ids) == len(pieces) + 1 < MAX_NEW_TOKENS and ids[-1] == 151645
    tok = english.processor.tokenizer
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643
    assert [tok.decode([i]) for i in ids[:-1]] == pieces
    forced = _generated_ids(english, wav, "English")
    assert len(forced) == len(pieces) - 3 + 1 and forced[-1] in EOS_IDS
    # Re-tokenising the decoded output gives the generated tokens back (" test." is the one
    # generated piece that spans two pre-tokens; the EOS is not part of the text).
    raw = english._infer_asr([""], [wav], [None])[0]
    assert raw == "language English<asr_text>" + ENGLISH
    assert len(tok(raw, add_special_tokens=False)["input_ids"]) == len(pieces) + 1


def test_chinese_script(dirs):
    model = _load(dirs["chinese"])
    (result,) = model.transcribe(_clip(2.0), language=None)
    assert (result.language, result.text) == ("Chinese", CHINESE)
    (forced,) = model.transcribe(_clip(2.0), language="Chinese")
    assert (forced.language, forced.text) == ("Chinese", CHINESE)


def test_repeated_words_are_glued_into_distinct_pieces():
    pieces = tiny_models.asr_output_pieces("the cat and the dog and the bird")
    assert pieces[3:] == ["the", " cat", " and", " the", " dog", " and the", " bird"]
    assert tiny_models.asr_output_pieces(CHINESE, "Chinese")[-1] == "试。"
    with pytest.raises(ValueError):
        tiny_models.asr_output_pieces("language")


def test_aligner_word_times_step_by_240_ms(english):
    aligner = english.forced_aligner
    (result,) = aligner.align(audio=_clip(), text=ENGLISH, language="English")
    words = [(i.text, i.start_time, i.end_time) for i in result.items]
    expected = tiny_models.expected_word_times(6)
    assert expected[:2] == [(0.0, 0.24), (0.48, 0.72)]
    assert words == [(w, s, e) for w, (s, e) in
                     zip(["Hello", "world", "This", "is", "a", "test"], expected)]
    # A batch with different lengths (left padding) and per-character Chinese.
    zh, en = aligner.align(audio=[_clip(), _clip(3.0)], text=[CHINESE, "one two"],
                           language=["Chinese", "English"])
    assert [i.text for i in zh.items] == list("你好世界这是测试")
    assert [(i.start_time, i.end_time) for i in zh.items] == tiny_models.expected_word_times(8)
    assert [(i.text, i.start_time, i.end_time) for i in en.items] == [
        ("one", 0.0, 0.24), ("two", 0.48, 0.72)]
    assert aligner.get_supported_languages() == sorted(
        n.lower() for n in tiny_models.ALIGNER_LANGUAGES)


def test_transcribe_with_time_stamps(english):
    (result,) = english.transcribe(_clip(3.0), return_time_stamps=True)
    assert result.text == ENGLISH
    got = [(i.start_time, i.end_time) for i in result.time_stamps.items]
    assert got == tiny_models.expected_word_times(6)


def test_aligner_with_custom_classes_and_languages(tmp_path):
    path = tiny_models.build_aligner_model(tmp_path / "al", timestamp_classes=lambda j: 5 + 2 * j,
                                           languages=["English"])
    aligner = qwen_asr.Qwen3ForcedAligner.from_pretrained(str(path), dtype=torch.float32)
    (result,) = aligner.align(audio=_clip(), text="a b c", language="English")
    assert [(i.start_time, i.end_time) for i in result.items] == [
        (0.4, 0.56), (0.72, 0.88), (1.04, 1.2)]
    assert aligner.get_supported_languages() == ["english"]

    const = tiny_models.build_aligner_model(tmp_path / "const", timestamp_classes=lambda j: 7)
    aligner = qwen_asr.Qwen3ForcedAligner.from_pretrained(str(const), dtype=torch.float32)
    (result,) = aligner.align(audio=_clip(), text="a b c", language="English")
    assert [(i.start_time, i.end_time) for i in result.items] == [(0.56, 0.56)] * 3

    with pytest.raises(ValueError):
        tiny_models.build_aligner_model(tmp_path / "bad", timestamp_classes=lambda j: j % 2)


def test_long_word_list_keeps_exact_times(english):
    n = 400
    (result,) = english.forced_aligner.align(
        audio=_clip(), text=" ".join(f"w{i}" for i in range(n)), language="English")
    assert [(i.start_time, i.end_time) for i in result.items] == \
        tiny_models.expected_word_times(n)
    assert result.items[-1].end_time == pytest.approx((2 * n - 1) * 0.24)


def test_looping_model_runs_to_the_token_limit(dirs):
    limit = 40
    model = _load(dirs["looping"], max_new_tokens=limit)
    wav = _clip(2.0)[0]
    ids = _generated_ids(model, wav, None)
    assert len(ids) == limit and not set(ids) & set(EOS_IDS)
    raw = model._infer_asr([""], [wav], [None])[0]
    assert raw == "language English<asr_text>" + " again" * (limit - 3)
    assert len(model.processor.tokenizer(raw, add_special_tokens=False)["input_ids"]) == limit
    # qwen-asr collapses 20+ repeats of a pattern to one copy.
    (result,) = model.transcribe(_clip(2.0), language=None)
    assert (result.language, result.text) == ("English", "again")
    assert result.text == tiny_models.looping_text(limit)
    model.max_new_tokens = 8  # what _infer_asr passes to generate
    (result,) = model.transcribe(_clip(2.0), language="English")
    assert result.text == "again again again again again again again again"
    assert result.text == tiny_models.looping_text(8, forced=True)


def test_compact_model_gives_the_same_text_without_stopping(dirs):
    model = _load(dirs["compact"])
    results = model.transcribe([_clip(2.0), _clip(2.0, seed=3)], language=None)
    assert [(r.language, r.text) for r in results] == [("English", ENGLISH)] * 2
    ids = _generated_ids(model, _clip(2.0)[0], "English")
    assert len(ids) == MAX_NEW_TOKENS  # no EOS id exists in a compact vocabulary
