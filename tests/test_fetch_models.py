"""builder/fetch_models.py without a hub: a stand-in for snapshot_download serves tiny generated
model repos, and the folders it leaves behind are loaded by the real qwen-asr code, offline."""

from __future__ import annotations

import importlib.util
import inspect
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny_models

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "Hello, world."
ASR_06 = "Qwen/Qwen3-ASR-0.6B"
ASR_17 = "Qwen/Qwen3-ASR-1.7B"
ALIGNER = "Qwen/Qwen3-ForcedAligner-0.6B"
DIARIZATION = "pyannote/speaker-diarization-community-1"
FETCH_ENV = ("ASR_MODEL_ID", "ASR_REVISION", "ALIGNER_MODEL_ID", "ALIGNER_REVISION",
             "ASR_DIR", "ALIGNER_DIR", "HF_TOKEN", "WITH_DIARIZATION", "DIARIZATION_REVISION",
             "DIARIZATION_DIR")


@pytest.fixture(scope="module")
def fetch_models():
    spec = importlib.util.spec_from_file_location("fetch_models", ROOT / "builder/fetch_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_models"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fetch_models", None)


def _shard(folder: Path) -> None:
    """Rewrite model.safetensors as two shards plus model.safetensors.index.json (the 1.7B
    repo's layout)."""
    from safetensors.torch import load_file, save_file

    single = folder / "model.safetensors"
    tensors = load_file(str(single))
    names = sorted(tensors)
    half = len(names) // 2
    weight_map, total = {}, 0
    for i, part in enumerate((names[:half], names[half:]), start=1):
        shard = f"model-0000{i}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / shard), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = shard
            total += tensors[n].numel() * tensors[n].element_size()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}), "utf-8")
    single.unlink()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """Repos as the stand-in hub serves them, at hub/<owner>/<name>, with files that
    inference does not need beside the ones it does."""
    root = tmp_path_factory.mktemp("hub")
    tiny_models.build_asr_model(root / ASR_06, SCRIPT, "English")
    tiny_models.build_asr_model(root / ASR_17, SCRIPT, "English")
    _shard(root / ASR_17)
    tiny_models.build_aligner_model(root / ALIGNER)
    for repo in (ASR_06, ASR_17, ALIGNER):
        (root / repo / ".gitattributes").write_text("*.safetensors filter=lfs\n", "utf-8")
        (root / repo / "configuration.json").write_text("{}", "utf-8")  # ModelScope's file
        (root / repo / "pytorch_model.bin").write_bytes(b"not needed")
    return root


class StandInHub:
    """Takes snapshot_download's place: copies the allowed files of hub/<repo_id> into
    local_dir, minus any file named in `drop` (a download that came back incomplete)."""

    def __init__(self, root: Path, drop: dict[str, set[str]] | None = None,
                 fail: Exception | None = None):
        self.root, self.drop, self.fail = root, drop or {}, fail
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import filter_repo_objects

        inspect.signature(snapshot_download).bind(**kwargs)  # only arguments the real one takes
        self.calls.append(kwargs)
        if self.fail is not None:
            raise self.fail
        repo = self.root / kwargs["repo_id"]
        names = [p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()]
        keep = filter_repo_objects(names, allow_patterns=kwargs.get("allow_patterns"),
                                   ignore_patterns=kwargs.get("ignore_patterns"))
        target = Path(kwargs["local_dir"])
        target.mkdir(parents=True, exist_ok=True)
        for name in keep:
            if name not in self.drop.get(kwargs["repo_id"], set()):
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(repo / name, target / name)
        return str(target)


@pytest.fixture
def clean_env(monkeypatch):
    for name in FETCH_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _run(fetch_models, monkeypatch, stand_in, tmp_path, *argv: str) -> int:
    monkeypatch.setattr(fetch_models, "snapshot_download", stand_in)
    return fetch_models.main(["--asr-dir", str(tmp_path / "asr"),
                              "--aligner-dir", str(tmp_path / "aligner"), *argv])


def _load_offline(monkeypatch, asr_dir: Path, aligner_dir: Path):
    """The real qwen-asr loaders on the baked folders, with the hub switched off as in the
    image (the flags are read at import, so the cached values are switched too)."""
    import huggingface_hub.constants
    import torch
    import transformers.utils.hub
    from qwen_asr import Qwen3ASRModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True, raising=False)
    return Qwen3ASRModel.from_pretrained(
        str(asr_dir), forced_aligner=str(aligner_dir),
        forced_aligner_kwargs={"dtype": torch.float32, "device_map": "cpu"},
        dtype=torch.float32, device_map="cpu", max_new_tokens=16)


