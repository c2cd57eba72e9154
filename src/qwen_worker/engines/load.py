"""Loading the configured engine: the transformers backend, or vLLM's on a GPU."""

from __future__ import annotations

import logging

from qwen_worker.base.config import Settings
from qwen_worker.engines.base import Engine
from qwen_worker.engines.model_files import resolve_model

log = logging.getLogger(__name__)


def load_engine(settings: Settings) -> Engine:
    """Load both models once per worker process. vLLM starts processes: call only from __main__.

    Raises model_files.StartupError, naming the setting, for a model it cannot find or read.
    """
    asr_path = resolve_model(settings.asr_model, "ASR_MODEL")
    aligner_path = resolve_model(settings.aligner_model, "ALIGNER_MODEL")
    if settings.backend == "vllm":
        from qwen_worker.engines.vllm.loader import load_vllm_engine

        return load_vllm_engine(settings, asr_path, aligner_path)
    from qwen_worker.engines.qwen_asr import load_qwen_asr_engine

    return load_qwen_asr_engine(settings, asr_path, aligner_path)
