"""Settings read once from the environment into a frozen object.

Every environment variable the worker reads is here, so README's table has one source.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T", int, float)

BAKED_ASR_DIR = Path("/models/asr")
BAKED_ALIGNER_DIR = Path("/models/aligner")
# pyannote's speaker-diarization-community-1, baked only by `--build-arg WITH_DIARIZATION=1`.
BAKED_DIARIZATION_DIR = Path("/models/diarization")
HUB_ASR_ID = "Qwen/Qwen3-ASR-0.6B"
HUB_ALIGNER_ID = "Qwen/Qwen3-ForcedAligner-0.6B"
# Token budget of one chunk's prompt: the longest chunk (300 s at 13 audio tokens a second),
# qwen-asr's chat template around it (about 20 tokens with a forced language; 64 leaves room),
# the caller's context and the output.
MAX_CHUNK_AUDIO_TOKENS = 3900
PROMPT_TEMPLATE_TOKENS = 64
# The aligner's prompt: the audio, its markers, and per word its text tokens and two
# <timestamp> tokens; a chunk's words have at most as many tokens as its transcript.
ALIGNER_TOKENS_PER_OUTPUT_TOKEN = 3


class ConfigError(ValueError):
    """An environment variable holds a value the worker cannot use."""


@dataclass(frozen=True)
class Bucket:
    """Where results go when they are uploaded (jobs/results.py): an S3-compatible service."""

    endpoint_url: str  # the service, without the bucket
    name: str
    prefix: str  # key prefix, "" or ending in "/"
    region: str
    path_style: bool  # https://host/bucket/key rather than https://bucket.host/key
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    backend: str  # "vllm" | "transformers"
    asr_model: str
    aligner_model: str
    max_new_tokens: int
    aligner_batch_size: int
    asr_batch_size: int
    asr_batch_seconds: float
    device: str  # transformers backend: "cuda" | "cpu"
    dtype: str  # "bfloat16" | "float16" | "float32"
    vllm_max_model_len: int
    vllm_gpu_memory_utilization: float
    vllm_max_num_batched_tokens: int
    vllm_max_num_seqs: int
    vllm_enforce_eager: bool
    vllm_aligner_gpu_memory_utilization: float
    vllm_aligner_max_model_len: int
    vllm_aligner_max_num_seqs: int
    vllm_aligner_max_num_batched_tokens: int
    vllm_aligner_enforce_eager: bool
    vllm_frontend_processes: int
    vllm_engine_threads: int  # 0: OMP_NUM_THREADS as the environment has it
    vllm_encoder_conv_windows: int  # audio-encoder windows (1 s each) per convolution pass
    vllm_align_pauses_longer_asr: bool  # a shorter call's alignment pauses longer calls' ASR
    vllm_kv_cache_sizing: str  # "computed": from the card and the shares | "profiled": vLLM's
    vllm_activation_reserve_gib: float  # computed sizing: each engine's share minus weights and this
    vllm_skip_mm_profiling: bool  # computed sizing: no dummy encoder pass at start-up
    compile_cache_dir: str  # vLLM's compile cache (VLLM_CACHE_ROOT); "" = chosen at start-up
    max_download_bytes: int
    max_base64_bytes: int
    max_audio_seconds: float
    download_timeout_s: float
    decode_workers: int
    max_context_chars: int
    max_context_tokens: int
    work_dir: str  # each job gets a temporary directory under it, removed after the job
    download_allow_loopback: bool  # local testing only: see download.allow_loopback_for_local_testing
    log_level: str
    max_concurrency: int  # jobs one worker runs at once (runpod's concurrency_modifier)
    scheduler_gather_s: float  # an idle engine waits this long for more jobs to join a call
    scheduler_max_chunks: int  # chunks in one shared engine call (one job's file is never split)
    progress_updates: bool  # on RunPod's job loop: post progress for /status
    bucket: Bucket | None  # jobs/results.py uploads results here; None: over-limit results are trimmed
    result_max_bytes: int  # a result's JSON over this is uploaded (bucket) or trimmed (none)
    result_upload: str  # "auto": only over-limit results are uploaded; "always": every result
    result_url_expiry_s: int  # presigned URLs of uploaded results last this long
    # src/server.py only: the bearer token callers must send ("" = no auth); kept out of repr.
    server_api_key: str = field(default="", repr=False)
    # Speaker diarization (engines/diarizer.py), offered only when this folder exists. A local folder,
    # never a hub id: a pipeline's config.yaml can instantiate arbitrary callables.
    diarization_model_dir: Path = BAKED_DIARIZATION_DIR
    # 10 s windows per embedding batch: bounds the diarizer's GPU memory (community-1 ships 32).
    diarization_embedding_batch_size: int = 32

    @property
    def diarization_available(self) -> bool:
        return self.diarization_model_dir.is_dir()


def _number(env: Mapping[str, str], name: str, default: T, lo: T, hi: T,
            parse: Callable[[str], T], kind: str) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    return _number(env, name, default, lo, hi, int, "an integer")


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    return _number(env, name, default, lo, hi, float, "a number")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _bucket(env: Mapping[str, str]) -> Bucket | None:
    """runpod's conventional BUCKET_* variables; the bucket named in the URL as RunPod's
    examples name it (https://BUCKET.s3.REGION.amazonaws.com, https://HOST/BUCKET), or by
    BUCKET_NAME."""
    names = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
    url, key_id, secret = (env.get(n, "").strip() for n in names)
    if not (url or key_id or secret):
        return None
    missing = [n for n, v in zip(names, (url, key_id, secret)) if not v]
    if missing:
        raise ConfigError(f"a bucket needs {', '.join(names)}; {', '.join(missing)} not set")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"BUCKET_ENDPOINT_URL must be an http(s) URL, got {url!r}")
    service = f"{parts.scheme}://{parts.netloc}"
    path = [p for p in parts.path.split("/") if p]
    host = parts.hostname
    region = env.get("BUCKET_REGION", "").strip()
    labels = host.split(".")
    if not region and len(labels) >= 4 and "s3" in labels[:-3]:
        # The label after "s3" (AWS, Backblaze B2, Wasabi) or before the domain (Spaces).
        region = labels[labels.index("s3") + 1]
    elif not region and host.endswith(".digitaloceanspaces.com"):
        region = labels[-3]
    name = env.get("BUCKET_NAME", "").strip()
    path_style = True
    if name:
        prefix = "/".join(path)
    elif path:  # https://HOST/BUCKET[/PREFIX]: MinIO, R2, moto, most self-hosted services
        name, prefix = path[0], "/".join(path[1:])
    elif ".s3." in host or (host.endswith(".digitaloceanspaces.com") and host.count(".") >= 3):
        # https://BUCKET.s3.REGION.amazonaws.com, https://BUCKET.REGION.digitaloceanspaces.com
        name, rest = host.split(".", 1)
        service, path_style, prefix = f"{parts.scheme}://{rest}", False, ""
    else:
        raise ConfigError("BUCKET_ENDPOINT_URL names no bucket: give https://HOST/BUCKET, "
                          "https://BUCKET.s3.REGION.amazonaws.com, or set BUCKET_NAME")
    return Bucket(endpoint_url=service, name=name, prefix=prefix + "/" if prefix else "",
                  region=region or "us-east-1", path_style=path_style,
                  access_key_id=key_id, secret_access_key=secret)


def _cuda_available() -> bool:
    # NVML-based: torch's default check initialises the CUDA runtime, which would hold a CUDA
    # context (~0.5 GiB of GPU memory) in this process although only vLLM's engine processes
    # use the GPU (qwen_worker/__init__.py sets the variable before torch is first imported;
    # this keeps it set whoever imported torch).
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def default_backend(cuda: bool) -> str:
    """vLLM when it is installed and a GPU is present, else the transformers backend."""
    if cuda and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "transformers"


def _model(env: Mapping[str, str], name: str, baked: Path, hub_id: str) -> str:
    raw = env.get(name, "").strip()
    if raw:
        return raw
    return str(baked) if baked.is_dir() else hub_id


def _diarization_dir(env: Mapping[str, str]) -> Path:
    raw = env.get("DIARIZATION_MODEL_DIR", "").strip()
    if not raw:
        return BAKED_DIARIZATION_DIR  # absent in the default image: diarization not offered
    path = Path(raw).expanduser()
    if not path.is_dir():  # set on purpose: a typo must not switch diarization off unseen
        raise ConfigError(f"DIARIZATION_MODEL_DIR={raw}: no such directory (a local pyannote "
                          "pipeline folder; hub ids are not accepted)")
    return path


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    cuda = _cuda_available()
    backend = env.get("ASR_BACKEND", "").strip().lower() or default_backend(cuda)
    if backend not in ("vllm", "transformers"):
        raise ConfigError(f"ASR_BACKEND must be vllm or transformers, got {backend!r}")
    device = env.get("ASR_DEVICE", "").strip().lower() or ("cuda" if cuda else "cpu")
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"ASR_DEVICE must be cuda or cpu, got {device!r}")
    log_level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {log_level!r}")
    asr_batch_size = _int(env, "ASR_BATCH_SIZE", 32, 1, 1024)
    vllm_max_num_seqs = _int(env, "VLLM_MAX_NUM_SEQS", 64, 1, 1024)
    dtype = env.get("ASR_DTYPE", "").strip().lower() or (
        "bfloat16" if device == "cuda" or backend == "vllm" else "float32")
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"ASR_DTYPE must be bfloat16, float16 or float32, got {dtype!r}")
    aligner_len = _int(env, "VLLM_ALIGNER_MAX_MODEL_LEN", 12288, 1024, 65536)
    settings = Settings(
        backend=backend,
        asr_model=_model(env, "ASR_MODEL", BAKED_ASR_DIR, HUB_ASR_ID),
        aligner_model=_model(env, "ALIGNER_MODEL", BAKED_ALIGNER_DIR, HUB_ALIGNER_ID),
        # ~270 s of fast speech is 700-1400 tokens; 2048 leaves room without letting a
        # repetition loop run for minutes.
        max_new_tokens=_int(env, "MAX_NEW_TOKENS", 2048, 1, 16384),
        # One chunk per aligner pass was fastest on an H200 (2.5 s per audio hour vs 3.9 s at 4:
        # padded batches lose the unmasked attention path) and needs the least memory.
        aligner_batch_size=_int(env, "ALIGNER_BATCH_SIZE", 1, 1, 256),
        # transformers backend only: its prefill keeps full-vocabulary logits for every audio
        # token (~1.1 GiB per 270 s chunk), so a generate call holds at most 2160 s of padded
        # audio (8 long chunks, or 32 clips of 30 s) to fit a 24 GB card.
        asr_batch_size=asr_batch_size,
        asr_batch_seconds=_float(env, "ASR_BATCH_SECONDS", 2160.0, 30.0, 1e6),
        device=device,
        dtype=dtype,
        # 300 s -> 3900 audio tokens + prompt + context + up to MAX_NEW_TOKENS output.
        vllm_max_model_len=_int(env, "VLLM_MAX_MODEL_LEN", 8192, 1024, 65536),
        # The ASR engine's share of the card (weights, activations, KV cache). On an L4
        # (22.5 GiB): 10.1 GiB, of which 7.2 GiB KV cache (67k tokens); the aligner takes 0.30,
        # and the rest holds the engines' CUDA contexts and spare blocks (docs/gpu.md, "Memory on one card").
        vllm_gpu_memory_utilization=_float(env, "VLLM_GPU_MEMORY_UTILIZATION", 0.45, 0.02, 0.95),
        # One audio item must fit the encoder cache, which is this budget: >= 3900 (300 s).
        vllm_max_num_batched_tokens=_int(env, "VLLM_MAX_NUM_BATCHED_TOKENS", 16384, 1024, 1 << 20),
        vllm_max_num_seqs=vllm_max_num_seqs,
        vllm_enforce_eager=_bool(env, "VLLM_ENFORCE_EAGER", False),
        vllm_aligner_gpu_memory_utilization=_float(env, "VLLM_ALIGNER_GPU_MEMORY_UTILIZATION",
                                                   0.30, 0.02, 0.95),
        # 300 s of audio and the words of up to MAX_NEW_TOKENS tokens (2048: 10,052 tokens).
        vllm_aligner_max_model_len=aligner_len,
        vllm_aligner_max_num_seqs=_int(env, "VLLM_ALIGNER_MAX_NUM_SEQS", 16, 1, 1024),
        # Tokens per aligner step; each prompt must fit whole (its rows come from one pass).
        vllm_aligner_max_num_batched_tokens=_int(env, "VLLM_ALIGNER_MAX_NUM_BATCHED_TOKENS",
                                                 aligner_len, 1024, 1 << 20),
        vllm_aligner_enforce_eager=_bool(env, "VLLM_ALIGNER_ENFORCE_EAGER", False),
        # vLLM's input processing (audio features, tokens) in processes of its own: in this
        # process it shared one event loop and the GIL with every job (engines/vllm/frontend.py).
        vllm_frontend_processes=_int(env, "VLLM_FRONTEND_PROCESSES",
                                     # a core each; 4 left for the engine cores and jobs
                                     min(12, max(1, _usable_cores() - 4)), 1, 64),
        # torch's CPU threads in each engine process. Their CPU work is many small ops between
        # GPU steps; a pool of a thread per core made each op wait for threads that the front
        # end, ffmpeg and the other engine had taken (docs/gpu.md, "Host CPU").
        vllm_engine_threads=_int(env, "VLLM_ENGINE_THREADS", 1, 0, 256),
        # The audio encoder's first convolutions hold ~6 MB of activations per 1 s window; the
        # models ship with 500 windows a pass (~3 GB in each engine, sized into its share at
        # start-up and the largest block its allocator keeps). 100: ~0.6 GB (docs/gpu.md, "Memory on one card").
        vllm_encoder_conv_windows=_int(env, "VLLM_ENCODER_CONV_WINDOWS", 100, 1, 100000),
        # The two engines time-slice one GPU: a 30 s job's alignment took 2-2.5x its time alone
        # while an hour-long file decoded. Pausing the ASR engine while a call shorter than all
        # it runs is aligned gives the aligner the GPU (engines/vllm/pause.py; BENCHMARKS.md, "Latency").
        vllm_align_pauses_longer_asr=_bool(env, "VLLM_ALIGN_PAUSES_LONGER_ASR", True),
        # Two engines cannot size their KV caches from the card's free memory at the same time
        # (vLLM's profiling reads device-wide free memory): "computed" gives each its share of
        # the card minus its weights and a reserve, and both start at once; "profiled" lets
        # vLLM measure, one engine after the other (slower to start; docs/ cold start).
        vllm_kv_cache_sizing=_choice(env, "VLLM_KV_CACHE_SIZING", "computed",
                                     ("computed", "profiled")),
        # Activations, CUDA graphs and the CUDA context, within each engine's share, at the
        # default batch sizes: vLLM profiled 1.4-1.6 GiB of them for the 0.6B and the 1.7B
        # (docs/cold-start.md, "Why the two engines can start together").
        vllm_activation_reserve_gib=_float(env, "VLLM_ACTIVATION_RESERVE_GIB", 1.75, 0.25, 64.0),
        # The dummy encoder pass only serves profiling; the chunk cap and the conv passes
        # (VLLM_ENCODER_CONV_WINDOWS) bound the encoder's peak, which the reserve holds.
        vllm_skip_mm_profiling=_bool(env, "VLLM_SKIP_MM_PROFILING", True),
        compile_cache_dir=env.get("COMPILE_CACHE_DIR", "").strip(),
        max_download_bytes=_int(env, "MAX_DOWNLOAD_BYTES", 2 * 1024**3, 1, 1 << 40),
        max_base64_bytes=_int(env, "MAX_BASE64_BYTES", 20 * 1024**2, 1, 1 << 32),
        max_audio_seconds=_float(env, "MAX_AUDIO_SECONDS", 6 * 3600.0, 1.0, 1e7),
        download_timeout_s=_float(env, "DOWNLOAD_TIMEOUT_SECONDS", 1800.0, 1.0, 86400.0),
        decode_workers=_int(env, "DECODE_WORKERS", _usable_cores(), 1, 64),
        max_context_chars=_int(env, "MAX_CONTEXT_CHARS", 2000, 0, 100000),
        # 2000 characters of Chinese are up to ~2000 tokens; longer contexts are cut (a warning).
        max_context_tokens=_int(env, "MAX_CONTEXT_TOKENS", 2048, 0, 100000),
        work_dir=env.get("WORK_DIR", "").strip() or tempfile.gettempdir(),
        download_allow_loopback=_bool(env, "DOWNLOAD_ALLOW_LOOPBACK", False),
        log_level=log_level,
        # 16 jobs on a GPU: on an H200 confined to an L4's memory, 64 clips of 30 s cost 50.2
        # GPU s per audio hour one at a time, 6.67 at 16 jobs and 3.60 at 64, where a job's p50
        # is 1.59 s against 0.88 s at 16 (docs/gpu.md, "Sizing `MAX_CONCURRENCY`"). Each job also holds its
        # decoded audio in host memory (~230 MB per audio hour) and its download on disk.
        max_concurrency=_int(env, "MAX_CONCURRENCY", 16 if device == "cuda" else 2, 1, 256),
        scheduler_gather_s=_int(env, "SCHEDULER_GATHER_MS", 20, 0, 10000) / 1000.0,
        # The transformers backend's scheduler only: vLLM takes every chunk as a request.
        scheduler_max_chunks=_int(env, "SCHEDULER_MAX_CHUNKS", 0, 0, 4096) or asr_batch_size,
        # The SDK takes jobs from RunPod only when this is set (else it runs locally).
        progress_updates=bool(env.get("RUNPOD_WEBHOOK_GET_JOB", "").strip()),
        bucket=_bucket(env),
        # RunPod refuses results over ~10 MB; 8 MB leaves room for its own envelope.
        result_max_bytes=_int(env, "RESULT_MAX_BYTES", 8_000_000, 1000, 1 << 30),
        result_upload=_choice(env, "RESULT_UPLOAD", "auto", ("auto", "always")),
        # S3's SigV4 presigned URLs last at most 7 days.
        result_url_expiry_s=_int(env, "RESULT_URL_EXPIRY_SECONDS", 7 * 86400, 60, 7 * 86400),
        server_api_key=env.get("SERVER_API_KEY", "").strip(),
        diarization_model_dir=_diarization_dir(env),
        diarization_embedding_batch_size=_int(env, "DIARIZATION_EMBEDDING_BATCH_SIZE", 32, 1, 1024),
    )
    _check_token_budget(settings)
    return settings


def chunk_token_budget(settings: Settings) -> int:
    """The most tokens one chunk's request can need: the longest chunk, template, context, output."""
    return (MAX_CHUNK_AUDIO_TOKENS + PROMPT_TEMPLATE_TOKENS + settings.max_context_tokens
            + settings.max_new_tokens)


def aligner_token_budget(settings: Settings) -> int:
    """The most tokens one chunk's aligner prompt can need."""
    return (MAX_CHUNK_AUDIO_TOKENS + PROMPT_TEMPLATE_TOKENS
            + ALIGNER_TOKENS_PER_OUTPUT_TOKEN * settings.max_new_tokens)


def _check_token_budget(settings: Settings) -> None:
    """vLLM refuses any prompt over max_model_len, and any audio over the encoder budget:
    refuse the settings now, in one line, not a job later."""
    if settings.backend != "vllm":
        return
    need = chunk_token_budget(settings)
    if settings.vllm_max_model_len < need:
        raise ConfigError(
            f"VLLM_MAX_MODEL_LEN={settings.vllm_max_model_len} is too small: a 300 s chunk needs "
            f"{MAX_CHUNK_AUDIO_TOKENS} audio + {PROMPT_TEMPLATE_TOKENS} prompt + MAX_CONTEXT_TOKENS "
            f"{settings.max_context_tokens} + MAX_NEW_TOKENS {settings.max_new_tokens} = {need} "
            f"tokens; raise VLLM_MAX_MODEL_LEN to {need} or lower MAX_NEW_TOKENS or MAX_CONTEXT_TOKENS")
    if settings.vllm_max_num_batched_tokens < MAX_CHUNK_AUDIO_TOKENS:
        raise ConfigError(
            f"VLLM_MAX_NUM_BATCHED_TOKENS={settings.vllm_max_num_batched_tokens} is too small: "
            f"vLLM encodes a chunk's audio in one step within this budget, and a 300 s chunk is "
            f"{MAX_CHUNK_AUDIO_TOKENS} audio tokens; raise it to at least {MAX_CHUNK_AUDIO_TOKENS}")
    align_need = aligner_token_budget(settings)
    if settings.vllm_aligner_max_model_len < align_need:
        raise ConfigError(
            f"VLLM_ALIGNER_MAX_MODEL_LEN={settings.vllm_aligner_max_model_len} is too small: the "
            f"aligner's prompt for a 300 s chunk with MAX_NEW_TOKENS {settings.max_new_tokens} can "
            f"reach {align_need} tokens; raise it to {align_need} or lower MAX_NEW_TOKENS")
    if settings.vllm_aligner_max_num_batched_tokens < settings.vllm_aligner_max_model_len:
        raise ConfigError(
            f"VLLM_ALIGNER_MAX_NUM_BATCHED_TOKENS={settings.vllm_aligner_max_num_batched_tokens} "
            f"is below VLLM_ALIGNER_MAX_MODEL_LEN={settings.vllm_aligner_max_model_len}: the "
            "aligner reads each prompt in one step; raise it to at least that")
    share = settings.vllm_gpu_memory_utilization + settings.vllm_aligner_gpu_memory_utilization
    if share > 0.95:
        raise ConfigError(
            f"VLLM_GPU_MEMORY_UTILIZATION + VLLM_ALIGNER_GPU_MEMORY_UTILIZATION = {share:.2f}: the "
            "two engines share one GPU and together may take at most 0.95 of it")
