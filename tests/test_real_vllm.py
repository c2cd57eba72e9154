"""The real vllm 0.22.0 (installed in CI as in the image) on CPU, up to input processing, on the
project's model directories, settings and exact prompts (tests/real_vllm_checks.py runs it in a
process of its own, with vLLM's CPU platform forced). Nothing here runs a model: that needs the
GPU (bench/gpu.py). It also proves that the stand-in used by the other tests (tests/stand_ins/
vllm) has the real package's surface and refuses with the real words.

Run it before every change to the GPU engine; CI runs it. REAL_VLLM_PYTHON may name another
interpreter that has the GPU stack (requirements-gpu.txt) installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_worker.base.config import load_settings
from qwen_worker.engines.prompts import asr_prompt
from signatures import parameters

HERE = Path(__file__).parent
SR = 16000


@pytest.fixture(scope="module")
def real(model_dirs, tmp_path_factory):
    python = os.environ.get("REAL_VLLM_PYTHON", sys.executable)
    out = tmp_path_factory.mktemp("real-vllm") / "found.json"
    run = subprocess.run([python, str(HERE / "real_vllm_checks.py"), str(model_dirs["english"]),
                          str(model_dirs["aligner"]), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (
        "the real vllm 0.22.0 checks failed (is the GPU stack of requirements-gpu.txt "
        "installed? scripts/setup.sh installs it):\n" + run.stderr[-4000:])
    return json.loads(out.read_text())


def test_the_installed_vllm_is_the_images(real):
    assert real["surface"]["vllm"] == "0.22.0"


def test_vllm_resolves_its_own_classes_after_qwen_asr_is_imported(real):
    assert real["classes"] == {
        "Qwen3ASRForConditionalGeneration": "vllm.model_executor.models.qwen3_asr",
        "Qwen3ASRForcedAlignerForTokenClassification":
            "vllm.model_executor.models.qwen3_asr_forced_aligner"}


def test_the_workers_engine_settings_make_real_engine_configs(real):
    settings = load_settings({"ASR_BACKEND": "vllm", "ASR_DEVICE": "cuda"})
    assert real["asr"] == {"architectures": ["Qwen3ASRForConditionalGeneration"],
                           "max_model_len": settings.vllm_max_model_len, "runner": "generate",
                           "dtype": "torch.bfloat16",
                           "max_num_batched_tokens": settings.vllm_max_num_batched_tokens,
                           "max_num_seqs": settings.vllm_max_num_seqs, "policy": "priority",
                           # the audio encoder's pass, not the 500 windows the models ship with
                           "conv_windows": settings.vllm_encoder_conv_windows}
    assert settings.vllm_encoder_conv_windows == 100
    aligner = real["aligner"]
    assert aligner["architectures"] == ["Qwen3ASRForcedAlignerForTokenClassification"]
    assert aligner["runner"] == "pooling" and aligner["tok_pooling_type"] == "STEP"
    assert aligner["step_tag_id"] == aligner["timestamp_token_id"]
    assert aligner["max_model_len"] == settings.vllm_aligner_max_model_len
    assert aligner["max_num_batched_tokens"] == settings.vllm_aligner_max_num_batched_tokens
    assert aligner["conv_windows"] == settings.vllm_encoder_conv_windows


def test_the_workers_prompts_are_processed_as_qwen_asr_builds_them(real):
    assert [(r["seconds"], r["audio_tokens"], r["same_ids_as_qwen_asr"])
            for r in real["asr_prompts"]] == [(30, 390, True), (270, 3510, True), (300, 3900, True)]
    assert real["longest_accepted"] is None  # 300 s + MAX_CONTEXT_TOKENS fit the defaults
    prompt = real["aligner_prompt"]
    assert prompt["timestamps"] == 2 * prompt["words"] == 18
    assert prompt["audio_tokens"] == 3510 and prompt["same_ids_as_qwen_asr"]
    assert prompt["pooling_task"] == "token_classify"
    assert prompt["step_tag_id"] == real["aligner"]["timestamp_token_id"]
    # Only the classes (80 ms bins) within the chunk's 270 s and one past its end come back:
    # vLLM's STEP pooling keeps those columns of the `<timestamp>` rows, in this order.
    assert prompt["returned_classes"] == list(range(270 * 1000 // 80 + 2))
    assert prompt["classes"] == 5000


def test_the_front_end_processes_prepare_what_the_engine_would_have_made(real):
    """frontend.FrontEnd: spawned processes, each with an InputProcessor built from the
    engine's own (pickled) VllmConfig, prepare input that the engine's own input processing
    accepts and turns into the same request as the raw prompt: same tokens, same audio
    features, the call's priority; each audio named after its request, so two processes never
    give two audios one name (the engine keys its encoder cache by it)."""
    front = real["frontend"]
    assert front["processes"] == 2
    assert front["warmed"] == [["asr"], ["asr"]]  # both started, each warmed up
    for engine in ("asr", "aligner"):
        row = front[engine]
        assert row["same_prompt_token_ids"] and row["same_features"], row
        assert row["priority"] == 30
        assert row["identifiers"] == [f"{engine}-7-audio-0", f"{engine}-8-audio-0"]
        assert row["raw_identifier"].startswith("renderer0-mm-")  # the counter it replaces
    assert front["error"].startswith("ValueError") and "Failed to apply" in front["error"]


def test_the_aligner_input_built_from_the_asrs_is_what_vllm_makes_of_the_aligner_prompt(real):
    """VllmEngine reuses the ASR's audio features for the aligner (no second feature
    extraction): for 30, 270 and 300 s of audio, the input it builds has the token ids,
    placeholder and features that vLLM's own processing of the aligner prompt gives, and the
    aligner engine's input processing accepts it (after the ASR engine's took the features).
    Also for lengths that are not whole chunks: a file's tail, a repair's short stretch."""
    assert [(r["seconds"], r["audio_tokens"]) for r in real["reuse"]][:3] == [
        (30, 390), (270, 3510), (300, 3900)]
    assert [r["seconds"] for r in real["reuse"]][3:] == [7.37, 0.6]
    for row in real["reuse"]:
        assert row["same_prompt_token_ids"] and row["same_placeholders"], row
        assert row["same_features"], row
        assert row["identifier"] == "al-audio-0"


def test_a_control_token_in_a_raw_context_breaks_real_input_processing(real):
    """Why contexts are cleaned (prompts.ContextFitter): an `<|audio_pad|>` in the text makes
    vLLM's processor fail; a cleaned one is plain text."""
    assert "Failed to apply Qwen3ASRProcessor" in real["refusals"]["audio_placeholder_in_context"]


