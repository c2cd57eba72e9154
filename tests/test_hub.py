"""The RunPod Hub listing: .runpod/handler.py runs the worker's one entry point, and
.runpod/hub.json and .runpod/tests.json hold only what RunPod's Hub publishing guide documents,
with values the worker and the image agree with.

Field lists from the Hub publishing guide, https://docs.runpod.io/hub/publishing-guide (its
source: runpod/docs, hub/publishing-guide.mdx), and GPU IDs and pools from
https://docs.runpod.io/references/gpu-types#gpu-pools (runpod/docs, references/gpu-types.mdx).
Nothing here touches the network: the Hub's test inputs are checked, never fetched.
"""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import media
from models import ENGLISH, ENGLISH_WORDS
from qwen_worker.base import config
from qwen_worker.jobs.request import parse_request
from worker_server import run_test_input, worker_env

ROOT = Path(__file__).resolve().parents[1]
RUNPOD_DIR = ROOT / ".runpod"
HUB_HANDLER = RUNPOD_DIR / "handler.py"
STAND_INS = Path(__file__).resolve().parent / "stand_ins"

# --- the publishing guide --------------------------------------------------------------------
HUB_FIELDS = {"title": True, "description": True, "type": True, "category": True,
              "iconUrl": False, "config": True}  # field -> required
CATEGORIES = {"audio", "embedding", "language", "video", "image"}
GPU_CONFIG_FIELDS = {"runsOn": True, "containerDiskInGb": True, "gpuCount": True,
                     "gpuIds": True, "allowedCudaVersions": False, "env": False,
                     "presets": False}  # cpuFlavor only when runsOn is "CPU"
INPUT_TYPES = {"string", "number", "boolean", "huggingface"}
INPUT_FIELDS = {"name", "type", "description", "default", "advanced", "options", "min", "max",
                "trueValue", "falseValue"}
TEST_FIELDS = {"name": True, "input": True, "timeout": False}
TEST_GPU_CONFIG_FIELDS = {"gpuTypeId": True, "gpuCount": True, "env": False,
                          "allowedCudaVersions": False}
# GPU pools: memory (GB) and the GPU IDs each holds (pool table and GPU ID table of gpu-types).
GPU_POOLS = {
    "AMPERE_16": (16, {"NVIDIA RTX A4000", "NVIDIA RTX A4500", "NVIDIA RTX 4000 Ada Generation",
                       "NVIDIA RTX 2000 Ada Generation"}),
    "AMPERE_24": (24, {"NVIDIA L4", "NVIDIA RTX A5000", "NVIDIA GeForce RTX 3090"}),
    "ADA_24": (24, {"NVIDIA GeForce RTX 4090"}),
    "AMPERE_48": (48, {"NVIDIA RTX A6000", "NVIDIA A40"}),
    "ADA_48_PRO": (48, {"NVIDIA L40", "NVIDIA L40S", "NVIDIA RTX 6000 Ada Generation"}),
    "AMPERE_80": (80, {"NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"}),
    "ADA_80_PRO": (80, {"NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"}),
    "HOPPER_141": (141, {"NVIDIA H200"}),
}

# The CUDA versions RunPod accepts in allowedCudaVersions (the enum of allowedCudaVersions in
# its REST API, https://docs.runpod.io/api-reference/pods/POST/pods): a host's CUDA version is
# the newest its driver supports.
RUNPOD_CUDA_VERSIONS = {"13.0", "12.9", "12.8", "12.7", "12.6", "12.5", "12.4", "12.3", "12.2",
                        "12.1", "12.0", "11.8"}

# --- this worker -----------------------------------------------------------------------------
MIN_GPU_GB = 24  # the defaults (ASR engine 0.45 + aligner engine 0.30) are sized for 24 GB
# Hub test timeouts must cover a cold worker on the slowest card the listing allows (an L4):
# vLLM start-up, torch.compile and CUDA graph capture (293 s with a cold compile cache on an
# H200, BENCHMARKS.md; an L4 was not measured), then a short clip (download, decode, ASR,
# alignment: seconds on a GPU), with a factor 2 to spare.
COLD_START_S = 293
CLIP_S = 60
TIMEOUT_MARGIN = 2
# Test audio must come from a long-lived public sample, over https; tests never fetch it.
# runpod-workers/sample-inputs is RunPod's own sample media (its faster-whisper worker's Hub
# test reads gettysburg.wav from it); Hugging Face datasets hold the transformers docs' samples.
STABLE_AUDIO_SOURCES = {
    "github.com": "/runpod-workers/sample-inputs/raw/",
    "raw.githubusercontent.com": "/runpod-workers/sample-inputs/",
    "huggingface.co": "/datasets/",
}
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a")
JOB_INPUT_KEYS = {"audio_url", "audio_base64", "language", "context", "word_timestamps",
                  "formats", "chunk_seconds"}
