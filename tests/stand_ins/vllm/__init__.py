"""Stand-in for the `vllm` package, as strict as vllm 0.14.0 where the worker touches it.

The real vLLM needs a GPU, so the CPU tests import this module instead. It generates nothing:
every prompt is answered with the tokens of SCRIPT. What it does do is record what our code
(through qwen-asr's `Qwen3ASRModel.LLM`) passes to `vllm.LLM`, `SamplingParams` and
`LLM.generate`, and refuse what the real vllm 0.14.0 refuses there:

* `LLM(model, **kwargs)`: any argument outside LLM_ARGUMENTS raises TypeError, worded like the
  real one (vllm 0.14.0 forwards unknown keywords to the `EngineArgs` dataclass).
* `SamplingParams(...)`: any field outside SAMPLING_PARAMS_FIELDS raises TypeError;
  temperature < 0 and max_tokens < 1 raise ValueError.
* `LLM.generate(prompts, sampling_params)`: more items of a modality than
  `limit_mm_per_prompt` allows (Qwen3-ASR takes audio only) raises ValueError; a prompt whose
  tokens, with each `<|audio_pad|>` expanded to its audio's token count, pass `max_model_len`
  raises ValueError. The prompt is tokenized with the model directory's own tokenizer
  (tests use generated tiny models that carry a real one), the audio token count is qwen-asr's
  own formula, exactly as vLLM's input processing computes both.
* The outputs are shaped like vllm 0.14.0's `RequestOutput`: `prompt`, `prompt_token_ids`,
  `finished` and `outputs[0]` with `text`, `token_ids` (ending in the EOS token when the reply
  ends normally), `finish_reason` ("stop", or "length" when `max_tokens` or `max_model_len`
  cuts the reply; the text is then the decoded cut tokens) and `stop_reason`.

What it cannot check: anything the real engine decides on the GPU (memory, CUDA graphs,
scheduling, process start-up), and the model's own output.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CREATED: list["LLM"] = []
SCRIPT = "language English<asr_text>Hello from the stand-in."

# vllm 0.14.0 `LLM.__init__` arguments: its explicit parameters (vllm/entrypoints/llm.py:191-228)
# plus every field of the `EngineArgs` dataclass, which receives the rest through **kwargs
# (llm.py:301-334); the explicit ones are all EngineArgs fields too. Recorded from the installed
# vllm 0.14.0 wheel as `set(inspect.signature(LLM.__init__).parameters) - {"self", "kwargs"} |
# {f.name for f in dataclasses.fields(EngineArgs) if f.init}`: 159 names.
LLM_ARGUMENTS = frozenset({
    '_api_process_count', '_api_process_rank', 'additional_config', 'aggregate_engine_logging',
    'all2all_backend', 'allow_deprecated_quantization', 'allowed_local_media_path',
    'allowed_media_domains', 'async_scheduling', 'attention_backend', 'attention_config',
    'block_size', 'calculate_kv_scales', 'code_revision', 'collect_detailed_traces',
    'compilation_config', 'config_format', 'convert', 'cp_kv_cache_interleave_size',
    'cpu_offload_gb', 'cudagraph_capture_sizes', 'cudagraph_metrics', 'data_parallel_address',
    'data_parallel_backend', 'data_parallel_external_lb', 'data_parallel_hybrid_lb',
    'data_parallel_rank', 'data_parallel_rpc_port', 'data_parallel_size',
    'data_parallel_size_local', 'data_parallel_start_rank', 'dbo_decode_token_threshold',
    'dbo_prefill_token_threshold', 'dcp_kv_cache_interleave_size', 'decode_context_parallel_size',
    'default_mm_loras', 'disable_cascade_attn', 'disable_chunked_mm_input',
    'disable_custom_all_reduce', 'disable_hybrid_kv_cache_manager', 'disable_log_stats',
    'disable_nccl_for_dp_synchronization', 'disable_sliding_window',
    'distributed_executor_backend', 'download_dir', 'dtype', 'ec_transfer_config',
    'enable_chunked_prefill', 'enable_dbo', 'enable_eplb', 'enable_expert_parallel',
    'enable_layerwise_nvtx_tracing', 'enable_logging_iteration_details', 'enable_lora',
    'enable_mfu_metrics', 'enable_mm_embeds', 'enable_mm_processor_stats', 'enable_prefix_caching',
    'enable_prompt_embeds', 'enable_return_routed_experts', 'enable_sleep_mode',
    'enable_tower_connector_lora', 'enforce_eager', 'eplb_config', 'expert_placement_strategy',
    'fully_sharded_loras', 'generation_config', 'gpu_memory_utilization', 'hf_config_path',
    'hf_overrides', 'hf_token', 'ignore_patterns', 'interleave_mm_strings', 'io_processor_plugin',
    'kv_cache_dtype', 'kv_cache_memory_bytes', 'kv_cache_metrics', 'kv_cache_metrics_sample',
    'kv_events_config', 'kv_offloading_backend', 'kv_offloading_size', 'kv_sharing_fast_prefill',
    'kv_transfer_config', 'limit_mm_per_prompt', 'load_format', 'logits_processor_pattern',
    'logits_processors', 'logprobs_mode', 'long_prefill_token_threshold', 'lora_dtype',
    'mamba_block_size', 'mamba_cache_dtype', 'mamba_ssm_cache_dtype', 'master_addr', 'master_port',
    'max_cpu_loras', 'max_cudagraph_capture_size', 'max_logprobs', 'max_long_partial_prefills',
    'max_lora_rank', 'max_loras', 'max_model_len', 'max_num_batched_tokens',
    'max_num_partial_prefills', 'max_num_seqs', 'max_parallel_loading_workers', 'media_io_kwargs',
    'mm_encoder_attn_backend', 'mm_encoder_tp_mode', 'mm_processor_cache_gb',
    'mm_processor_cache_type', 'mm_processor_kwargs', 'mm_shm_cache_max_object_size_mb', 'model',
    'model_impl', 'model_loader_extra_config', 'model_weights', 'nnodes', 'node_rank',
    'num_gpu_blocks_override', 'optimization_level', 'otlp_traces_endpoint',
    'override_attention_dtype', 'override_generation_config', 'pipeline_parallel_size',
    'pooler_config', 'prefill_context_parallel_size', 'prefix_caching_hash_algo',
    'profiler_config', 'pt_load_map_location', 'quantization', 'ray_workers_use_nsight',
    'reasoning_parser', 'reasoning_parser_plugin', 'revision', 'runner',
    'safetensors_load_strategy', 'scheduler_cls', 'scheduling_policy', 'seed', 'served_model_name',
    'show_hidden_metrics_for_version', 'skip_mm_profiling', 'skip_tokenizer_init',
    'speculative_config', 'stream_interval', 'structured_outputs_config', 'swap_space',
    'tensor_parallel_size', 'tokenizer', 'tokenizer_mode', 'tokenizer_revision', 'tokens_only',
    'trust_remote_code', 'ubatch_size', 'use_tqdm_on_load', 'video_pruning_rate', 'worker_cls',
    'worker_extension_cls',
})

# vllm 0.14.0 `SamplingParams` is a msgspec Struct; its __init__ takes exactly these fields, by
# name or in this order by position (vllm/sampling_params.py). Recorded from the installed
# wheel as `SamplingParams.__struct_fields__`: 34 names.
SAMPLING_PARAMS_ORDER = (
    'n', 'presence_penalty', 'frequency_penalty', 'repetition_penalty', 'temperature', 'top_p',
    'top_k', 'min_p', 'seed', 'stop', 'stop_token_ids', 'ignore_eos', 'max_tokens', 'min_tokens',
    'logprobs', 'prompt_logprobs', 'flat_logprobs', 'detokenize', 'skip_special_tokens',
    'spaces_between_special_tokens', 'logits_processors', 'include_stop_str_in_output',
    'truncate_prompt_tokens', 'output_kind', 'skip_clone', 'output_text_buffer_length',
    '_all_stop_token_ids', 'structured_outputs', 'logit_bias', 'allowed_token_ids', 'extra_args',
    'bad_words', '_bad_words_token_ids', 'skip_reading_prefix_cache',
)
SAMPLING_PARAMS_FIELDS = frozenset(SAMPLING_PARAMS_ORDER)

# vllm 0.14.0 MultiModalConfig.get_limit_per_prompt: an unnamed modality allows 999 items.
DEFAULT_MM_LIMIT = 999
# Qwen3-ASR's vLLM processor (qwen-asr) declares audio as its only modality.
SUPPORTED_MODALITIES = ("audio",)
AUDIO_PLACEHOLDER = "<|audio_pad|>"
SAMPLE_RATE = 16000
HOP_LENGTH = 160  # WhisperFeatureExtractor: one mel frame per 160 samples (10 ms)


def audio_token_count(num_samples: int) -> int:
    """Audio tokens vLLM puts in place of one `<|audio_pad|>` for this many 16 kHz samples.

    The mel frame count is the feature extractor's attention mask taken every 160 samples,
    i.e. ceil(n / 160); qwen-asr's own `_get_feat_extract_output_lengths` maps frames to tokens
    (13 per 100 frames, i.e. per second). Checked against vllm 0.14.0's input processing of
    qwen-asr prompts: 1 s -> 13, 16001 samples -> 14, 270 s -> 3510, 300 s -> 3900.
    """
    from qwen_asr.core.transformers_backend.processing_qwen3_asr import (
        _get_feat_extract_output_lengths,
    )

    frames = -(-int(num_samples) // HOP_LENGTH)
    return int(_get_feat_extract_output_lengths(frames))


def _num_samples(item: Any) -> int:
    """Length at 16 kHz of one audio item: an array, or an (array, sample_rate) pair."""
    if isinstance(item, tuple):
        samples, rate = item
        return math.ceil(len(samples) * SAMPLE_RATE / rate)  # vLLM resamples to 16 kHz
    return len(item)


class SamplingParams:
    """Records its arguments in `.kwargs`; refuses what vllm 0.14.0's SamplingParams refuses."""

    def __init__(self, *args: Any, **kwargs: Any):
        if len(args) > len(SAMPLING_PARAMS_ORDER):
            raise TypeError("Extra positional arguments provided")
        for name, value in zip(SAMPLING_PARAMS_ORDER, args):
            if name in kwargs:
                raise TypeError(f"Argument '{name}' given by name and position")
            kwargs[name] = value
        for name in kwargs:
            if name not in SAMPLING_PARAMS_FIELDS:
                raise TypeError(f"Unexpected keyword argument '{name}'")
        self.kwargs = kwargs
        self.temperature = kwargs.get("temperature", 1.0)  # the real defaults
        self.max_tokens = kwargs.get("max_tokens", 16)
        self.ignore_eos = kwargs.get("ignore_eos", False)
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")

    def __repr__(self) -> str:
        return f"SamplingParams({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"


