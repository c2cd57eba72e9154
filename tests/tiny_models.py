"""Tiny hand-scripted Qwen3-ASR and Qwen3-ForcedAligner model directories for tests.

The REAL qwen-asr 0.0.6 code (transformers backend, CPU) loads and runs these directories;
only the weights are set by hand, so outputs are exact and known in advance. Nothing is
downloaded: tokenizer, configs and weights are generated here. Load them like the real
models, in float32::

    model = Qwen3ASRModel.from_pretrained(str(asr_dir), forced_aligner=str(aligner_dir),
                                          forced_aligner_kwargs={"dtype": torch.float32},
                                          max_new_tokens=64, dtype=torch.float32, device_map="cpu")

ASR model (`build_asr_model`)
-----------------------------
Greedy decoding of ANY audio (the audio has no influence) emits the tokens of
``language {language}<asr_text>{script}`` and then ``<|im_end|>`` = 151645, one of the EOS ids
qwen-asr hard-codes in generate, so generation really stops there. qwen-asr then returns:

* ``transcribe(..., language=None)`` -> ``language`` (qwen-asr capitalises it: first letter
  upper, rest lower) and ``text == script.strip()``.
* ``transcribe(..., language="X")`` -> qwen-asr appends ``language X<asr_text>`` to the prompt
  and the model continues with the script only: ``("X", script.strip())``.
* ``build_asr_model(path, "", "None")`` gives "language None<asr_text>", which qwen-asr reads
  as silence: language "" and text "".

How: the single decoder layer adds nothing (o_proj and down_proj are zero), so the last hidden
state depends on the current token only. Token t's embedding is a unit vector (a point on a
torus in the 4-dim hidden space) that "points at" the token that must follow t, and the
untied lm_head row of that token is the same vector, so argmax = successor(t). The chain
starts at the last prompt token ("\\n" of ``<|im_start|>assistant\\n``, or ``<asr_text>`` when
a language is forced). Margins are wide: the chain also survives bfloat16.

Scripts:

* The script is cut into pieces -- a word with its leading whitespace, a run of punctuation,
  each CJK/full-width character alone -- and each piece is one generated token. The next token
  may depend on the current one only, so a piece that occurs twice is glued to its successor
  (or, at the end, its predecessor) until all pieces differ: "Hello, world. This is a test."
  ends in " test." and "你好，世界。这是测试。" in "试。". Any script works (worst
  case: one token); `asr_output_pieces` lists what is generated. Only a script that IS
  "language", " {language}" or "\\n" is refused (ValueError).
* qwen-asr strips outer whitespace and collapses 20+-fold repeats of a character or of a
  <=20-character pattern (``detect_and_fix_repetitions``); avoid such runs in exact tests.
* Generated tokens: ``len(asr_output_pieces(script, language)) + 1`` (the EOS), 3 fewer with a
  forced language. With a smaller ``max_new_tokens`` the raw output is
  ``"".join(pieces[:max_new_tokens])``.
* The tokenizer is byte-level BPE over the 256 bytes plus merges that build every piece, so
  re-tokenising the decoded raw output gives the generated tokens back, except that a glued
  piece spanning two pre-tokens (" test.") counts as two. Ids follow the real model
  (<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, <|audio_start|> 151669,
  <|audio_end|> 151670, <|audio_pad|> 151676; <asr_text> 151704 and <timestamp> 151705 are
  added, non-special); unused ids below them are inert filler tokens.

COST of the real EOS id: the vocabulary must have 151936 entries, and qwen-asr's forward
computes logits for every prompt position, i.e. ~7.9 MB of float32 per second of audio per
batch item at prefill (10 s: 80 MB; one 262 s chunk: ~2.1 GB peak, measured 2.8 GB RSS).
For long audio use `build_compact_asr_model`: same text/language through qwen-asr and the same
re-tokenised token count, a ~300-entry vocabulary, but no EOS id exists, so generate always
runs max_new_tokens steps (after the script it emits a special token that decoding drops).

Looping model (`build_looping_asr_model`, compact vocabulary)
-------------------------------------------------------------
Emits ``language {language}<asr_text>`` then `word` forever, so generation always runs
``max_new_tokens`` steps and the raw output is "language English<asr_text>" +
word * (max_new_tokens - 3) (word * max_new_tokens when forced); re-tokenising it gives exactly
max_new_tokens tokens. NOTE qwen-asr collapses a pattern repeated 20+ times to ONE copy:
transcribe() returns just "again" once there are >= 20 repeats, "again again ..." below that.
`looping_text` computes the exact result with qwen-asr's own parser.

Aligner (`build_aligner_model`)
-------------------------------
qwen-asr's ``align`` keeps letters, digits and apostrophes only (punctuation vanishes, CJK is
split per character, Japanese/Korean go through nagisa/soynlp), builds
``<|audio_start|><|audio_pad|>*N<|audio_end|>w1<timestamp><timestamp>w2<timestamp>...``, and
classifies each ``<timestamp>`` into a class; time = class * 80 ms; word i takes timestamps
j = 2i (start) and 2i+1 (end). Here the j-th ``<timestamp>`` gets class
``timestamp_classes(j)``, whatever the audio: by default ``3*j``, so word i spans
[0.48 i, 0.48 i + 0.24] s (exact up to word 833 = 399.84 s; later words keep the last class).
`expected_word_times(n_words, timestamp_classes)` returns the (start, end) seconds ``align``
reports (rounded to 3 decimals like qwen-asr).

How: one attention head at each ``<timestamp>`` attends equally to ``<|audio_start|>`` (value
"1") and to every ``<timestamp>`` up to itself (value "n"), and ~nothing else, so the hidden
state is (1, n) up to a positive factor; classifier rows are lines a*n + b (chords of n^2), so
the argmax is the class whose run of indices contains n. Limits: each class must cover one
contiguous run of indices (monotone or constant functions are fine; ValueError otherwise),
values in [0, 5000); exact in float32 for 1600+ timestamps; bfloat16 breaks it beyond ~5 words.

Measured on the 2-core dev box while other jobs ran (torch 2.13 CPU, transformers 4.57.6):
build: ASR ~0.3 s (8 MB: 4.9 MB weights + 3.3 MB tokenizer.json), compact ASR / looping /
aligner ~0.05-0.1 s (30-200 KB). Load through qwen-asr: ASR + aligner ~0.4 s (mostly the
151k-entry tokenizer, which transformers also deep-copies once per processor load), compact
~0.03 s. transcribe of one 10 s clip ~0.4-0.5 s, two clips ~0.6-0.9 s (prefill logits plus
~10 ms per decode step); align of one 10 s clip ~0.04-0.14 s. `import qwen_asr` itself ~6-10 s.
Long audio, 3 x 262 s chunks in one call, max_new_tokens 256: `build_asr_model` 19 s and
6.9 GB peak RSS; `build_compact_asr_model` 22 s (256 decode steps over a 3.4k-token cache)
and 1.1 GB -- lower max_new_tokens makes the compact one fast too.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Callable, Sequence

__all__ = [
    "ALIGNER_LANGUAGES",
    "ALIGNER_MAX_TIMESTAMPS",
    "CLASSIFY_NUM",
    "DEFAULT_TIMESTAMP_STEP",
    "TIMESTAMP_SEGMENT_MS",
    "asr_output_pieces",
    "build_aligner_model",
    "build_asr_model",
    "build_compact_asr_model",
    "build_looping_asr_model",
    "default_timestamp_classes",
    "expected_word_times",
    "looping_text",
]

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

ALIGNER_LANGUAGES = [
    "Chinese", "English", "Cantonese", "French", "German", "Italian",
    "Japanese", "Korean", "Portuguese", "Russian", "Spanish",
]
TIMESTAMP_SEGMENT_MS = 80
CLASSIFY_NUM = 5000
DEFAULT_TIMESTAMP_STEP = 3  # default: j-th <timestamp> -> class 3*j -> 240 ms steps
ALIGNER_MAX_TIMESTAMPS = 2000  # rows are built for timestamp indices 0 .. this-1

# Special tokens. `build_asr_model` uses the real Qwen ids (EOS ids are hard-coded in qwen-asr's
# generate); the compact, looping and aligner models need no EOS and use ids 256-263.
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
AUDIO_START, AUDIO_END, AUDIO_PAD = "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"
ASR_TEXT, TIMESTAMP = "<asr_text>", "<timestamp>"

_ASR_SPECIAL_IDS = {
    ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645,
    AUDIO_START: 151669, AUDIO_END: 151670, AUDIO_PAD: 151676,
}
_ASR_ADDED_IDS = {ASR_TEXT: 151704, TIMESTAMP: 151705}
_ASR_VOCAB_SIZE = 151936

_COMPACT_SPECIAL_IDS = {
    ENDOFTEXT: 256, IM_START: 257, IM_END: 258,
    AUDIO_START: 259, AUDIO_END: 260, AUDIO_PAD: 261,
}
_COMPACT_ADDED_IDS = {ASR_TEXT: 262, TIMESTAMP: 263}

_ASR_HIDDEN = 4  # two circles of a torus
_ALIGNER_HIDDEN = 8
_HEAD_DIM = 8
_MROPE_SECTION = [2, 1, 1]  # sums to head_dim / 2

# Qwen2's pre-tokenizer split (transformers' fix_mistral_regex=True, which qwen-asr passes,
# replaces it on load anyway; it only has to be a Sequence whose first item is a Split).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'audio' -%}"
    "{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


# ---------------------------------------------------------------------------------------------
# Byte-level helpers
# ---------------------------------------------------------------------------------------------

def _byte_to_char() -> dict[int, str]:
    """The byte -> printable character table used by byte-level BPE (GPT-2 style).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes get the characters
    U+0100, U+0101, ... in byte order.
    """
    keep = set(range(ord("!"), ord("~") + 1))
    keep |= set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


_B2C = _byte_to_char()
_BYTE_TOKENS = [_B2C[b] for b in range(256)]  # token id == byte value


def _bl(text: str) -> str:
    """Byte-level spelling of `text` (the form tokens take in the BPE vocabulary)."""
    return "".join(_B2C[b] for b in text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Script -> generated pieces
# ---------------------------------------------------------------------------------------------

_PIECE_RE = re.compile(r"\s*(?:[^\W\d_]+|\d+|_+|[^\w\s]+)|\s+")


def _is_wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _raw_pieces(script: str) -> list[str]:
    pieces: list[str] = []
    for m in _PIECE_RE.finditer(script):
        chunk = m.group(0)
        # every wide (CJK, full-width punctuation) character becomes its own piece,
        # leading whitespace stays with the first one
        buf = ""
        for ch in chunk:
            if _is_wide(ch):
                if buf.strip():
                    pieces.append(buf)
                    buf = ""
                pieces.append(buf + ch)
                buf = ""
            else:
                buf += ch
        if buf:
            pieces.append(buf)
    if "".join(pieces) != script:  # pragma: no cover - the regex covers every character
        raise AssertionError("piece split lost characters")
    return pieces


def _unique_pieces(script: str, reserved: Sequence[str]) -> list[str]:
    """Cut `script` into pieces that are pairwise distinct and not in `reserved`."""
    pieces = _raw_pieces(script)
    reserved_bl = {_bl(r) if not r.startswith("<") else r for r in reserved}
    while True:
        seen: set[str] = set()
        bad = None
        for i, p in enumerate(pieces):
            key = _bl(p)
            if key in seen or key in reserved_bl:
                bad = i
                break
            seen.add(key)
        if bad is None:
            return pieces
        if bad + 1 < len(pieces):
            pieces[bad:bad + 2] = [pieces[bad] + pieces[bad + 1]]
        elif bad > 0:
            pieces[bad - 1:bad + 1] = [pieces[bad - 1] + pieces[bad]]
        else:
            raise ValueError(f"script {script!r} cannot be emitted: it is a reserved token")


def _prefix_pieces(language: str) -> list[str]:
    return ["language", f" {language}", ASR_TEXT]


def asr_output_pieces(script: str, language: str = "English") -> list[str]:
    """Decoded text of each token `build_asr_model(path, script, language)` generates when no
    language is forced (the EOS token that follows is not listed). With a forced language
    the first 3 pieces ("language", " X", "<asr_text>") are part of the prompt instead."""
    reserved = ["\n", *_prefix_pieces(language)]
    return _prefix_pieces(language) + _unique_pieces(script, reserved)


def looping_text(max_new_tokens: int, word: str = " again", language: str = "English",
                 forced: bool = False) -> str:
    """The text qwen-asr's transcribe returns for `build_looping_asr_model` (computed with
    qwen-asr's own parser, so its repetition collapsing is included)."""
    from qwen_asr.inference.utils import parse_asr_output

    if forced:
        raw = word * max_new_tokens
        return parse_asr_output(raw, user_language=language)[1]
    prefix = _prefix_pieces(language)
    tokens = (prefix + [word] * max_new_tokens)[:max_new_tokens]
    return parse_asr_output("".join(tokens))[1]


