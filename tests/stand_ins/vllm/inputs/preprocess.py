"""`vllm.inputs.preprocess.InputPreprocessor`: a raw prompt to the processed input that
`AsyncLLM.generate`/`encode` admit without processing it again (vllm 0.22.0's EngineInput)."""

from __future__ import annotations

from typing import Any


class InputPreprocessor:
    def __init__(self, vllm_config: Any, renderer: Any = None, mm_registry: Any = None):
        self.engine = vllm_config.engine

    def preprocess(self, prompt: Any, tokenization_kwargs: Any = None) -> dict[str, Any]:
        ids, samples = self.engine._process(prompt)
        self.engine.preprocessed += 1
        return {"type": "multimodal", "prompt": prompt["prompt"], "prompt_token_ids": ids,
                "audio_samples": samples}
