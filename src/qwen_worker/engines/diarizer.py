"""Speaker diarization with pyannote.audio 4 (the community-1 pipeline): the GPU edge.

Only the pipeline folder baked into the image is ever loaded (config.DIARIZATION_MODEL_DIR):
its config.yaml names the callables pyannote instantiates and its checkpoints are unpickled, so
neither a hub id nor a path from a request may reach `load_diarizer`.

pyannote is imported lazily: the default image does not install it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from qwen_worker.base.config import Settings
from qwen_worker.base.types import SpeakerCount, Turn
from qwen_worker.engines.base import DiarizationError
from qwen_worker.engines.model_files import StartupError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WARM_UP_SECONDS = 10  # a start-up run: one of the segmentation's 10 s windows
# What Pipeline.from_pretrained(dir) reads from a community-1 folder.
PIPELINE_FILES = ("config.yaml", "segmentation/pytorch_model.bin",
                  "embedding/pytorch_model.bin", "plda/xvec_transform.npz", "plda/plda.npz")


class Diarizer:
    """A loaded pipeline; `diarize` is safe to call from many job threads (one runs at a time:
    the pipeline keeps per-call state and a second call would double its GPU memory)."""

    def __init__(self, pipeline: Any, device: str) -> None:
        self._pipeline = pipeline
        self.device = device
        self._lock = threading.Lock()

    def diarize(self, samples: np.ndarray, count: SpeakerCount) -> list[Turn]:
        """Exclusive speaker turns (no overlaps) of 16 kHz mono float32 `samples`, sorted by
        start, labelled SPEAKER_00, SPEAKER_01, ... in order of first appearance."""
        if samples.ndim != 1 or samples.dtype != np.float32:
            raise ValueError(f"expected 1-D float32 samples, got {samples.ndim}-D {samples.dtype}")
        _check_count(count)
        if samples.size == 0:
            return []
        import torch

        # The in-memory form: from a path, pyannote re-reads the file for every embedding.
        audio = {"waveform": torch.from_numpy(samples)[None], "sample_rate": SAMPLE_RATE}
        with self._lock:
            _release_gpu_cache(self.device)  # blocks cached by earlier work in this process
            try:
                try:
                    output = self._call(audio, count)
                except ValueError as exc:
                    if "n_clusters" not in str(exc):
                        raise
                    # scikit-learn's KMeans: more speakers asked for than the audio has
                    # embeddings (a short file). Take what it tells apart; the job's warnings
                    # say how many were found.
                    output = self._call(audio, SpeakerCount(
                        max_speakers=count.num_speakers or count.max_speakers))
            except Exception as exc:  # noqa: BLE001 - any pipeline failure fails this job only
                raise DiarizationError(f"speaker diarization failed: {type(exc).__name__}: "
                                       + (str(exc).splitlines()[0][:300] if str(exc) else "")
                                       ) from exc
            finally:
                _release_gpu_cache(self.device)
        tracks = output.exclusive_speaker_diarization.itertracks(yield_label=True)
        return to_turns(((seg.start, seg.end, label) for seg, _, label in tracks),
                        samples.size / SAMPLE_RATE)

    def _call(self, audio: dict[str, Any], count: SpeakerCount) -> Any:
        return self._pipeline(audio, num_speakers=count.num_speakers,
                              min_speakers=count.min_speakers, max_speakers=count.max_speakers)


def _check_count(count: SpeakerCount) -> None:
    for name in ("num_speakers", "min_speakers", "max_speakers"):
        value = getattr(count, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if (count.min_speakers is not None and count.max_speakers is not None
            and count.min_speakers > count.max_speakers):
        raise ValueError(f"min_speakers ({count.min_speakers}) is above max_speakers "
                         f"({count.max_speakers})")


def to_turns(tracks, duration: float) -> list[Turn]:
    """(start, end, label) tracks as Turns: clipped to the audio, sorted, touching turns of one
    speaker joined, labels renamed in order of first appearance (pyannote's follow its
    clusters)."""
    spans = sorted((max(0.0, float(s)), min(duration, float(e)), str(lab))
                   for s, e, lab in tracks)
    names: dict[str, str] = {}
    turns: list[Turn] = []
    for start, end, label in spans:
        if end <= start:
            continue
        speaker = names.setdefault(label, f"SPEAKER_{len(names):02d}")
        if turns and turns[-1].speaker == speaker and start - turns[-1].end < 1e-6:
            turns[-1] = Turn(turns[-1].start, max(end, turns[-1].end), speaker)
        else:
            turns.append(Turn(start, end, speaker))
    return turns


def _release_gpu_cache(device: str) -> None:
    """Hand the pipeline's cached blocks back, so that the ASR engines can use them again."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _check_local_config(path: Path) -> None:
    """Every model the pipeline loads must come from the folder itself ("$model/..."): a hub id
    there would be fetched at start-up, unpinned and unchecked."""
    import yaml

    try:
        config = yaml.safe_load((path / "config.yaml").read_text("utf-8"))
        params = config["pipeline"]["params"]
        parts = {name: params[name] for name in ("segmentation", "embedding", "plda")}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise StartupError(f"DIARIZATION_MODEL_DIR={path}: config.yaml is not a pipeline "
                           f"config ({type(exc).__name__}: {exc})") from None
    for name, value in parts.items():
        if not (isinstance(value, str) and value.startswith("$model/")):
            raise StartupError(f"DIARIZATION_MODEL_DIR={path}: config.yaml takes its {name} "
                               f"from {value!r}, not from the folder itself ($model/{name})")