def test_the_stand_in_has_the_real_surface_and_refusals(real, model_dirs, monkeypatch):
    stand_ins = HERE / "stand_ins"
    assert json.loads((stand_ins / "vllm" / "surface.json").read_text()) == real["surface"]
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(stand_ins))
    try:
        import vllm
        from vllm.v1.engine.async_llm import AsyncLLM

        from qwen_worker.engines.vllm.args import asr_engine_args

        settings = load_settings({"ASR_BACKEND": "vllm", "ASR_DEVICE": "cuda"})
        args = {**asr_engine_args(settings, str(model_dirs["english"])),
                "max_num_batched_tokens": 3899, "max_model_len": 4200}
        engine = AsyncLLM.from_engine_args(vllm.AsyncEngineArgs(**args))

        def refusal(prompt: str, audios: list[np.ndarray]) -> str:
            async def run():
                params = vllm.SamplingParams(max_tokens=4)
                data = {"audio": audios if len(audios) > 1 else audios[0]}
                async for _ in engine.generate({"prompt": prompt, "multi_modal_data": data},
                                               params, "r"):
                    pass
            with pytest.raises(ValueError) as err:
                asyncio.run(run())
            return str(err.value)

        five_min = np.zeros(300 * SR, np.float32)
        assert refusal(asr_prompt("", None), [five_min]) == real["refusals"]["encoder_cache"]
        engine.input_processor.max_num_batched_tokens = 16384  # past the encoder check
        assert refusal(asr_prompt("word " * 400, None), [five_min]) == \
            real["refusals"]["max_model_len"]
        assert refusal(asr_prompt("", None), [np.zeros(SR, np.float32)] * 2) == \
            real["refusals"]["two_audios"]
        for name, real_parameters in real["surface"]["AsyncLLM"].items():
            assert parameters(getattr(AsyncLLM, name)) == real_parameters, name
        assert "keep" in real["surface"]["PauseMode"]
        engine.shutdown()
    finally:
        for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
            del sys.modules[name]


def test_the_engine_failure_hidden_at_close_is_the_one_vllms_shutdown_order_causes(real):
    # AsyncLLM's module logger is the one the worker filters while closing, its output task
    # logs exactly the filtered message, and its shutdown stops the core before that task.
    assert real["shutdown"] == {"logger": True, "reports": True, "core_before_task": True}


def test_a_kept_pause_steps_nothing_and_drops_nothing(real):
    # The ASR engine's pause for a shorter call's alignment (vllm_engine.AsrPause) uses mode
    # "keep" with the caches kept: the real engine core answers it as soon as no step is under
    # way, then runs no step while its waiting and running requests stay where they were;
    # the resume gives it work again. "abort" would fail the longer jobs; PAUSED_NEW (what the
    # other modes set) would keep stepping the running ones.
    assert real["paused_scheduler"] == {
        "steps_before": True, "answered_at_once": True, "steps_while_paused": False,
        "requests_kept": [["w1", "w2"], ["r1"]], "steps_after_resume": True,
        "unfinished_by_state": {"UNPAUSED": 3, "PAUSED_NEW": 1, "PAUSED_ALL": 0}}


def test_a_real_engine_core_that_fails_its_start_leaves_no_process(model_dirs, tmp_path):
    """The real vLLM's engine core (and the worker process it spawns) on CPU, where it starts
    and then fails its initialisation: the worker exits with status 1 and nothing it started,
    at any depth, is left running (tests/reaper.py)."""
    python = os.environ.get("REAL_VLLM_PYTHON", sys.executable)
    left = tmp_path / "left.json"
    env = {**os.environ, "VLLM_CACHE_ROOT": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, str(HERE / "reaper.py"), str(left), "--", python,
                          str(HERE / "real_vllm_start.py"), str(model_dirs["english"]),
                          str(model_dirs["aligner"])],
                         env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert "(EngineCore pid=" in out  # the real engine core ran, in a process of its own
    assert "Engine core initialization failed" in out
    assert json.loads(left.read_text()) == []
