from __future__ import annotations

import pytest

from qwen_worker.languages import ASR_LANGUAGES, UnsupportedLanguage, normalize_language


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
