from __future__ import annotations

import pytest

from qwen_worker.base.languages import ASR_LANGUAGES, UnsupportedLanguage, normalize_language


@pytest.mark.parametrize("value,name", [
    ("auto", None), (None, None), ("", None), ("AUTO", None),
    ("english", "English"), ("ENGLISH", "English"), ("en", "English"), ("eng", "English"),
    ("en-US", "English"), ("zh", "Chinese"), ("yue", "Cantonese"), ("ja", "Japanese"),
    ("fil", "Filipino"), ("tl", "Filipino"), ("fa", "Persian"), ("mk", "Macedonian"),
    ("pt_BR", "Portuguese"), ("Hungarian", "Hungarian"),
])
def test_names_and_iso_codes(value, name):
    assert normalize_language(value) == name


def test_all_thirty_names_round_trip():
    assert len(ASR_LANGUAGES) == 30
    for name in ASR_LANGUAGES:
        assert normalize_language(name.upper()) == name


def test_unknown_language_lists_what_is_accepted():
    with pytest.raises(UnsupportedLanguage) as err:
        normalize_language("klingon")
    assert "klingon" in str(err.value) and "English (en/eng)" in str(err.value)


# -- a chunk's output read as qwen-asr reads it ----------------------------------------------

_PIECES = ["language ", "Language ", "LANGUAGE ", "English", "chinese", "None", "none", " ",
           "\n", "<asr_text>", "Hello", "world.", "ab", "a", "我们", "ha ", "x\ny"]


def _outputs():
    from hypothesis import strategies as st

    piece = st.sampled_from(_PIECES)
    # runs around qwen-asr's threshold (20 repeats) and pattern length (20 characters)
    run = st.builds(lambda p, n: p * n, st.sampled_from(_PIECES + ["abcdefghij" * 2, "abc" * 7]),
                    st.integers(1, 45))
    return st.lists(st.one_of(piece, run), max_size=12).map("".join)


def _check_read_as_qwen_asr(raw: str, forced: str | None) -> None:
    from qwen_asr.inference.utils import detect_and_fix_repetitions, parse_asr_output

    from qwen_worker.engines.prompts import read_asr_output

    out = read_asr_output(raw, forced, 7, False)
    assert (out.language, out.text) == parse_asr_output(raw, user_language=forced)
    assert out.repetition_loop == (detect_and_fix_repetitions(raw.strip()) != raw.strip())


def test_outputs_are_read_exactly_as_qwen_asr_reads_them():
    """read_asr_output skips qwen-asr's ~50 ms repetition pass where no pattern repeats 20
    times, and reads the language tag itself: the result must be qwen-asr's parse_asr_output,
    loops and all, on any output."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=600, deadline=None)
    @given(_outputs(), st.sampled_from([None, "English", "Chinese"]))
    def check(raw, forced):
        _check_read_as_qwen_asr(raw, forced)

    check()
    for raw in ["language English<asr_text>" + "ha" * 25, "a" * 20, "x" * 41 + "a" * 20,
                "language None<asr_text>", "language None<asr_text> stray", " \n ",
                "language English\n<asr_text>Hi", "\nlanguage \nlanguage German<asr_text>Hallo",
                "language Chinese<asr_text>" + "我们" * 30 + "好", "no tag at all " * 30]:
        for forced in (None, "English"):
            _check_read_as_qwen_asr(raw, forced)


def test_a_long_output_without_repeats_is_read_without_qwen_asrs_repetition_pass(monkeypatch):
    import random

    import qwen_asr.inference.utils as utils

    from qwen_worker.engines.prompts import read_asr_output

    calls = []
    real = utils.detect_and_fix_repetitions
    monkeypatch.setattr(utils, "detect_and_fix_repetitions",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    rng = random.Random(0)
    words = ["the", "of", "and", "to", "in", "is", "that", "it", "was", "for", "on", "are"]
    text = " ".join(rng.choice(words) for _ in range(900))
    out = read_asr_output("language English<asr_text>" + text, None, 900, False)
    assert (out.language, out.text, out.repetition_loop) == ("English", text, False)
    looped = read_asr_output("language English<asr_text>" + "and so " * 40, None, 280, False)
    assert looped.repetition_loop and looped.text.count("and so") < 40
    assert len(calls) == 1  # only for the output that repeats
