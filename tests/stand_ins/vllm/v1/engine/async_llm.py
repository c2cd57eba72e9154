"""`vllm.v1.engine.async_llm.AsyncLLM` as far as the worker uses it (see the package docstring)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any, AsyncGenerator

import numpy as np

from ...engine.arg_utils import AsyncEngineArgs
from ...outputs import CompletionOutput, PoolingOutput, PoolingRequestOutput, RequestOutput
from .exceptions import EngineDeadError

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


def _audios(prompt: dict[str, Any]) -> list[np.ndarray]:
    items = (prompt.get("multi_modal_data") or {}).get("audio", [])
    if isinstance(items, np.ndarray) and items.ndim == 2:
        return list(items)
    return list(items) if isinstance(items, (list, tuple)) else [items]


class AsyncLLM:
    def __init__(self, args: dict[str, Any]):
        from transformers import AutoTokenizer

        from ... import CREATED

        self.args = args
        self.model = args["model"]
        config = json.loads((Path(self.model) / "config.json").read_text())
        thinker = config.get("thinker_config", {})
        self.pooling = args.get("runner") == "pooling"
        if self.pooling:
            arch = (args.get("hf_overrides") or {}).get("architectures") or config.get("architectures")
            if arch != ["Qwen3ASRForcedAlignerForTokenClassification"]:
                raise ValueError(f"{arch} is not a pooling model of this stand-in")
            pooler = args.get("pooler_config")
            if pooler is None or pooler.tok_pooling_type != "STEP" or pooler.step_tag_id is None:
                raise ValueError("the stand-in aligner needs STEP pooling with a step_tag_id")
            self.step_tag_id = pooler.step_tag_id
            self.classify_num = int(thinker["classify_num"])
        self.max_model_len = args.get("max_model_len") or int(
            thinker["text_config"]["max_position_embeddings"])
        self.max_num_batched_tokens = (args.get("max_num_batched_tokens")
                                       or DEFAULT_MAX_NUM_BATCHED_TOKENS)
        self.mm_limit = (args.get("limit_mm_per_prompt") or {}).get("audio", DEFAULT_MM_LIMIT)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        self.audio_token_id = self.tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
        self.requests: list[dict[str, Any]] = []  # what reached the engine, in order
        self.aborted: list[str] = []
        self.errored = False
        self.closed = False
        self._abort: set[str] = set()
        CREATED.append(self)

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True,
                         usage_context: Any = None, stat_loggers: Any = None) -> "AsyncLLM":
        return cls(engine_args.kwargs)

    def shutdown(self, timeout: float | None = None) -> None:
        self.closed = True

    # -- input processing, as vllm 0.22.0's InputProcessor refuses ------------------------

    def _process(self, prompt: Any) -> tuple[list[int], int]:
        """(prompt token ids with the audio expanded, audio samples) or the real error."""
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
        pending = [audio_token_count(a.shape[0]) for a in audios]
        for n in pending:
            if n > self.max_num_batched_tokens:
                raise ValueError(
                    f"The decoder prompt contains a(n) audio item with {n} embedding tokens, which "
                    f"exceeds the pre-allocated encoder cache size {self.max_num_batched_tokens}. "
                    "Please reduce the input size or increase the encoder cache size by setting "
                    "--limit-mm-per-prompt at startup.")
        ids: list[int] = []
        for token in raw:
            ids.extend([token] * pending.pop(0) if token == self.audio_token_id else [token])
        if len(ids) > self.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length "
                f"of {self.max_model_len}. Make sure that `max_model_len` is no smaller than the "
                "number of text tokens plus multimodal tokens. For image inputs, the number of "
                "image tokens depends on the number of images, and possibly their aspect ratios "
                "as well.")
        return ids, sum(a.shape[0] for a in audios)

    # -- requests ------------------------------------------------------------------------

    async def _steps(self, request_id: str, n: int) -> int:
        """Run n engine steps for this request; returns how many ran before an abort."""
        from ... import STEP_SECONDS

        for done in range(n):
            self._check_alive()
            if request_id in self._abort:
                return done
            await asyncio.sleep(STEP_SECONDS)
        self._check_alive()
        return n

    def _check_alive(self) -> None:
        from ... import KILL

        if KILL:
            self.errored = True
        if self.errored:
            raise EngineDeadError()

    def _admit(self, request_id: str, prompt: dict, params: Any) -> tuple[list[int], int]:
        from ... import ACTIVE

        if self.errored:
            raise EngineDeadError()
        ids, samples = self._process(prompt)
        if request_id in ACTIVE:
            raise ValueError(f"Request id {request_id} already running.")
        self.requests.append({"request_id": request_id, "prompt": prompt, "params": params,
                              "prompt_token_ids": ids})
        ACTIVE.add(request_id)
        return ids, samples

    def _release(self, request_id: str, aborted: bool) -> None:
        from ... import ACTIVE

        ACTIVE.discard(request_id)
        self._abort.discard(request_id)
        if aborted:
            self.aborted.append(request_id)

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str,
                       **kwargs: Any) -> AsyncGenerator[RequestOutput, None]:
        if self.pooling:
            raise ValueError("generate is not supported by this pooling model")
        ids, samples = self._admit(request_id, prompt, sampling_params)
        done = False
        try:
            reply = self._reply(samples, sampling_params, prompt["prompt"])
            room = min(len(reply), sampling_params.max_tokens or len(reply),
                       max(1, self.max_model_len - len(ids)))
            made = await self._steps(request_id, room)
            if request_id in self._abort:
                finish = "abort"
            else:
                finish = "stop" if made == len(reply) and not sampling_params.ignore_eos else "length"
            tokens = reply[:made]
            text = (self.tokenizer.decode(tokens, skip_special_tokens=True)
                    if sampling_params.detokenize else "")
            done = True
            out = CompletionOutput(index=0, text=text, token_ids=tokens, finish_reason=finish)
            yield RequestOutput(request_id=request_id, prompt=prompt["prompt"],
                                prompt_token_ids=ids, prompt_logprobs=None, outputs=[out],
                                finished=True)
        finally:
            # A cancelled or closed generator aborts its request, as the real one does.
            self._release(request_id, aborted=not done or request_id in self._abort)

    def _reply(self, samples: int, params: Any, prompt: str) -> list[int]:
        """SCRIPT; after a forced language ("...language X<asr_text>") only its text part, as
        the real model continues the prompt."""
        from ... import SCRIPT

        script = SCRIPT(samples / SAMPLE_RATE) if callable(SCRIPT) else SCRIPT
        if prompt.endswith("<asr_text>"):
            script = script.split("<asr_text>", 1)[-1]
        reply = self.tokenizer(script, add_special_tokens=False)["input_ids"]
        if params.ignore_eos:  # a fixed length: the script repeated
            want = params.max_tokens
            return (reply * math.ceil(want / max(1, len(reply))))[:want]
        return reply + [self.tokenizer.eos_token_id]

    async def encode(self, prompt: Any, pooling_params: Any, request_id: str,
                     **kwargs: Any) -> AsyncGenerator[PoolingRequestOutput, None]:
        if not self.pooling:
            raise ValueError("encode needs a pooling model (runner='pooling')")
        if pooling_params.task != "token_classify":
            raise ValueError(f"Unsupported task: {pooling_params.task!r} Supported tasks: "
                             "('token_classify',)")
        ids, samples = self._admit(request_id, prompt, pooling_params)
        done = False
        try:
            await self._steps(request_id, 1)
            if request_id in self._abort:
                return
            done = True
            yield PoolingRequestOutput(request_id=request_id,
                                       outputs=PoolingOutput(self._rows(ids, samples)),
                                       prompt_token_ids=ids, num_cached_tokens=0, finished=True)
        finally:
            self._release(request_id, aborted=not done)

    def _rows(self, ids: list[int], samples: int) -> Any:
        """Class probabilities per step tag: the j-th of n peaks at j/n of the audio."""
        import torch

        n = ids.count(self.step_tag_id)
        last = min(self.classify_num - 1, int(samples / SAMPLE_RATE / SEGMENT_SECONDS))
        rows = torch.full((n, self.classify_num), 0.1 / (self.classify_num - 1))
        for j in range(n):
            rows[j, min(last, int(j * last / max(1, n)))] = 0.9
        return rows

    async def abort(self, request_id: str | list[str], internal: bool = False) -> None:
        from ... import ACTIVE

        for rid in [request_id] if isinstance(request_id, str) else request_id:
            if rid in ACTIVE:
                self._abort.add(rid)
