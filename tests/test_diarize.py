"""The diarization edge (qwen_worker.engines.diarizer) on the real pyannote.audio 4.0.7 code: a pipeline
folder laid out like community-1 with random weights (tests/tiny_diarization.py) loads offline
through Pipeline.from_pretrained and runs end to end on pyannote's bundled two-speaker clip.

Random weights say nothing about who really speaks; what is checked is what a user of the turns
relies on: inside the audio, sorted, never overlapping, labels in order of first appearance,
the requested number of speakers honoured, clear errors, many threads served one at a time.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tiny_diarization
from qwen_worker.engines.diarizer import Diarizer, load_diarizer, to_turns
from qwen_worker.engines.base import EngineError
from qwen_worker.engines.model_files import StartupError
from qwen_worker.base.types import SpeakerCount, Turn

SECONDS = 16000


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory) -> Path:
    return tiny_diarization.build_pipeline_dir(tmp_path_factory.mktemp("diarization") / "pipe")


@pytest.fixture(scope="module")
def offline():
    """The hub switched off as in the image (HF_HUB_OFFLINE=1; the flag is read at import)."""
    import huggingface_hub.constants

    saved = os.environ.get("HF_HUB_OFFLINE"), huggingface_hub.constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    yield
    if saved[0] is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = saved[0]
    huggingface_hub.constants.HF_HUB_OFFLINE = saved[1]


@pytest.fixture(scope="module")
def diarizer(pipeline_dir, offline) -> Diarizer:
    return load_diarizer(pipeline_dir, "cpu")


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return tiny_diarization.sample_audio()


@pytest.fixture(scope="module")
def two_speaker_turns(diarizer, sample) -> list[Turn]:
    return diarizer.diarize(sample, SpeakerCount(num_speakers=2))


def _assert_well_formed(turns: list[Turn], duration: float) -> None:
    assert turns, "no speaker turns at all"
    for turn in turns:
        assert 0.0 <= turn.start < turn.end <= duration, turn
    for before, after in zip(turns, turns[1:]):
        assert before.end <= after.start, f"overlapping or unsorted: {before} {after}"
    first_seen = list(dict.fromkeys(turn.speaker for turn in turns))
    assert first_seen == [f"SPEAKER_{i:02d}" for i in range(len(first_seen))], first_seen


def test_bundled_clip_is_the_two_speaker_sample(sample):
    reference = tiny_diarization.sample_path().with_suffix(".rttm").read_text("utf-8")
    speakers = {line.split()[7] for line in reference.splitlines() if line.startswith("SPEAKER")}
    assert len(speakers) == 2 and sample.dtype == np.float32
    assert len(sample) == 30 * SECONDS


def test_two_speakers_requested_gives_two_exclusive_sorted_labelled_speakers(
        two_speaker_turns, sample):
    _assert_well_formed(two_speaker_turns, len(sample) / SECONDS)
    assert {turn.speaker for turn in two_speaker_turns} == {"SPEAKER_00", "SPEAKER_01"}
    # Turns of one speaker that touch are one turn: a new turn means a change of speaker
    # or a pause.
    for before, after in zip(two_speaker_turns, two_speaker_turns[1:]):
        assert before.speaker != after.speaker or after.start > before.end


def test_one_speaker_requested_gives_one_speaker(diarizer, sample):
    turns = diarizer.diarize(sample[:12 * SECONDS], SpeakerCount(num_speakers=1))
    _assert_well_formed(turns, 12.0)
    assert {turn.speaker for turn in turns} == {"SPEAKER_00"}


def test_bounds_are_honoured(diarizer, sample):
    clip = sample[:12 * SECONDS]
    at_least_two = diarizer.diarize(clip, SpeakerCount(min_speakers=2, max_speakers=3))
    _assert_well_formed(at_least_two, 12.0)
    assert 2 <= len({turn.speaker for turn in at_least_two}) <= 3
    at_most_one = diarizer.diarize(clip, SpeakerCount(max_speakers=1))
    assert {turn.speaker for turn in at_most_one} == {"SPEAKER_00"}


def test_concurrent_jobs_get_what_they_would_get_alone(diarizer, sample):
    clip = sample[:12 * SECONDS]
    count = SpeakerCount(num_speakers=2)
    alone = diarizer.diarize(clip, count)
    results: list[list[Turn]] = []
    errors: list[BaseException] = []

    def job():
        try:
            results.append(diarizer.diarize(clip, count))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [alone, alone]


def test_empty_audio_has_no_turns_and_bad_input_is_refused(diarizer, sample):
    assert diarizer.diarize(np.zeros(0, dtype=np.float32), SpeakerCount()) == []
    with pytest.raises(ValueError, match="float32"):
        diarizer.diarize(sample.astype(np.float64), SpeakerCount())
    with pytest.raises(ValueError, match="1-D"):
        diarizer.diarize(np.stack([sample, sample]), SpeakerCount())
    with pytest.raises(ValueError, match="min_speakers"):
        diarizer.diarize(sample, SpeakerCount(min_speakers=3, max_speakers=2))
    with pytest.raises(ValueError, match="num_speakers"):
        diarizer.diarize(sample, SpeakerCount(num_speakers=0))


def test_a_pipeline_failure_is_an_engine_error_and_the_next_call_works(diarizer, sample):
    clip = sample[:12 * SECONDS]
    real = diarizer._pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nsecond line")

    diarizer._pipeline = broken
    try:
        with pytest.raises(EngineError, match="speaker diarization failed: RuntimeError: "
                                               "CUDA out of memory$"):
            diarizer.diarize(clip, SpeakerCount())
    finally:
        diarizer._pipeline = real
    _assert_well_formed(diarizer.diarize(clip, SpeakerCount(num_speakers=1)), 12.0)


def test_the_pipeline_gets_the_decoded_samples_in_memory_without_a_copy(diarizer, sample):
    """Never a file path (pyannote re-reads a file for every embedding, ~20x slower), and no
    second copy of hours of audio."""
    clip = sample[:12 * SECONDS]
    real, seen = diarizer._pipeline, []

    def recording(audio, **kwargs):
        seen.append((audio, kwargs))
        return real(audio, **kwargs)

    diarizer._pipeline = recording
    try:
        turns = diarizer.diarize(clip, SpeakerCount(min_speakers=1, max_speakers=2))
    finally:
        diarizer._pipeline = real
    _assert_well_formed(turns, 12.0)
    ((audio, kwargs),) = seen
    # pyannote adds its own keys ("uri") to the dict; an "audio" key would be a file path.
    assert "audio" not in audio and audio["sample_rate"] == 16000
    assert tuple(audio["waveform"].shape) == (1, len(clip))
    assert np.shares_memory(audio["waveform"].numpy(), clip)
    assert kwargs == {"num_speakers": None, "min_speakers": 1, "max_speakers": 2}


def test_telemetry_is_off_after_loading(diarizer):
    from pyannote.audio.telemetry.metrics import is_metrics_enabled

    assert os.environ["PYANNOTE_METRICS_ENABLED"] == "0" and not is_metrics_enabled()


@pytest.mark.parametrize("damage, message", [
    ("plda/plda.npz", "missing plda/plda.npz"),
    ("embedding/pytorch_model.bin", "missing embedding/pytorch_model.bin"),
    ("config.yaml", "missing config.yaml"),
])
def test_incomplete_folder_fails_at_start_up_naming_the_file(pipeline_dir, tmp_path, damage,
                                                              message):
    broken = tmp_path / "pipe"
    shutil.copytree(pipeline_dir, broken)
    (broken / damage).unlink()
    with pytest.raises(StartupError, match=message) as info:
        load_diarizer(broken, "cpu")
    assert "\n" not in str(info.value) and str(broken) in str(info.value)


def test_missing_folder_says_how_to_build_it(tmp_path):
    with pytest.raises(StartupError, match="WITH_DIARIZATION=1"):
        load_diarizer(tmp_path / "absent", "cpu")


def test_truncated_checkpoint_fails_at_start_up_in_one_line(pipeline_dir, tmp_path, offline):
    broken = tmp_path / "pipe"
    shutil.copytree(pipeline_dir, broken)
    weights = broken / "segmentation" / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(StartupError, match="the pipeline does not load") as info:
        load_diarizer(broken, "cpu")
    assert "\n" not in str(info.value)


def test_a_config_naming_a_hub_model_is_refused_before_anything_loads(pipeline_dir, tmp_path):
    broken = tmp_path / "pipe"
    shutil.copytree(pipeline_dir, broken)
    config = broken / "config.yaml"
    config.write_text(config.read_text("utf-8").replace(
        "embedding: $model/embedding", "embedding: pyannote/wespeaker-voxceleb-resnet34-LM"),
        "utf-8")
    with pytest.raises(StartupError, match="takes its embedding from 'pyannote/wespeaker"):
        load_diarizer(broken, "cpu")


def test_turns_are_clipped_sorted_joined_and_relabelled_by_first_appearance():
    tracks = [(5.0, 7.0, "SPEAKER_00"), (-0.1, 2.0, "SPEAKER_01"), (2.0, 3.0, "SPEAKER_01"),
              (3.0, 5.0, "SPEAKER_00"), (7.0, 9.5, "SPEAKER_02"), (9.5, 9.5, "SPEAKER_00")]
    assert to_turns(tracks, duration=9.0) == [
        Turn(0.0, 3.0, "SPEAKER_00"), Turn(3.0, 7.0, "SPEAKER_01"),
        Turn(7.0, 9.0, "SPEAKER_02")]


def test_settings_offer_diarization_only_where_the_pipeline_folder_is(pipeline_dir, tmp_path):
    from qwen_worker.base import config

    default = config.load_settings({})
    assert default.diarization_model_dir == config.BAKED_DIARIZATION_DIR
    assert default.diarization_available == config.BAKED_DIARIZATION_DIR.is_dir()
    assert default.diarization_embedding_batch_size == 32
    chosen = config.load_settings({"DIARIZATION_MODEL_DIR": str(pipeline_dir),
                                   "DIARIZATION_EMBEDDING_BATCH_SIZE": "8"})
    assert chosen.diarization_model_dir == pipeline_dir and chosen.diarization_available
    assert chosen.diarization_embedding_batch_size == 8
    # Set on purpose but wrong: a clear error, not diarization silently off; never a hub id.
    for value in (str(tmp_path / "absent"), "pyannote/speaker-diarization-community-1"):
        with pytest.raises(config.ConfigError, match="DIARIZATION_MODEL_DIR"):
            config.load_settings({"DIARIZATION_MODEL_DIR": value})
    with pytest.raises(config.ConfigError, match="DIARIZATION_EMBEDDING_BATCH_SIZE"):
        config.load_settings({"DIARIZATION_EMBEDDING_BATCH_SIZE": "0"})


def test_the_embedding_batch_size_reaches_the_pipeline(pipeline_dir, offline):
    loaded = load_diarizer(pipeline_dir, "cpu", embedding_batch_size=4)
    assert loaded._pipeline.embedding_batch_size == 4


def test_a_diarized_job_through_the_worker_process(pipeline_dir, model_dirs, tmp_path):
    """The whole path in the worker's own process (`handler.py --test_input`, runpod's one-shot
    mode): the baked folder found through DIARIZATION_MODEL_DIR and loaded at start-up after
    the ASR models, the job transcribed by the real qwen-asr code on the tiny models, then
    diarized by pyannote on the same decoded audio: every word and segment carries one of the
    listed speakers, and the subtitles show them."""
    from http_server import AudioHost
    from worker_server import run_test_input, worker_env

    host = AudioHost()
    try:
        url = host.file("/two-speakers.wav", tiny_diarization.sample_path().read_bytes(),
                        "audio/wav")
        env = worker_env(model_dirs["english"], model_dirs["aligner"], tmp_path / "jobs",
                         DOWNLOAD_ALLOW_LOOPBACK="true", DIARIZATION_MODEL_DIR=str(pipeline_dir))
        # The tiny embedding's class lives in tests/tiny_diarization.py (its checkpoint names it).
        env["PYTHONPATH"] += os.pathsep + str(Path(__file__).parent)
        done = run_test_input(env, {"input": {"audio_url": url, "diarize": True,
                                              "num_speakers": 2, "formats": ["vtt", "srt"]}},
                              timeout=400)
    finally:
        host.close()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = _job_output(done.stdout + done.stderr)
    labels = [s["speaker"] for s in out["speakers"]]
    assert labels and set(labels) <= {"SPEAKER_00", "SPEAKER_01"}
    assert out["words"] and all(w["speaker"] in labels + [None] for w in out["words"])
    assert all(s["speaker"] in labels + [None] for s in out["segments"])
    assert any(w["speaker"] for w in out["words"])
    assert "<v SPEAKER_0" in out["vtt"] and "SPEAKER_0" in out["srt"]
    assert out["timings"]["diarize"] > 0


def _job_output(log: str) -> dict:
    """The job's output from runpod's one-shot log ("Job result: {...}", a Python repr)."""
    import ast
    import re

    match = re.search(r"Job result: (\{.*\})\s*$", log, re.MULTILINE)
    assert match, log[-3000:]
    return ast.literal_eval(match.group(1))["output"]


def test_more_speakers_than_a_short_clip_holds_gives_what_it_finds(diarizer, sample,
                                                                   model_dirs):
    """12 s cannot hold 8 speakers: pyannote's clustering refuses the count (scikit-learn's
    KMeans: fewer embeddings than clusters); the diarizer takes what the audio tells apart,
    and the job's warnings say how many were found."""
    from models import engine_for
    from qwen_worker.base.types import Options
    from qwen_worker.pipeline.transcribe import transcribe_samples

    clip = sample[:12 * SECONDS]
    turns = diarizer.diarize(clip, SpeakerCount(num_speakers=8))
    _assert_well_formed(turns, 12.0)
    found = len({t.speaker for t in turns})
    assert 1 <= found < 8
    transcript = transcribe_samples(
        clip, Options(language="English", diarize=True, speakers=SpeakerCount(num_speakers=8)),
        engine_for(model_dirs["english"], model_dirs["aligner"]), diarizer=diarizer)
    assert f"8 speakers were asked for; {found} found (the audio gave no more to tell apart)" \
        in transcript.warnings
    assert transcript.speakers


