"""Start-up: the GPU path's import order, settings that cannot fail later, model checks that
explain themselves in one line, and the acceptance self-test."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import media
from models import engine_for
from qwen_worker.base.config import ConfigError, chunk_token_budget, load_settings
from qwen_worker.engines.model_files import StartupError, check_model_dir, resolve_model
from qwen_worker.base.types import Options
from qwen_worker.pipeline.transcribe import transcribe_samples
from worker_server import ROOT, run_test_input, worker_env

ORDER_PROBE = r"""
import builtins, os, sys
seen = {}
real_import = builtins.__import__
def spy(name, *args, **kwargs):
    if name.split(".")[0] == "torch" and "torch" not in seen:
        seen["torch"] = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
sys.path.insert(0, "src")
import handler  # the entry point's own imports, in its order
from qwen_worker.base.config import load_settings
import torch
# Pretend this CPU build has CUDA and record which device-count path answers:
# cudaGetDeviceCount initialises the CUDA runtime (fork-unsafe), NVML does not.
calls = []
torch.cuda._is_compiled = lambda: True
torch._C._cuda_getDeviceCount = lambda: calls.append("cuda runtime") or 1
nvml = int(sys.argv[1])
torch.cuda._raw_device_count_nvml = lambda: calls.append("nvml") or nvml
settings = load_settings({})
print(json.dumps({"env_at_torch_import": seen.get("torch"), "calls": calls,
                  "device": settings.device, "initialized": torch.cuda.is_initialized()}))