def _transcribe_one_second(model):
    silence = (np.zeros(16000, dtype=np.float32), 16000)
    (result,) = model.transcribe(audio=silence, language=None, return_time_stamps=True)
    return result


def test_default_build_bakes_asr_06b_and_aligner_that_qwen_asr_loads_offline(
        fetch_models, hub, clean_env, tmp_path):
    clean_env.setenv("HF_TOKEN", "hf_secret_from_buildkit")
    clean_env.setenv("ASR_REVISION", "0123456789abcdef0123456789abcdef01234567")
    clean_env.setenv("ALIGNER_REVISION", "v1.0")
    stand_in = StandInHub(hub)

    assert _run(fetch_models, clean_env, stand_in, tmp_path) == 0

    assert [(c["repo_id"], c["revision"], c["token"], c["local_dir"]) for c in stand_in.calls] == [
        (ASR_06, "0123456789abcdef0123456789abcdef01234567", "hf_secret_from_buildkit",
         str(tmp_path / "asr")),
        (ALIGNER, "v1.0", "hf_secret_from_buildkit", str(tmp_path / "aligner")),
    ]
    for call in stand_in.calls:
        assert call["allow_patterns"] == list(fetch_models.ALLOW_PATTERNS)
    for folder in (tmp_path / "asr", tmp_path / "aligner"):
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer_config.json",
                "preprocessor_config.json"} <= names
        assert not names & {"README.md", ".gitattributes", "configuration.json",
                            "pytorch_model.bin"}

    model = _load_offline(clean_env, tmp_path / "asr", tmp_path / "aligner")
    result = _transcribe_one_second(model)
    assert (result.language, result.text) == ("English", SCRIPT)
    assert [item.text for item in result.time_stamps.items] == ["Hello", "world"]


def test_asr_model_id_selects_the_sharded_17b_repo(fetch_models, hub, clean_env, tmp_path):
    clean_env.setenv("ASR_MODEL_ID", ASR_17)  # the Dockerfile's build arg arrives as env
    stand_in = StandInHub(hub)

    assert _run(fetch_models, clean_env, stand_in, tmp_path) == 0

    assert [(c["repo_id"], c["revision"], c["token"]) for c in stand_in.calls] == [
        (ASR_17, "main", None), (ALIGNER, "main", None)]
    names = {p.name for p in (tmp_path / "asr").iterdir()}
    assert {"model.safetensors.index.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"} <= names
    model = _load_offline(clean_env, tmp_path / "asr", tmp_path / "aligner")
    assert _transcribe_one_second(model).text == SCRIPT


def test_command_line_flags_override_the_environment(fetch_models):
    plan = fetch_models.plan(["--asr-model", ASR_06, "--asr-revision", "abc",
                              "--aligner-revision", "def"], {"ASR_MODEL_ID": ASR_17})
    assert [(m.role, m.repo_id, m.revision) for m in plan.models] == [
        ("asr", ASR_06, "abc"), ("aligner", ALIGNER, "def")]
    assert plan.token is None
    assert [m.local_dir for m in fetch_models.plan([], {}).models] == [
        Path("/models/asr"), Path("/models/aligner")]


