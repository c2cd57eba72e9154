"""Worker.handle in-process: engine failures map to ENGINE_ERROR, fatal GPU errors also ask
RunPod to replace the worker (and fail later jobs fast), and the job directory is removed after every outcome."""

from __future__ import annotations

import pytest

import media
from models import ENGLISH
from qwen_worker.engines.base import is_fatal_gpu_error


@pytest.fixture
def wav_b64(tmp_path):
    import base64

    return base64.b64encode(media.make_audio(tmp_path / "a.wav", 4.0).read_bytes()).decode()


def _jobs_left(worker) -> list:
    from pathlib import Path

    return list(Path(worker.settings.work_dir).iterdir())


@pytest.mark.parametrize("message,fatal", [
    ("shape mismatch in attention", False),
    ("CUDA error: an illegal memory access was encountered", True),
])
def test_engine_failure_is_engine_error_and_the_next_job_works(worker, wav_b64, monkeypatch,
                                                               message, fatal):
    def broken(*args):
        raise RuntimeError(message)

    monkeypatch.setattr(worker.engine._model, "_infer_asr", broken)
    out = worker.handle({"id": "1", "input": {"audio_base64": wav_b64}})
    assert out["error_code"] == "ENGINE_ERROR" and out["error"].startswith("ENGINE_ERROR: ")
    assert message not in out["error"]  # internals go to the log, not to the caller
    assert out.get("refresh_worker", False) is fatal
    assert _jobs_left(worker) == []
    monkeypatch.undo()
    after = worker.handle({"id": "2", "input": {"audio_base64": wav_b64}})
    if fatal:  # the GPU cannot be trusted again: later jobs fail fast until RunPod replaces it
        assert after["error_code"] == "ENGINE_ERROR" and after["refresh_worker"] is True
    else:
        assert after["text"] == ENGLISH


def test_unexpected_bug_is_internal_error_without_details(worker, wav_b64, monkeypatch):
    import qwen_worker.jobs.worker as w

    monkeypatch.setattr(w, "transcribe_file", lambda *a, **k: {}["missing"])
    out = worker.handle({"id": "3", "input": {"audio_base64": wav_b64}})
    assert out == {"error": "INTERNAL_ERROR: the worker hit an unexpected error; see the worker log",
                   "error_code": "INTERNAL_ERROR"}
    assert _jobs_left(worker) == []


def test_fatal_gpu_errors_are_recognised_through_causes():
    class EngineDeadError(Exception):
        pass

    try:
        try:
            raise EngineDeadError("engine core died")
        except EngineDeadError as inner:
            raise RuntimeError("generate failed") from inner
    except RuntimeError as outer:
        assert is_fatal_gpu_error(outer)
    assert not is_fatal_gpu_error(ValueError("bad input"))
