"""Starting the GPU engine: each engine's KV cache fixed from the card's memory, so that both
engine cores, their configs and the front end's processes start at the same time; then the
warm-up (docs/cold-start.md)."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from qwen_worker.base.clock import CLOCK
from qwen_worker.base.config import Settings
from qwen_worker.base.lifecycle import CLOSERS
from qwen_worker.engines.model_files import StartupError, parameter_count
from qwen_worker.engines.prompts import asr_prompt
from qwen_worker.engines.vllm.args import (
    ALIGNER_ARCHITECTURE,
    ASR_ARCHITECTURE,
    AlignerConfig,
    aligner_engine_args,
    asr_engine_args,
)
from qwen_worker.engines.vllm.compile_cache import verdict
from qwen_worker.engines.vllm.engine import VllmEngine
from qwen_worker.engines.vllm.frontend import FrontEnd

log = logging.getLogger(__name__)

T = TypeVar("T")


def native_class_module(architecture: str) -> str:
    """The module vLLM's model registry resolves `architecture` to, without importing it."""
    from vllm import ModelRegistry

    entry = ModelRegistry.models[architecture]
    module = getattr(entry, "module_name", None)  # registered lazily by vLLM itself
    if module is None:  # registered as a class, by a plugin or a package such as qwen-asr
        module = entry.model_cls.__module__
    return module


def check_native_classes() -> None:
    """qwen-asr tries to register its own vLLM model class when imported (made for vLLM 0.14;
    on 0.22 the attempt fails silently). Refuse to start if it ever succeeds."""
    for arch in (ASR_ARCHITECTURE, ALIGNER_ARCHITECTURE):
        module = native_class_module(arch)
        if not module.startswith("vllm.model_executor.models."):
            raise StartupError(f"vLLM resolves {arch} to {module}, not to its own class; "
                               "a package replaced it (qwen-asr's vLLM backend?)")


@contextlib.contextmanager
def engine_process_env(settings: Settings) -> Iterator[None]:
    """The environment an engine process is spawned with: `VLLM_ENGINE_THREADS` torch threads
    (OMP_NUM_THREADS, read when torch starts in the new interpreter: this relies on spawn; a
    forked engine would keep this process's pool). This process's own is left as it was."""
    if not settings.vllm_engine_threads:
        yield
        return
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(settings.vllm_engine_threads)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class KvCachePlan:
    """Each engine's KV cache, fixed before it starts (`VLLM_KV_CACHE_SIZING=computed`)."""

    card_bytes: int
    asr_bytes: int
    aligner_bytes: int


def card_memory_bytes() -> int | None:
    """The GPU's memory, through NVML (no CUDA context in this process); None without one."""
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cuda():
            return None
        return int(current_platform.get_device_total_memory(0))
    except Exception:  # noqa: BLE001 - no GPU, no NVML, or a vLLM without platforms
        log.debug("the card's memory is unknown", exc_info=True)
        return None


def kv_cache_bytes(card_bytes: int, share: float, weight_bytes: int, reserve_bytes: int) -> int:
    """An engine's KV cache: its share of the card less its weights and the reserve for
    activations, CUDA graphs and its CUDA context: what vLLM's profiling measured, fixed."""
    return int(card_bytes * share) - weight_bytes - reserve_bytes


def kv_cache_plan(settings: Settings, asr_path: str, aligner_path: str,
                  card_bytes: int | None) -> KvCachePlan | None:
    """The fixed sizes, or None where vLLM profiles instead (the setting, or no card known)."""
    if settings.vllm_kv_cache_sizing != "computed" or card_bytes is None:
        return None
    per_weight = 4 if settings.dtype == "float32" else 2
    reserve = int(settings.vllm_activation_reserve_gib * GIB)
    sizes = {}
    for name, path, share, setting in (
            ("asr", asr_path, settings.vllm_gpu_memory_utilization,
             "VLLM_GPU_MEMORY_UTILIZATION"),
            ("aligner", aligner_path, settings.vllm_aligner_gpu_memory_utilization,
             "VLLM_ALIGNER_GPU_MEMORY_UTILIZATION")):
        weights = parameter_count(Path(path)) * per_weight
        sizes[name] = kv_cache_bytes(card_bytes, share, weights, reserve)
        if sizes[name] < GIB // 4:
            raise StartupError(
                f"{setting}={share} of this card's {card_bytes / GIB:.1f} GiB leaves "
                f"{sizes[name] / GIB:.2f} GiB of KV cache after the {name} model's weights "
                f"({weights / GIB:.2f} GiB) and VLLM_ACTIVATION_RESERVE_GIB="
                f"{settings.vllm_activation_reserve_gib}: raise {setting}")
    return KvCachePlan(card_bytes, sizes["asr"], sizes["aligner"])


