"""`vllm.v1.engine.async_llm.AsyncLLM` as far as the worker uses it (see the package docstring)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, AsyncGenerator

from ...engine.arg_utils import AsyncEngineArgs
from ...outputs import CompletionOutput, PoolingOutput, PoolingRequestOutput, RequestOutput
from .exceptions import EngineDeadError
from .input_processor import SAMPLE_RATE, SEGMENT_SECONDS, InputProcessor

logger = logging.getLogger("vllm.v1.engine.async_llm")  # the real module's logger


# The engine core: a process of its own, as the real one's (spawned, then a handshake). It
# starts, writes its PID into STAND_IN_CORE_PIDS (a folder) when set, waits for
# STAND_IN_CORE_GATE to exist when that is set (a test holds start-up there), says "ready", and then runs until
# the client says "shutdown" or a signal ends it. Like the real one it does not notice that its
# parent is gone: a worker that dies without ending it leaves it running.
_CORE = r"""
# EngineCore (the name the real one's process carries)
import os, sys, time
if os.environ.get("STAND_IN_CORE_FAIL") == sys.argv[1]:  # e.g. "pooling": the aligner's fails
    sys.exit("stand-in engine core: failing its start as STAND_IN_CORE_FAIL asks")
pids = os.environ.get("STAND_IN_CORE_PIDS")
if pids:
    open(os.path.join(pids, str(os.getpid())), "w").close()