def test_allow_patterns_keep_exactly_the_inference_files_of_the_real_repos(fetch_models):
    from huggingface_hub.utils import filter_repo_objects

    # File lists of the Hugging Face repos (Qwen3-ASR-0.6B / ForcedAligner-0.6B: one
    # model.safetensors; Qwen3-ASR-1.7B: shards plus index).
    shared = ["chat_template.json", "config.json", "generation_config.json", "merges.txt",
              "preprocessor_config.json", "tokenizer_config.json", "vocab.json"]
    for weights in (["model.safetensors"],
                    ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"]):
        listing = [".gitattributes", "README.md", *shared, *weights]
        kept = filter_repo_objects(listing, allow_patterns=list(fetch_models.ALLOW_PATTERNS))
        assert sorted(kept) == sorted(shared + weights)


def test_missing_weight_shard_fails_the_build_naming_the_file(
        fetch_models, hub, clean_env, tmp_path, capsys):
    stand_in = StandInHub(hub, drop={ASR_17: {"model-00002-of-00002.safetensors"}})

    assert _run(fetch_models, clean_env, stand_in, tmp_path, "--asr-model", ASR_17) == 1

    err = capsys.readouterr().err
    assert "missing weight shard(s)" in err and "model-00002-of-00002.safetensors" in err
    assert len(stand_in.calls) == 1  # stopped before fetching the aligner


@pytest.mark.parametrize("repo, dropped, message", [
    (ALIGNER, "tokenizer_config.json", "missing tokenizer_config.json"),
    (ASR_06, "tokenizer.json", "missing tokenizer file vocab.json"),
    (ASR_06, "preprocessor_config.json", "missing preprocessor_config.json"),
    (ASR_06, "chat_template.jinja", "missing chat template"),
    (ASR_06, "config.json", "missing config.json"),
    (ALIGNER, "model.safetensors", "missing weights"),
])
def test_missing_inference_file_fails_the_build_naming_it(
        fetch_models, hub, clean_env, tmp_path, capsys, repo, dropped, message):
    stand_in = StandInHub(hub, drop={repo: {dropped}})

    assert _run(fetch_models, clean_env, stand_in, tmp_path) == 1

    err = capsys.readouterr().err
    assert err.startswith("fetch_models: ERROR: ") and message in err


def test_vocab_and_merges_stand_for_tokenizer_json(fetch_models, hub, tmp_path):
    """The Qwen repos ship vocab.json + merges.txt rather than tokenizer.json."""
    folder = tmp_path / "asr"
    shutil.copytree(hub / ASR_06, folder)
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text("{}", "utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", "utf-8")
    spec = fetch_models.ModelSpec("asr", ASR_06, "main", folder)
    fetch_models.verify(spec)

    (folder / "merges.txt").unlink()
    with pytest.raises(fetch_models.FetchError, match="missing tokenizer file merges.txt"):
        fetch_models.verify(spec)


def test_truncated_or_pointer_weights_fail(fetch_models, hub, tmp_path):
    folder = tmp_path / "aligner"
    shutil.copytree(hub / ALIGNER, folder)
    spec = fetch_models.ModelSpec("aligner", ALIGNER, "main", folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[:-100])
    with pytest.raises(fetch_models.FetchError, match="truncated"):
        fetch_models.verify(spec)

    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n", "utf-8")
    with pytest.raises(fetch_models.FetchError, match="not a safetensors file"):
        fetch_models.verify(spec)


def test_swapped_repos_fail_on_model_type(fetch_models, hub, clean_env, tmp_path, capsys):
    stand_in = StandInHub(hub)
    assert _run(fetch_models, clean_env, stand_in, tmp_path, "--asr-model", ALIGNER) == 1
    assert "is a forced aligner, not an ASR model" in capsys.readouterr().err

    assert _run(fetch_models, clean_env, stand_in, tmp_path / "2", "--aligner-model", ASR_06) == 1
    assert "is not a Qwen3-ForcedAligner" in capsys.readouterr().err


def test_hub_errors_fail_the_build_naming_repo_and_revision(
        fetch_models, hub, clean_env, tmp_path, capsys):
    stand_in = StandInHub(hub, fail=OSError("401 Unauthorized"))

    assert _run(fetch_models, clean_env, stand_in, tmp_path, "--asr-revision", "nope") == 1

    err = capsys.readouterr().err
    assert f"download of {ASR_06}@nope failed: OSError: 401 Unauthorized" in err


# Speaker diarization (--with-diarization 1): pyannote's community-1 pipeline, gated, pinned.


@pytest.fixture(scope="module")
def diarization_hub(hub) -> Path:
    """The stand-in hub with a community-1-like pipeline repo (tests/tiny_diarization.py: the
    real layout with random weights) and the files the real repo has beside it."""
    import tiny_diarization

    repo = tiny_diarization.build_pipeline_dir(hub / DIARIZATION)
    (repo / "README.md").write_text("# community-1\n", "utf-8")
    (repo / ".gitattributes").write_text("*.bin filter=lfs\n", "utf-8")
    (repo / "assets").mkdir(exist_ok=True)
    (repo / "assets" / "pipeline.png").write_bytes(b"\x89PNG not needed")
    return hub


def _run_diarization(fetch_models, monkeypatch, stand_in, tmp_path, *argv: str) -> int:
    return _run(fetch_models, monkeypatch, stand_in, tmp_path, "--with-diarization", "1",
                "--diarization-dir", str(tmp_path / "diarization"), *argv)


def test_with_diarization_bakes_the_pinned_pipeline_that_loads_offline(
        fetch_models, diarization_hub, clean_env, tmp_path):
    clean_env.setenv("HF_TOKEN", "hf_secret_from_buildkit")
    stand_in = StandInHub(diarization_hub)

    assert _run_diarization(fetch_models, clean_env, stand_in, tmp_path) == 0

    (call,) = [c for c in stand_in.calls if c["repo_id"] == DIARIZATION]
    assert len(fetch_models.DIARIZATION_REVISION) == 40
    assert (call["revision"], call["token"], call["local_dir"]) == (
        fetch_models.DIARIZATION_REVISION, "hf_secret_from_buildkit",
        str(tmp_path / "diarization"))
    baked = sorted(p.relative_to(tmp_path / "diarization").as_posix()
                   for p in (tmp_path / "diarization").rglob("*") if p.is_file())
    assert baked == sorted(fetch_models.DIARIZATION_FILES)  # no README, images, .gitattributes

    # What the worker then does with the baked folder, with the hub off as in the image.
    import huggingface_hub.constants
    import tiny_diarization
    from qwen_worker.engines.diarizer import load_diarizer
    from qwen_worker.base.types import SpeakerCount

    clean_env.setenv("HF_HUB_OFFLINE", "1")
    clean_env.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    diarizer = load_diarizer(tmp_path / "diarization", "cpu")
    turns = diarizer.diarize(tiny_diarization.sample_audio()[:10 * 16000],
                             SpeakerCount(num_speakers=1))
    assert turns and {t.speaker for t in turns} == {"SPEAKER_00"}


def test_diarization_is_off_by_default_and_its_revision_can_be_set(
        fetch_models, hub, clean_env, tmp_path):
    stand_in = StandInHub(hub)
    assert _run(fetch_models, clean_env, stand_in, tmp_path) == 0
    assert [c["repo_id"] for c in stand_in.calls] == [ASR_06, ALIGNER]
    assert not (tmp_path / "diarization").exists()
    plan = fetch_models.plan(["--diarization-revision", "abc"],
                             {"WITH_DIARIZATION": "1", "HF_TOKEN": "t"})
    assert [(m.role, m.repo_id, m.revision, m.local_dir) for m in plan.models][-1] == (
        "diarization", DIARIZATION, "abc", Path("/models/diarization"))


def test_diarization_without_a_token_fails_before_any_download(
        fetch_models, hub, clean_env, tmp_path, capsys):
    stand_in = StandInHub(hub)
    assert _run_diarization(fetch_models, clean_env, stand_in, tmp_path) == 1
    assert stand_in.calls == []
    err = capsys.readouterr().err
    assert f"{DIARIZATION} is gated" in err and "--secret id=hf_token" in err


def test_an_unknown_with_diarization_value_fails(fetch_models, clean_env, capsys):
    with pytest.raises(fetch_models.FetchError, match="WITH_DIARIZATION must be 0 or 1"):
        fetch_models.plan([], {"WITH_DIARIZATION": "yes"})
    with pytest.raises(SystemExit):
        fetch_models.plan(["--with-diarization", "true"], {})


@pytest.mark.parametrize("damage, message", [
    ("drop plda/plda.npz", "missing plda.npz"),
    ("drop embedding/pytorch_model.bin", "missing pytorch_model.bin"),
    ("truncate segmentation/pytorch_model.bin", "is not a complete PyTorch checkpoint"),
    ("pointer embedding/pytorch_model.bin", "is not a complete PyTorch checkpoint"),
    ("nan plda/xvec_transform.npz", "array 'lda' holds NaN"),
    ("hub-embedding config.yaml", "embedding is 'pyannote/wespeaker-voxceleb-resnet34-LM'"),
])
def test_a_broken_pipeline_download_fails_the_build_naming_the_file(
        fetch_models, diarization_hub, clean_env, tmp_path, capsys, damage, message):
    import numpy as np

    action, name = damage.split()
    clean_env.setenv("HF_TOKEN", "t")
    served = tmp_path / "hub"
    shutil.copytree(diarization_hub / DIARIZATION, served / DIARIZATION)
    for repo in (ASR_06, ALIGNER):
        shutil.copytree(diarization_hub / repo, served / repo)
    target = served / DIARIZATION / name
    if action == "truncate":
        target.write_bytes(target.read_bytes()[:4096])
    elif action == "pointer":
        target.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n", "utf-8")
    elif action == "nan":
        arrays = dict(np.load(target))
        arrays["lda"][0, 0] = np.nan
        np.savez(target, **arrays)
    elif action == "hub-embedding":
        target.write_text(target.read_text("utf-8").replace(
            "$model/embedding", "pyannote/wespeaker-voxceleb-resnet34-LM"), "utf-8")
    drop = {DIARIZATION: {name}} if action == "drop" else None

    assert _run_diarization(fetch_models, clean_env, StandInHub(served, drop=drop),
                            tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert message in err and "fetch_models: ERROR" in err
