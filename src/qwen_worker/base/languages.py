"""Language names and codes accepted from callers, and what each language needs downstream."""

from __future__ import annotations

# The 30 names Qwen3-ASR accepts (qwen_asr.inference.utils.SUPPORTED_LANGUAGES), with ISO 639-1
# and 639-3 codes. Kept here rather than imported so input validation needs no torch import.
ASR_LANGUAGES: dict[str, tuple[str, ...]] = {
    "Chinese": ("zh", "zho", "chi", "cmn"),
    "English": ("en", "eng"),
    "Cantonese": ("yue",),
    "Arabic": ("ar", "ara"),
    "German": ("de", "deu", "ger"),
    "French": ("fr", "fra", "fre"),
    "Spanish": ("es", "spa"),
    "Portuguese": ("pt", "por"),
    "Indonesian": ("id", "ind"),
    "Italian": ("it", "ita"),
    "Korean": ("ko", "kor"),
    "Russian": ("ru", "rus"),
    "Thai": ("th", "tha"),
    "Vietnamese": ("vi", "vie"),
    "Japanese": ("ja", "jpn"),
    "Turkish": ("tr", "tur"),
    "Hindi": ("hi", "hin"),
    "Malay": ("ms", "msa", "may", "zsm"),
    "Dutch": ("nl", "nld", "dut"),
    "Swedish": ("sv", "swe"),
    "Danish": ("da", "dan"),
    "Finnish": ("fi", "fin"),
    "Polish": ("pl", "pol"),
    "Czech": ("cs", "ces", "cze"),
    "Filipino": ("fil", "tl", "tgl"),
    "Persian": ("fa", "fas", "per"),
    "Greek": ("el", "ell", "gre"),
    "Romanian": ("ro", "ron", "rum"),
    "Hungarian": ("hu", "hun"),
    "Macedonian": ("mk", "mkd", "mac"),
}

# Qwen3-ForcedAligner-0.6B aligns only these; the rest get a transcript without word times.
ALIGNER_LANGUAGES: frozenset[str] = frozenset(
    {"Chinese", "English", "Cantonese", "French", "German", "Italian", "Japanese", "Korean",
     "Portuguese", "Russian", "Spanish"}
)

# Written without spaces between words: chunk texts and words are joined with "".
UNSPACED_LANGUAGES: frozenset[str] = frozenset({"Chinese", "Cantonese", "Japanese", "Thai"})

AUTO = None  # detect per chunk

_LOOKUP: dict[str, str] = {}
for _name, _codes in ASR_LANGUAGES.items():
    _LOOKUP[_name.lower()] = _name
    for _code in _codes:
        _LOOKUP[_code] = _name


class UnsupportedLanguage(ValueError):
    """The caller asked for a language Qwen3-ASR does not know."""


def accepted_values() -> str:
    return "'auto', " + ", ".join(
        f"{name} ({'/'.join(codes)})" for name, codes in ASR_LANGUAGES.items()
    )


def normalize_language(value: str | None) -> str | None:
    """'auto', None or '' -> None (detect); a name in any case or an ISO code -> canonical name."""
    if value is None:
        return AUTO
    key = value.strip().lower().replace("_", "-")
    if key in ("", "auto"):
        return AUTO
    # Region subtags ("en-US", "pt-BR", "zh-Hans") name the same language.
    name = _LOOKUP.get(key) or _LOOKUP.get(key.split("-", 1)[0])
    if name is None:
        raise UnsupportedLanguage(
            f"language {value!r} is not supported; use one of: {accepted_values()}"
        )
    return name


def is_unspaced(language: str) -> bool:
    return language in UNSPACED_LANGUAGES

