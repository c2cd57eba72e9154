#!/usr/bin/env bash
# Create .venv with the pinned CPU stack (the Dockerfile installs the same pins on GPU).
# ffmpeg comes from PATH when installed, else from the imageio-ffmpeg wheel: pip alone suffices.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
pip_install() {
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    cat "$log"; exit 1
  fi
}
[ -x .venv/bin/python ] || python3 -m venv .venv
pip_install --upgrade pip
pip_install -r requirements-dev.txt
# qwen-asr's own requirements pull gradio/flask demo code that inference never imports.
pip_install --no-deps qwen-asr==0.0.6
rm -f "$log"