# ---------------------------------------------------------------------------------------------
# Tokenizer / processor files
# ---------------------------------------------------------------------------------------------

def _write_tokenizer_files(path: Path, special_ids: dict[str, int], added_ids: dict[str, int],
                           extra_tokens: Sequence[str]) -> dict[str, int]:
    """Write tokenizer.json / tokenizer_config.json / chat_template.jinja /
    preprocessor_config.json. Returns the full vocabulary (byte-level token -> id).

    The BPE model has the 256 byte tokens (id = byte), then `extra_tokens` (byte-level
    spelled) with the prefixes needed to build each of them by merges, and the special/added
    tokens at their given ids. Merges build every extra token left to right and
    ``ignore_merges`` makes a pre-token that is a whole vocabulary entry one token, so
    re-tokenising a decoded output gives the generated tokens back, except where a
    generated piece spans two pre-tokens (" test." -> " test" + ".")."""
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(_BYTE_TOKENS)}
    merges: list[list[str]] = []
    merge_set: set[tuple[str, str]] = set()
    next_id = 256
    taken = set(special_ids.values()) | set(added_ids.values())

    def add(tok: str) -> None:
        nonlocal next_id
        if tok in vocab:
            return
        while next_id in taken:
            next_id += 1
        vocab[tok] = next_id
        next_id += 1

    for tok in extra_tokens:
        for k in range(2, len(tok) + 1):
            add(tok[:k])
            pair = (tok[:k - 1], tok[k - 1])
            if pair not in merge_set:
                merge_set.add(pair)
                merges.append(list(pair))
    for tok, i in {**special_ids, **added_ids}.items():
        vocab[tok] = i
    if len(set(vocab.values())) != len(vocab):  # pragma: no cover
        raise AssertionError("token id clash")
    # Fill the gaps below the highest id with inert tokens: `tokenizers` prints a
    # megabyte-long "vocabulary contains holes" warning whenever a holey vocabulary is
    # serialised, and transformers serialises the tokenizer on every processor load (a
    # deepcopy for a log line). No merge produces a filler.
    used = set(vocab.values())
    for i in range(max(used) + 1):
        if i not in used:
            vocab[f"<|x{i}|>"] = i

    added_tokens = []
    for tok, i in sorted({**special_ids, **added_ids}.items(), key=lambda kv: kv[1]):
        added_tokens.append({
            "id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": tok in special_ids,
        })
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT}, "behavior": "Isolated",
             "invert": False},
            byte_level,
        ]},
        "post_processor": None,
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": True, "vocab": vocab, "merges": merges,
        },
    }
    (path / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), "utf-8")

    tokenizer_config = {
        "tokenizer_class": "Qwen2TokenizerFast",
        "processor_class": "Qwen3ASRProcessor",
        "model_max_length": 65536,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "add_prefix_space": False,
        "extra_special_tokens": {
            "audio_token": AUDIO_PAD,
            "audio_bos_token": AUDIO_START,
            "audio_eos_token": AUDIO_END,
        },
        "added_tokens_decoder": {
            str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added_tokens
        },
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), "utf-8")
    (path / "chat_template.jinja").write_text(_CHAT_TEMPLATE, "utf-8")

    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160,
                                 n_fft=400, chunk_length=30, padding_value=0.0,
                                 return_attention_mask=True)
    fe_dict = fe.to_dict()
    fe_dict.pop("mel_filters", None)
    fe_dict["processor_class"] = "Qwen3ASRProcessor"
    (path / "preprocessor_config.json").write_text(json.dumps(fe_dict, indent=2), "utf-8")
    return vocab


