"""What the models read: Qwen3-ASR's chat prompt, and user text made safe to put in it.

The prompt is the one qwen-asr builds with its processor's chat template (a system turn with the
context, a user turn holding the audio placeholder, the assistant turn, and `language X<asr_text>`
when the language is forced); tests check it against qwen-asr's own builder. A job's context is
data: any of the tokenizer's control strings in it (`<|im_end|>`, `<|audio_pad|>`, `<asr_text>`,
...) would otherwise be read as tokens, adding turns or audio placeholders to the prompt.
"""

from __future__ import annotations

import copy
import re
import threading
from typing import Any, Iterable

from qwen_worker.base.types import AsrOutput

AUDIO_PLACEHOLDER = "<|audio_start|><|audio_pad|><|audio_end|>"
ASR_TEXT_TAG = "<asr_text>"


def asr_prompt(context: str, language: str | None) -> str:
    """One chunk's prompt; `language` (a canonical name) forces the output language."""
    prompt = (f"<|im_start|>system\n{context}<|im_end|>\n"
              f"<|im_start|>user\n{AUDIO_PLACEHOLDER}<|im_end|>\n"
              "<|im_start|>assistant\n")
    if language:
        prompt += f"language {language}{ASR_TEXT_TAG}"
    return prompt


class ControlTokenFilter:
    """Removes the tokenizer's control strings (its added tokens) from user text."""

    def __init__(self, control_tokens: Iterable[str]):
        tokens = sorted({t for t in control_tokens if t}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None

    def clean(self, text: str) -> tuple[str, bool]:
        """(text without control strings, whether any was removed). Repeated until none is
        left: removing one may join its neighbours into another ("<|im_<|im_end|>end|>")."""
        if self._pattern is None:
            return text, False
        removed = False
        while True:
            cleaned = self._pattern.sub("", text)
            if cleaned == text:
                return text, removed
            text, removed = cleaned, True


def control_tokens(tokenizer) -> list[str]:
    """Every string the tokenizer turns into one added token when it meets it in text."""
    return list(tokenizer.get_added_vocab())


class ContextFitter:
    """A job's context as the prompt may hold it: control strings removed, cut to the token
    budget that start-up checked (MAX_CONTEXT_TOKENS). Safe to call from any job thread."""

    def __init__(self, tokenizer: Any, max_tokens: int):
        # A private copy behind a lock: a Rust tokenizer must never be used by two threads at
        # once, and the engine's own copy is busy in the engine.
        self._tokenizer = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()
        self._filter = ControlTokenFilter(control_tokens(tokenizer))
        self.max_tokens = max_tokens

    def fit(self, context: str) -> tuple[str, list[str]]:
        """(the context to use, warnings for the job)."""
        warnings = []
        context, removed = self._filter.clean(context)
        if removed:
            warnings.append("context: control tokens of the model (such as <|im_end|> or "
                            "<|audio_pad|>) were removed; the context is read as plain text")
        with self._lock:
            ids = self._tokenizer(context, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_tokens:
                context = self._tokenizer.decode(ids[: self.max_tokens])
                warnings.append("context was cut to MAX_CONTEXT_TOKENS tokens")
        return context, warnings


# -- the model's answer ----------------------------------------------------------------------

# qwen-asr's repetition fix (`detect_and_fix_repetitions`, threshold 20) changes a text only
# where a pattern of 1-20 characters repeats at least 20 times in a row. Whether one does is
# found here by the regex engine; the fix itself is pure Python that holds the GIL for tens of
# milliseconds per long chunk (docs/gpu.md, "Host CPU"), and qwen-asr's `parse_asr_output` runs it on
# every output.
_REPEATS = re.compile(r"(.{1,20}?)\1{19,}", re.DOTALL)


def read_asr_output(raw: str, forced: str | None, output_tokens: int,
                    hit_token_limit: bool) -> AsrOutput:
    """A chunk's raw model output ("language X<asr_text>text"), parsed as qwen-asr's
    `parse_asr_output` parses it (tests/test_languages.py holds the two equal), its
    repetition fix run only where there is a repetition."""
    from qwen_asr.inference.utils import detect_and_fix_repetitions

    stripped = raw.strip()
    fixed = detect_and_fix_repetitions(stripped) if _REPEATS.search(stripped) else stripped
    language, text = _language_and_text(fixed, forced)
    return AsrOutput(language=language, text=text, output_tokens=output_tokens,
                     hit_token_limit=hit_token_limit, repetition_loop=fixed != stripped)


def _language_and_text(output: str, forced: str | None) -> tuple[str, str]:
    """qwen-asr's reading of a (stripped, repaired) output: a forced language takes the whole
    output as text; else "language X" before the `<asr_text>` tag names it ("language None":
    no speech), and an output without the tag is text in no known language."""
    # qwen-asr's own constants (private names of the pinned 0.0.6; the property test in
    # tests/test_languages.py fails if they ever stop matching its parse_asr_output)
    from qwen_asr.inference.utils import _ASR_TEXT_TAG, _LANG_PREFIX, normalize_language_name

    if not output:
        return "", ""
    if forced:
        return forced, output
    meta, tag, text = output.partition(_ASR_TEXT_TAG)
    if not tag:
        return "", output.strip()
    if "language none" in meta.lower():
        return "", text.strip()
    lines = (line.strip() for line in meta.splitlines())
    named = next((line[len(_LANG_PREFIX):].strip() for line in lines
                  if line.lower().startswith(_LANG_PREFIX)), "")
    return (normalize_language_name(named) if named else ""), text.strip()
