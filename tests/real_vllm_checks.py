"""The real vllm 0.22.0 package, on CPU, up to input processing: run by tests/test_real_vllm.py
in a process of its own (vLLM's CPU platform must be forced before anything else imports vllm).

    python tests/real_vllm_checks.py ASR_DIR ALIGNER_DIR OUT.json

Writes what it found as JSON; the test asserts on it. Nothing here runs a model.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import vllm.platforms  # noqa: E402
from vllm.platforms.cpu import CpuPlatform  # noqa: E402

vllm.platforms._current_platform = CpuPlatform()

import numpy as np  # noqa: E402

SR = 16000


def surface() -> dict:
    import typing

    from signatures import parameters
    from vllm import AsyncEngineArgs, PoolingParams, SamplingParams
    from vllm.config import PoolerConfig
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine import PauseMode
    from vllm.v1.engine.async_llm import AsyncLLM

    return {
        "vllm": vllm.__version__,
        "AsyncEngineArgs": sorted(f.name for f in dataclasses.fields(AsyncEngineArgs) if f.init),
        "SamplingParams": list(SamplingParams.__struct_fields__),
        "PoolingParams": list(PoolingParams.__struct_fields__),
        "PoolerConfig": sorted(f.name for f in dataclasses.fields(PoolerConfig) if f.init),
        "RequestOutputKind": [k.name for k in RequestOutputKind],
        "PauseMode": list(typing.get_args(PauseMode)),
        "AsyncLLM": {name: parameters(getattr(AsyncLLM, name))
                     for name in ("pause_generation", "resume_generation")},
    }


def paused_scheduler() -> dict:
    """The engine core's own pause and resume (vLLM 0.22's EngineCoreProc, as AsrPause calls
    them: mode "keep", caches kept) on a scheduler holding two waiting requests and one
    running: whether the pause is answered at once or waits for the engine to go idle, whether
    the core still has steps to run, what became of the requests, and what the scheduler counts
    as work in each pause state."""
    from vllm.v1.core.sched.interface import PauseState
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.core import EngineCoreProc

    def scheduler(state):  # the queues and counters alone: no KV cache behind it
        made = Scheduler.__new__(Scheduler)
        made.waiting, made.skipped_waiting = ["w1", "w2"], []
        made.running, made.num_waiting_for_streaming_input = ["r1"], 0
        made.finished_req_ids, made.connector = set(), None
        made._pause_state = state
        return made

    core = EngineCoreProc.__new__(EngineCoreProc)
    core.scheduler = scheduler(PauseState.UNPAUSED)
    core.engines_running, core.batch_queue, core._idle_state_callbacks = False, None, []
    before = core.has_work()
    pending = core.pause_scheduler(mode="keep", clear_cache=False)
    paused = {"steps_before": before, "answered_at_once": pending is None,
              "steps_while_paused": core.has_work(),
              "requests_kept": [core.scheduler.waiting, core.scheduler.running]}
    core.resume_scheduler()
    paused["steps_after_resume"] = core.has_work()
    paused["unfinished_by_state"] = {state.name: scheduler(state).get_num_unfinished_requests()
                                     for state in PauseState}
    return paused


def refusal(run) -> str | None:
    try:
        run()
    except ValueError as exc:
        return str(exc)
    return None


def main() -> None:
    asr_dir, aligner_dir, out_path = sys.argv[1:4]
    import qwen_asr  # noqa: F401 - as in the worker: its vLLM class registration is attempted
    from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor
    from transformers import AutoProcessor
    from vllm import AsyncEngineArgs, PoolingParams
    from vllm.v1.engine.input_processor import InputProcessor

    from qwen_worker.base.config import load_settings
    from qwen_worker.engines.prompts import asr_prompt
    from qwen_worker.engines.vllm.args import (ALIGNER_ARCHITECTURE, ASR_ARCHITECTURE,
                                               AlignerConfig, aligner_engine_args, asr_engine_args)
    from qwen_worker.engines.vllm.engine import BenchOptions, VllmEngine
    from qwen_worker.engines.vllm.loader import check_native_classes, native_class_module

    found: dict = {"surface": surface()}
    check_native_classes()
    found["classes"] = {a: native_class_module(a) for a in (ASR_ARCHITECTURE, ALIGNER_ARCHITECTURE)}

    settings = load_settings({"ASR_BACKEND": "vllm", "ASR_DEVICE": "cuda"})  # the defaults
    asr_args = AsyncEngineArgs(**asr_engine_args(settings, asr_dir))
    model = asr_args.create_model_config()
    config = asr_args.create_engine_config()
    found["asr"] = {"architectures": model.architectures, "max_model_len": model.max_model_len,
                    "runner": model.runner_type, "dtype": str(model.dtype),
                    "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
                    "max_num_seqs": config.scheduler_config.max_num_seqs,
                    "policy": config.scheduler_config.policy,
                    "conv_windows": model.hf_config.thinker_config.audio_config.conv_chunksize}
    processor = InputProcessor(config)
    hf = AutoProcessor.from_pretrained(asr_dir, fix_mistral_regex=True)
    audio_id = hf.tokenizer.convert_tokens_to_ids("<|audio_pad|>")

    # The worker's own SamplingParams, through a VllmEngine shell (no engines behind it).
    engine = VllmEngine.__new__(VllmEngine)
    engine.max_new_tokens, engine._bench = settings.max_new_tokens, BenchOptions()
    params = engine._sampling(30 * SR)

    def process(prompt: str, seconds: float, params=params, proc=processor, tasks=("generate",)):
        audio = np.zeros(int(seconds * SR), np.float32)
        return proc.process_inputs("r", {"prompt": prompt, "multi_modal_data": {"audio": audio}},
                                   params, supported_tasks=tasks)

    rows = []
    for seconds, context, language in [(30, "", None), (270, "Names: Qwen, RunPod.", "English"),
                                       (300, "", "Chinese")]:
        prompt = asr_prompt(context, language)
        ids = process(prompt, seconds).prompt_token_ids
        reference = hf(text=[prompt], audio=[np.zeros(int(seconds * SR), np.float32)],
                       return_tensors="np", padding=True)["input_ids"][0].tolist()
        rows.append({"seconds": seconds, "audio_tokens": ids.count(audio_id),
                     "same_ids_as_qwen_asr": ids == reference, "prompt_tokens": len(ids)})
    found["asr_prompts"] = rows

    # The longest request the settings allow: a 300 s chunk, MAX_CONTEXT_TOKENS of context.
    words = " ".join(["Qwen"] * settings.max_context_tokens)
    context = hf.tokenizer.decode(hf.tokenizer(words, add_special_tokens=False)["input_ids"]
                                  [: settings.max_context_tokens])
    found["longest_accepted"] = refusal(lambda: process(asr_prompt(context, "English"), 300))

    # What vLLM refuses (the stand-in must say the same), and why contexts are cleaned.
    small = dataclasses.replace(asr_args, max_num_batched_tokens=3899, max_model_len=4200)
    small_proc = InputProcessor(small.create_engine_config())
    found["refusals"] = {
        "encoder_cache": refusal(lambda: process(asr_prompt("", None), 300, proc=small_proc)),
        "max_model_len": refusal(lambda: process(asr_prompt("word " * 400, None), 300,
                                                 proc=small_proc)),
        "audio_placeholder_in_context": refusal(lambda: process(asr_prompt("<|audio_pad|>", None),
                                                                30)),
        "two_audios": refusal(lambda: processor.process_inputs(
            "r", {"prompt": asr_prompt("", None), "multi_modal_data": {"audio": [
                np.zeros(SR, np.float32)] * 2}}, params, supported_tasks=("generate",))),
    }

    aligner_config = AlignerConfig(aligner_dir)
    al_args = AsyncEngineArgs(**aligner_engine_args(settings, aligner_dir,
                                                    aligner_config.timestamp_token_id))
    al_model = al_args.create_model_config()
    al_config = al_args.create_engine_config()
    pooler = al_model.pooler_config
    found["aligner"] = {"architectures": al_model.architectures, "runner": al_model.runner_type,
                        "tok_pooling_type": pooler.tok_pooling_type,
                        "step_tag_id": pooler.step_tag_id,
                        "timestamp_token_id": aligner_config.timestamp_token_id,
                        "max_model_len": al_model.max_model_len,
                        "max_num_batched_tokens": al_config.scheduler_config.max_num_batched_tokens,
                        "conv_windows":
                            al_model.hf_config.thinker_config.audio_config.conv_chunksize}
    al_proc = InputProcessor(al_config)
    al_hf = AutoProcessor.from_pretrained(aligner_dir, fix_mistral_regex=True)
    word_list, prompt = Qwen3ForceAlignProcessor().encode_timestamp(
        "Hello, world. This is a test of the aligner.", "English")
    # The worker's own pooling request for a 270 s chunk (only the classes within its audio).
    engine._config = aligner_config
    request = process(prompt, 270, params=engine._pooling(270 * SR), proc=al_proc,
                      tasks=("token_classify",))
    reference = al_hf(text=[prompt], audio=[np.zeros(270 * SR, np.float32)],
                      return_tensors="np", padding=True)["input_ids"][0].tolist()
    found["aligner_prompt"] = {
        "words": len(word_list),
        "timestamps": request.prompt_token_ids.count(aligner_config.timestamp_token_id),
        "audio_tokens": request.prompt_token_ids.count(
            al_hf.tokenizer.convert_tokens_to_ids("<|audio_pad|>")),
        "same_ids_as_qwen_asr": request.prompt_token_ids == reference,
        "pooling_task": request.pooling_params.task,
        "step_tag_id": request.pooling_params.step_tag_id,
        "returned_classes": list(request.pooling_params.returned_token_ids or []),
        "classes": aligner_config.classes}
    found["frontend"] = front_end(processor, config, params, al_proc, al_config, prompt)
    found["reuse"] = reuse(processor, params, al_proc, aligner_dir)
    found["shutdown"] = shutdown_report()
    found["paused_scheduler"] = paused_scheduler()
    Path(out_path).write_text(json.dumps(found, indent=1))


def shutdown_report() -> dict:
    """What the worker's close() keeps out of the log: the report AsyncLLM's output task makes
    when the engine core is gone, and the order of AsyncLLM.shutdown that lets it happen."""
    import inspect

    from vllm.v1.engine import async_llm

    from qwen_worker.engines.vllm.loop import ASYNC_LLM_LOGGER, OUTPUT_TASK_FAILED

    handler = inspect.getsource(async_llm.AsyncLLM._run_output_handler)
    stop = inspect.getsource(async_llm.AsyncLLM.shutdown)
    return {"logger": async_llm.logger.name == ASYNC_LLM_LOGGER,
            "reports": f'logger.exception("{OUTPUT_TASK_FAILED}.")' in handler,
            "core_before_task": stop.index("engine_core.shutdown") < stop.index(
                "cancel_task_threadsafe(handler)")}


def reuse(processor, params, al_proc, aligner_dir) -> list:
    """The aligner's input built from the ASR's (VllmEngine._aligner_input, as load_vllm_engine
    sets it up) against the aligner's own processing of the same prompt and audio, after the
    ASR's input went through the ASR engine's input processing (as it does in the worker)."""
    import threading

    import torch
    from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor
    from transformers import AutoTokenizer
    from vllm import PoolingParams

    from qwen_worker.engines.prompts import asr_prompt
    from qwen_worker.engines.vllm.engine import AUDIO_PLACEHOLDER, VllmEngine, _same_data

    engine = VllmEngine.__new__(VllmEngine)
    engine._aligner_tokenizer = AutoTokenizer.from_pretrained(aligner_dir)
    engine._aligner_tokenizer_lock = threading.Lock()
    engine._audio_pad_id = engine._aligner_tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
    _, al_prompt = Qwen3ForceAlignProcessor().encode_timestamp(
        " ".join(["Hello, world."] * 200), "English")
    pooling = PoolingParams(task="token_classify")
    rows = []
    for seconds in (30, 270, 300, 7.37, 0.6):  # round chunks, a tail, a near-minimum repair
        audio = np.random.default_rng(int(seconds * 100)).normal(
            0, 0.1, int(seconds * SR)).astype(np.float32)
        asr_in = processor.input_preprocessor.preprocess(
            {"prompt": asr_prompt("", "English"), "multi_modal_data": {"audio": audio}})
        processor.process_inputs("asr", asr_in, params, supported_tasks=("generate",))
        (place,) = asr_in["mm_placeholders"]["audio"]
        built = engine._aligner_input("al", al_prompt, asr_in["mm_kwargs"], place)
        own = al_proc.input_preprocessor.preprocess(
            {"prompt": al_prompt, "multi_modal_data": {"audio": audio}})
        made = al_proc.process_inputs("al", built, pooling, supported_tasks=("token_classify",))
        raw = al_proc.process_inputs("raw", {"prompt": al_prompt, "multi_modal_data": {
            "audio": audio}}, pooling, supported_tasks=("token_classify",))
        feature, reference = made.mm_features[0], raw.mm_features[0]
        rows.append({
            "seconds": seconds,
            "same_prompt_token_ids": built["prompt_token_ids"] == own["prompt_token_ids"]
            == made.prompt_token_ids == raw.prompt_token_ids,
            "same_placeholders": built["mm_placeholders"] == own["mm_placeholders"]
            and feature.mm_position == reference.mm_position,
            "same_features": _same_data(built["mm_kwargs"], own["mm_kwargs"]) and all(
                torch.equal(feature.data[k].data, reference.data[k].data)
                for k in reference.data),
            "audio_tokens": place.length, "identifier": feature.identifier})
    return rows


def front_end(processor, config, params, al_proc, al_config, al_prompt) -> dict:
    """The worker's FrontEnd on the real package: two spawned processes (this script is their
    main module, so the CPU platform is forced there too)."""
    import torch
    from vllm import PoolingParams

    from qwen_worker.engines.vllm.frontend import FrontEnd
    from qwen_worker.engines.prompts import asr_prompt

    audio = np.random.default_rng(0).normal(0, 0.1, 30 * SR).astype(np.float32)
    front = FrontEnd({"asr": config, "aligner": al_config}, 2,
                     warm_prompts={"asr": asr_prompt("", None)})
    found: dict = {"processes": front.processes}
    try:
        front.start()  # each process warms the real processor on 1 s of silence
        found["warmed"] = sorted(front.warmed.values())
        for name, proc, prompt, p, tasks in [
                ("asr", processor, asr_prompt("", "English"), params, ("generate",)),
                ("aligner", al_proc, al_prompt, PoolingParams(task="token_classify"),
                 ("token_classify",))]:
            # Two at once: the two processes both count their audio items from 1.
            futures = [front.prepare(name, f"{name}-{i}", prompt, audio) for i in (7, 8)]
            prepared = [f.result() for f in futures]
            made = [proc.process_inputs(f"{name}-{i}", x, p, supported_tasks=tasks, priority=30)
                    for i, x in zip((7, 8), prepared)]
            raw = proc.process_inputs("raw", {"prompt": prompt, "multi_modal_data":
                                              {"audio": audio}}, p, supported_tasks=tasks)
            feature, reference = made[0].mm_features[0], raw.mm_features[0]
            found[name] = {
                "same_prompt_token_ids": all(m.prompt_token_ids == raw.prompt_token_ids
                                             for m in made),
                "same_features": feature.mm_position == reference.mm_position and all(
                    torch.equal(feature.data[k].data, reference.data[k].data)
                    for k in reference.data),
                "priority": made[0].priority,
                "identifiers": [m.mm_features[0].identifier for m in made],
                "raw_identifier": reference.identifier}
        try:
            front.prepare("asr", "bad", asr_prompt("", None), audio[:160]).result()
            found["error"] = ""
        except Exception as exc:  # vLLM's own refusal, carried back from the process
            found["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        front.close()
    return found


if __name__ == "__main__":
    main()
