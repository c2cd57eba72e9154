"""The models: the `Engine` interface (base) the pipeline calls, its two backends (qwen_asr:
transformers through qwen-asr; vllm: vLLM 0.22 on a GPU), the prompt, the aligner's times, and
the optional speaker diarizer. `load.load_engine` picks the configured backend."""