WORKING_ROOM_GB = 2  # beyond the image and one download: vLLM/torch.compile caches, logs


def _json(name: str) -> dict:
    return json.loads((RUNPOD_DIR / name).read_text("utf-8"))


@pytest.fixture(scope="module")
def hub() -> dict:
    return _json("hub.json")


@pytest.fixture(scope="module")
def hub_tests() -> dict:
    return _json("tests.json")


def _fields(obj: dict, spec: dict[str, bool], where: str) -> None:
    unknown = set(obj) - set(spec)
    assert not unknown, f"{where}: fields the publishing guide does not define: {unknown}"
    missing = {f for f, required in spec.items() if required and f not in obj}
    assert not missing, f"{where}: required fields missing: {missing}"


# --- the entry point -------------------------------------------------------------------------

def test_the_hub_finds_a_handler_a_dockerfile_and_a_readme():
    # "in either the .runpod or root directory"; .runpod/ takes precedence over the root.
    for name in ("handler.py", "Dockerfile", "README.md"):
        assert (RUNPOD_DIR / name).is_file() or (ROOT / name).is_file(), name
    # The Hub must build and describe what the release workflow publishes: the root files.
    assert not (RUNPOD_DIR / "Dockerfile").exists() and not (RUNPOD_DIR / "README.md").exists()


