"""Qwen3-ASR transcription worker: long audio in, one timestamped transcript out.

Layers as packages, each importing only the ones below it (docs/architecture.md):
    api       the interfaces: RunPod's queue handler, the OpenAI-compatible HTTP server
    jobs      one job: input contract, the job's path, error codes, the output and its delivery
    pipeline  the stages of one file: download, decode, chunking, transcribe, merge, subtitles
    engines   the models: the Engine interface, transformers and vLLM backends, diarizer
    base      settings, errors, lifetime, languages, the shared data types
`startup` loads what the interfaces serve with and owns the way out; src/handler.py and
src/server.py are the entry points.
"""

import os as _os
import sys as _sys

# Before anything imports torch: torch's default `cuda.is_available()` initialises the CUDA
# runtime, which would hold a CUDA context (~0.5 GiB of GPU memory) in the worker's process;
# only vLLM's engine processes use the GPU (and the diarizer, when the image has one, loaded
# after the engines started). The NVML-based check answers without it.
_os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

# qwen-asr's own vLLM backend (written for vLLM 0.14) is never used: the GPU engine runs vLLM's
# native classes. Importing qwen_asr tries to import that backend and register its class with
# vLLM; marking it absent turns the attempt into the ImportError qwen-asr already expects, so
# its class can never replace vLLM's, and no CPU process imports all of vLLM for nothing
# (3-5 s each). `engines.vllm.loader.check_native_classes` still checks vLLM's registry at start-up.
_sys.modules.setdefault("qwen_asr.core.vllm_backend", None)