def load_diarizer(path: Path, device: str, embedding_batch_size: int = 32,
                  segmentation_batch_size: int = 32) -> Diarizer:
    """Load the pipeline folder at `path` (offline) onto `device`; StartupError, in one line,
    when the folder is incomplete or does not load."""
    missing = [name for name in PIPELINE_FILES if not (path / name).is_file()]
    if missing:
        raise StartupError(f"DIARIZATION_MODEL_DIR={path}: not a pyannote pipeline folder "
                           f"(missing {', '.join(missing)}); build the image with "
                           "--build-arg WITH_DIARIZATION=1")
    _check_local_config(path)
    # pyannote's telemetry reports usage to its server unless this is set before its import:
    # the worker sends nothing anywhere but its own results.
    os.environ["PYANNOTE_METRICS_ENABLED"] = "0"
    try:
        import torch
        from pyannote.audio import Pipeline
    except ImportError as exc:
        raise StartupError(f"diarization needs pyannote.audio, which this image lacks ({exc}); "
                           "build it with --build-arg WITH_DIARIZATION=1") from exc
    try:
        pipeline = Pipeline.from_pretrained(path)
        if pipeline is None:
            raise RuntimeError("Pipeline.from_pretrained returned nothing")
        # Memory per call grows with these (a batch of 10 s windows each); the defaults are
        # community-1's.
        pipeline.embedding_batch_size = embedding_batch_size
        pipeline.segmentation_batch_size = segmentation_batch_size
        pipeline.to(torch.device(device))
    except Exception as exc:  # noqa: BLE001 - a broken folder: one line, traceback at DEBUG
        log.debug("loading the diarization pipeline failed", exc_info=exc)
        raise StartupError(f"DIARIZATION_MODEL_DIR={path}: the pipeline does not load: "
                           f"{type(exc).__name__}: "
                           + (str(exc).splitlines()[0][:300] if str(exc) else "")) from exc
    log.info("diarization pipeline loaded from %s on %s", path, device)
    return Diarizer(pipeline, device)


def load_configured(settings: Settings) -> Diarizer | None:
    """The baked pipeline when the image has one (WITH_DIARIZATION=1), else None: jobs that ask
    for diarization then get DIARIZATION_UNAVAILABLE. Load it after the ASR engine: vLLM's
    engine processes must start before anything initialises CUDA in this process."""
    if not settings.diarization_available:
        return None
    diarizer = load_diarizer(settings.diarization_model_dir, settings.device,
                             settings.diarization_embedding_batch_size)
    # A pipeline that loads but cannot run (a torchaudio or cuDNN mismatch on the GPU, say)
    # stops the start here, rather than failing every diarized job after its transcription.
    noise = np.random.default_rng(0).normal(0, 0.1, WARM_UP_SECONDS * SAMPLE_RATE)
    try:
        diarizer.diarize(noise.astype(np.float32), SpeakerCount())
    except DiarizationError as exc:
        raise StartupError(f"DIARIZATION_MODEL_DIR={settings.diarization_model_dir}: the "
                           f"pipeline loads but does not run: {exc}") from exc
    return diarizer