"""


def _order_probe(nvml_devices: int) -> dict:
    out = subprocess.run([sys.executable, "-c", "import json\n" + ORDER_PROBE, str(nvml_devices)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cuda_is_probed_through_nvml_and_the_variable_precedes_torch():
    """The worker's own process never creates a CUDA context (~0.5 GiB): only vLLM's engine
    processes use the GPU."""
    probe = _order_probe(nvml_devices=1)
    assert probe["env_at_torch_import"] == "1"
    assert set(probe["calls"]) == {"nvml"} and probe["device"] == "cuda"
    assert probe["initialized"] is False


def test_vllm_max_model_len_must_hold_the_longest_chunk_request():
    base = {"ASR_BACKEND": "vllm", "MAX_NEW_TOKENS": "2048", "MAX_CONTEXT_TOKENS": "2048"}
    need = 3900 + 64 + 2048 + 2048
    assert chunk_token_budget(load_settings({**base, "VLLM_MAX_MODEL_LEN": str(need)})) == need
    with pytest.raises(ConfigError) as err:
        load_settings({**base, "VLLM_MAX_MODEL_LEN": str(need - 1)})
    message = str(err.value)
    assert "\n" not in message and "VLLM_MAX_MODEL_LEN" in message and str(need) in message
    assert load_settings({"ASR_BACKEND": "vllm"}).vllm_max_model_len >= need  # the defaults fit
    # The transformers backend has no such limit.
    load_settings({**base, "ASR_BACKEND": "transformers", "VLLM_MAX_MODEL_LEN": "1024"})


def test_context_is_cut_to_the_token_budget(model_dirs):
    engine = engine_for(model_dirs["english"], model_dirs["aligner"], MAX_CONTEXT_TOKENS="5")
    seen = []
    real = engine._model._infer_asr
    engine._model._infer_asr = lambda ctx, *a: seen.extend(ctx) or real(ctx, *a)
    context = "Aiyana Whitehorse, Qwen, RunPod, vLLM, Kubernetes, PyTorch"
    t = transcribe_samples(media.samples_with_gaps(5.0, []), Options(context=context), engine)
    assert "context was cut to MAX_CONTEXT_TOKENS tokens" in t.warnings
    tokens = engine._tokenizer(seen[0], add_special_tokens=False)["input_ids"]
    assert len(tokens) <= 5 and context.startswith(seen[0])


@pytest.fixture
def asr_copy(model_dirs, tmp_path) -> Path:
    d = tmp_path / "asr"
    shutil.copytree(model_dirs["english"], d)
    return d


def test_model_directory_faults_name_the_path_and_the_setting(asr_copy: Path):
    check_model_dir(asr_copy, "ASR_MODEL")
    weights = next(asr_copy.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(StartupError, match=r"ASR_MODEL: .*safetensors is truncated"):
        check_model_dir(asr_copy, "ASR_MODEL")
    weights.write_bytes(data[:100])
    with pytest.raises(StartupError, match="not a readable safetensors file"):
        check_model_dir(asr_copy, "ASR_MODEL")
    weights.unlink()
    with pytest.raises(StartupError, match="no weight files"):
        check_model_dir(asr_copy, "ASR_MODEL")
    (asr_copy / "config.json").unlink()
    with pytest.raises(StartupError, match="config.json is missing"):
        check_model_dir(asr_copy, "ASR_MODEL")
    with pytest.raises(StartupError, match="ALIGNER_MODEL=/nonexistent: no such model directory"):
        resolve_model("/nonexistent", "ALIGNER_MODEL")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if "start-up failed" in ln]
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("fault", ["missing", "truncated", "hub unreachable"])
def test_test_input_start_up_failures_are_one_line(model_dirs, asr_copy, tmp_path, fault):
    asr = str(asr_copy)
    extra = {}
    if fault == "missing":
        asr = "/nonexistent"
    elif fault == "truncated":
        weights = next(asr_copy.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:-4096])
    else:
        asr = "Qwen/Qwen3-ASR-0.6B"
        # A hub that refuses connections at once (loopback only: never the real hub).
        extra = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HUB_OFFLINE": "0",
                 "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    env = worker_env(Path(asr), model_dirs["aligner"], tmp_path / "work", **extra)
    proc = run_test_input(env, {"input": {"audio_url": "http://127.0.0.1:9/a.mp3"}}, timeout=120)
    _one_line_failure(proc, f"ASR_MODEL={asr}" if fault != "truncated" else "ASR_MODEL",
                      {"missing": "no such model directory", "truncated": "truncated",
                       "hub unreachable": "could not get the model from the hub"}[fault])


def test_bad_setting_is_one_line_naming_it(model_dirs, tmp_path):
    env = worker_env(model_dirs["english"], model_dirs["aligner"], tmp_path / "work",
                     MAX_NEW_TOKENS="lots")
    proc = run_test_input(env, {"input": {}}, timeout=120)
    _one_line_failure(proc, "MAX_NEW_TOKENS must be an integer")


def _self_test(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "src" / "handler.py"), "--self-test"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_self_test_passes_with_working_models_and_prints_its_figures(model_dirs, tmp_path):
    assert shutil.which("espeak-ng"), "CI installs espeak-ng (.ci/run): the self-test speaks"
    proc = _self_test(worker_env(model_dirs["english"], model_dirs["aligner"], tmp_path / "w"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "espeak-ng speech, 2 chunks" in proc.stdout
    for figure in ("ready ", " s after process start | clip ", "RTF ", "GPU memory: no GPU"):
        assert figure in proc.stdout
    # The start-up's phase lines, as the worker logs them (qwen_worker.startup).
    for phase in ("settings", "models"):
        assert re.search(rf"^start-up phase: {phase} [\d.]+ s \([\d.]+ -> [\d.]+ s after "
                         "process start", proc.stdout, re.M), proc.stdout
    assert proc.stdout.rstrip().endswith("self-test passed")


def test_self_test_fails_when_speech_gives_no_text(model_dirs, tmp_path):
    assert shutil.which("espeak-ng"), "CI installs espeak-ng (.ci/run): the self-test speaks"
    proc = _self_test(worker_env(model_dirs["silent"], model_dirs["aligner"], tmp_path / "w"))
    assert proc.returncode == 1
    assert "FAIL no text for a clip of speech" in proc.stdout
    assert proc.stdout.rstrip().endswith("self-test FAILED")



# -- the compile cache's folder and the engines' KV caches (pure: no engine starts) ----------

def test_the_compile_cache_goes_to_the_network_volume_when_one_is_mounted(tmp_path):
    from qwen_worker.engines.vllm.compile_cache import choose

    volume, container = tmp_path / "runpod-volume", tmp_path / "container"
    kwargs = {"volume": volume, "volume_cache": volume / "cache", "container": container}
    # No volume: the container's disk (vLLM's own default place).
    assert choose("", {}, **kwargs).path == container
    volume.mkdir()
    root = choose("", {}, **kwargs)
    assert root.path == volume / "cache" and root.path.is_dir()
    assert list(root.path.iterdir()) == []  # the write check left nothing behind
    # The deployment's own choice wins: our setting, then vLLM's variable.
    assert choose("", {"VLLM_CACHE_ROOT": str(tmp_path / "v")}, **kwargs).path == tmp_path / "v"
    assert choose(str(tmp_path / "mine"), {"VLLM_CACHE_ROOT": str(tmp_path / "v")},
                  **kwargs).path == tmp_path / "mine"


def test_a_compile_cache_folder_that_cannot_be_written_falls_back_with_a_warning(tmp_path,
                                                                                caplog):
    from qwen_worker.engines.vllm.compile_cache import choose

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    root = choose(str(blocked / "cache"), {}, volume=tmp_path / "none",
                  volume_cache=tmp_path / "none" / "c", container=tmp_path / "container")
    assert root.path == tmp_path / "container" and "not usable" in root.why
    assert "COMPILE_CACHE_DIR" in caplog.text and "not usable" in caplog.text


def test_start_up_says_whether_each_engine_found_its_compiled_graphs():
    from qwen_worker.engines.vllm.compile_cache import verdict

    assert verdict({"loaded": 2, "compiled": 0, "saved": 0, "dir": "", "seconds": 5.1}) == \
        "compile cache: hit (2 artifacts loaded)"
    assert verdict({"loaded": 0, "compiled": 3, "saved": 3, "dir": "", "seconds": 31.0}) \
        .startswith("compile cache: miss (compiled in 31.0 s")
    assert verdict({"loaded": 0, "compiled": 0, "saved": 0, "dir": "", "seconds": 0}) == \
        "compile cache: not used (eager)"
    assert verdict(None) == "compile cache: unknown"


def test_each_engine_gets_its_share_of_the_card_less_its_weights_and_the_reserve(model_dirs):
    from qwen_worker.engines.model_files import parameter_count
    from qwen_worker.engines.vllm.loader import GIB, kv_cache_plan

    asr, aligner = str(model_dirs["english"]), str(model_dirs["aligner"])
    settings = load_settings({"ASR_BACKEND": "vllm", "ASR_DTYPE": "bfloat16",
                              "VLLM_ACTIVATION_RESERVE_GIB": "1.5"})
    plan = kv_cache_plan(settings, asr, aligner, 80 * GIB)
    weights = parameter_count(model_dirs["english"]) * 2  # bf16
    assert weights > 0
    assert plan.asr_bytes == int(80 * GIB * 0.45) - weights - int(1.5 * GIB)
    assert plan.aligner_bytes == (int(80 * GIB * 0.30)
                                  - parameter_count(model_dirs["aligner"]) * 2 - int(1.5 * GIB))
    # No card known, or the setting asks vLLM to profile: no fixed sizes.
    assert kv_cache_plan(settings, asr, aligner, None) is None
    profiled = load_settings({"ASR_BACKEND": "vllm", "VLLM_KV_CACHE_SIZING": "profiled"})
    assert kv_cache_plan(profiled, asr, aligner, 80 * GIB) is None
    # A share that leaves no room for a KV cache is refused at start-up, naming the setting.
    small = load_settings({"ASR_BACKEND": "vllm", "VLLM_ALIGNER_GPU_MEMORY_UTILIZATION": "0.05"})
    with pytest.raises(StartupError, match=r"VLLM_ALIGNER_GPU_MEMORY_UTILIZATION=0.05 of this "
                                           r"card's 24.0 GiB .* raise VLLM_ALIGNER_GPU_MEMORY"):
        kv_cache_plan(small, asr, aligner, 24 * GIB)
    with pytest.raises(ConfigError, match="VLLM_KV_CACHE_SIZING must be"):
        load_settings({"VLLM_KV_CACHE_SIZING": "guess"})
