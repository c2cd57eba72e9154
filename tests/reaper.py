"""Runs a command as a child subreaper and reports the processes it left behind.

    python tests/reaper.py LEFT.json -- python src/handler.py ...

Linux hands the orphans of a process that exits to its nearest ancestor marked as a child
subreaper (prctl PR_SET_CHILD_SUBREAPER) instead of init. This wrapper is one: when the command
exits, every process it started, at any depth, that still runs has become this process's child
by the time the command's exit is seen. Their PIDs and command lines go to LEFT.json, then
they are killed (nothing outlives a test), and the wrapper exits with the command's status.
SIGTERM and SIGINT sent to the wrapper are passed on to the command.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def children() -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        kids += [int(p) for p in task.read_text().split()]
    return kids


def running(pid: int) -> bool:
    """Not a zombie (a process that ended and was not waited for yet is not left running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
    except OSError:
        return ""


def main() -> int:
    left_path, dash, *command = sys.argv[1:]
    assert dash == "--" and command, __doc__
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    proc = subprocess.Popen(command)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    code = proc.wait()
    left = [{"pid": pid, "cmdline": cmdline(pid)} for pid in children() if running(pid)]
    Path(left_path).write_text(json.dumps(left))
    for item in left:
        try:
            os.kill(item["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:  # the killed ones and any zombies handed over
        try:
            os.wait()
        except ChildProcessError:
            break
    return code


if __name__ == "__main__":
    sys.exit(main())
