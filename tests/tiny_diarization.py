"""A pyannote pipeline folder laid out like pyannote/speaker-diarization-community-1, with random
weights generated here (the real one is gated and cannot be downloaded in tests).

    build_pipeline_dir(folder, size="tiny")  # tests: small networks, seconds on a CPU
    build_pipeline_dir(folder, size="full")  # bench: community-1's architectures, random weights

Layout (what Pipeline.from_pretrained(folder) reads offline):
    config.yaml                      community-1's pipeline section and tuned parameters
    segmentation/pytorch_model.bin   PyanNet, 10 s chunks, powerset of 3 local speakers
                                     (at most 2 at once)
    embedding/pytorch_model.bin      WeSpeaker ResNet (ResNet34 when full), 256-dim embeddings
    plda/xvec_transform.npz, plda/plda.npz   well-conditioned random VBx PLDA (128 dims)

Each checkpoint is what pyannote itself saves: `state_dict`, `hyper_parameters`, the lightning
version and the `pyannote.audio` entry (versions, architecture, specifications).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

# Before pyannote's first import: its telemetry would otherwise be on in this process.
os.environ["PYANNOTE_METRICS_ENABLED"] = "0"

from pyannote.audio.core.task import Problem, Resolution, Specifications, Task  # noqa: E402
from pyannote.audio.models.embedding.wespeaker import (  # noqa: E402
    BaseWeSpeakerResNet,
    WeSpeakerResNet34,
)
from pyannote.audio.models.embedding.wespeaker.resnet import BasicBlock, ResNet  # noqa: E402
from pyannote.audio.models.segmentation import PyanNet  # noqa: E402

EMBEDDING_DIM = 256  # WeSpeaker ResNet34's, what community-1's PLDA transform expects
PLDA_DIM = 128  # pyannote's PLDA lda_dimension

# community-1's config.yaml (pipeline section and tuned parameters), with the batch sizes it ships.
CONFIG_YAML = """\
dependencies:
  pyannote.audio: 4.0.0

pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    clustering: VBxClustering
    embedding: $model/embedding
    embedding_batch_size: 32
    embedding_exclude_overlap: true
    plda: $model/plda
    segmentation: $model/segmentation
    segmentation_batch_size: 32

params:
  clustering:
    threshold: 0.6
    Fa: 0.07
    Fb: 0.8
  segmentation:
    min_duration_off: 0.0
"""

# PyanNet hyper-parameters: community-1's segmentation (as segmentation-3.0) when full.
SEGMENTATION = {
    "full": {"sincnet": {"stride": 10},
             "lstm": {"hidden_size": 128, "num_layers": 4, "bidirectional": True,
                      "monolithic": True, "dropout": 0.5},
             "linear": {"hidden_size": 128, "num_layers": 2}},
    "tiny": {"sincnet": {"stride": 10},
             "lstm": {"hidden_size": 16, "num_layers": 1, "bidirectional": True,
                      "monolithic": True, "dropout": 0.0},
             "linear": {"hidden_size": 16, "num_layers": 1}},
}

SEGMENTATION_SPECIFICATIONS = Specifications(
    problem=Problem.MONO_LABEL_CLASSIFICATION,
    resolution=Resolution.FRAME,
    duration=10.0,
    min_duration=10.0,
    warm_up=(0.0, 0.0),
    classes=["speaker#1", "speaker#2", "speaker#3"],
    powerset_max_classes=2,
    permutation_invariant=True,
)
EMBEDDING_SPECIFICATIONS = Specifications(
    problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=10.0)


class TinyWeSpeakerResNet(BaseWeSpeakerResNet):
    """WeSpeaker's ResNet with one block per stage and 4 base channels (ResNet34: 3-4-6-3, 32):
    the same fbank front end, pooling and 256-dim output, ~1/200 of the compute."""

    def __init__(self, sample_rate: int = 16000, num_channels: int = 1,
                 num_mel_bins: int = 80, frame_length: int = 25, frame_shift: int = 10,
                 dither: float = 0.0, window_type: str = "hamming", use_energy: bool = False,
                 task: Optional[Task] = None):
        super().__init__(sample_rate=sample_rate, num_channels=num_channels,
                         num_mel_bins=num_mel_bins, frame_length=frame_length,
                         frame_shift=frame_shift, dither=dither, window_type=window_type,
                         use_energy=use_energy, task=task)
        self.resnet = ResNet(BasicBlock, [1, 1, 1, 1], m_channels=4, feat_dim=num_mel_bins,
                             embed_dim=EMBEDDING_DIM, pooling_func="TSTP", two_emb_layer=False)


def _save(model, specifications: Specifications, path: Path) -> None:
    import lightning

    model.specifications = specifications
    model.setup()  # adds the task-dependent layers (PyanNet's classifier)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    model.on_save_checkpoint(checkpoint)  # pyannote's own entry: versions, class, specifications
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def _segmentation(size: str) -> PyanNet:
    model = PyanNet(**SEGMENTATION[size])
    model.specifications = SEGMENTATION_SPECIFICATIONS
    model.setup()
    # Random weights would call most frames silence or overlap; these biases make each frame
    # one local speaker (which one still depends on the audio), so that clustering has work.
    with torch.no_grad():
        bias = model.classifier.bias  # powerset order: {}, {1}, {2}, {3}, {1,2}, {1,3}, {2,3}
        bias.copy_(torch.tensor([-4.0, 2.0, 2.0, 2.0, -4.0, -4.0, -4.0]))
    return model


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q[:, :cols]


def _plda(folder: Path, rng: np.random.Generator) -> None:
    """VBx's x-vector transform and PLDA: orthonormal projections and a spread of positive
    between-class variances, so that every matrix pyannote inverts is well conditioned."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "xvec_transform.npz",
             mean1=0.01 * rng.standard_normal(EMBEDDING_DIM),
             mean2=0.01 * rng.standard_normal(PLDA_DIM),
             lda=_orthonormal(rng, EMBEDDING_DIM, PLDA_DIM))
    np.savez(folder / "plda.npz",
             mu=0.01 * rng.standard_normal(PLDA_DIM),
             tr=_orthonormal(rng, PLDA_DIM, PLDA_DIM),
             psi=np.geomspace(20.0, 0.5, PLDA_DIM))


def build_pipeline_dir(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a community-1-like pipeline folder with random weights; returns `folder`."""
    if size not in SEGMENTATION:
        raise ValueError(f"size must be one of {sorted(SEGMENTATION)}, got {size!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(CONFIG_YAML, "utf-8")
    _save(_segmentation(size), SEGMENTATION_SPECIFICATIONS,
          folder / "segmentation" / "pytorch_model.bin")
    embedding = WeSpeakerResNet34() if size == "full" else TinyWeSpeakerResNet()
    _save(embedding, EMBEDDING_SPECIFICATIONS, folder / "embedding" / "pytorch_model.bin")
    _plda(folder / "plda", rng)
    return folder


def sample_path() -> Path:
    """pyannote.audio's bundled 30 s two-speaker clip (16 kHz mono WAV)."""
    import pyannote.audio

    return Path(pyannote.audio.__file__).parent / "sample" / "sample.wav"


def sample_audio() -> np.ndarray:
    """The bundled clip as float32 samples at 16 kHz, read with soundfile."""
    import soundfile

    samples, rate = soundfile.read(sample_path(), dtype="float32")
    assert rate == 16000 and samples.ndim == 1, (rate, samples.shape)
    return samples
