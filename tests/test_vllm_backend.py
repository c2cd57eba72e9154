"""The vLLM path, through a stand-in `vllm` module (tests/stand_ins/vllm): vllm 0.14.0 needs a
GPU. The real qwen-asr `Qwen3ASRModel.LLM` code drives it; we check that our settings reach
`vllm.LLM`, that its outputs are read back correctly, and that the stand-in refuses what the
real vllm 0.14.0 refuses (unknown arguments, a second audio, prompts over max_model_len)."""

from __future__ import annotations

import dataclasses
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
                            VLLM_GPU_MEMORY_UTILIZATION="0.55", VLLM_MAX_MODEL_LEN="12288",
                            VLLM_MAX_NUM_SEQS="48", MAX_NEW_TOKENS="1500")
    engine = load_engine(settings)
    (llm,) = fake_vllm.CREATED
    assert llm.model == str(model_dirs["english"])
    assert llm.kwargs == vllm_kwargs(settings)
    assert llm.kwargs["gpu_memory_utilization"] == 0.55 and llm.kwargs["max_model_len"] == 12288
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


SECOND = 16000  # samples


def _vllm_settings(model_dirs, **env):
    return settings_for(model_dirs["english"], model_dirs["aligner"], ASR_BACKEND="vllm", **env)


def _asr_request(engine, llm, seconds: float, language: str | None = None) -> dict:
    """The request qwen-asr really builds for one chunk of silence of this length."""
    engine.transcribe([np.zeros(int(seconds * SECOND), np.float32)], [language], [""])
    (request,) = llm.calls[-1]
    return request


def test_unknown_arguments_are_type_errors_as_in_vllm(fake_vllm, model_dirs, monkeypatch):
    model = str(model_dirs["english"])
    # max_new_tokens is qwen-asr's name; vLLM's is SamplingParams(max_tokens=...)
    with pytest.raises(TypeError, match=r"EngineArgs.__init__\(\) got an unexpected keyword "
                                        r"argument 'max_new_tokens'"):
        fake_vllm.LLM(model=model, max_new_tokens=512)
    with pytest.raises(TypeError, match="Unexpected keyword argument 'max_new_tokens'"):
        fake_vllm.SamplingParams(temperature=0.0, max_new_tokens=512)
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        fake_vllm.SamplingParams(max_tokens=0)

    # ... and through the worker's own load path, if its arguments ever held a stray name
    import qwen_worker.engine as engine_module

    real = engine_module.vllm_kwargs
    monkeypatch.setattr(engine_module, "vllm_kwargs", lambda s: {**real(s), "max_audio_seconds": 60})
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_audio_seconds'"):
        load_engine(_vllm_settings(model_dirs))
    assert fake_vllm.CREATED == []


def test_the_workers_vllm_arguments_are_real_vllm_arguments(fake_vllm, model_dirs):
    assert len(fake_vllm.LLM_ARGUMENTS) == 159 and "max_new_tokens" not in fake_vllm.LLM_ARGUMENTS
    settings = _vllm_settings(model_dirs)
    assert set(vllm_kwargs(settings)) <= fake_vllm.LLM_ARGUMENTS
    llm = fake_vllm.LLM(str(model_dirs["english"]), **vllm_kwargs(settings))
    assert llm.max_model_len == settings.vllm_max_model_len


def test_a_second_audio_in_one_prompt_is_rejected(fake_vllm, model_dirs):
    engine = load_engine(_vllm_settings(model_dirs))
    (llm,) = fake_vllm.CREATED
    request = _asr_request(engine, llm, 1.0)
    one = np.zeros(SECOND, np.float32)
    assert llm.generate([request], llm.sampling_params, use_tqdm=False)[0].finished
    two = {"prompt": request["prompt"], "multi_modal_data": {"audio": [one, one]}}
    with pytest.raises(ValueError, match=r"At most 1 audio\(s\) may be provided in one prompt"):
        llm.generate([request, two], llm.sampling_params, use_tqdm=False)


