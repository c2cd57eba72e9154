#!/usr/bin/env bash
# Create .venv with the GPU image's exact Python stack, installed by the same steps as the
# Dockerfile (uv 0.13.9; requirements-gpu.txt + requirements.txt, with requirements-diarize.txt
# as in an image built with WITH_DIARIZATION=1, in one resolution; uv pip
# check; qwen-asr without its dependencies), plus the test tools of requirements-dev.txt.
# Why the image's stack on a CPU machine: CI's torch is then the image's torch (2.11.0, PyPI's
# CUDA 13.0 build, which imports and runs on CPU), so CI proves that the image's pins resolve
# together, and the real vLLM 0.22.0 is importable for CPU checks. Why uv: it installs this
# ~9 GB stack in ~80 s, where pip takes ~6.5 min.
# Safe to run again: each step only changes what differs from the pins (qwen-asr is removed
# and installed again, so that the checks see what they see on a fresh venv).
# ffmpeg comes from PATH when installed, else from the imageio-ffmpeg wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
quiet() {  # run a step; show its output only when it fails
  if ! "$@" >"$log" 2>&1; then
    cat "$log"; exit 1
  fi
}
[ -x .venv/bin/python ] || python3 -m venv .venv
quiet .venv/bin/python -m pip install -q uv==0.13.9
uv_pip() { quiet .venv/bin/uv pip "$1" --python .venv/bin/python "${@:2}"; }
# A second run starts from a fresh install's state: qwen-asr (no dependencies) goes first, or
# the checks below would report its demo dependencies as missing.
uv_pip uninstall qwen-asr
# The image's resolution, as in the Dockerfile: one install, then a consistency check. CI
# installs the diarization image's set (--build-arg WITH_DIARIZATION=1), so that the
# diarization tests run on the exact pyannote stack that image gets.
uv_pip install -r requirements-gpu.txt -r requirements.txt -r requirements-diarize.txt
uv_pip check
# The test tools, resolved against the runtime pins; the check again proves they moved nothing
# into conflict.
uv_pip install -r requirements-dev.txt
uv_pip check
# qwen-asr's own requirements pull gradio/flask demo code that inference never imports.
uv_pip install --no-deps qwen-asr==0.0.6
# The worker's own package (src/qwen_worker), editable: the code stays where the entry points are.
uv_pip install --no-deps -e .