# ---------------------------------------------------------------------------------------------
# Model configs and weights
# ---------------------------------------------------------------------------------------------

def _thinker_config(hidden: int, vocab_size: int, special_ids: dict[str, int]) -> dict:
    audio_config = dict(
        num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=8,
        d_model=8, output_dim=hidden, n_window=50, n_window_infer=800, conv_chunksize=500,
        downsample_hidden_size=4, max_source_positions=1500, activation_function="gelu",
    )
    text_config = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=_HEAD_DIM, hidden_act="silu",
        max_position_embeddings=65536, rms_norm_eps=1e-6, rope_theta=1000000.0,
        rope_scaling={"rope_type": "default", "mrope_section": list(_MROPE_SECTION),
                      "interleaved": True},
        tie_word_embeddings=False, pad_token_id=special_ids[ENDOFTEXT],
    )
    return dict(
        audio_config=audio_config, text_config=text_config,
        audio_token_id=special_ids[AUDIO_PAD], audio_start_token_id=special_ids[AUDIO_START],
        audio_end_token_id=special_ids[AUDIO_END],
    )


def _new_model(config_kwargs: dict):
    import torch
    from qwen_asr.core.transformers_backend import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    config = Qwen3ASRConfig(**config_kwargs)
    with torch.random.fork_rng(devices=[]):  # deterministic init, caller's RNG untouched
        torch.manual_seed(0)
        model = Qwen3ASRForConditionalGeneration(config).to(torch.float32).eval()
    return model


