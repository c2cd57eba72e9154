# syntax=docker/dockerfile:1
# Qwen3-ASR transcription worker for RunPod serverless (vLLM backend, weights baked in).
#
#   docker build -t qwen3-asr-worker .
#   docker build --build-arg ASR_MODEL_ID=Qwen/Qwen3-ASR-1.7B -t qwen3-asr-worker:1.7b .
#   HF_TOKEN=... docker build --secret id=hf_token,env=HF_TOKEN -t qwen3-asr-worker .
#   HF_TOKEN=... docker build --secret id=hf_token,env=HF_TOKEN --build-arg WITH_DIARIZATION=1 \
#       -t qwen3-asr-worker:diarize .
#
# CUDA: vllm 0.22.0 pins torch==2.11.0, whose default PyPI wheels are CUDA 13.0 builds
# (nvidia-cuda-runtime 13.0.x), and vLLM 0.22.0's compiled parts link libcudart.so.13. The
# wheels bring the CUDA libraries; the image needs only the driver side, from the host.
# The host driver must support CUDA 13.0: NVIDIA driver >= 580 (.runpod/hub.json allows only
# such hosts). Ubuntu 24.04 ships Python 3.12, which the vllm and torch wheels support.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

# ffmpeg decodes the audio; espeak-ng speaks the clip of `handler.py --self-test`. gcc/g++ and python3-dev: Triton and torch.compile (used by vLLM
# unless VLLM_ENFORCE_EAGER=true) compile small C helpers against Python.h at first use.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates espeak-ng ffmpeg g++ gcc python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*

# A venv: Ubuntu's own Python refuses system-wide pip installs (PEP 668). uv, pinned, installs
# the Python stack into it (uv pip targets $VIRTUAL_ENV); pip only installs uv.
# UV_COMPILE_BYTECODE: the packages' bytecode is compiled here, once, not by every cold
# container: at start-up 14 processes (two engine cores, the front end's) import vLLM, torch and
# transformers at once, and without .pyc files each would compile them (docs/cold-start.md).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    UV_COMPILE_BYTECODE=1
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir uv==0.13.9

WORKDIR /app

# Python dependencies, by the same steps as CI (scripts/setup.sh, run by .ci/run): the GPU pins
# (requirements-gpu.txt: vllm, torch) and the runtime pins (requirements.txt) in one
# resolution, so that every constraint is seen at once; `uv pip check` then fails the build on
# any conflict. qwen-asr comes last, without its dependencies: they drag in gradio/flask demo
# code that inference never imports (and that the check would flag). CI then adds only its
# test tools, so its torch and vllm are the image's.
# WITH_DIARIZATION=1 adds optional speaker diarization (pyannote.audio, requirements-diarize.txt)
# to that same resolution, so that it cannot move a pin of the ASR stack; the default image
# stays without it. CI installs the WITH_DIARIZATION=1 set (it runs the diarization tests).
COPY requirements.txt requirements-gpu.txt requirements-diarize.txt /app/
ARG WITH_DIARIZATION=0
RUN if [ "${WITH_DIARIZATION}" = 1 ]; then \
        uv pip install --no-cache -r requirements-gpu.txt -r requirements.txt \
            -r requirements-diarize.txt; \
    elif [ "${WITH_DIARIZATION}" = 0 ]; then \
        uv pip install --no-cache -r requirements-gpu.txt -r requirements.txt; \
    else \
        echo "WITH_DIARIZATION must be 0 or 1, got ${WITH_DIARIZATION}" >&2; exit 1; \
    fi \
    && uv pip check \
    && uv pip install --no-cache --no-deps qwen-asr==0.0.6

# Weights, before the source so that a code change does not download them again.
# fetch_models.py checks what it got and fails the build naming any missing file.
# The token (only needed for gated or private repos) comes from a BuildKit secret, never from
# a build argument or a layer; the hub client's cache stays in a build cache mount.
# With WITH_DIARIZATION=1 it also bakes pyannote/speaker-diarization-community-1 (gated: the
# token's account must have accepted its conditions) at the revision pinned in fetch_models.py.
COPY builder/ /app/builder/
ARG ASR_MODEL_ID=Qwen/Qwen3-ASR-0.6B
ARG ASR_REVISION=main
ARG ALIGNER_REVISION=main
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN \
    --mount=type=cache,target=/root/.cache/huggingface \
    python /app/builder/fetch_models.py \
        --asr-model "${ASR_MODEL_ID}" --asr-revision "${ASR_REVISION}" \
        --aligner-revision "${ALIGNER_REVISION}" \
        --asr-dir /models/asr --aligner-dir /models/aligner \
        --with-diarization "${WITH_DIARIZATION}" --diarization-dir /models/diarization

# Runtime: no hub access (the weights are in /models), and runpod at INFO, because at its
# default DEBUG level it logs every job's output, transcripts included.
# PYTORCH_NVML_BASED_CUDA_CHECK: the worker initialises no CUDA in its own process (unless the
# diarizer runs there, after the engines started), and torch's default CUDA check would (the
# worker also sets it in code). vLLM's engine processes
# are started with spawn: the worker sets VLLM_WORKER_MULTIPROC_METHOD=spawn itself.
# PYANNOTE_METRICS_ENABLED=0: pyannote.audio (WITH_DIARIZATION=1) otherwise sends usage
# telemetry to its vendor.
ENV HF_HUB_OFFLINE=1 \
    PYANNOTE_METRICS_ENABLED=0 \
    PYTORCH_NVML_BASED_CUDA_CHECK=1 \
    TRANSFORMERS_OFFLINE=1 \
    RUNPOD_LOG_LEVEL=INFO \
    PYTHONUNBUFFERED=1

COPY pyproject.toml /app/
COPY src/ /app/src/
# The worker's package, installed (editable: its code stays in /app/src beside the entry
# points), and its bytecode compiled now rather than by each process of a cold start.
RUN uv pip install --no-cache --no-deps -e /app \
    && python -m compileall -q /app/src

CMD ["python", "-u", "/app/src/handler.py"]
