"""Faults with their own codes: a full disk, GPU out-of-memory, SIGTERM during a decode."""

from __future__ import annotations

import base64
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

import media
from models import ENGLISH
from qwen_worker.pipeline import decode as d
from qwen_worker.base import lifecycle
from test_decode_faults import dying_ffmpeg  # noqa: F401  (fixture)
from job_api import JobApi, JobLoopWorker
from worker_server import worker_env


def test_full_disk_is_disk_full_and_the_worker_is_replaced(model_dirs, tmp_path, host):
    """WORK_DIR on a real 1 MiB tmpfs (in a private mount namespace) and a 2 MB download,
    under runpod's job loop: the result asks RunPod to stop the worker (stopPod)."""
    assert shutil.which("unshare"), "util-linux unshare makes the small filesystem"
    url = host.file("/disk/big.wav", media.make_audio(tmp_path / "big.wav", 60.0,
                                                      rate=16000).read_bytes(), "audio/wav")
    work = tmp_path / "small"
    work.mkdir()
    env = worker_env(model_dirs["english"], model_dirs["aligner"], work,
                     DOWNLOAD_ALLOW_LOOPBACK="true")
    mount_small_disk = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                        f'mount -t tmpfs -o size=1m tmpfs "{work}" && exec "$@"', "sh")
    api = JobApi()
    worker = JobLoopWorker(api, env, tmp_path / "worker.log", wrapper=mount_small_disk)
    try:
        api.submit("big", {"audio_url": url})
        posts = api.wait_for(1, 180)
        big = posts["big"]
        assert big["error"].startswith("DISK_FULL: the worker's disk is full"), big
        assert big.get("stopPod") is True, big
        assert "the disk under WORK_DIR is full" in worker.log()
    finally:
        worker.close()
        api.close()


def _job(tmp_path: Path, seconds: float) -> dict:
    path = media.make_audio(tmp_path / "a.wav", seconds, gaps=[28.0, 58.0], rate=16000)
    return {"id": "oom", "input": {"audio_base64": base64.b64encode(path.read_bytes()).decode(),
                                   "chunk_seconds": 30}}


def _oom_above(worker, monkeypatch, most: int) -> list[int]:
    """The ASR call raises torch's out-of-memory error for more than `most` chunks."""
    sizes: list[int] = []
    real = worker.engine._model._infer_asr

    def infer(contexts, wavs, languages):
        sizes.append(len(wavs))
        if len(wavs) > most:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(contexts, wavs, languages)

    monkeypatch.setattr(worker.engine._model, "_infer_asr", infer)
    return sizes


def test_out_of_memory_retries_once_with_half_the_batch(worker, tmp_path, monkeypatch):
    sizes = _oom_above(worker, monkeypatch, most=2)
    out = worker.handle(_job(tmp_path, 80.0))
    assert "error" not in out, out
    assert sizes == [3, 2, 1]  # all 3, then the halves
    assert out["text"] == " ".join([ENGLISH] * 3)


def test_out_of_memory_twice_fails_the_job_and_asks_for_a_fresh_worker(worker, tmp_path,
                                                                        monkeypatch):
    sizes = _oom_above(worker, monkeypatch, most=1)
    out = worker.handle(_job(tmp_path, 80.0))
    assert out["error_code"] == "ENGINE_ERROR" and out["refresh_worker"] is True
    assert sizes == [3, 2]  # never more than one retry


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("stop", ["sigterm", "job stopped"])
def test_stopping_kills_the_jobs_running_decoders_at_once(tmp_path, dying_ffmpeg,  # noqa: F811
                                                          monkeypatch, workers, stop):
    life = lifecycle._Lifetime()
    monkeypatch.setattr(d, "LIFETIME", life)
    path = media.make_audio(tmp_path / "a.flac", 150.0, rate=16000)
    info = d.probe(path)
    dying_ffmpeg(mode="stall", after=100_000)  # every decoder hangs after 100 kB
    scope = lifecycle.JobScope("j")
    if stop == "sigterm":
        threading.Timer(1.0, life.stop_all).start()
        expected = lifecycle.ShuttingDown
    else:
        threading.Timer(1.0, scope.stop, args=(lifecycle.JobCancelled,)).start()
        expected = lifecycle.JobCancelled
    started = time.monotonic()
    with pytest.raises(expected), life.job(scope):
        d.decode(path, max_seconds=600, workers=workers, info=info)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("declare_length", [True, False])
def test_stopping_a_job_cuts_its_stalled_download_at_once(audio_host, tmp_path, declare_length):
    from runpod.serverless.utils import rp_ssrf

    import qwen_worker.pipeline.download as dl

    url = audio_host.stall("/stall", b"\xff" * 100_000, after=4096, seconds=30,
                           declare_length=declare_length)
    life = lifecycle._Lifetime()
    scope = lifecycle.JobScope("download")
    threading.Timer(1.0, scope.stop, args=(lifecycle.ShuttingDown,)).start()
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rp_ssrf, "is_safe_address", rp_ssrf.is_safe_address)  # restored after
        dl.allow_loopback_for_local_testing()
        mp.setattr(dl, "LIFETIME", life)
        with pytest.raises(lifecycle.ShuttingDown), life.job(scope):
            dl.fetch_url(url, tmp_path, dl.DownloadPolicy(max_bytes=1 << 20, read_seconds=15.0))
    assert time.monotonic() - started < 4  # not the 15 s read timeout