def test_hub_handler_only_loads_src_handler_and_runs_it_under_a_main_guard():
    tree = ast.parse(HUB_HANDLER.read_text("utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "importlib", "pathlib"}, imported  # no worker code of its own
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                and n.name in ("handler", "handle", "main")]
    last = tree.body[-1]
    assert isinstance(last, ast.If) and ast.unparse(last.test) == "__name__ == '__main__'"
    assert "load_entry_point().main()" in ast.unparse(last)
    assert '"src" / "handler.py"' in HUB_HANDLER.read_text("utf-8")


def test_importing_the_hub_handler_starts_nothing():
    """vLLM's engine processes re-import the main script as __mp_main__: that must load no
    worker, no runpod and no torch."""
    probe = ("import runpy, sys\n"
             f"runpy.run_path({str(HUB_HANDLER)!r}, run_name='__mp_main__')\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('runpod', 'qwen_worker', 'torch', 'vllm', 'qwen_asr')))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def clip_url(host, tmp_path_factory) -> str:
    path = media.make_audio(tmp_path_factory.mktemp("hub-media") / "clip.mp3", 6.0)
    return host.file("/hub-clip.mp3", path.read_bytes())


def _job_output(done: subprocess.CompletedProcess) -> dict:
    """The output runpod's --test_input mode logs as `Job result: {...}` (a Python repr)."""
    lines = [line for line in done.stdout.splitlines() if "Job result: " in line]
    assert len(lines) == 1, done.stdout + done.stderr
    return ast.literal_eval(lines[0].split("Job result: ", 1)[1])["output"]


def test_hub_handler_transcribes_exactly_like_src_handler(model_dirs, clip_url, tmp_path):
    env = worker_env(model_dirs["english"], model_dirs["aligner"], tmp_path,
                     DOWNLOAD_ALLOW_LOOPBACK="true")
    job = {"input": {"audio_url": clip_url, "language": "auto", "formats": ["srt", "vtt"]}}

    hub_run = run_test_input(env, job, script=HUB_HANDLER)
    assert hub_run.returncode == 0, hub_run.stdout + hub_run.stderr
    out = _job_output(hub_run)
    assert out["text"] == ENGLISH and out["language"] == "English"
    assert [w["word"] for w in out["words"]] == ENGLISH_WORDS
    assert out["duration"] == pytest.approx(6.0, abs=0.05)
    assert out["srt"].startswith("1\n00:00:00,000 --> ") and out["vtt"].startswith("WEBVTT")
    assert out["model"]["backend"] == "transformers"

    src_run = run_test_input(env, job)
    assert src_run.returncode == 0, src_run.stdout + src_run.stderr
    same = {k: v for k, v in _job_output(src_run).items() if k not in ("timings", "rtf")}
    assert {k: v for k, v in out.items() if k not in ("timings", "rtf")} == same


# --- hub.json --------------------------------------------------------------------------------

def test_hub_json_has_the_documented_fields_only(hub):
    _fields(hub, HUB_FIELDS, "hub.json")
    assert isinstance(hub["title"], str) and hub["title"].strip()
    assert isinstance(hub["description"], str) and hub["description"].strip()
    assert hub["type"] == "serverless" and hub["category"] in CATEGORIES
    if "iconUrl" in hub:
        assert urlsplit(hub["iconUrl"]).scheme == "https"
    cfg = hub["config"]
    _fields(cfg, GPU_CONFIG_FIELDS, "hub.json config")
    assert cfg["runsOn"] == "GPU"
    assert isinstance(cfg["containerDiskInGb"], int) and cfg["containerDiskInGb"] > 0
    assert isinstance(cfg["gpuCount"], int) and cfg["gpuCount"] == 1
    assert all(isinstance(v, str) for v in cfg.get("allowedCudaVersions", []))


def _pools(gpu_ids: str) -> list[str]:
    """The pools of a gpuIds string; a "-GPU ID" entry removes one GPU from them."""
    pools = []
    for item in (part.strip() for part in gpu_ids.split(",")):
        if item.startswith("-"):
            assert any(item[1:] in ids for _, ids in GPU_POOLS.values()), f"unknown GPU {item}"
        else:
            assert item in GPU_POOLS, f"{item} is not a documented GPU pool"
            pools.append(item)
    return pools


def test_gpu_pools_exist_and_have_room_for_the_default_settings(hub):
    pools = _pools(hub["config"]["gpuIds"])
    assert pools and len(pools) == len(set(pools))
    for pool in pools:
        assert GPU_POOLS[pool][0] >= MIN_GPU_GB, f"{pool} has less than {MIN_GPU_GB} GB"


def _cuda_base() -> tuple[int, int]:
    match = re.search(r"^FROM\s+nvidia/cuda:(\d+)\.(\d+)\.\d+-",
                      (ROOT / "Dockerfile").read_text("utf-8"), re.M)
    assert match, "the Dockerfile's base is no longer an nvidia/cuda:X.Y.Z image"
    return int(match.group(1)), int(match.group(2))


def _cuda(version: str) -> tuple[int, int]:
    assert re.fullmatch(r"\d+\.\d+", version), version
    major, minor = version.split(".")
    return int(major), int(minor)


def test_allowed_cuda_versions_can_run_the_images_cuda(hub, hub_tests):
    # A host's CUDA version (its driver) must be at least the base image's: the image's torch
    # and vLLM are CUDA 13.0 builds (libcudart.so.13), so 13.0 and later only (driver >= 580).
    base = _cuda_base()
    listed = hub["config"]["allowedCudaVersions"]
    assert listed and len(listed) == len(set(listed))
    assert set(listed) <= RUNPOD_CUDA_VERSIONS, set(listed) - RUNPOD_CUDA_VERSIONS
    assert all(_cuda(v) >= base for v in listed), (listed, base)
    # every documented version that can run it is allowed: no host is turned away for nothing
    assert set(listed) == {v for v in RUNPOD_CUDA_VERSIONS if _cuda(v) >= base}, listed
    assert f"{base[0]}.{base[1]}" in listed  # and hosts at exactly that version are welcome
    tested = hub_tests["config"].get("allowedCudaVersions", [])
    assert set(tested) <= set(listed)


def _settings_field_names() -> set[str]:
    """The environment variables config.load_settings reads: the name in env.get("X") and in
    helper calls shaped like _int(env, "X", ...)."""
    tree = ast.parse(Path(config.__file__).read_text("utf-8"))
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, args = node.func, node.args
        if (isinstance(func, ast.Attribute) and func.attr == "get"
                and isinstance(func.value, ast.Name) and func.value.id == "env"
                and args and isinstance(args[0], ast.Constant)):
            names.add(args[0].value)
        elif (len(args) >= 2 and isinstance(args[0], ast.Name) and args[0].id == "env"
              and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)):
            names.add(args[1].value)
    return names


@pytest.fixture
def load_in_image(monkeypatch):
    """config.load_settings as on the image's GPU: CUDA present and vllm installed (the
    stand-in module is enough for the lookup; nothing imports it here)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.syspath_prepend(str(STAND_INS))
    return config.load_settings


def _raw(spec: dict, value) -> str:
    """The string the Hub puts into the environment for a value of this input."""
    if spec["type"] == "boolean":
        return spec["trueValue"] if value else spec["falseValue"]
    return str(value)


def _env_inputs(hub: dict) -> dict[str, dict]:
    return {e["key"]: e["input"] for e in hub["config"].get("env", []) if "input" in e}


def test_env_entries_are_documented_and_read_by_the_worker(hub):
    entries = hub["config"].get("env", [])
    keys = [e["key"] for e in entries]
    assert len(keys) == len(set(keys))
    read = _settings_field_names()
    assert {"ASR_BACKEND", "MAX_NEW_TOKENS", "VLLM_GPU_MEMORY_UTILIZATION"} <= read  # parser works
    for entry in entries:
        assert set(entry) in ({"key", "value"}, {"key", "input"}), entry
        assert entry["key"] in read, f"{entry['key']} is not read by qwen_worker/config.py"
        spec = entry.get("input")
        if spec is None:
            config.load_settings({entry["key"]: str(entry["value"])})
            continue
        assert set(spec) <= INPUT_FIELDS, (entry["key"], set(spec) - INPUT_FIELDS)
        assert spec["type"] in INPUT_TYPES and spec["name"] and spec["description"]
        assert isinstance(spec.get("advanced", False), bool)


def test_env_inputs_offer_only_values_the_worker_accepts(hub):
    for key, spec in _env_inputs(hub).items():
        if spec["type"] == "number":
            lo, hi, default = spec["min"], spec["max"], spec["default"]
            assert lo <= default <= hi, key
            values = [lo, default, hi]
        elif spec["type"] == "boolean":
            assert len({spec["trueValue"], spec["falseValue"]}) == 2
            assert isinstance(spec["default"], bool)
            values = [True, False]
            assert config.load_settings({key: spec["trueValue"]}) != \
                config.load_settings({key: spec["falseValue"]}), key
        elif "options" in spec:
            values = [option["value"] for option in spec["options"]]
            assert all(option["label"] for option in spec["options"])
            assert spec["default"] in values, key
        else:
            values = [spec["default"]]
        for value in values:
            config.load_settings({key: _raw(spec, value)})  # ConfigError if the worker refuses


def test_memory_share_inputs_fit_with_the_shares_the_hub_does_not_list(hub, load_in_image):
    """The two vLLM engines (ASR, aligner) share the card; the image refuses shares that add up
    to more than it allows. A share the Hub does not list stays at its default there, so every
    value the Hub offers for a listed share must fit with those defaults."""
    shares = {key: spec for key, spec in _env_inputs(hub).items()
              if key.endswith("GPU_MEMORY_UTILIZATION")}
    assert "VLLM_GPU_MEMORY_UTILIZATION" in shares
    for key, spec in shares.items():
        for value in (spec["min"], spec["default"], spec["max"]):
            load_in_image({key: _raw(spec, value)})  # ConfigError if the image refuses it


def test_any_two_inputs_at_their_limits_start_the_image(hub, load_in_image):
    """The Hub cannot tie one input's range to another's, so every value it offers must start
    the image together with every value of every other input (MAX_NEW_TOKENS up to 16384
    against the default VLLM_MAX_MODEL_LEN 8192 once let users pick settings no worker can
    start with). Checked for every pair at min, default and max; the rest at defaults."""
    choices = {}
    for key, spec in _env_inputs(hub).items():
        if spec["type"] == "number":
            choices[key] = {spec["min"], spec["default"], spec["max"]}
        elif spec["type"] == "boolean":
            choices[key] = {True, False}
        elif "options" in spec:
            choices[key] = {o["value"] for o in spec["options"]}
        else:
            choices[key] = {spec["default"]}
    specs = _env_inputs(hub)
    keys = sorted(choices)
    for n, a in enumerate(keys):
        for b in keys[n + 1:]:
            for va in choices[a]:
                for vb in choices[b]:
                    env = {a: _raw(specs[a], va), b: _raw(specs[b], vb)}
                    try:
                        load_in_image(env)
                    except config.ConfigError as exc:
                        pytest.fail(f"{env}: {exc}")


def test_token_rule_is_stated_where_users_pick_the_settings(hub):
    inputs = _env_inputs(hub)
    biggest = config.chunk_token_budget(config.load_settings(
        {"MAX_NEW_TOKENS": str(inputs["MAX_NEW_TOKENS"]["max"])}))
    assert biggest <= inputs["VLLM_MAX_MODEL_LEN"]["min"]
    for key in ("MAX_NEW_TOKENS", "VLLM_MAX_MODEL_LEN"):
        description = inputs[key]["description"]
        assert "Rule:" in description and "MAX_NEW_TOKENS" in description, key
        assert str(inputs["MAX_NEW_TOKENS"]["max"]) in description, key


def test_env_defaults_are_the_images_own_defaults(hub, load_in_image):
    # Setting a Hub default explicitly must change nothing against leaving it unset in the
    # image. The model folders are the ones the Dockerfile bakes (test_dockerfile checks that).
    image_default = load_in_image({})
    assert image_default.backend == "vllm" and image_default.dtype == "bfloat16"
    baked = {"ASR_MODEL": str(config.BAKED_ASR_DIR),
             "ALIGNER_MODEL": str(config.BAKED_ALIGNER_DIR)}
    for key, spec in _env_inputs(hub).items():
        if key in baked:
            assert spec["default"] == baked[key], key
            continue
        assert load_in_image({key: _raw(spec, spec["default"])}) == image_default, key


def test_presets_set_only_listed_inputs_to_accepted_values(hub):
    inputs = _env_inputs(hub)
    presets = hub["config"].get("presets", [])
    assert len({p["name"] for p in presets}) == len(presets)
    for preset in presets:
        assert set(preset) == {"name", "defaults"} and preset["name"] and preset["defaults"]
        for key, value in preset["defaults"].items():
            spec = inputs[key]
            kind = {"boolean": bool, "number": (int, float), "string": str}[spec["type"]]
            assert isinstance(value, kind), (preset["name"], key)
            assert spec["type"] == "boolean" or not isinstance(value, bool), (preset["name"], key)
            if spec["type"] == "number":
                assert spec["min"] <= value <= spec["max"], (preset["name"], key)
            if "options" in spec:
                assert value in [o["value"] for o in spec["options"]]
            config.load_settings({key: _raw(spec, value)})


def _image_size_table() -> tuple[list[float], float]:
    """README's "### Image size" table: the parts' sizes and the stated total, in GB."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("### Image size", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    parts, total = [], None
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.search(r"\d", cells[1]) or set(cells[1]) <= set("-: "):
            continue
        size = float(re.search(r"(\d+(?:\.\d+)?)\s*GB", cells[1]).group(1))
        if "total" in cells[0].lower():
            total = size
        else:
            parts.append(size)
    assert parts and total is not None, "README's Image size table lost its rows or total"
    return parts, total


def test_container_disk_holds_the_image_and_a_full_download(hub):
    parts, total = _image_size_table()
    assert total == pytest.approx(sum(parts), abs=0.5)
    download_gb = config.load_settings({}).max_download_bytes / 1e9
    need = total + download_gb + WORKING_ROOM_GB
    disk = hub["config"]["containerDiskInGb"]
    assert disk >= math.ceil(need), f"containerDiskInGb {disk} < {need:.1f} GB"


# --- tests.json ------------------------------------------------------------------------------

def test_tests_json_has_the_documented_fields_only(hub, hub_tests):
    _fields(hub_tests, {"tests": True, "config": True}, "tests.json")
    cfg = hub_tests["config"]
    _fields(cfg, TEST_GPU_CONFIG_FIELDS, "tests.json config")
    listed = set().union(*(GPU_POOLS[p][1] for p in _pools(hub["config"]["gpuIds"])))
    assert cfg["gpuTypeId"] in listed, "the Hub tests on a GPU the listing does not offer"
    assert cfg["gpuCount"] == hub["config"]["gpuCount"]
    read = _settings_field_names()
    for entry in cfg.get("env", []):
        assert set(entry) == {"key", "value"} and isinstance(entry["value"], str)
        assert entry["key"] in read
        config.load_settings({entry["key"]: entry["value"]})
    names = [t["name"] for t in hub_tests["tests"]]
    assert names and len(names) == len(set(names))
    for test in hub_tests["tests"]:
        _fields(test, TEST_FIELDS, f"tests.json test {test.get('name')}")
        assert isinstance(test["input"], dict) and isinstance(test["timeout"], int)


def test_test_inputs_are_jobs_the_worker_accepts(hub_tests):
    for test in hub_tests["tests"]:
        job = test["input"]
        assert set(job) <= JOB_INPUT_KEYS, test["name"]
        parse_request(job, config.load_settings({}).max_context_chars)


def test_test_audio_is_a_stable_public_https_sample(hub_tests):
    for test in hub_tests["tests"]:
        url = urlsplit(test["input"]["audio_url"])
        assert url.scheme == "https", test["name"]
        assert url.hostname in STABLE_AUDIO_SOURCES, f"{url.hostname} is not an allow-listed host"
        assert url.path.startswith(STABLE_AUDIO_SOURCES[url.hostname]), url.path
        assert url.path.lower().endswith(AUDIO_SUFFIXES) and not url.query and not url.fragment
        assert url.port is None and url.username is None


def test_test_timeouts_cover_a_cold_start_on_the_slowest_listed_gpu(hub_tests):
    need_ms = TIMEOUT_MARGIN * (COLD_START_S + CLIP_S) * 1000
    for test in hub_tests["tests"]:
        assert test["timeout"] >= need_ms, (test["name"], test["timeout"], need_ms)