def test_prompt_tokens_count_audio_as_vllm_does(fake_vllm, model_dirs):
    engine = load_engine(_vllm_settings(model_dirs))
    (llm,) = fake_vllm.CREATED
    tokenizer = engine._tokenizer
    audio_id = tokenizer.convert_tokens_to_ids("<|audio_pad|>")
    prompt = _asr_request(engine, llm, 1.0)["prompt"]
    text_tokens = len(tokenizer(prompt)["input_ids"]) - 1  # the placeholder is replaced
    # audio tokens as vllm 0.14.0 computed them for qwen-asr prompts (13 a second, ceil'd frames)
    for samples, audio_tokens in [(SECOND, 13), (SECOND + 1, 14), (270 * SECOND, 3510),
                                  (300 * SECOND, 3900)]:
        request = {"prompt": prompt, "multi_modal_data": {"audio": [np.zeros(samples, np.float32)]}}
        (out,) = llm.generate([request], llm.sampling_params, use_tqdm=False)
        assert out.prompt_token_ids.count(audio_id) == audio_tokens
        assert len(out.prompt_token_ids) == text_tokens + audio_tokens


def test_a_prompt_over_max_model_len_is_a_value_error(fake_vllm, model_dirs):
    settings = _vllm_settings(model_dirs)
    engine = load_engine(settings)
    request = _asr_request(engine, fake_vllm.CREATED[0], 300.0)  # the longest chunk
    (out,) = fake_vllm.CREATED[0].generate([request], fake_vllm.CREATED[0].sampling_params)
    length = len(out.prompt_token_ids)

    exact = load_engine(dataclasses.replace(settings, vllm_max_model_len=length))
    (fits,) = exact.transcribe([np.zeros(300 * SECOND, np.float32)], [None], [""])
    assert fits.output_tokens >= 1  # no room left: vLLM still makes one token, then stops
    short = load_engine(dataclasses.replace(settings, vllm_max_model_len=length - 1))
    with pytest.raises(ValueError, match=rf"The decoder prompt \(length {length}\) is longer than "
                                         rf"the maximum model length of {length - 1}\."):
        short.transcribe([np.zeros(300 * SECOND, np.float32)], [None], [""])


def test_outputs_carry_token_ids_and_finish_reason(fake_vllm, model_dirs):
    engine = load_engine(_vllm_settings(model_dirs, MAX_NEW_TOKENS="256"))
    (llm,) = fake_vllm.CREATED
    tokenizer = engine._tokenizer
    request = _asr_request(engine, llm, 5.0)

    (out,) = llm.generate([request], llm.sampling_params, use_tqdm=False)
    (done,) = out.outputs
    assert done.finish_reason == "stop" and done.text == fake_vllm.SCRIPT
    assert done.token_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(done.token_ids, skip_special_tokens=True) == fake_vllm.SCRIPT
    assert out.prompt_token_ids and out.prompt == request["prompt"]

    cut = fake_vllm.SamplingParams(temperature=0.0, max_tokens=4)
    (out,) = llm.generate([request], cut, use_tqdm=False)
    (part,) = out.outputs
    assert part.finish_reason == "length" and len(part.token_ids) == 4
    assert fake_vllm.SCRIPT.startswith(part.text) and part.text != fake_vllm.SCRIPT

    # the worker sees a reply cut by MAX_NEW_TOKENS as one that hit the limit
    assert not engine.transcribe([np.zeros(5 * SECOND, np.float32)], [None], [""])[0].hit_token_limit
    fake_vllm.CREATED.clear()
    limited = load_engine(_vllm_settings(model_dirs, MAX_NEW_TOKENS="4"))
    (result,) = limited.transcribe([np.zeros(5 * SECOND, np.float32)], [None], [""])
    assert result.hit_token_limit
    assert fake_vllm.CREATED[0].sampling_params.kwargs["max_tokens"] == 4


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
