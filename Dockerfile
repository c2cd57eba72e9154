# syntax=docker/dockerfile:1
# Qwen3-ASR transcription worker for RunPod serverless (vLLM backend, weights baked in).
#
#   docker build -t qwen3-asr-worker .
#   docker build --build-arg ASR_MODEL_ID=Qwen/Qwen3-ASR-1.7B -t qwen3-asr-worker:1.7b .
#   HF_TOKEN=... docker build --secret id=hf_token,env=HF_TOKEN -t qwen3-asr-worker .
#
# CUDA: vllm 0.14.0 pins torch==2.9.1, whose PyPI wheels carry the CUDA 12.8 runtime
# (nvidia-*-cu12 12.8.x); vllm's own kernels are built with CUDA 12.9 and use that runtime.
# The image only needs the driver side, so a CUDA 12.8 base keeps hosts with 12.8 drivers.
# Ubuntu 24.04 ships Python 3.12, which the vllm and torch wheels support.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

# ffmpeg decodes the audio; espeak-ng speaks the clip of `handler.py --self-test`. gcc/g++ and python3-dev: Triton and torch.compile (used by vLLM
# unless VLLM_ENFORCE_EAGER=true) compile small C helpers against Python.h at first use.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates espeak-ng ffmpeg g++ gcc python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*

# A venv: Ubuntu's own Python refuses system-wide pip installs (PEP 668).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --upgrade pip==26.3

WORKDIR /app

# Python dependencies, as in CI (.ci/run): the runtime pins of requirements.txt (CI reaches
# them through requirements-dev.txt, which adds a CPU torch instead of vllm), resolved
# together with vllm so that pip sees every constraint at once; `pip check` then fails the
# build on any conflict. qwen-asr comes last, without its dependencies: they drag in
# gradio/flask demo code that inference never imports (and that `pip check` would flag).
COPY requirements.txt requirements-gpu.txt /app/
RUN pip install --no-cache-dir -r requirements-gpu.txt -r requirements.txt \
    && pip check \
    && pip install --no-cache-dir --no-deps qwen-asr==0.0.6

# Weights, before the source so that a code change does not download them again.
# fetch_models.py checks what it got and fails the build naming any missing file.
# The token (only needed for gated or private repos) comes from a BuildKit secret, never from
# a build argument or a layer; the hub client's cache stays in a build cache mount.
COPY builder/ /app/builder/
ARG ASR_MODEL_ID=Qwen/Qwen3-ASR-0.6B
ARG ASR_REVISION=main
ARG ALIGNER_REVISION=main
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN \
    --mount=type=cache,target=/root/.cache/huggingface \
    python /app/builder/fetch_models.py \
        --asr-model "${ASR_MODEL_ID}" --asr-revision "${ASR_REVISION}" \
        --aligner-revision "${ALIGNER_REVISION}" \
        --asr-dir /models/asr --aligner-dir /models/aligner

# Runtime: no hub access (the weights are in /models), and runpod at INFO, because at its
# default DEBUG level it logs every job's output, transcripts included.
# PYTORCH_NVML_BASED_CUDA_CHECK: torch's default CUDA check initialises the driver, after
# which the engine process vLLM forks cannot use the GPU (the worker also sets it in code).
# vLLM keeps its default fork: qwen-asr registers its model class in this process only, and
# a spawned engine would see it only as a side effect of unpickling the config.
ENV HF_HUB_OFFLINE=1 \
    PYTORCH_NVML_BASED_CUDA_CHECK=1 \
    TRANSFORMERS_OFFLINE=1 \
    RUNPOD_LOG_LEVEL=INFO \
    PYTHONUNBUFFERED=1

COPY src/ /app/src/

CMD ["python", "-u", "/app/src/handler.py"]
