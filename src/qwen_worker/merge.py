"""Chunk results -> one transcript in file time.

`merge_chunks` is the one function that applies chunk offsets. Around it: putting the ASR
text's punctuation and casing back onto the aligner's bare tokens, and cutting segments.
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .chunking import Chunk
from .engine import AlignedToken, AsrOutput
from .languages import is_unspaced

SENTENCE_END = frozenset(".!?。！？…؟।")
_CLOSERS = "\"')]}»”’」』）》"
MAX_SEGMENT_CHARS = 84  # two subtitle lines of 42
MAX_SEGMENT_SECONDS = 7.0
PAUSE_SECONDS = 1.0


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    space_before: bool = field(default=True, repr=False, compare=False)


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str


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

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "language": self.language,
            "languages": list(self.languages),
            "duration": self.duration,
            "words": [{"word": w.word, "start": w.start, "end": w.end} for w in self.words],
            "segments": [asdict(s) for s in self.segments],
            "chunks": [asdict(c) for c in self.chunks],
            "warnings": list(self.warnings),
        }


def _kept(ch: str) -> bool:
    # The aligner keeps letters, digits and apostrophes (qwen-asr's is_kept_char).
    return ch == "'" or unicodedata.category(ch)[0] in "LN"


def punctuate(text: str, tokens: Sequence[AlignedToken]) -> list[Word] | None:
    """Map each aligner token back onto its span of `text`, punctuation and casing included.

    Times stay in chunk time. Returns None when the tokens do not spell out the text's
    letters and digits in order (then the caller falls back to the bare tokens).
    """
    if not tokens:
        return []
    first = [-1] * len(tokens)
    last = [-1] * len(tokens)
    t, c = 0, 0
    for pos, ch in enumerate(text):
        if not _kept(ch):
            continue
        while t < len(tokens) and c >= len(tokens[t].text):
            t, c = t + 1, 0
        if t >= len(tokens) or tokens[t].text[c] != ch:
            return None
        if c == 0:
            first[t] = pos
        last[t] = pos
        c += 1
    if t != len(tokens) - 1 or c != len(tokens[t].text) or -1 in first:
        return None

    words: list[Word] = []
    begin = 0
    for k, token in enumerate(tokens):
        end = _boundary(text, last[k] + 1, first[k + 1]) if k + 1 < len(tokens) else len(text)
        spaced = k > 0 and any(ch.isspace() for ch in text[last[k - 1] + 1:first[k]])
        words.append(Word(text[begin:end].strip(), token.start, token.end, space_before=spaced))
        begin = end
    return words


def _boundary(text: str, lo: int, hi: int) -> int:
    """Where the text between two tokens splits: trailing marks stay left, opening marks go right."""
    gap = text[lo:hi]
    ws = [i for i, ch in enumerate(gap) if ch.isspace()]
    if ws:
        return lo + ws[-1]
    for i, ch in enumerate(gap):
        if unicodedata.category(ch) in ("Ps", "Pi"):
            return lo + i
    return hi


def _bare_words(tokens: Sequence[AlignedToken], language: str) -> list[Word]:
    spaced = not is_unspaced(language)
    return [Word(t.text, t.start, t.end, space_before=spaced and i > 0) for i, t in enumerate(tokens)]


def _to_file_time(words: list[Word], chunk: Chunk, first_space: bool) -> list[Word]:
    """Clamp into the chunk, keep times non-decreasing, add the chunk's offset."""
    out: list[Word] = []
    floor = 0.0
    for i, w in enumerate(words):
        start = min(max(w.start, floor), chunk.duration)
        end = min(max(w.end, start), chunk.duration)
        floor = start
        out.append(Word(w.word, round(chunk.offset + start, 3), round(chunk.offset + end, 3),
                        space_before=first_space if i == 0 else w.space_before))
    return out


def _joiner(prev_language: str | None, language: str) -> str:
    if prev_language is None:
        return ""
    return "" if is_unspaced(prev_language) and is_unspaced(language) else " "


def merge_chunks(chunks: Sequence[Chunk], outputs: Sequence[AsrOutput],
                 alignments: Sequence[Sequence[AlignedToken] | None], duration: float,
                 warnings: list[str]) -> Transcript:
    """The only place chunk time becomes file time."""
    text_parts: list[str] = []
    words: list[Word] = []
    infos: list[ChunkInfo] = []
    prev_language: str | None = None
    for chunk, out, tokens in zip(chunks, outputs, alignments, strict=True):
        infos.append(ChunkInfo(chunk.index, round(chunk.offset, 3),
                               round(chunk.offset + chunk.duration, 3), out.language, out.text))
        if not out.text:
            continue
        joiner = _joiner(prev_language, out.language)
        text_parts.append(joiner + out.text)
        if tokens is not None:
            chunk_words = punctuate(out.text, tokens)
            if chunk_words is None:
                warnings.append(f"chunk {chunk.index}: punctuation could not be mapped onto the "
                                "aligned words; its words are shown without punctuation")
                chunk_words = _bare_words(tokens, out.language)
            words.extend(_to_file_time(chunk_words, chunk, first_space=joiner == " "))
        prev_language = out.language
    languages = _languages_in_order(outputs)
    segments = (build_segments(words) if words else _chunk_segments(infos))
    return Transcript(
        text="".join(text_parts),
        language=_dominant(chunks, outputs),
        languages=languages,
        duration=round(duration, 3),
        words=words,
        segments=segments,
        chunks=infos,
        warnings=warnings,
    )


def _languages_in_order(outputs: Sequence[AsrOutput]) -> list[str]:
    seen: list[str] = []
    for out in outputs:
        if out.language and out.language not in seen:
            seen.append(out.language)
    return seen


def _dominant(chunks: Sequence[Chunk], outputs: Sequence[AsrOutput]) -> str:
    """The language spoken longest, judged by the duration of the chunks it was detected in."""
    seconds: dict[str, float] = {}
    for chunk, out in zip(chunks, outputs):
        if out.language and out.text:
            seconds[out.language] = seconds.get(out.language, 0.0) + chunk.duration
    return max(seconds, key=lambda k: seconds[k]) if seconds else ""


def _ends_sentence(word: str) -> bool:
    stripped = word.rstrip(_CLOSERS)
    return bool(stripped) and stripped[-1] in SENTENCE_END


def _join(words: Sequence[Word]) -> str:
    return "".join((" " if i and w.space_before else "") + w.word for i, w in enumerate(words))


def build_segments(words: Sequence[Word], max_chars: int = MAX_SEGMENT_CHARS,
                   max_seconds: float = MAX_SEGMENT_SECONDS,
                   pause: float = PAUSE_SECONDS) -> list[Segment]:
    """Cut at sentence ends, at pauses, and before a segment outgrows a two-line subtitle."""
    segments: list[Segment] = []
    current: list[Word] = []

    def close() -> None:
        if current:
            segments.append(Segment(len(segments), current[0].start, current[-1].end,
                                    _join(current)))
            current.clear()

    for w in words:
        if current:
            too_long = (len(_join([*current, w])) > max_chars
                        or w.end - current[0].start > max_seconds)
            if w.start - current[-1].end >= pause or too_long:
                close()
        current.append(w)
        if _ends_sentence(w.word):
            close()
    close()
    return segments


def _chunk_segments(infos: Sequence[ChunkInfo]) -> list[Segment]:
    """Without word times the honest segment is the whole chunk."""
    segments: list[Segment] = []
    for info in infos:
        if info.text:
            segments.append(Segment(len(segments), info.start, info.end, info.text))
    return segments