def _in_thread(name: str, work: Callable[[], T]) -> "Future[T]":
    """work() in a daemon thread of its own (an engine start blocks its caller for its whole
    start; a daemon thread does not hold the process's exit up if start-up is abandoned)."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def load_vllm_engine(settings: Settings, asr_path: str, aligner_path: str) -> VllmEngine:
    """Start both engines and the front end at the same time, check the model classes, warm
    up. Call only under `if __name__ == "__main__"`: the engine processes are spawned.

    Each engine's KV cache is fixed beforehand from the card's memory and the worker's shares
    (`kv_cache_plan`): two engines that profiled the card's free memory at the same time
    would each count the other's allocations as their own (docs/cold-start.md). With
    VLLM_KV_CACHE_SIZING=profiled they start one after the other, as vLLM advises."""
    # Spawn: nothing this process holds (threads, locks, the event loop) leaks into the
    # engine processes, and CUDA is never initialised here (PYTORCH_NVML_BASED_CUDA_CHECK).
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    aligner_config = AlignerConfig(aligner_path)
    args = {"asr": asr_engine_args(settings, asr_path),
            "aligner": aligner_engine_args(settings, aligner_path,
                                           aligner_config.timestamp_token_id)}
    with CLOCK.phase("engine configs") as detail:
        plan = kv_cache_plan(settings, asr_path, aligner_path, card_memory_bytes())
        if plan is not None:
            for name, size in (("asr", plan.asr_bytes), ("aligner", plan.aligner_bytes)):
                args[name].update(kv_cache_memory_bytes=size,
                                  skip_mm_profiling=settings.vllm_skip_mm_profiling)
            detail.append(f"KV cache fixed: ASR {plan.asr_bytes / GIB:.2f} GiB, aligner "
                          f"{plan.aligner_bytes / GIB:.2f} GiB of {plan.card_bytes / GIB:.1f}")
        else:
            detail.append("KV cache profiled by vLLM: engines start one after the other")
        # Together: on a cold cache each resolves its model class in a subprocess of its own
        # (~20 s; vLLM keeps the answer under VLLM_CACHE_ROOT/modelinfos for later starts).
        from vllm import ModelRegistry  # noqa: F401 - the registry, imported once, here

        making = {name: _in_thread(f"config-{name}",
                                   lambda a=a: AsyncEngineArgs(**a).create_engine_config())
                  for name, a in args.items()}
        configs = {name: future.result() for name, future in making.items()}

    spans: dict[str, tuple[float, float]] = {}

    def start_engine(name: str) -> Any:
        began = CLOCK.now()
        engine = AsyncLLM.from_vllm_config(configs[name], disable_log_stats=True)
        spans[name] = (began, CLOCK.now())
        return engine

    front_began = CLOCK.now()
    # The front end processes input with the engines' own configs; its processes start now,
    # beside the engines.
    front = FrontEnd(configs, settings.vllm_frontend_processes,
                     warm_prompts={"asr": asr_prompt("", None)})
    started: dict[str, Any] = {}
    try:
        front.begin()
        with CLOCK.phase("imports"):
            # Before the engines' threads: what they import (transformers' tokenizers) and
            # qwen-asr's text side for the aligner are imported by one thread at a time (two
            # threads importing one package at once can each see the other's half-initialised
            # modules); and the check that qwen-asr's import left vLLM's own classes in place.
            from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor
            from transformers import AutoProcessor, AutoTokenizer  # noqa: F401

            aligner_text = Qwen3ForceAlignProcessor()
            check_native_classes()
            # The job side's own tokenizers (plain transformers ones: vLLM's engine keeps a
            # thread-pool wrapper that cannot be copied, and ContextFitter copies).
            tokenizers = {"asr": AutoTokenizer.from_pretrained(asr_path),
                          "aligner": AutoTokenizer.from_pretrained(aligner_path)}
        with engine_process_env(settings):
            if plan is None:  # each profiles the free memory: one after the other
                def both() -> dict[str, Any]:
                    for name in ("asr", "aligner"):
                        started[name] = start_engine(name)
                    return started

                starting = {"engines": _in_thread("start-engines", both)}
            else:
                starting = {name: _in_thread(f"start-{name}", lambda n=name: start_engine(n))
                            for name in ("asr", "aligner")}
            failures = []
            for name, future in starting.items():
                try:
                    result = future.result()
                    if name in args:
                        started[name] = result
                except Exception as exc:  # noqa: BLE001 - the other's start is waited for
                    failures.append(exc)
            if failures:
                raise failures[0]
        front.wait_started()
        CLOCK.record("front end", front_began, front.ready_at - CLOCK.origin,
                     f"{front.processes} processes")
    except BaseException:
        front.close()
        for engine in started.values():
            engine.shutdown()
        raise
    asr, aligner = started["asr"], started["aligner"]
    engine = VllmEngine(asr, aligner, front=front, aligner_text=aligner_text,
                        tokenizer=tokenizers["asr"], aligner_tokenizer=tokenizers["aligner"],
                        aligner_config=aligner_config, asr_model=settings.asr_model,
                        aligner_model=settings.aligner_model,
                        max_new_tokens=settings.max_new_tokens,
                        max_context_tokens=settings.max_context_tokens,
                        align_pauses_longer_asr=settings.vllm_align_pauses_longer_asr)
    CLOSERS.add(engine.close)
    atexit.register(engine.close)  # also for code that loads an engine outside `startup.run`
    reports = engine.compile_reports()
    for name in ("asr", "aligner"):
        CLOCK.record(f"{name} engine", *spans[name], verdict(reports[name]))
    with CLOCK.phase("warm-up"):
        engine.warm_up()
    log.info("loaded %s and %s on vLLM (AsyncLLM, ASR memory %.2f, aligner %.2f, %d front-end "
             "processes, %s torch threads per engine)", settings.asr_model,
             settings.aligner_model, settings.vllm_gpu_memory_utilization,
             settings.vllm_aligner_gpu_memory_utilization, settings.vllm_frontend_processes,
             settings.vllm_engine_threads or "default")
    return engine

