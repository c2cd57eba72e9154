"""bench/cuda_fork_probe: does the worker's start-up leave CUDA usable in a forked child?

vLLM 0.14 forks its engine process whenever `torch.cuda.is_initialized()` is False in the
parent. torch's default `cuda.is_available()` leaves that False yet initialises the CUDA
driver, so a forked child's first CUDA call fails. Each row runs in a fresh interpreter:
the worker's own order (qwen_worker imported first, then `load_settings()`), and the control
without the NVML-based check. Run on a GPU machine:

    PYTHONPATH=src python3 bench/cuda_fork_probe.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys
{setup}
import torch
initialised = torch.cuda.is_initialized()
pid = os.fork()
if pid == 0:
    try:
        torch.zeros(1, device="cuda").add_(1)
        torch.cuda.synchronize()
        os._exit(0)
    except Exception as exc:
        sys.stderr.write(f"child: {{type(exc).__name__}}: {{str(exc).splitlines()[0]}}\n")
        os._exit(3)
_, status = os.waitpid(pid, 0)
print(json.dumps({{"parent_initialised": initialised,
                   "child_ok": os.waitstatus_to_exitcode(status) == 0}}))
"""

ROWS = {
    "worker start-up (qwen_worker + load_settings)":
        "from qwen_worker.config import load_settings\nprint(load_settings().device, file=sys.stderr)",
    "control: torch.cuda.is_available() without NVML check":
        "os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] = '0'\nimport torch\ntorch.cuda.is_available()",
}


def main() -> int:
    print("| start-up | CUDA initialised in parent | forked child can use CUDA |")
    print("| --- | --- | --- |")
    ok = True
    for label, setup in ROWS.items():
        env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
        out = subprocess.run([sys.executable, "-c", CHILD.format(setup=setup)], env=env,
                             capture_output=True, text=True, timeout=300)
        try:
            res = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            print(f"| {label} | ? | ? (exit {out.returncode}: {out.stderr.strip()[-300:]}) |")
            ok = False
            continue
        print(f"| {label} | {res['parent_initialised']} | {res['child_ok']} |")
        if out.stderr.strip():
            print(f"  stderr: {out.stderr.strip()[-300:]}")
        if label.startswith("worker") and not res["child_ok"]:
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
