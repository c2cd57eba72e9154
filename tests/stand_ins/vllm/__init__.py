"""Stand-in for the `vllm` package (vllm 0.14.0 cannot be installed or run here: no GPU, and
it is not on the package mirror). It records what our code passes to `vllm.LLM` and
`SamplingParams`, and answers `generate` like vLLM does: one RequestOutput per prompt, each
with `.outputs[0].text`. The real qwen-asr code drives it through `Qwen3ASRModel.LLM`.
"""

from types import SimpleNamespace

CREATED: list["LLM"] = []
SCRIPT = "language English<asr_text>Hello from the stand-in."


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class LLM:
    def __init__(self, model: str, **kwargs):
        self.model = model
        self.kwargs = kwargs
        self.calls: list[list[dict]] = []
        CREATED.append(self)

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append(list(prompts))
        self.sampling_params = sampling_params
        return [SimpleNamespace(outputs=[SimpleNamespace(text=SCRIPT, finish_reason="stop")])
                for _ in prompts]


class ModelRegistry:
    registered: dict = {}

    @classmethod
    def register_model(cls, name, model_cls):
        cls.registered[name] = model_cls