@dataclass
class CompletionOutput:
    """The attributes of vllm 0.14.0's CompletionOutput (vllm/outputs.py)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    routed_experts: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The attributes of vllm 0.14.0's RequestOutput that a finished generate() returns."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Any = None
    lora_request: Any = None
    encoder_prompt: str | None = None
    encoder_prompt_token_ids: list[int] | None = None
    num_cached_tokens: int | None = None
    multi_modal_placeholders: dict = field(default_factory=dict)
    kv_transfer_params: Any = None


def _config_max_model_len(model: str) -> int | None:
    """vLLM's default max_model_len: the text model's max_position_embeddings."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
        return int(config["thinker_config"]["text_config"]["max_position_embeddings"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


class LLM:
    """`vllm.LLM` with the real argument set; `generate` answers SCRIPT to every prompt."""

    def __init__(self, model: str, **kwargs: Any):
        for name in kwargs:
            if name not in LLM_ARGUMENTS:
                raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{name}'")
        self.model = model
        self.kwargs = kwargs
        self.calls: list[list[Any]] = []
        self.sampling_params: Any = None
        self.max_model_len = kwargs.get("max_model_len") or _config_max_model_len(model)
        self._limits = {}
        for modality, limit in (kwargs.get("limit_mm_per_prompt") or {}).items():
            self._limits[modality] = limit["count"] if isinstance(limit, dict) else int(limit)
        from transformers import AutoTokenizer  # the real LLM loads the tokenizer at start-up too

        self._tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)
        self._audio_token_id = self._tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
        self._requests = 0
        CREATED.append(self)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None,
                 priority=None) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        self.calls.append(prompts)
        self.sampling_params = sampling_params
        if sampling_params is None:
            sampling_params = SamplingParams()
        per_prompt = isinstance(sampling_params, (list, tuple))
        if per_prompt and len(sampling_params) != len(prompts):
            raise ValueError("The lengths of prompts and params must be the same.")
        # Like vLLM: every request is validated as it is added; the first bad one fails the call.
        requests = [self._process(prompt) for prompt in prompts]
        return [self._answer(text, ids, sampling_params[i] if per_prompt else sampling_params)
                for i, (text, ids) in enumerate(requests)]

    def _process(self, prompt: Any) -> tuple[str | None, list[int]]:
        """Prompt token ids as vLLM builds them, or the error vLLM raises for this prompt."""
        if isinstance(prompt, str):
            prompt = {"prompt": prompt}
        if not isinstance(prompt, dict):
            raise TypeError(f"the vllm stand-in takes str or dict prompts, got {type(prompt)}")
        mm_data = prompt.get("multi_modal_data") or {}
        for modality, items in mm_data.items():
            count = len(items) if isinstance(items, list) else 1
            supported = modality in SUPPORTED_MODALITIES
            limit = self._limits.get(modality, DEFAULT_MM_LIMIT) if supported else 0
            if count > limit:  # vllm/multimodal/processing.py validate_num_items
                raise ValueError(f"At most {limit} {modality}(s) may be provided in one prompt.")
        audios = mm_data.get("audio", [])
        audios = audios if isinstance(audios, list) else [audios]

        text = prompt.get("prompt")
        if "prompt_token_ids" in prompt:
            raw_ids = list(prompt["prompt_token_ids"])
        else:
            raw_ids = self._tokenizer(text)["input_ids"]
        ids: list[int] = []
        pending = [audio_token_count(_num_samples(a)) for a in audios]
        for token in raw_ids:
            if token == self._audio_token_id and pending:
                ids.extend([token] * pending.pop(0))
            else:
                ids.append(token)
        if pending:
            raise AssertionError(
                f"Failed to apply prompt replacement for mm_items['audio'][{len(audios) - len(pending)}]")
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        if self.max_model_len is not None and len(ids) > self.max_model_len:
            # vllm/v1/engine/input_processor.py _validate_model_input, multimodal wording
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length "
                f"of {self.max_model_len}. Make sure that `max_model_len` is no smaller than the "
                "number of text tokens plus multimodal tokens. For image inputs, the number of "
                "image tokens depends on the number of images, and possibly their aspect ratios "
                "as well.")
        return text, ids

    def _answer(self, prompt: str | None, prompt_ids: list[int],
                params: SamplingParams) -> RequestOutput:
        """SCRIPT's tokens then EOS, cut like vLLM's stop check: at max_tokens or max_model_len."""
        reply = self._tokenizer(SCRIPT, add_special_tokens=False)["input_ids"]
        eos = self._tokenizer.eos_token_id
        if eos is not None and not params.ignore_eos:
            reply = reply + [eos]
        room = len(reply)
        if params.max_tokens is not None:
            room = min(room, params.max_tokens)
        if self.max_model_len is not None:  # checked after each token: at least one is made
            room = min(room, max(1, self.max_model_len - len(prompt_ids)))
        if room >= len(reply):
            text, finish, token_ids = SCRIPT, "stop", reply
        else:
            token_ids = reply[:room]
            text = self._tokenizer.decode(token_ids, skip_special_tokens=True)
            finish = "length"
        self._requests += 1
        out = CompletionOutput(index=0, text=text, token_ids=token_ids, finish_reason=finish)
        return RequestOutput(request_id=str(self._requests), prompt=prompt,
                             prompt_token_ids=prompt_ids, prompt_logprobs=None, outputs=[out],
                             finished=True)


class ModelRegistry:
    registered: dict = {}

    @classmethod
    def register_model(cls, name, model_cls):
        cls.registered[name] = model_cls
