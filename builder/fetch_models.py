"""Bake the Qwen3-ASR and Qwen3-ForcedAligner weights into the image (run at build time), and
with --with-diarization 1 the pyannote speaker-diarization-community-1 pipeline.

    python builder/fetch_models.py [--asr-model ID] [--asr-revision REV] [--aligner-revision REV]
                                   [--with-diarization 0|1] [--diarization-revision SHA]

Three steps, each a function: `plan` (what to fetch, from arguments and environment),
`download` (huggingface_hub.snapshot_download, only the files inference reads) and `verify`
(the files are there and are what the worker expects). Any problem ends the build with a
non-zero exit and a message naming the model and the file.

Environment (command-line flags win):
    ASR_MODEL_ID      Qwen/Qwen3-ASR-0.6B (default) or Qwen/Qwen3-ASR-1.7B
    ASR_REVISION      branch, tag or commit of the ASR repo (default "main")
    ALIGNER_MODEL_ID  Qwen/Qwen3-ForcedAligner-0.6B (default)
    ALIGNER_REVISION  branch, tag or commit of the aligner repo (default "main")
    ASR_DIR / ALIGNER_DIR  target folders (default /models/asr, /models/aligner)
    WITH_DIARIZATION  "1" also bakes the diarization pipeline (default "0")
    DIARIZATION_REVISION  commit of the pipeline repo (default DIARIZATION_REVISION below)
    DIARIZATION_DIR   its target folder (default /models/diarization)
    HF_TOKEN          Hugging Face token, optional for the Qwen repos, required for the gated
                      pipeline; the Dockerfile passes it from a BuildKit secret so that it never
                      lands in a layer or in the build arguments
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

DEFAULT_ASR_ID = "Qwen/Qwen3-ASR-0.6B"
DEFAULT_ALIGNER_ID = "Qwen/Qwen3-ForcedAligner-0.6B"
DEFAULT_ASR_DIR = Path("/models/asr")  # qwen_worker.base.config.BAKED_ASR_DIR
DEFAULT_ALIGNER_DIR = Path("/models/aligner")  # qwen_worker.base.config.BAKED_ALIGNER_DIR
DEFAULT_DIARIZATION_DIR = Path("/models/diarization")  # qwen_worker.base.config.BAKED_DIARIZATION_DIR

# pyannote.audio 4's pipeline (CC-BY-4.0; gated: accept its conditions on the hub once). Pinned
# to a commit, not a branch: its config.yaml decides what pyannote instantiates at start-up.
DIARIZATION_ID = "pyannote/speaker-diarization-community-1"
DIARIZATION_REVISION = "3533c8cf8e369892e6b79ff1bf80f7b0286a54ee"
# What Pipeline.from_pretrained(folder) reads: the pipeline config with its tuned parameters,
# the segmentation and embedding checkpoints and VBx's PLDA (the README and images are left out).
DIARIZATION_FILES: tuple[str, ...] = (
    "config.yaml",
    "segmentation/pytorch_model.bin",
    "embedding/pytorch_model.bin",
    "plda/xvec_transform.npz",
    "plda/plda.npz",
)
DIARIZATION_PIPELINE = "pyannote.audio.pipelines.SpeakerDiarization"
# The arrays pyannote's VBx reads from each PLDA file.
PLDA_ARRAYS = {"plda/xvec_transform.npz": ("mean1", "mean2", "lda"),
               "plda/plda.npz": ("mu", "tr", "psi")}

# What qwen-asr's loaders read (AutoModel / AutoProcessor.from_pretrained on a local folder):
# model and generation configs, safetensors weights (one file, or shards plus their index),
# the Qwen2 tokenizer (tokenizer.json, or vocab.json + merges.txt, as the Qwen repos ship it),
# the Whisper feature extractor config and the chat template. README, .gitattributes and
# ModelScope's configuration.json are left out.
ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
)

MODEL_TYPE = "qwen3_asr"  # top-level model_type of both repos
ALIGNER_THINKER_TYPE = "qwen3_forced_aligner"  # thinker_config.model_type of the aligner only


class FetchError(RuntimeError):
    """The download failed or did not produce a usable model folder."""


@dataclass(frozen=True)
class ModelSpec:
    role: str  # "asr" | "aligner" | "diarization"
    repo_id: str
    revision: str
    local_dir: Path


@dataclass(frozen=True)
class FetchPlan:
    models: tuple[ModelSpec, ...]
    token: str | None


def snapshot_download(**kwargs: object) -> str:
    """huggingface_hub.snapshot_download, imported on first use (tests replace this name)."""
    from huggingface_hub import snapshot_download as hub_snapshot_download

    return hub_snapshot_download(**kwargs)


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def default(name: str, fallback: str) -> str:
        return env.get(name, "").strip() or fallback

    parser = argparse.ArgumentParser(
        description="Download and check the ASR and aligner weights baked into the image.")
    parser.add_argument("--asr-model", default=default("ASR_MODEL_ID", DEFAULT_ASR_ID))
    parser.add_argument("--asr-revision", default=default("ASR_REVISION", "main"))
    parser.add_argument("--aligner-model", default=default("ALIGNER_MODEL_ID", DEFAULT_ALIGNER_ID))
    parser.add_argument("--aligner-revision", default=default("ALIGNER_REVISION", "main"))
    parser.add_argument("--asr-dir", type=Path,
                        default=Path(default("ASR_DIR", str(DEFAULT_ASR_DIR))))
    parser.add_argument("--aligner-dir", type=Path,
                        default=Path(default("ALIGNER_DIR", str(DEFAULT_ALIGNER_DIR))))
    parser.add_argument("--with-diarization", choices=("0", "1"),
                        default=default("WITH_DIARIZATION", "0"))
    parser.add_argument("--diarization-revision",
                        default=default("DIARIZATION_REVISION", DIARIZATION_REVISION))
    parser.add_argument("--diarization-dir", type=Path,
                        default=Path(default("DIARIZATION_DIR", str(DEFAULT_DIARIZATION_DIR))))
    return parser


def plan(argv: Sequence[str], env: Mapping[str, str]) -> FetchPlan:
    """What to fetch and where, from the command line with the environment as defaults."""
    args = _parser(env).parse_args(list(argv))
    if args.with_diarization not in ("0", "1"):  # from the environment, which argparse trusts
        raise FetchError(f"WITH_DIARIZATION must be 0 or 1, got {args.with_diarization!r}")
    for flag, value in (("--asr-model", args.asr_model), ("--aligner-model", args.aligner_model),
                        ("--asr-revision", args.asr_revision),
                        ("--aligner-revision", args.aligner_revision)):
        if not value.strip():
            raise FetchError(f"{flag} is empty")
    if args.asr_dir.resolve() == args.aligner_dir.resolve():
        raise FetchError(f"the ASR and aligner folders are the same: {args.asr_dir}")
    token = env.get("HF_TOKEN", "").strip() or None
    models = [
        ModelSpec("asr", args.asr_model.strip(), args.asr_revision.strip(), args.asr_dir),
        ModelSpec("aligner", args.aligner_model.strip(), args.aligner_revision.strip(),
                  args.aligner_dir),
    ]
    if args.with_diarization == "1":
        if not args.diarization_revision.strip():
            raise FetchError("--diarization-revision is empty")
        if args.diarization_dir.resolve() in (args.asr_dir.resolve(), args.aligner_dir.resolve()):
            raise FetchError(f"the diarization folder is a model's folder: {args.diarization_dir}")
        if token is None:
            raise FetchError(f"{DIARIZATION_ID} is gated: accept its conditions on "
                             f"https://huggingface.co/{DIARIZATION_ID} and build with "
                             "--secret id=hf_token,env=HF_TOKEN")
        models.append(ModelSpec("diarization", DIARIZATION_ID, args.diarization_revision.strip(),
                                args.diarization_dir))
    return FetchPlan(models=tuple(models), token=token)


def download(spec: ModelSpec, token: str | None) -> Path:
    """Fetch the inference files of one repo at one revision straight into spec.local_dir."""
    spec.local_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = snapshot_download(
            repo_id=spec.repo_id,
            revision=spec.revision,
            local_dir=str(spec.local_dir),
            allow_patterns=list(DIARIZATION_FILES if spec.role == "diarization"
                                else ALLOW_PATTERNS),
            token=token,
        )
    except Exception as exc:  # the hub client raises many types; all end the build
        raise FetchError(
            f"{spec.role}: download of {spec.repo_id}@{spec.revision} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return Path(path)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FetchError(f"missing {path.name} ({what}) in {path.parent}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FetchError(f"{path} does not hold a JSON object")
    return data


def _safetensors_tensors(path: Path) -> set[str]:
    """Tensor names in a safetensors file, after checking that the file is complete.

    Reads only the header: an 8-byte little-endian length, a JSON table of tensors with
    their byte ranges, then the data. A Git LFS pointer, an HTML error page or a cut-off
    download fails here instead of at the first job.
    """
    if not path.is_file():
        raise FetchError(f"missing weight file {path.name} in {path.parent}")
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise FetchError(f"{path} is not a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8:
                raise FetchError(f"{path} is not a safetensors file (bad header length)")
            header = json.loads(fh.read(header_len))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{path} is not a safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise FetchError(f"{path} is not a safetensors file (header is not a table)")
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    try:
        data_end = max((int(info["data_offsets"][1]) for info in tensors.values()), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise FetchError(f"{path} is not a safetensors file (bad tensor table)") from None
    if size < 8 + header_len + data_end:
        raise FetchError(f"{path} is truncated: {size} bytes, needs {8 + header_len + data_end}")
    return set(tensors)


def _verify_weights(folder: Path) -> None:
    index_path = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index_path.exists() and single.exists():
        raise FetchError(f"{folder} holds both model.safetensors and its sharded index: "
                         "leftovers of another download? Start from an empty folder")
    if not index_path.exists():
        if not single.exists():
            raise FetchError(f"missing weights in {folder}: neither model.safetensors "
                             "nor model.safetensors.index.json")
        if not _safetensors_tensors(single):
            raise FetchError(f"{single} holds no tensors")
        return
    index = _read_json(index_path, "weight shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise FetchError(f"{index_path} has no weight_map")
    shards = sorted(set(weight_map.values()))
    missing = [name for name in shards if not (folder / name).is_file()]
    if missing:
        raise FetchError(f"missing weight shard(s) in {folder}: {', '.join(missing)} "
                         f"(named in {index_path.name})")
    found: set[str] = set()
    for name in shards:
        found |= _safetensors_tensors(folder / name)
    absent = sorted(set(weight_map) - found)
    if absent:
        raise FetchError(f"{len(absent)} tensor(s) named in {index_path.name} are in no shard, "
                         f"e.g. {absent[0]}")


def _verify_tokenizer(folder: Path) -> None:
    tokenizer_config = _read_json(folder / "tokenizer_config.json", "tokenizer config")
    if not (folder / "tokenizer.json").is_file():
        for name in ("vocab.json", "merges.txt"):
            if not (folder / name).is_file():
                raise FetchError(f"missing tokenizer file {name} in {folder} "
                                 "(and no tokenizer.json)")
    _read_json(folder / "preprocessor_config.json", "audio feature extractor config")
    has_template = ((folder / "chat_template.json").is_file()
                    or (folder / "chat_template.jinja").is_file()
                    or bool(tokenizer_config.get("chat_template")))
    if not has_template:
        raise FetchError(f"missing chat template in {folder}: "
                         "neither chat_template.json nor chat_template.jinja")


def _verify_checkpoint(path: Path) -> None:
    """A torch.save file is a zip archive: every member's CRC is checked (a Git LFS pointer, an
    HTML page or a cut-off download fails here), nothing is unpickled."""
    if not path.is_file():
        raise FetchError(f"missing {path.name} in {path.parent}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FetchError(f"{path} is not a complete PyTorch checkpoint: {exc}") from None
    if bad is not None:
        raise FetchError(f"{path} is damaged: {bad} fails its CRC check")
    if not any(name.endswith("/data.pkl") for name in names):
        raise FetchError(f"{path} is not a PyTorch checkpoint (no data.pkl)")


def _verify_plda(path: Path, arrays: tuple[str, ...]) -> None:
    import numpy as np

    if not path.is_file():
        raise FetchError(f"missing {path.name} in {path.parent}")
    try:
        with np.load(path, allow_pickle=False) as data:
            for name in arrays:
                if name not in data.files:
                    raise FetchError(f"{path} has no array {name!r}")
                if not np.all(np.isfinite(data[name])):
                    raise FetchError(f"{path}: array {name!r} holds NaN or infinity")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{path} is not a complete .npz file: {exc}") from None


def _verify_diarization(folder: Path) -> None:
    """The community-1 layout, with every model taken from the folder itself ($model/...)."""
    import yaml

    config_path = folder / "config.yaml"
    if not config_path.is_file():
        raise FetchError(f"missing config.yaml (pipeline config) in {folder}")
    try:
        config = yaml.safe_load(config_path.read_text("utf-8"))
        pipeline = config["pipeline"]
        name, params = pipeline["name"], pipeline["params"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise FetchError(f"{config_path} is not a pyannote pipeline config: {exc!r}") from None
    if name != DIARIZATION_PIPELINE:
        raise FetchError(f"{config_path}: pipeline {name!r}, expected {DIARIZATION_PIPELINE!r}")
    for part in ("segmentation", "embedding", "plda"):
        if params.get(part) != f"$model/{part}":
            raise FetchError(f"{config_path}: {part} is {params.get(part)!r}, expected "
                             f"'$model/{part}' (the folder's own)")
    for name in ("segmentation/pytorch_model.bin", "embedding/pytorch_model.bin"):
        _verify_checkpoint(folder / name)
    for name, arrays in PLDA_ARRAYS.items():
        _verify_plda(folder / name, arrays)


def verify(spec: ModelSpec) -> None:
    """Check that spec.local_dir is a complete model of the kind spec.role expects."""
    folder = spec.local_dir
    if spec.role == "diarization":
        _verify_diarization(folder)
        return
    config = _read_json(folder / "config.json", "model config")
    if config.get("model_type") != MODEL_TYPE:
        raise FetchError(f"{folder}/config.json: model_type is {config.get('model_type')!r}, "
                         f"expected {MODEL_TYPE!r} ({spec.repo_id} is not a Qwen3-ASR repo)")
    thinker = config.get("thinker_config")
    thinker_type = thinker.get("model_type") if isinstance(thinker, dict) else None
    is_aligner = thinker_type == ALIGNER_THINKER_TYPE
    if spec.role == "aligner" and not is_aligner:
        raise FetchError(f"{folder}/config.json: thinker_config.model_type is {thinker_type!r}, "
                         f"expected {ALIGNER_THINKER_TYPE!r} ({spec.repo_id} is not a "
                         "Qwen3-ForcedAligner)")
    if spec.role == "asr" and is_aligner:
        raise FetchError(f"{spec.repo_id} is a forced aligner, not an ASR model")
    if spec.role == "aligner" and "timestamp_token_id" not in config:
        raise FetchError(f"{folder}/config.json has no timestamp_token_id")
    _read_json(folder / "generation_config.json", "generation config")
    _verify_weights(folder)
    _verify_tokenizer(folder)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        fetch_plan = plan(argv, os.environ)
        for spec in fetch_plan.models:
            print(f"fetch_models: {spec.role}: {spec.repo_id}@{spec.revision} -> {spec.local_dir}",
                  flush=True)
            download(spec, fetch_plan.token)
            verify(spec)
            size = sum(p.stat().st_size for p in spec.local_dir.rglob("*") if p.is_file())
            print(f"fetch_models: {spec.role}: ok ({size / 1e9:.2f} GB)", flush=True)
    except FetchError as exc:
        print(f"fetch_models: ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
