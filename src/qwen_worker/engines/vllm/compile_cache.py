"""Where vLLM keeps its compiled graphs, and whether a start found them there.

vLLM compiles each model with torch.compile at its first start and keeps the result under
`$VLLM_CACHE_ROOT/torch_compile_cache/` (keyed by the GPU, the model, the engine settings, every
`VLLM_*` variable and vLLM's install paths; docs/cold-start.md). A later start on the same GPU
type loads it instead of compiling (~30 s less per engine). A container's own disk is new on
every cold start, so the cache is only warm if it lives somewhere that outlasts the container:
RunPod's network volume when the endpoint has one, or the image itself (filled by a run on the
target GPU type; docs/cold-start.md says how).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# RunPod mounts an endpoint's network volume here (docs: serverless storage).
NETWORK_VOLUME = Path("/runpod-volume")
VOLUME_CACHE = NETWORK_VOLUME / "qwen-asr-worker" / "vllm-cache"
# vLLM's own default (vllm/envs.py: XDG_CACHE_HOME or ~/.cache, then "vllm").
CONTAINER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vllm"
MIN_FREE_BYTES = 1 << 30  # a few hundred MB per engine and GPU type, with room to spare


@dataclass(frozen=True)
class CacheRoot:
    path: Path
    why: str  # one phrase for the log: where the choice came from


def usable(path: Path) -> str | None:
    """Why `path` cannot hold the cache (None when it can): created if missing, a file written
    and removed, enough free space."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if free < MIN_FREE_BYTES:
        return f"{free / 2**20:.0f} MiB free"
    return None


def choose(setting: str, env: dict[str, str] | os._Environ = os.environ,
           volume: Path = NETWORK_VOLUME, volume_cache: Path = VOLUME_CACHE,
           container: Path = CONTAINER_CACHE) -> CacheRoot:
    """COMPILE_CACHE_DIR, else a VLLM_CACHE_ROOT set by the deployment, else the network
    volume when one is mounted, else the container's own disk; a choice that cannot be written
    falls back to the container's disk, with a warning."""
    if setting:
        wanted, why = Path(setting), "COMPILE_CACHE_DIR"
    elif env.get("VLLM_CACHE_ROOT"):
        wanted, why = Path(env["VLLM_CACHE_ROOT"]), "VLLM_CACHE_ROOT"
    elif volume.is_dir():
        wanted, why = volume_cache, "the network volume"
    else:
        return CacheRoot(container, "the container's disk (no network volume)")
    problem = usable(wanted)
    if problem is None:
        return CacheRoot(wanted, why)
    log.warning("compile cache: %s (%s) is not usable (%s); using %s, which a cold start "
                "does not keep", wanted, why, problem, container)
    return CacheRoot(container, f"the container's disk ({why} not usable)")


def apply(root: CacheRoot) -> None:
    """Make vLLM use `root` (its engine processes inherit the variable). Before vLLM is
    imported: vllm.envs reads it when first asked."""
    os.environ["VLLM_CACHE_ROOT"] = str(root.path)
    log.info("compile cache: %s (%s)", root.path, root.why)


def counters(_worker: Any) -> dict[str, Any]:
    """Runs in an engine core (vLLM's collective_rpc): what its start compiled or loaded."""
    from vllm.compilation.counter import compilation_counter

    config = _worker.vllm_config.compilation_config
    return {"loaded": compilation_counter.num_aot_artifacts_loaded
            + compilation_counter.num_compiled_artifacts_loaded,
            "compiled": compilation_counter.num_inductor_compiles
            + compilation_counter.num_aot_compiles,
            "saved": compilation_counter.num_aot_artifacts_saved
            + compilation_counter.num_compiled_artifacts_saved,
            "dir": str(getattr(config, "cache_dir", "") or ""),
            "seconds": round(float(getattr(config, "compilation_time", 0.0) or 0.0), 1)}


def verdict(found: dict[str, Any] | None) -> str:
    """One phrase for an engine's start-up line, from `counters`."""
    if not found:
        return "compile cache: unknown"
    if found["compiled"]:
        return f"compile cache: miss (compiled in {found['seconds']} s, saved for the next start)"
    if found["loaded"]:
        return f"compile cache: hit ({found['loaded']} artifacts loaded)"
    return "compile cache: not used (eager)"
