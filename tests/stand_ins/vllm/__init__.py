"""Stand-in for the `vllm` package, as strict as vllm 0.22.0 where the worker touches it.

The real vLLM needs a GPU to run a model, so the CPU tests import this package instead (the real
vllm 0.22.0 is checked on CPU up to input processing by tests/test_real_vllm.py, which also
checks that `surface.json` here is the real package's surface). It runs no model. What it does:

* `AsyncEngineArgs(**kwargs)`: any name outside 0.22.0's fields raises TypeError worded as the
  real dataclass does; `SamplingParams`, `PoolingParams` and `PoolerConfig` likewise (msgspec
  and dataclass wording). The field lists are recorded from the real package (surface.json).
* `AsyncLLM.from_engine_args(args)`: loads the model directory's own tokenizer (the tests'
  generated tiny models carry a real Qwen3-ASR one), as the real engine does.
* `generate(prompt, params, request_id)` validates as 0.22.0's input processing does: one audio
  at most, more than 160 samples, audio tokens within `max_num_batched_tokens` (the encoder
  cache), exactly one `<|audio_pad|>` per audio, prompt within `max_model_len`, with the real
  error texts; then answers the tokens of SCRIPT (plus EOS), cut at `max_tokens` with
  finish_reason "length", or exactly `max_tokens` with `ignore_eos` and `min_tokens`. Each
  request takes STEP_SECONDS per output token, so tests can stop jobs mid-request.
* `encode(prompt, PoolingParams(task="token_classify"), request_id)` on a pooling engine with
  STEP pooling: one row of class probabilities per `step_tag_id` token in the prompt. The j-th
  of n rows peaks at the class j / n of the audio's length (80 ms classes), so times rise
  evenly over the chunk.
* `abort(request_id)` ends a running request with finish_reason "abort"; a cancelled
  `generate`/`encode` aborts its request, as the real one does. ACTIVE holds the requests
  in flight, so tests can see that nothing is left behind.
* `pause_generation(mode="keep", clear_cache=...)` stops stepping every request, which stay
  in the engine (aborts and `KILL` still act), until `resume_generation()`; it answers after
  the step under way and 0.02 s, as the real one (`pause_log` records both calls, `steps`
  each step's end); mode "abort" aborts them first; an unknown mode is refused with the engine core's
  words; "wait" (drain first) is not mirrored (NotImplementedError).
* `KILL` (set by a test) makes the engine die at its next step: every running and later
  request raises EngineDeadError, as after a CUDA error in the engine process.
* `shutdown()` after requests ran: the output task logs "AsyncLLM output_handler failed."
  with an EngineDeadError from the requests' loop thread, as 0.22.0's may (its shutdown
  stops the engine core before it cancels that task); here it always does.

What it cannot check: anything decided on the GPU (memory, CUDA graphs, scheduling), process
start-up, and the model's own output.
"""

from __future__ import annotations

import json
from pathlib import Path

from .engine.arg_utils import AsyncEngineArgs, EngineArgs
from .pooling_params import PoolingParams
from .sampling_params import SamplingParams

__version__ = "0.22.0"
SURFACE = json.loads((Path(__file__).parent / "surface.json").read_text())

CREATED: list = []  # every AsyncLLM made, in order
CORES: list = []  # every engine-core process started (shut down by whoever made them)
ACTIVE: set[str] = set()  # request ids in flight, over all engines
SCRIPT = "language English<asr_text>Hello from the stand-in."
STEP_SECONDS = 0.0
KILL = False


class _LazyRegisteredModel:
    def __init__(self, module_name: str, class_name: str):
        self.module_name = module_name
        self.class_name = class_name


class _ModelRegistry:
    """vLLM's registry as 0.22.0 ships it for the two Qwen3-ASR architectures."""

    def __init__(self) -> None:
        self.models = {
            "Qwen3ASRForConditionalGeneration": _LazyRegisteredModel(
                "vllm.model_executor.models.qwen3_asr", "Qwen3ASRForConditionalGeneration"),
            "Qwen3ASRForcedAlignerForTokenClassification": _LazyRegisteredModel(
                "vllm.model_executor.models.qwen3_asr_forced_aligner",
                "Qwen3ASRForcedAlignerForTokenClassification"),
        }

    def register_model(self, name, model_cls) -> None:
        self.models[name] = model_cls


ModelRegistry = _ModelRegistry()

__all__ = ["AsyncEngineArgs", "EngineArgs", "ModelRegistry", "PoolingParams", "SamplingParams"]
