"""Every data type that crosses stages, in one place: what goes into the pipeline (options),
what the engines return (ASR outputs, aligned units), and what comes out (words, segments, the
transcript). The stages import these; nothing here imports a stage."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SAMPLE_RATE = 16_000  # the models' rate: every buffer and offset is in these samples
DEFAULT_CHUNK_SECONDS = 270.0
# Subtitle cues (pipeline/subtitles.py)
MIN_CUE_SECONDS = 0.8
PAUSE_SECONDS = 1.0
DEFAULT_LINE_WIDTH = 42
DEFAULT_CJK_LINE_WIDTH = 16


# -- audio and what the engines return --------------------------------------------------------

@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first sample, in file samples
    end: int  # one past the last sample
    samples: np.ndarray  # a view: audio[start:end]

    @property
    def offset(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


@dataclass(frozen=True)
class AsrOutput:
    """One chunk's transcription. language is "" for silence or an unrecognised label."""

    language: str
    text: str
    output_tokens: int
    hit_token_limit: bool
    repetition_loop: bool


@dataclass(frozen=True)
class AlignedToken:
    """One aligner unit (a word, or one CJK character) in chunk time, punctuation stripped."""

    text: str
    start: float
    end: float


# -- what a job asks for ---------------------------------------------------------------------

@dataclass(frozen=True)
class SubtitleOptions:
    """Cue limits. `max_line_width` counts characters of space-delimited text; text that is
    mostly CJK (Chinese, Japanese, Korean: full-width characters, each counted as one) gets
    `cjk_line_width`, which follows `max_line_width` in proportion 16:42 (42 -> 16, 32 -> 12)."""

    max_line_width: int = DEFAULT_LINE_WIDTH
    max_line_count: int = 2
    max_cue_seconds: float = 7.0
    min_cue_seconds: float = MIN_CUE_SECONDS
    pause_seconds: float = PAUSE_SECONDS
    # Diarized cues name their speaker (SRT "SPEAKER_00: ", VTT <v SPEAKER_00>); False: not.
    speaker_labels: bool = True

    @functools.cached_property
    def cjk_line_width(self) -> int:
        return max(1, round(self.max_line_width * DEFAULT_CJK_LINE_WIDTH / DEFAULT_LINE_WIDTH))


@dataclass(frozen=True)
class Turn:
    """One speaker's exclusive stretch of the file (no overlap with other turns), in seconds."""

    start: float
    end: float
    speaker: str  # "SPEAKER_00", "SPEAKER_01", ... in order of first appearance


@dataclass(frozen=True)
class SpeakerCount:
    """What the request says about the number of speakers: an exact count, or bounds."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


@dataclass(frozen=True)
class Options:
    language: str | None = None  # canonical Qwen3-ASR name; None detects per chunk
    context: str = ""
    word_timestamps: bool = True
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS
    max_context_chars: int = 2000
    subtitle: SubtitleOptions = SubtitleOptions()  # cue limits for segments, SRT and VTT
    diarize: bool = False  # who spoke when: speakers on words, segments and cues
    speakers: SpeakerCount = SpeakerCount()


# -- what comes out --------------------------------------------------------------------------

@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    # The whitespace before the word in the text, exactly ("" inside CJK text and at the start).
    space: str = field(default=" ", repr=False, compare=False)
    # True when the time is interpolated (no aligner time for this word).
    estimated: bool = field(default=False, repr=False, compare=False)
    # True when the chunk had no aligner at all: the time is the chunk's text spread over the
    # chunk, good for placing cues only (such words are not in `words`).
    untimed: bool = field(default=False, repr=False, compare=False)
    # The diarized speaker of the word's time; None when not diarized or no turn is near.
    speaker: str | None = field(default=None, repr=False, compare=False)

    @property
    def space_before(self) -> bool:
        return bool(self.space)


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    speaker: str | None = None  # set only on a diarized transcript


@dataclass(frozen=True)
class ChunkInfo:
    index: int
    start: float
    end: float
    language: str
    text: str


@dataclass
class Transcript:
    text: str
    language: str
    languages: list[str]
    duration: float
    words: list[Word]
    segments: list[Segment]
    chunks: list[ChunkInfo]
    warnings: list[str]
    # How the segments were cut; the SRT and VTT writers break lines with the same limits.
    subtitle: SubtitleOptions = field(default=SubtitleOptions(), repr=False, compare=False)
    # Every chunk's words and marks, aligned or not: what the segments were cut from (and are
    # cut from again at speaker changes). Not part of the output.
    pieces: list[Word] = field(default_factory=list, repr=False, compare=False)
    # Diarized only: each speaker's label and talk time, in order of first appearance.
    speakers: list[dict] | None = None


# -- measurements of a job -------------------------------------------------------------------

# progress(stage, done, total): "decoding", "transcribing", "aligning", "diarizing"
Progress = Callable[[str, int, int], None]


@dataclass
class Timings:
    decode: float = 0.0
    asr: float = 0.0
    align: float = 0.0
    diarize: float = 0.0
