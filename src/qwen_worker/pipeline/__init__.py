"""The stages of one file, in order: download -> decode -> chunking -> transcribe (the engine
calls, with repair) -> merge -> speakers -> subtitles -> formats. Each stage is a function over
the types in `qwen_worker.base.types`; `transcribe.transcribe_file` runs them."""
