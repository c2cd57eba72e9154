"""Qwen3-ASR transcription worker: long audio in, one timestamped transcript out.

Stages, one module each, in pipeline order:
    download -> decode -> chunking -> engine (ASR + alignment) -> merge -> formats
`pipeline.transcribe_file` runs decode..merge (with `repair` and `subtitles`); `worker.py` adds
the input contract (`request`), the safe download and the error codes, and runs many jobs at
once through one `scheduler`; `handler.py` (outside the package) is the RunPod entry point.
"""

import os as _os

# Before anything imports torch: torch's default `cuda.is_available()` initialises the CUDA
# runtime, and vLLM 0.14 then still forks its engine process (it checks only
# `torch.cuda.is_initialized()`), whose first CUDA call fails with "Cannot re-initialize CUDA
# in forked subprocess". The NVML-based check answers without touching the runtime.
_os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
