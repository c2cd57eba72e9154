"""`vllm.v1.engine.input_processor.InputProcessor` as far as the worker uses it: its
`input_preprocessor.preprocess(prompt)` turns a prompt with its audio into processed input (a
dict with "type", "prompt_token_ids", "mm_kwargs", "mm_hashes", "mm_placeholders", "prompt"),
refusing what vllm 0.22.0's input processing refuses, with the real error texts. The stand-in's
"mm_kwargs" carries each audio's waveform where the real one carries its mel features."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from vllm.multimodal.inputs import PlaceholderRange

AUDIO_PLACEHOLDER = "<|audio_pad|>"
SAMPLE_RATE = 16000
HOP_LENGTH = 160  # WhisperFeatureExtractor: one mel frame per 160 samples
MIN_SAMPLES = 161  # 160 samples or fewer fail in the HF processor
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048  # AsyncLLM's default (engine context)
DEFAULT_MM_LIMIT = 999
SEGMENT_SECONDS = 0.08  # the aligner's class width


def audio_token_count(num_samples: int) -> int:
    """Audio tokens for one `<|audio_pad|>`: qwen-asr's own formula over ceil(n / 160) mel
    frames, as vLLM's processor computes it (30 s -> 390, 270 s -> 3510, 300 s -> 3900)."""
    from qwen_asr.core.transformers_backend.processing_qwen3_asr import (
        _get_feat_extract_output_lengths,
    )

    return int(_get_feat_extract_output_lengths(-(-int(num_samples) // HOP_LENGTH)))


def _placeholders(ids: list[int], audio_token_id: int) -> list[PlaceholderRange]:
    """Where each run of audio tokens sits in the prompt."""
    found: list[PlaceholderRange] = []
    for i, token in enumerate(ids):
        if token != audio_token_id:
            continue
        if found and found[-1].offset + found[-1].length == i:
            found[-1] = PlaceholderRange(found[-1].offset, found[-1].length + 1)
        else:
            found.append(PlaceholderRange(i, 1))
    return found


def _audios(prompt: dict[str, Any]) -> list[np.ndarray]:
    items = (prompt.get("multi_modal_data") or {}).get("audio", [])
    if isinstance(items, np.ndarray) and items.ndim == 2:
        return list(items)
    return list(items) if isinstance(items, (list, tuple)) else [items]


class VllmConfig:
    """What `AsyncEngineArgs.create_engine_config()` gives: picklable, as the real one."""

    def __init__(self, args: dict[str, Any]):
        self.args = dict(args)


class InputProcessor:
    def __init__(self, vllm_config: VllmConfig):
        from transformers import AutoTokenizer

        args = vllm_config.args
        self.vllm_config = vllm_config
        config = json.loads((Path(args["model"]) / "config.json").read_text())
        thinker = config.get("thinker_config", {})
        self.max_model_len = args.get("max_model_len") or int(
            thinker["text_config"]["max_position_embeddings"])
        self.max_num_batched_tokens = (args.get("max_num_batched_tokens")
                                       or DEFAULT_MAX_NUM_BATCHED_TOKENS)
        self.mm_limit = (args.get("limit_mm_per_prompt") or {}).get("audio", DEFAULT_MM_LIMIT)
        self.tokenizer = AutoTokenizer.from_pretrained(args["model"])
        self.audio_token_id = self.tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
        self.input_preprocessor = self
        self._counter = itertools.count(1)

    def preprocess(self, prompt: Any, tokenization_kwargs: Any = None) -> dict[str, Any]:
        """Processed input, or the real error. Audio items are named after a counter of this
        processor, as vLLM names them with both its caches off."""
        # Tests make processing take time (it runs in other processes: an environment
        # variable reaches them where a module global would not).
        time.sleep(float(os.environ.get("VLLM_STAND_IN_PREPROCESS_SECONDS", "0")))
        if not isinstance(prompt, dict) or not isinstance(prompt.get("prompt"), str):
            raise TypeError(f"the vllm stand-in takes {{'prompt': str, ...}} prompts, got {prompt!r}")
        audios = _audios(prompt)
        if len(audios) > self.mm_limit:
            raise ValueError(f"At most {self.mm_limit} audio(s) may be provided in one prompt.")
        raw = self.tokenizer(prompt["prompt"])["input_ids"]
        if any(a.ndim != 1 or a.shape[0] < MIN_SAMPLES for a in audios) or \
                raw.count(self.audio_token_id) != len(audios):
            raise ValueError(f"Failed to apply Qwen3ASRProcessor on data={{'text': "
                             f"{prompt['prompt']!r}, 'audio': [...]}} with kwargs={{...}}")
        counts = [audio_token_count(a.shape[0]) for a in audios]
        pending = list(counts)
        ids: list[int] = []
        for token in raw:
            ids.extend([token] * pending.pop(0) if token == self.audio_token_id else [token])
        name = f"renderer0-mm-{next(self._counter)}"
        processed = {"type": "multimodal", "prompt_token_ids": ids, "prompt": prompt["prompt"],
                     "mm_kwargs": {"audio": [{"waveform": a} for a in audios]},
                     "mm_hashes": {"audio": [f"{name}-audio-{i}" for i in range(len(audios))]},
                     "mm_placeholders": {"audio": _placeholders(ids, self.audio_token_id)}}
        self.validate(processed)
        return processed

    def validate(self, processed: dict[str, Any]) -> None:
        """The checks vLLM 0.22.0 makes on processed input (`process_inputs`)."""
        ids = processed["prompt_token_ids"]
        if processed["mm_placeholders"].get("audio", []) != _placeholders(ids, self.audio_token_id):
            raise ValueError("Failed to apply prompt replacement for mm_items['audio'][0].")
        waves = [item["waveform"] for item in processed["mm_kwargs"].get("audio", [])]
        lengths = [p.length for p in processed["mm_placeholders"].get("audio", [])]
        if lengths != [audio_token_count(w.shape[0]) for w in waves]:
            # The real engine core dies on this ("Attempted to assign ... multimodal tokens").
            raise ValueError(f"audio placeholders {lengths} do not fit the audio's features")
        for n in lengths:
            if n > self.max_num_batched_tokens:
                raise ValueError(
                    f"The decoder prompt contains a(n) audio item with {n} embedding tokens, which "
                    f"exceeds the pre-allocated encoder cache size {self.max_num_batched_tokens}. "
                    "Please reduce the input size or increase the encoder cache size by setting "
                    "--limit-mm-per-prompt at startup.")
        ids = processed["prompt_token_ids"]
        if len(ids) > self.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length "
                f"of {self.max_model_len}. Make sure that `max_model_len` is no smaller than the "
                "number of text tokens plus multimodal tokens. For image inputs, the number of "
                "image tokens depends on the number of images, and possibly their aspect ratios "
                "as well.")