gate = os.environ.get("STAND_IN_CORE_GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.02)
print("ready", flush=True)
if sys.stdin.readline().strip() != "shutdown":  # the parent died: stay, as the real one does
    while True:
        time.sleep(3600)
"""


class EngineCoreProc:
    """The stand-in engine core's process, started and shut down as the real one is."""

    def __init__(self, runner: str) -> None:
        import subprocess
        import sys

        from ... import CORES

        self.proc = subprocess.Popen([sys.executable, "-c", _CORE, runner],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        CORES.append(self)
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait()
            self.proc.stdout.close()
            self.proc.stdin.close()
            raise RuntimeError("Engine core initialization failed. See root cause above. "
                               "Failed core proc(s): {'EngineCore': %d}" % self.proc.returncode)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("shutdown\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except Exception:  # noqa: BLE001 - the real client then terminates it
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class AsyncLLM:
    def __init__(self, vllm_config: Any, executor_class: Any = None, log_stats: bool = False,
                 **kwargs: Any):
        from ... import CREATED

        args = vllm_config.args
        self.args = args
        self.model = args["model"]
        config = json.loads((Path(self.model) / "config.json").read_text())
        thinker = config.get("thinker_config", {})
        self.pooling = args.get("runner") == "pooling"
        if self.pooling:
            arch = (args.get("hf_overrides") or {}).get("architectures") or config.get("architectures")
            if arch != ["Qwen3ASRForcedAlignerForTokenClassification"]:
                raise ValueError(f"{arch} is not a pooling model of this stand-in")
            pooler = args.get("pooler_config")
            if pooler is None or pooler.tok_pooling_type != "STEP" or pooler.step_tag_id is None:
                raise ValueError("the stand-in aligner needs STEP pooling with a step_tag_id")
            self.step_tag_id = pooler.step_tag_id
            self.classify_num = int(thinker["classify_num"])
        self.vllm_config = vllm_config
        self.input_processor = InputProcessor(self.vllm_config)
        self.tokenizer = self.input_processor.tokenizer
        self.max_model_len = self.input_processor.max_model_len
        self.requests: list[dict[str, Any]] = []  # what reached the engine, in order
        self.aborted: list[str] = []
        self.errored = False
        self.closed = False
        self._abort: set[str] = set()
        self._in_flight: dict[str, str] = {}  # audio item name -> request id
        # pause_generation(mode="keep") .. resume_generation: no step runs, requests stay.
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self.pause_log: list[tuple] = []  # ("pause", mode, clear_cache, t) / ("resume", t)
        self.steps: list[tuple[str, float]] = []  # (request id, when its step ended)
        # The real engine-core process is spawned here and inherits this environment.
        self.spawn_env = dict(os.environ)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.core = EngineCoreProc("pooling" if self.pooling else "generate")
        CREATED.append(self)

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True,
                         usage_context: Any = None, stat_loggers: Any = None) -> "AsyncLLM":
        return cls(engine_args.create_engine_config())

    @classmethod
    def from_vllm_config(cls, vllm_config: Any, start_engine_loop: bool = True,
                         usage_context: Any = None, stat_loggers: Any = None,
                         enable_log_requests: bool = False,
                         aggregate_engine_logging: bool = False,
                         disable_log_stats: bool = False, client_addresses: Any = None,
                         client_count: int = 1, client_index: int = 0) -> "AsyncLLM":
        return cls(vllm_config, log_stats=not disable_log_stats)

    def shutdown(self, timeout: float | None = None) -> None:
        """As 0.22.0's: the engine core is stopped first, and the output task, which runs on
        the loop of the first request, is cancelled after. Meanwhile (the real shutdown
        waits for the core's process) that task finds the core gone and logs it as a failure
        from its loop's thread, which this one does every time."""
        self.closed = True
        self.core.shutdown()
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        reported = threading.Event()

        def report() -> None:
            try:
                raise EngineDeadError()
            except EngineDeadError:
                logger.exception("AsyncLLM output_handler failed.")
            reported.set()

        loop.call_soon_threadsafe(report)
        reported.wait(5)

    # -- requests ------------------------------------------------------------------------

    async def _steps(self, request_id: str, n: int) -> int:
        """Run n engine steps for this request; returns how many ran before an abort."""
        from ... import STEP_SECONDS

        for done in range(n):
            self._check_alive()
            if request_id in self._abort:
                return done
            while not self._unpaused.is_set():  # paused: aborts and a dead engine still count
                await asyncio.sleep(0.005)
                self._check_alive()
                if request_id in self._abort:
                    return done
            await asyncio.sleep(STEP_SECONDS)
            self.steps.append((request_id, time.monotonic()))
        self._check_alive()
        return n

    def _check_alive(self) -> None:
        from ... import KILL

        if KILL or not self.core.alive():  # a core process that died: every request fails
            self.errored = True
        if self.errored:
            raise EngineDeadError()

    def _admit(self, request_id: str, prompt: dict, params: Any,
               priority: int) -> tuple[list[int], int]:
        """Raw prompts are processed here, as the real AsyncLLM does; processed input (a dict
        with "type") is checked again, as the real one checks it."""
        from ... import ACTIVE

        if self.errored or not self.core.alive():
            self.errored = True
            raise EngineDeadError()
        if self._loop is None:  # the real one starts its output task here
            self._loop = asyncio.get_running_loop()
        if isinstance(prompt, dict) and "type" in prompt:
            processed = prompt
            self.input_processor.validate(processed)
        else:
            processed = self.input_processor.preprocess(prompt)
        if request_id in ACTIVE:
            raise ValueError(f"Request id {request_id} already running.")
        names = [n for items in processed["mm_hashes"].values() for n in items]
        if any(n in self._in_flight for n in names):
            # The engine keys its encoder cache by these names: two audios under one name mix
            # their placeholders, and the real engine core died of it.
            self.errored = True
            raise EngineDeadError()
        self._in_flight.update(dict.fromkeys(names, request_id))
        ids = processed["prompt_token_ids"]
        self.requests.append({"request_id": request_id, "prompt": processed, "params": params,
                              "prompt_token_ids": ids, "priority": priority})
        ACTIVE.add(request_id)
        return ids, sum(item["waveform"].shape[0] for item in processed["mm_kwargs"].get("audio", []))

    def _release(self, request_id: str, aborted: bool) -> None:
        from ... import ACTIVE

        for name in [n for n, rid in self._in_flight.items() if rid == request_id]:
            del self._in_flight[name]
        ACTIVE.discard(request_id)
        self._abort.discard(request_id)
        if aborted:
            self.aborted.append(request_id)

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str, *,
                       priority: int = 0, **kwargs: Any) -> AsyncGenerator[RequestOutput, None]:
        if self.pooling:
            raise ValueError("generate is not supported by this pooling model")
        ids, samples = self._admit(request_id, prompt, sampling_params, priority)
        done = False
        try:
            reply = self._reply(samples, sampling_params, prompt["prompt"])
            room = min(len(reply), sampling_params.max_tokens or len(reply),
                       max(1, self.max_model_len - len(ids)))
            made = await self._steps(request_id, room)
            if request_id in self._abort:
                finish = "abort"
            else:
                finish = "stop" if made == len(reply) and not sampling_params.ignore_eos else "length"
            tokens = reply[:made]
            text = (self.tokenizer.decode(tokens, skip_special_tokens=True)
                    if sampling_params.detokenize else "")
            done = True
            out = CompletionOutput(index=0, text=text, token_ids=tokens, finish_reason=finish)
            yield RequestOutput(request_id=request_id, prompt=prompt["prompt"],
                                prompt_token_ids=ids, prompt_logprobs=None, outputs=[out],
                                finished=True)
        finally:
            # A cancelled or closed generator aborts its request, as the real one does.
            self._release(request_id, aborted=not done or request_id in self._abort)

    def _reply(self, samples: int, params: Any, prompt: str) -> list[int]:
        """SCRIPT; after a forced language ("...language X<asr_text>") only its text part, as
        the real model continues the prompt."""
        from ... import SCRIPT

        script = SCRIPT(samples / SAMPLE_RATE) if callable(SCRIPT) else SCRIPT
        if prompt.endswith("<asr_text>"):
            script = script.split("<asr_text>", 1)[-1]
        reply = self.tokenizer(script, add_special_tokens=False)["input_ids"]
        if params.ignore_eos:  # a fixed length: the script repeated
            want = params.max_tokens
            return (reply * math.ceil(want / max(1, len(reply))))[:want]
        return reply + [self.tokenizer.eos_token_id]

    async def encode(self, prompt: Any, pooling_params: Any, request_id: str,
                     lora_request: Any = None, trace_headers: Any = None, priority: int = 0,
                     **kwargs: Any) -> AsyncGenerator[PoolingRequestOutput, None]:
        if not self.pooling:
            raise ValueError("encode needs a pooling model (runner='pooling')")
        if pooling_params.task != "token_classify":
            raise ValueError(f"Unsupported task: {pooling_params.task!r} Supported tasks: "
                             "('token_classify',)")
        ids, samples = self._admit(request_id, prompt, pooling_params, priority)
        done = False
        try:
            await self._steps(request_id, 1)
            if request_id in self._abort:
                return
            done = True
            rows = self._rows(ids, samples)
            columns = pooling_params.kwargs.get("returned_token_ids")
            if columns:  # STEP pooling keeps these classes (columns), in this order
                rows = rows[:, list(columns)]
            yield PoolingRequestOutput(request_id=request_id,
                                       outputs=PoolingOutput(rows),
                                       prompt_token_ids=ids, num_cached_tokens=0, finished=True)
        finally:
            self._release(request_id, aborted=not done)

    def _rows(self, ids: list[int], samples: int) -> Any:
        """Class probabilities per step tag: the j-th of n peaks at j/n of the audio."""
        import torch

        n = ids.count(self.step_tag_id)
        last = min(self.classify_num - 1, int(samples / SAMPLE_RATE / SEGMENT_SECONDS))
        rows = torch.full((n, self.classify_num), 0.1 / (self.classify_num - 1))
        for j in range(n):
            rows[j, min(last, int(j * last / max(1, n)))] = 0.9
        return rows

    async def pause_generation(self, *, mode: str = "abort",
                               wait_for_inflight_requests: bool | None = None,
                               clear_cache: bool = True) -> None:
        """0.22.0's modes: "keep" freezes every request (none is stepped, none is lost) until
        resume_generation; "abort" aborts them all first. "wait" (drain, then pause) is not
        mirrored here."""
        if mode not in ("keep", "abort", "wait"):
            raise ValueError(f"Invalid pause mode: {mode}")
        if mode == "wait" or wait_for_inflight_requests:
            raise NotImplementedError("the stand-in mirrors the 'keep' and 'abort' modes only")
        self._check_alive()
        if mode == "abort":
            from ... import ACTIVE

            self._abort.update(rid for rid in ACTIVE if rid in self._in_flight.values())
        from ... import STEP_SECONDS

        self._unpaused.clear()
        self.pause_log.append(("pause", mode, clear_cache, time.monotonic()))
        # The real one answers once the step under way has ended, then sleeps 0.02 s.
        await asyncio.sleep(STEP_SECONDS + 0.02)

    async def resume_generation(self) -> None:
        self._check_alive()
        self._unpaused.set()
        self.pause_log.append(("resume", time.monotonic()))

    async def is_paused(self) -> bool:
        return not self._unpaused.is_set()

    async def abort(self, request_id: str | list[str], internal: bool = False) -> None:
        from ... import ACTIVE

        for rid in [request_id] if isinstance(request_id, str) else request_id:
            if rid in ACTIVE:
                self._abort.add(rid)
