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

# Before anything imports torch: torch's default `cuda.is_available()` initialises the CUDA
# runtime, which would hold a CUDA context (~0.5 GiB of GPU memory) in the worker's process;
# only vLLM's engine processes use the GPU. The NVML-based check answers without it.
_os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
