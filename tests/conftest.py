from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
from pathlib import Path

import pytest

import netguard.sitecustomize  # noqa: F401  (loopback-only sockets for this test process)

# Tests use loopback servers; a proxy from the environment would route around them.
for _var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    os.environ.pop(_var, None)
# The tests rely on runpod's guard being ON (only the narrow loopback allowance is used).
os.environ.pop("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", None)

# The processes the tests start see Ctrl-C as a user's terminal delivers it. A test run started
# in the background (`cmd &` in a script, nohup, some CI runners) has SIGINT ignored, and an
# ignored signal stays ignored in every child, across exec: Python then installs no
# KeyboardInterrupt handler, and tests/test_client.py's Ctrl-C never reached the client (its
# 60 s timeout in a background run, as in one of three CI runs). A handler set here is reset to
# the default action in a child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Compiled bytecode is kept between processes. The tests start many Python processes (workers,
# servers, engine front ends, clients), most of which import torch and transformers; with
# bytecode caching off (PYTHONDONTWRITEBYTECODE=1, as some containers set) or no .pyc in the venv
# (uv installs none), each of them compiled those packages again: ~8 CPU s a process. The cache
# lives beside the checkout (ignored by git), not in the venv, which may be shared.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(__file__).resolve().parents[1] / ".pycache"))
sys.dont_write_bytecode = False
sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]


@pytest.fixture
def audio_host():
    from http_server import AudioHost

    host = AudioHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """The tiny models, built once per run: under pytest-xdist the first worker to need them
    builds them in the run's shared temporary directory while the others wait."""
    from models import build_all

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build_all(tmp_path_factory.mktemp("models"))
    shared = tmp_path_factory.getbasetemp().parent  # the run's, above each worker's own
    with open(shared / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = shared / "models.json"
        if built.exists():
            return {name: Path(p) for name, p in json.loads(built.read_text()).items()}
        dirs = build_all(shared / "models")
        built.write_text(json.dumps({name: str(p) for name, p in dirs.items()}))
        return dirs


@pytest.fixture(scope="session")
def english_engine(model_dirs):
    """The tiny English model and the aligner on the transformers backend (models.settings_for's
    settings), loaded once. Workers hold their own scheduler and job directory; tests that
    change the engine do it with monkeypatch."""
    from models import engine_for

    return engine_for(model_dirs["english"], model_dirs["aligner"])


@pytest.fixture
def worker(model_dirs, english_engine, tmp_path):
    """A worker over `english_engine`, with a WORK_DIR of its own."""
    from models import settings_for
    from qwen_worker.jobs.worker import Worker

    w = Worker(settings_for(model_dirs["english"], model_dirs["aligner"],
                            WORK_DIR=str(tmp_path / "jobs")), english_engine)
    yield w
    w.scheduler.close()


@pytest.fixture(scope="session")
def host():
    """One loopback audio host for the worker tests."""
    from http_server import AudioHost

    h = AudioHost()
    yield h
    h.close()


@pytest.fixture(scope="session")
def jobs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs")


WORKER_LIMITS = {"MAX_DOWNLOAD_BYTES": str(8 << 20), "MAX_BASE64_BYTES": str(2 << 20),
                 "MAX_AUDIO_SECONDS": "120"}


@pytest.fixture(scope="session")
def server(model_dirs, jobs_dir, tmp_path_factory):
    """The worker behind runpod's local API server, allowed to download from loopback only."""
    from worker_server import WorkerServer, worker_env

    env = worker_env(model_dirs["english"], model_dirs["aligner"], jobs_dir,
                     DOWNLOAD_ALLOW_LOOPBACK="true", **WORKER_LIMITS)
    srv = WorkerServer(env, tmp_path_factory.mktemp("log") / "worker.log")
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def guarded_server(model_dirs, tmp_path_factory):
    """The worker as deployed: runpod's SSRF guard fully on (loopback refused too)."""
    from worker_server import WorkerServer, worker_env

    env = worker_env(model_dirs["english"], model_dirs["aligner"],
                     tmp_path_factory.mktemp("guarded-jobs"), **WORKER_LIMITS)
    srv = WorkerServer(env, tmp_path_factory.mktemp("log") / "guarded.log")
    yield srv
    srv.close()