def test_one_diarization_at_a_time(diarizer, sample):
    """Jobs run in threads; the pipeline (its GPU memory, its models' state) serves one at a
    time."""
    inner = diarizer._pipeline
    state = {"inside": 0, "most": 0}
    lock = threading.Lock()

    class Watched:
        def __call__(self, *args, **kwargs):
            with lock:
                state["inside"] += 1
                state["most"] = max(state["most"], state["inside"])
            try:
                time.sleep(0.2)  # long enough for the other thread to arrive
                return inner(*args, **kwargs)
            finally:
                with lock:
                    state["inside"] -= 1

    watched = Diarizer(Watched(), "cpu")
    threads = [threading.Thread(target=watched.diarize, args=(sample[:4 * SECONDS],
                                                              SpeakerCount()))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert state["most"] == 1 and state["inside"] == 0


def test_start_up_runs_the_pipeline_once(pipeline_dir, offline, monkeypatch):
    """The worker's loading (load_configured) runs a short clip through the pipeline: one that
    loads but cannot run stops the start in one line, not every diarized job later."""
    from qwen_worker.base.config import load_settings
    from qwen_worker.engines.diarizer import load_configured
    from qwen_worker.engines.base import DiarizationError

    settings = load_settings({"DIARIZATION_MODEL_DIR": str(pipeline_dir), "ASR_DEVICE": "cpu"})
    calls = []
    real = Diarizer.diarize
    monkeypatch.setattr(Diarizer, "diarize",
                        lambda self, samples, count: calls.append(samples.size)
                        or real(self, samples, count))
    assert isinstance(load_configured(settings), Diarizer) and calls == [10 * SECONDS]

    def broken(self, samples, count):
        raise DiarizationError("speaker diarization failed: RuntimeError: cuDNN error")

    monkeypatch.setattr(Diarizer, "diarize", broken)
    with pytest.raises(StartupError) as err:
        load_configured(settings)
    assert "loads but does not run" in str(err.value) and "\n" not in str(err.value)
    assert load_configured(load_settings({"ASR_DEVICE": "cpu"})) is None  # not built in