def _silence_layers(thinker, audio_bias=None) -> None:
    """Make the decoder layer add nothing to the residual stream, and the audio tower emit
    a constant (`audio_bias`, default zeros) whatever the audio."""
    import torch

    for layer in thinker.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    tower = thinker.audio_tower
    tower.proj2.weight.zero_()
    if audio_bias is None:
        tower.proj2.bias.zero_()
    else:
        tower.proj2.bias.copy_(torch.as_tensor(audio_bias, dtype=tower.proj2.bias.dtype))
    thinker.model.norm.weight.fill_(1.0)


def _torus_points(count: int):
    """`count` unit vectors in R^4 on a torus grid, pairwise dot <= 1 - (1-cos(2pi/m))/2."""
    import torch

    m = max(1, math.ceil(math.sqrt(count)))
    pts = []
    for k in range(count):
        a, b = divmod(k, m)
        ta, tb = 2 * math.pi * a / m, 2 * math.pi * b / m
        pts.append([math.cos(ta), math.sin(ta), math.cos(tb), math.sin(tb)])
    return torch.tensor(pts, dtype=torch.float32) / math.sqrt(2.0)


def _build_chain_model(path: Path, transitions: list[tuple[str, str]], compact: bool,
                       note: str) -> Path:
    """Write an ASR dir whose greedy decoding follows `transitions` (pairs of byte-level
    tokens / special token strings; a token may have one successor only).

    compact=False: real Qwen ids (<|im_end|> = 151645, vocab 151936) so that emitting
    <|im_end|> really stops qwen-asr's generate. compact=True: ids 0..~300 (cheap prefill
    logits), but then no token can be one of the EOS ids hard-coded in generate."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    special_ids = _COMPACT_SPECIAL_IDS if compact else _ASR_SPECIAL_IDS
    added_ids = _COMPACT_ADDED_IDS if compact else _ASR_ADDED_IDS
    extra = [t for pair in transitions for t in pair if t not in special_ids and t not in added_ids]
    vocab = _write_tokenizer_files(path, special_ids, added_ids, extra)
    vocab_size = len(vocab) if compact else _ASR_VOCAB_SIZE

    successor: dict[int, int] = {}
    for cur, nxt in transitions:
        ci, ni = vocab[cur], vocab[nxt]
        if successor.get(ci, ni) != ni:  # pragma: no cover - guarded by _unique_pieces
            raise AssertionError(f"token {cur!r} would need two successors")
        successor[ci] = ni
    targets = sorted(set(successor.values()))
    points = _torus_points(len(targets))
    target_vec = {t: points[i] for i, t in enumerate(targets)}

    model = _new_model(dict(
        thinker_config=_thinker_config(_ASR_HIDDEN, vocab_size, special_ids),
        support_languages=None,
    ))
    thinker = model.thinker
    with torch.no_grad():
        _silence_layers(thinker)
        emb = thinker.model.embed_tokens.weight
        head = thinker.lm_head.weight
        emb.zero_()
        head.zero_()
        for cur, nxt in successor.items():
            emb[cur] = target_vec[nxt]
        for t, vec in target_vec.items():
            head[t] = 16.0 * vec
    gen = model.generation_config
    gen.pad_token_id = special_ids[ENDOFTEXT]
    gen.eos_token_id = [special_ids[IM_END], special_ids[ENDOFTEXT]]
    gen.bos_token_id = None
    gen.do_sample = False
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "README.md").write_text(
        f"Tiny scripted Qwen3-ASR test model (tests/tiny_models.py): {note}\n", "utf-8")
    return path


def _script_transitions(script: str, language: str, end: list[tuple[str, str]]):
    pieces = asr_output_pieces(script, language)  # "language", " X", "<asr_text>", script...
    chain = [_bl("\n"), _bl(pieces[0]), _bl(pieces[1]), ASR_TEXT] + [_bl(p) for p in pieces[3:]]
    return list(zip(chain[:-1], chain[1:])) + [(chain[-1], IM_END)] + end


def build_asr_model(path: str | Path, script: str, language: str = "English") -> Path:
    """Write a Qwen3-ASR model dir whose greedy decoding of ANY audio emits exactly
    ``language {language}<asr_text>{script}`` and then stops with ``<|im_end|>`` (id 151645,
    a real EOS: generation ends there).

    With a forced language (qwen-asr appends ``language X<asr_text>`` to the prompt) it emits
    ``{script}<|im_end|>``. qwen-asr returns ``text == script.strip()`` either way (barring
    20-fold repetitions, see the module docstring). The pieces each token decodes to are
    `asr_output_pieces(script, language)`. Raises ValueError only if the whole script equals
    "language", " {language}" or a newline.

    Cost: the real vocabulary size (151936) makes qwen-asr materialise float32 logits of
    ~7.9 MB per second of audio per batch item at prefill; use `build_compact_asr_model`
    for long audio.
    """
    return _build_chain_model(Path(path), _script_transitions(script, language, []), False,
                              f"emits 'language {language}<asr_text>{script}' + <|im_end|>")


def build_compact_asr_model(path: str | Path, script: str, language: str = "English") -> Path:
    """Like `build_asr_model` (same text and language out of qwen-asr), but with a ~300-token
    vocabulary: cheap for long audio (minutes), at the price of never stopping early -- no
    token can be one of generate's hard-coded EOS ids, so after the script it emits
    ``<|im_end|>`` (a compact, special id that decoding drops) until max_new_tokens.
    Needs max_new_tokens >= len(asr_output_pieces(script, language)) (minus 3 when the
    language is forced) for the full script."""
    return _build_chain_model(Path(path),
                              _script_transitions(script, language, [(IM_END, IM_END)]), True,
                              f"emits 'language {language}<asr_text>{script}', then "
                              "<|im_end|> (a compact id, not an EOS) until max_new_tokens")


def build_looping_asr_model(path: str | Path, word: str = " again",
                            language: str = "English") -> Path:
    """Write a Qwen3-ASR model dir whose greedy decoding emits ``language {language}<asr_text>``
    and then repeats `word` forever (never EOS), so every call runs to max_new_tokens.
    See `looping_text` for what qwen-asr's transcribe returns (it collapses 20+ repeats).
    Uses the compact vocabulary (it never needs an EOS id)."""
    prefix = _prefix_pieces(language)
    if word in ("", "\n", prefix[0], prefix[1]) or word.startswith("<"):
        raise ValueError(f"word {word!r} clashes with the prompt/prefix tokens")
    chain = [_bl("\n"), _bl(prefix[0]), _bl(prefix[1]), ASR_TEXT, _bl(word)]
    transitions = list(zip(chain[:-1], chain[1:])) + [(_bl(word), _bl(word))]
    return _build_chain_model(Path(path), transitions, True,
                              f"emits 'language {language}<asr_text>' then {word!r} forever")


# ---------------------------------------------------------------------------------------------
# Aligner
# ---------------------------------------------------------------------------------------------

def default_timestamp_classes(j: int) -> int:
    """Default class of the j-th (0-based) <timestamp>: 3*j, i.e. 240 ms steps."""
    return DEFAULT_TIMESTAMP_STEP * j


def expected_word_times(n_words: int,
                        timestamp_classes: Callable[[int], int] | None = None
                        ) -> list[tuple[float, float]]:
    """(start_time, end_time) in seconds that `Qwen3ForcedAligner.align` reports for words
    0 .. n_words-1 of a `build_aligner_model(..., timestamp_classes)` aligner:
    start = class(2i) * 0.08, end = class(2i+1) * 0.08, rounded to 3 decimals like qwen-asr,
    where class(j) = timestamp_classes(j), except that from the first j whose class falls
    outside [0, 5000) -- or from j = ALIGNER_MAX_TIMESTAMPS on -- the last valid class repeats
    (default 3*j: exact up to word 833, i.e. 399.84 s). Valid for non-decreasing
    `timestamp_classes` (qwen-asr repairs other sequences with a longest-increasing-
    subsequence pass that this function does not imitate)."""
    f = timestamp_classes or default_timestamp_classes
    classes: list[int] = []
    frozen = None
    for j in range(2 * n_words):
        if frozen is None:
            c = int(f(j)) if j < ALIGNER_MAX_TIMESTAMPS else -1
            if 0 <= c < CLASSIFY_NUM:
                classes.append(c)
                continue
            frozen = classes[-1] if classes else 0
        classes.append(frozen)
    seg = float(TIMESTAMP_SEGMENT_MS)
    return [(round(classes[2 * i] * seg / 1000.0, 3), round(classes[2 * i + 1] * seg / 1000.0, 3))
            for i in range(n_words)]


def _class_runs(timestamp_classes: Callable[[int], int]) -> dict[int, tuple[int, int]]:
    """class -> (first, last) count n (= j + 1) it must win for. Raises if a class's indices
    are not one contiguous run."""
    runs: dict[int, tuple[int, int]] = {}
    prev = None
    for j in range(ALIGNER_MAX_TIMESTAMPS):
        c = int(timestamp_classes(j))
        if not 0 <= c < CLASSIFY_NUM:
            if j == 0:
                raise ValueError(f"timestamp_classes(0) = {c} is outside [0, {CLASSIFY_NUM})")
            break  # later timestamps keep the last class
        n = j + 1
        if c in runs:
            if prev != c:
                raise ValueError(
                    f"class {c} is used for non-contiguous timestamp indices; each class must "
                    "cover one run of consecutive indices")
            runs[c] = (runs[c][0], n)
        else:
            runs[c] = (n, n)
        prev = c
    return runs


def build_aligner_model(path: str | Path,
                        timestamp_classes: Callable[[int], int] | None = None,
                        languages: list[str] | None = None) -> Path:
    """Write a Qwen3-ForcedAligner dir (timestamp_segment_time 80 ms, classify_num 5000) in
    which the j-th ``<timestamp>`` token (0-based; word i has j = 2i for its start and 2i+1
    for its end) gets class ``timestamp_classes(j)`` -- default ``3*j``, so word i spans
    [0.48 i, 0.48 i + 0.24] s -- whatever the audio. `expected_word_times` computes what
    ``align()`` returns. `languages` -> top-level ``support_languages`` (default: the 11
    languages of the real aligner). Load it in float32."""
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    f = timestamp_classes or default_timestamp_classes
    runs = _class_runs(f)
    vocab = _write_tokenizer_files(path, _COMPACT_SPECIAL_IDS, _COMPACT_ADDED_IDS, [])
    ts_id, sink_id = vocab[TIMESTAMP], vocab[AUDIO_START]

    thinker_cfg = _thinker_config(_ALIGNER_HIDDEN, len(vocab), _COMPACT_SPECIAL_IDS)
    thinker_cfg["model_type"] = "qwen3_forced_aligner"
    thinker_cfg["classify_num"] = CLASSIFY_NUM
    model = _new_model(dict(
        thinker_config=thinker_cfg,
        support_languages=list(ALIGNER_LANGUAGES if languages is None else languages),
        timestamp_token_id=ts_id,
        timestamp_segment_time=TIMESTAMP_SEGMENT_MS,
    ))
    thinker = model.thinker
    if thinker.lm_head.out_features != CLASSIFY_NUM:  # pragma: no cover
        raise AssertionError("thinker did not pick up model_type qwen3_forced_aligner")

    # Hidden dims: 0 = "is <timestamp>", 1 = "is <|audio_start|>" (the sink), 2 = anything else
    # (text, audio, padding); 4 = share of attention on the sink, 5 = share on <timestamp>s.
    TS, SINK, OTHER, C0, U = 0, 1, 2, 4, 5
    # Head dims: q/k use dim 3 (score), k of <timestamp>/sink uses dim 0 (score 0);
    # v dim 0 carries the sink, v dim 1 the timestamps.
    with torch.no_grad():
        _silence_layers(thinker, audio_bias=[1.0 if d == OTHER else 0.0 for d in range(8)])
        layer = thinker.model.layers[0]
        attn = layer.self_attn
        layer.input_layernorm.weight.fill_(1.0)
        emb = thinker.model.embed_tokens.weight
        emb.zero_()
        emb[:, OTHER] = 1.0
        emb[ts_id] = 0.0
        emb[ts_id, TS] = 1.0
        emb[sink_id] = 0.0
        emb[sink_id, SINK] = 1.0

        attn.q_proj.weight.zero_()
        attn.q_proj.weight[3, TS] = 1.0
        attn.k_proj.weight.zero_()
        attn.k_proj.weight[0, TS] = 1.0
        attn.k_proj.weight[0, SINK] = 1.0
        attn.k_proj.weight[3, OTHER] = -1.0
        attn.q_norm.weight.fill_(4.0)  # score of "other" keys: -sqrt(8)*4*4 = -45
        attn.k_norm.weight.fill_(4.0)
        attn.v_proj.weight.zero_()
        attn.v_proj.weight[0, SINK] = 1.0
        attn.v_proj.weight[1, TS] = 1.0
        attn.o_proj.weight.zero_()
        attn.o_proj.weight[C0, 0] = 1.0
        attn.o_proj.weight[U, 1] = 1.0

        # hidden at the n-th <timestamp> ~ (1, n) in dims (C0, U); the row of a class that
        # must win for counts a..b is the chord of n^2 over [a-1/2, b+1/2].
        head = thinker.lm_head.weight
        head.zero_()
        for c, (a, b) in runs.items():
            head[c, U] = float(a + b)
            head[c, C0] = -(a - 0.5) * (b + 0.5)

    model.save_pretrained(str(path), safe_serialization=True)
    # save_pretrained writes the class's model_type into thinker_config; restore it.
    cfg_path = path / "config.json"
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["thinker_config"]["model_type"] = "qwen3_forced_aligner"
    cfg["thinker_config"]["classify_num"] = CLASSIFY_NUM
    cfg_path.write_text(json.dumps(cfg, indent=2), "utf-8")
    (path / "README.md").write_text(
        "Tiny scripted Qwen3-ForcedAligner test model (tests/tiny_models.py)\n", "utf-8")
    return path
