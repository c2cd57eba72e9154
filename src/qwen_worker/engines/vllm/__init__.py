"""The GPU backend: two vLLM `AsyncLLM` engines (ASR and forced aligner) on one card.

args (engine arguments for both models), loop (the engines' event-loop thread), pause (a
shorter call's alignment pauses the longer calls' ASR), frontend (input processing in
processes of its own), engine (`VllmEngine`, the `Engine` over both), loader (KV-cache plan,
parallel start, warm-up), compile_cache (where torch.compile's artifacts live)."""
