"""The two engines' arguments, built by one function for both models, and what the aligner's
model directory says about its output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwen_worker.base.config import Settings
from qwen_worker.base.languages import ALIGNER_LANGUAGES

ASR_ARCHITECTURE = "Qwen3ASRForConditionalGeneration"
ALIGNER_ARCHITECTURE = "Qwen3ASRForcedAlignerForTokenClassification"


def encoder_overrides(settings: Settings) -> dict[str, Any]:
    """Config overrides both engines share: the audio encoder's convolution pass size (its
    activations per pass are the largest block either engine allocates; base/config.py)."""
    return {"thinker_config": {"audio_config": {
        "conv_chunksize": settings.vllm_encoder_conv_windows}}}


def _engine_args(settings: Settings, model: str, **own: Any) -> dict[str, Any]:
    """The `AsyncEngineArgs` both engines share, with each one's own on top."""
    return {
        "model": model,
        "hf_overrides": encoder_overrides(settings),
        "dtype": settings.dtype,
        "limit_mm_per_prompt": {"audio": 1},
        # Audio never repeats: caching or prefix-hashing it only costs CPU and memory.
        "mm_processor_cache_gb": 0,
        "enable_prefix_caching": False,
        "scheduling_policy": "priority",
        "disable_log_stats": True,
        **own,
    }


def asr_engine_args(settings: Settings, model: str) -> dict[str, Any]:
    """`AsyncEngineArgs` of the ASR engine."""
    return _engine_args(
        settings, model,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        max_model_len=settings.vllm_max_model_len,
        # Also the encoder cache: one 300 s chunk is 3900 audio tokens (checked at start-up).
        max_num_batched_tokens=settings.vllm_max_num_batched_tokens,
        max_num_seqs=settings.vllm_max_num_seqs,
        enforce_eager=settings.vllm_enforce_eager)


def aligner_engine_args(settings: Settings, model: str, timestamp_token_id: int) -> dict[str, Any]:
    """`AsyncEngineArgs` of the aligner: a pooling model returning the `<timestamp>` rows."""
    from vllm.config import PoolerConfig

    return _engine_args(
        settings, model,
        runner="pooling",
        hf_overrides={"architectures": [ALIGNER_ARCHITECTURE], **encoder_overrides(settings)},
        pooler_config=PoolerConfig(tok_pooling_type="STEP", step_tag_id=timestamp_token_id),
        gpu_memory_utilization=settings.vllm_aligner_gpu_memory_utilization,
        max_model_len=settings.vllm_aligner_max_model_len,
        # At least a whole prompt in one step: the pooled rows come from one pass over it.
        max_num_batched_tokens=settings.vllm_aligner_max_num_batched_tokens,
        max_num_seqs=settings.vllm_aligner_max_num_seqs,
        enforce_eager=settings.vllm_aligner_enforce_eager)


class AlignerConfig:
    """What the aligner directory's config.json says about its output."""

    def __init__(self, model_dir: str):
        config = json.loads((Path(model_dir) / "config.json").read_text())
        self.timestamp_token_id = int(config["timestamp_token_id"])
        self.segment_ms = float(config["timestamp_segment_time"])
        self.classes = int((config.get("thinker_config") or {}).get("classify_num", 5000))
        declared = {str(x).lower() for x in config.get("support_languages") or ()}
        # An aligner that declares none gets the known 11 (as qwen-asr's own wrapper does).
        self.languages = (frozenset(n for n in ALIGNER_LANGUAGES if n.lower() in declared)
                          if declared else ALIGNER_LANGUAGES)

