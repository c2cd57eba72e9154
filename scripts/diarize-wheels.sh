#!/usr/bin/env bash
# Wheels for bench/diarize.py on the GPU machine, whose image has torch 2.11.0 (CUDA 13.0), numpy
# and, once installed, the vLLM set of ../shared/tools/vllm-on-gpu/wheels.txt, but no pyannote.
# These are the packages that requirements-diarize.txt adds to the image's resolution
# (requirements-gpu.txt + requirements.txt + requirements-diarize.txt, as uv resolved it on
# 2026-12-02) and that neither that set nor the image holds; torchaudio 2.11.0 is included in
# case the image lacks it (vllm 0.22.0 requires it, the set does not list it).
#
#   bash scripts/diarize-wheels.sh        # here: downloads, packs, splits into .vc/diar/NN/p
#
# Then one `run` per piece (carry [".vc/diar/00"], ...), the last one also carrying
# .vc/diar/sha256, and on the GPU machine:
#   cat .vc/diar/[0-9]*/p > /tmp/d.tar && echo "$(cat .vc/diar/sha256)  /tmp/d.tar" | sha256sum -c -
#   tar -xf /tmp/d.tar -C /tmp && python3 -m pip install -q --no-index --no-deps --no-compile \
#       --target /tmp/site-diar /tmp/diar-wheels/*.whl
#   PYTHONPATH=/tmp/site-diar:/tmp/site python3 bench/diarize.py --json "$OUT/diarize.json"
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/wheels.txt" <<'PINS'
pyannote.audio==4.0.7
torchaudio==2.11.0
alembic==1.20.1
asteroid-filterbanks==0.4.0
colorlog==6.12.0
contourpy==1.3.3
cycler==0.12.1
fonttools==4.68.0
julius==0.2.8
kiwisolver==1.5.1
lightning==2.6.6
lightning-utilities==0.15.3
mako==1.4.3
matplotlib==3.11.2
optuna==5.0.0
pandas==3.1.1
primepy==1.3
pyannote-core==6.1.0
pyannote-database==6.1.1
pyannote-metrics==4.2.0
pyannote-pipeline==4.1.0
pyannoteai-sdk==0.4.0
pyparsing==3.3.3
pytorch-lightning==2.6.6
pytorch-metric-learning==2.9.0
sortedcontainers==2.4.0
sqlalchemy==2.1.9
torch-audiomentations==0.12.0
torch-pitch-shift==1.2.5
torchcodec==0.17.0
torchmetrics==1.9.0
PINS
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  -d "$work/diar-wheels" -r "$work/wheels.txt" 2> >(grep -v "is ignored: it is neither" >&2)
want=$(grep -c '==' "$work/wheels.txt")
got=$(find "$work/diar-wheels" -name '*.whl' | wc -l)
[ "$got" -eq "$want" ] || { echo "expected $want wheels, got $got" >&2; exit 1; }
tar -C "$work" -cf "$work/d.tar" diar-wheels
rm -rf .vc/diar
mkdir -p .vc/diar
split -b 60M -d -a 2 "$work/d.tar" "$work/p"
for f in "$work"/p*; do
  n=${f##*/p}
  mkdir -p ".vc/diar/$n"
  mv "$f" ".vc/diar/$n/p"
done
sha256sum "$work/d.tar" | cut -d' ' -f1 > .vc/diar/sha256
echo "$got wheels, $(du -sh "$work/d.tar" | cut -f1), pieces: $(find .vc/diar -name p | sort | tr '\n' ' ')"
