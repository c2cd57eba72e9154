"""Qwen3-ASR transcription worker: long audio in, one timestamped transcript out.

Stages, one module each, in pipeline order:
    download -> decode -> chunking -> prompts -> engine (ASR + alignment, `vllm_engine` on a
    GPU) -> timestamps -> merge -> formats
`pipeline.transcribe_file` runs decode..merge (with `repair` and `subtitles`); `worker.py` adds
the input contract (`request`), the safe download and the error codes, and runs many jobs at
once (on the transformers backend through one `scheduler`); `handler.py` (outside the package)
is the RunPod entry point.
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
# (3-5 s each). `vllm_engine.check_native_classes` still checks vLLM's registry at start-up.
_sys.modules.setdefault("qwen_asr.core.vllm_backend", None)
