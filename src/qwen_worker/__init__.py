"""Qwen3-ASR transcription worker: long audio in, one timestamped transcript out.

Stages, one module each, in pipeline order:
    download -> decode -> chunking -> engine (ASR + alignment) -> merge -> formats
`pipeline.transcribe_file` runs decode..merge; `handler.py` (outside the package) adds the
RunPod input contract, the safe download and the error codes.
"""
