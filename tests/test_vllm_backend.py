"""The vLLM path, through a stand-in `vllm` module (tests/stand_ins/vllm): vllm 0.14.0 needs a
GPU and is not installable here. The real qwen-asr `Qwen3ASRModel.LLM` code drives it; we check
that our settings reach `vllm.LLM` and that its outputs are read back correctly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import media
from models import settings_for
from qwen_worker.config import load_settings
from qwen_worker.engine import load_engine, vllm_kwargs
from qwen_worker.pipeline import Options, transcribe_samples

STAND_INS = str(Path(__file__).parent / "stand_ins")


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(STAND_INS)
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    import vllm

    vllm.CREATED.clear()
    return vllm


def test_settings_reach_vllm_and_outputs_are_parsed(fake_vllm, model_dirs):
    settings = settings_for(model_dirs["english"], model_dirs["aligner"], ASR_BACKEND="vllm",
                            VLLM_GPU_MEMORY_UTILIZATION="0.55", VLLM_MAX_MODEL_LEN="6144",
                            VLLM_MAX_NUM_SEQS="48", MAX_NEW_TOKENS="1500")
    engine = load_engine(settings)
    (llm,) = fake_vllm.CREATED
    assert llm.model == str(model_dirs["english"])
    assert llm.kwargs == vllm_kwargs(settings)
    assert llm.kwargs["gpu_memory_utilization"] == 0.55 and llm.kwargs["max_model_len"] == 6144
    assert llm.kwargs["max_num_seqs"] == 48 and llm.kwargs["limit_mm_per_prompt"] == {"audio": 1}
    assert engine.backend == "vllm"

    audio = media.samples_with_gaps(100.0, [40.0])
    t = transcribe_samples(audio, Options(chunk_seconds=40, context="RunPod"), engine)
    (batch,) = llm.calls  # every chunk in one generate call
    assert len(batch) == len(t.chunks) >= 2
    assert llm.sampling_params.kwargs == {"temperature": 0.0, "max_tokens": 1500}
    for prompt, chunk in zip(batch, t.chunks):
        (wav,) = prompt["multi_modal_data"]["audio"]
        assert wav.shape[0] == round((chunk.end - chunk.start) * 16000)
        assert "RunPod" in prompt["prompt"]
    start = round(t.chunks[1].start * 16000)
    np.testing.assert_array_equal(batch[1]["multi_modal_data"]["audio"][0][:100], audio[start:start + 100])
    assert t.text == " ".join(["Hello from the stand-in."] * len(t.chunks))
    assert t.language == "English"
    assert [w.word for w in t.words[:4]] == ["Hello", "from", "the", "stand-in."]


def test_forced_language_goes_into_the_vllm_prompt(fake_vllm, model_dirs):
    fake_vllm.SCRIPT = "Bonjour."
    try:
        engine = load_engine(settings_for(model_dirs["english"], model_dirs["aligner"],
                                          ASR_BACKEND="vllm"))
        t = transcribe_samples(media.samples_with_gaps(10.0, []), Options(language="French"), engine)
    finally:
        fake_vllm.SCRIPT = "language English<asr_text>Hello from the stand-in."
    (prompt,) = fake_vllm.CREATED[0].calls[0]
    assert prompt["prompt"].endswith("language French<asr_text>")
    assert t.language == "French" and t.text == "Bonjour."


def test_default_backend_is_transformers_without_vllm_or_cuda():
    assert load_settings({}).backend == "transformers"


def test_cuda_turns_off_cudnn_attention_and_cpu_leaves_it():
    import torch

    from qwen_worker.engine import configure_torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        configure_torch("cpu")
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
        configure_torch("cuda")
        assert torch.backends.cuda.cudnn_sdp_enabled() is False
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
