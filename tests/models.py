"""Session-wide tiny model directories and engines built from them (real qwen-asr code)."""

from __future__ import annotations

from pathlib import Path

import tiny_models
from qwen_worker.base.config import Settings, load_settings
from qwen_worker.engines.qwen_asr import QwenEngine
from qwen_worker.engines.load import load_engine

ENGLISH = "Hello, world. This is a test."
CHINESE = "你好，世界。这是测试。"
ENGLISH_WORDS = ["Hello,", "world.", "This", "is", "a", "test."]


def build_all(root: Path) -> dict[str, Path]:
    return {
        "english": tiny_models.build_asr_model(root / "asr-en", ENGLISH, "English"),
        "chinese": tiny_models.build_asr_model(root / "asr-zh", CHINESE, "Chinese"),
        "silent": tiny_models.build_asr_model(root / "asr-silent", "", "None"),
        "looping": tiny_models.build_looping_asr_model(root / "asr-loop", " again"),
        "aligner": tiny_models.build_aligner_model(root / "aligner"),
    }


def settings_for(asr: Path, aligner: Path, **env: str) -> Settings:
    return load_settings({"ASR_MODEL": str(asr), "ALIGNER_MODEL": str(aligner),
                          "ASR_BACKEND": "transformers", "ASR_DEVICE": "cpu",
                          "ASR_DTYPE": "float32", "MAX_NEW_TOKENS": "256", **env})


def engine_for(asr: Path, aligner: Path, **env: str) -> QwenEngine:
    return load_engine(settings_for(asr, aligner, **env))
