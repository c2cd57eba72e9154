"""The interfaces over the job layer: RunPod's queue handler (queue), the OpenAI-compatible HTTP
server (http) and its wire formats (openai)."""
