"""Chunk results -> one transcript in file time.

`merge_chunks` is the one function that applies chunk offsets. Around it: `align_words` puts
the aligner's bare units back onto the ASR text as written (punctuation, casing, the characters
the aligner normalised), and `subtitles.build_segments` cuts cues.

Integrity, for every result: the segments' texts, concatenated, equal `text` up to whitespace
(every chunk with text is in the segments, aligned or not); `words` holds every word of every
chunk that went through the aligner, in order, and each word's `space` (the whitespace before
it) joined with it rebuilds those chunks' text exactly. Where there is no aligner time (a
language the aligner lacks, a word it missed, a chunk it returned nothing for), times are
estimated from character counts at the chunk's own pace, and `warnings` says so.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Iterator, Sequence

from qwen_worker.base.languages import is_unspaced
from qwen_worker.base.types import (
    AlignedToken,
    AsrOutput,
    Chunk,
    ChunkInfo,
    Segment,
    SubtitleOptions,
    Transcript,
    Word,
)
from qwen_worker.pipeline.subtitles import build_segments, cuts_freely, is_kept

__all__ = ["ChunkInfo", "ChunkWords", "Segment", "SubtitleOptions", "Transcript", "Word",
           "align_words", "build_segments", "merge_chunks"]


# ---- aligner units -> words as written ----------------------------------------------------

@dataclass(frozen=True)
class ChunkWords:
    """One chunk's text as words in chunk time."""

    words: list[Word]  # every non-space character of the text, in order, in exactly one word
    spoken: bool  # the text has letters or digits (else `words` are bare marks such as "♪")
    placed: int  # words timed by the aligner
    missed: int  # words the aligner did not place: times estimated between their neighbours
    dropped: int  # aligner units that matched no text


@dataclass
class _Atom:
    """The letters and digits of one word: text[a:b], and its aligner units (none if missed)."""

    a: int
    b: int
    units: list[int]
    start: float = 0.0
    end: float = 0.0


def _nfkc_clusters(text: str) -> Iterator[tuple[int, int]]:
    """Spans of `text` that NFKC normalises on their own: a character and whatever composes
    with it (half-width "ﾃﾞ" -> "デ", a base and its combining marks)."""
    start = 0
    for i in range(1, len(text)):
        head, ch = text[start:i], text[i]
        if (unicodedata.normalize("NFKC", head + ch)
                == unicodedata.normalize("NFKC", head) + unicodedata.normalize("NFKC", ch)):
            yield start, i
            start = i
    if text:
        yield start, len(text)


def _stream(text: str, language: str) -> tuple[str, list[tuple[int, int]]]:
    """The characters the aligner builds its units from, each with the span of `text` it comes
    from. qwen-asr splits Japanese with nagisa, which first NFKC-normalises and turns "İ" into
    "I" ("ＡＢＣ１２３" -> "ABC123", "℃" -> "°C", "ｶﾀｶﾅ" -> "カタカナ", "½" -> "1⁄2"); every
    other language (per-character CJK, soynlp Korean, whitespace words) keeps the text as
    written. Either way only letters, digits and "'" survive (is_kept_char)."""
    chars: list[str] = []
    spans: list[tuple[int, int]] = []
    if language.lower() == "japanese" and not text.isascii():
        for a, b in _nfkc_clusters(text):
            for ch in unicodedata.normalize("NFKC", text[a:b]).replace("İ", "I"):
                if is_kept(ch):
                    chars.append(ch)
                    spans.append((a, b))
    else:
        for i, ch in enumerate(text):
            if is_kept(ch):
                chars.append(ch)
                spans.append((i, i + 1))
    return "".join(chars), spans


def _owners(stream: str, units: Sequence[AlignedToken], text: str,
            spans: list[tuple[int, int]]) -> list[int]:
    """For each stream character, the index of the unit it belongs to, or -1."""
    unit_of = [k for k, u in enumerate(units) for _ in u.text]
    if stream == "".join(u.text for u in units):
        return unit_of

    # Units out of step with the text (too few, too many, not spelled like the text): walk
    # both in order. A unit that is not next in the text is looked for further on together
    # with the two units after it, so that a stray short unit ("the") cannot pull the walk
    # past words it does not own; a unit found nowhere is dropped.
    def may_end(k: int, end: int) -> bool:
        # where a written word ends, beside CJK, or where the next unit goes on ("학교" + "에")
        if end >= len(stream):
            return True
        left, right = spans[end - 1], spans[end]
        if (left == right or any(ch.isspace() for ch in text[left[1]:right[0]])
                or cuts_freely(text[left[1] - 1]) or cuts_freely(text[right[0]])):
            return True
        return k + 1 < len(units) and stream.startswith(units[k + 1].text, end)

    def locate(k: int, pos: int) -> int:
        n = min(3, len(units) - k)
        probe = "".join(u.text for u in units[k:k + n])
        at = stream.find(probe, pos)
        while at >= 0 and not may_end(k + n - 1, at + len(probe)):
            at = stream.find(probe, at + 1)
        return at

    owner = [-1] * len(stream)
    pos = 0
    for k, unit in enumerate(units):
        if not unit.text:
            continue
        at = pos
        if not (stream.startswith(unit.text, pos) and may_end(k, pos + len(unit.text))):
            at = locate(k, pos)
            if at < 0:
                continue
        owner[at:at + len(unit.text)] = [k] * len(unit.text)
        pos = at + len(unit.text)
    return owner


def _plausible(owner: list[int], units: Sequence[AlignedToken], text: str,
               spans: list[tuple[int, int]]) -> list[int]:
    """Keep a unit only within one written word: a unit matched across a space (the text has
    "a b" where the aligner says "ab") keeps the larger side, if that is at least half of it."""
    by_unit: dict[int, list[int]] = {}
    for i, k in enumerate(owner):
        if k >= 0:
            by_unit.setdefault(k, []).append(i)
    kept = [-1] * len(owner)
    for k, idx in by_unit.items():
        runs = [[idx[0]]]
        for prev, i in zip(idx, idx[1:]):
            if any(ch.isspace() for ch in text[spans[prev][1]:spans[i][0]]):
                runs.append([])
            runs[-1].append(i)
        best = max(runs, key=len)
        if 2 * len(best) >= len(units[k].text):
            for i in best:
                kept[i] = k
    return kept


def _atoms(text: str, stream: str, spans: list[tuple[int, int]], owner: list[int]) -> list[_Atom]:
    """Placed words (one per aligner unit) and missed words (kept characters no unit covers),
    in text order."""
    cores: list[_Atom] = []
    for i, k in enumerate(owner):
        if k < 0:
            continue
        a, b = spans[i]
        # Units that share one written character ("½" -> "1", "2") become one word.
        if cores and (cores[-1].units[-1] == k or a < cores[-1].b):
            cores[-1].b = max(cores[-1].b, b)
            if cores[-1].units[-1] != k:
                cores[-1].units.append(k)
        else:
            cores.append(_Atom(a, b, [k]))
    atoms: list[_Atom] = []
    c = 0
    for i, k in enumerate(owner):
        a, b = spans[i]
        while c < len(cores) and cores[c].b <= a:
            atoms.append(cores[c])
            c += 1
        if k >= 0 or (c < len(cores) and cores[c].a <= a):
            continue  # placed, or inside a placed word
        last = atoms[-1] if atoms else None
        joins = (last is not None and not last.units and (
            a < last.b  # the same written character
            or (not any(ch.isspace() for ch in text[last.b:a])
                and not cuts_freely(text[a]) and not cuts_freely(text[last.b - 1]))))
        if joins:
            last.b = max(last.b, b)
        else:
            atoms.append(_Atom(a, b, []))
    atoms.extend(cores[c:])
    return atoms


def _opens(text: str, i: int) -> bool:
    """Does the mark at text[i] open (belong to the next word)?"""
    ch = text[i]
    before = text[i - 1] if i > 0 else " "
    after = text[i + 1] if i + 1 < len(text) else " "
    category = unicodedata.category(ch)
    if ch == '"' or category in ("Pi", "Pf"):
        # A quote's place says which way it faces ('he said "no"', German "„ja“ und");
        # between two non-spaces (CJK) its kind does, and ASCII " alternates.
        if before.isspace() != after.isspace():
            return before.isspace()
        if ch == '"':
            return text.count('"', 0, i) % 2 == 0
        return category == "Pi"
    if category == "Ps":
        return True
    if category == "Sc" or ch in "¿¡":
        return not after.isspace()  # "$100" opens; "100 $" and "100 €" close
    return False


def _split_gap(text: str, lo: int, hi: int) -> int:
    """Where the text between two words splits: closing marks stay left, opening marks go
    right, and so does any mark written against the next word after a space ("+1", ".NET",
    "#tag", "@name", "~5", "−3", "<tags>"): it belongs to the word it precedes."""
    k = hi
    while k > lo and not text[k - 1].isspace():
        k -= 1
    if k == lo:  # no space in the gap (CJK, "C++"): only opening marks go right
        k = hi
    while k > lo and (text[k - 1].isspace() or _opens(text, k - 1)):
        k -= 1
    while k < hi and text[k].isspace():
        k += 1
    return k


# Slow speech: 3 syllables a second, one CJK character each. An estimated word in a chunk with
# no aligner time to measure a pace from lasts at most this long per character.
SLOWEST_SECONDS_PER_CHAR = 0.33


def _pace(atoms: Sequence[_Atom], duration: float) -> float:
    """Seconds per character of this chunk's speech: the median over its placed words (robust
    to a word stretched over a pause), else its text spread over the chunk; never slower than
    SLOWEST_SECONDS_PER_CHAR."""
    rates = sorted((x.end - x.start) / (x.b - x.a) for x in atoms
                   if x.units and x.end > x.start)
    if rates:
        rate = rates[len(rates) // 2]
    else:
        rate = duration / (sum(x.b - x.a for x in atoms) or 1)
    return min(rate, SLOWEST_SECONDS_PER_CHAR)


def _estimate(atoms: Sequence[_Atom], lo: float, hi: float, pace: float | None,
              after: bool, before: bool) -> None:
    """Estimated times for a run of missed words in [lo, hi]: each lasts its length at `pace`;
    a run that follows a placed word starts right after it, one that only precedes a placed
    word ends right before it, one between two (or with none) is shared out by length.
    `pace` None spreads the run over the whole stretch (a chunk with no aligner)."""
    hi = max(hi, lo)
    total = sum(x.b - x.a for x in atoms) or 1
    need = total * pace if pace is not None else hi - lo
    if need < hi - lo and after != before:
        lo, hi = (lo, lo + need) if after else (hi - need, hi)
    done = 0
    for x in atoms:
        x.start = lo + (hi - lo) * done / total
        done += x.b - x.a
        x.end = lo + (hi - lo) * done / total
        if pace is not None:
            x.end = min(x.end, x.start + (x.b - x.a) * pace)


def align_words(text: str, units: Sequence[AlignedToken] | None, language: str,
                duration: float) -> ChunkWords:
    """Map the aligner's units (punctuation stripped, possibly normalised) back onto `text` as
    written. Times stay in chunk time. Words no unit covers get times shared out between their
    placed neighbours (or over the whole chunk when nothing is placed: `units` None means the
    chunk was not aligned); units that match no text are dropped."""
    aligned = units is not None
    units = list(units or [])
    stream, spans = _stream(text, language)
    owner = (_plausible(_owners(stream, units, text, spans), units, text, spans) if units
             else [-1] * len(stream))
    atoms = _atoms(text, stream, spans, owner)
    if not atoms:  # only marks ("♪ ♪", "..."): shown, timed over the chunk, not words
        pieces = text.split()
        words = [Word(piece, duration * i / len(pieces), duration * (i + 1) / len(pieces),
                      space=" " if i else "", estimated=True, untimed=True)
                 for i, piece in enumerate(pieces)]
        return ChunkWords(words, spoken=False, placed=0, missed=0, dropped=len(units))

    for x in atoms:
        if x.units:
            x.start = min(units[k].start for k in x.units)
            x.end = max(units[k].end for k in x.units)
    pace = _pace(atoms, duration) if aligned else None
    i = 0
    while i < len(atoms):
        if atoms[i].units:
            i += 1
            continue
        j = i
        while j < len(atoms) and not atoms[j].units:
            j += 1
        _estimate(atoms[i:j], atoms[i - 1].end if i > 0 else 0.0,
                  atoms[j].start if j < len(atoms) else duration, pace,
                  after=i > 0, before=j < len(atoms))
        i = j

    # Each word is its stretch of the text without the whitespace around it; that whitespace
    # becomes the next word's `space`, so the words rebuild the text exactly.
    bounds = [0] + [_split_gap(text, x.b, y.a) for x, y in zip(atoms, atoms[1:])] + [len(text)]
    words: list[Word] = []
    space = ""
    for n, x in enumerate(atoms):
        piece = text[bounds[n]:bounds[n + 1]]
        core = piece.strip()
        lead = piece[:len(piece) - len(piece.lstrip())]
        words.append(Word(core, x.start, x.end, space=space + lead, estimated=not x.units,
                          untimed=not aligned))
        space = piece[len(lead) + len(core):]
    used = {k for k in owner if k >= 0}
    placed = sum(1 for x in atoms if x.units)
    return ChunkWords(words, spoken=True, placed=placed, missed=len(atoms) - placed,
                      dropped=len(units) - len(used))


# ---- chunk time -> file time --------------------------------------------------------------

def _to_file_time(words: list[Word], chunk: Chunk, first_space: str) -> list[Word]:
    """Clamp into the chunk, keep times non-decreasing and words apart (a word ends by the
    time the next starts, so no cue need end before its words do), add the chunk's offset."""
    starts: list[float] = []
    floor = 0.0
    for w in words:
        floor = min(max(w.start, floor), chunk.duration)
        starts.append(floor)
    out: list[Word] = []
    for i, (w, start) in enumerate(zip(words, starts)):
        end = min(max(w.end, start), chunk.duration)
        if i + 1 < len(words):
            end = min(end, starts[i + 1])
        out.append(Word(w.word, round(chunk.offset + start, 3), round(chunk.offset + end, 3),
                        space=first_space if i == 0 else w.space, estimated=w.estimated,
                        untimed=w.untimed))
    return out


def _joiner(prev_language: str | None, language: str) -> str:
    if prev_language is None:
        return ""
    return "" if is_unspaced(prev_language) and is_unspaced(language) else " "


def merge_chunks(chunks: Sequence[Chunk], outputs: Sequence[AsrOutput],
                 alignments: Sequence[Sequence[AlignedToken] | None], duration: float,
                 warnings: list[str], subtitle: SubtitleOptions = SubtitleOptions()) -> Transcript:
    """The only place chunk time becomes file time. `alignments[i]` is None for a chunk that
    was not aligned (no word timestamps asked for, or a language the aligner lacks)."""
    text_parts: list[str] = []
    words: list[Word] = []
    pieces: list[Word] = []  # every chunk's words and marks: what the cues are cut from
    infos: list[ChunkInfo] = []
    estimated: list[int] = []
    prev_language: str | None = None
    for chunk, out, units in zip(chunks, outputs, alignments, strict=True):
        infos.append(ChunkInfo(chunk.index, round(chunk.offset, 3),
                               round(chunk.offset + chunk.duration, 3), out.language, out.text))
        if not out.text:
            continue
        joiner = _joiner(prev_language, out.language)
        text_parts.append(joiner + out.text)
        mapped = align_words(out.text, units, out.language, chunk.duration)
        timed = _to_file_time(mapped.words, chunk, first_space=joiner)
        pieces.extend(timed)
        if units is not None and mapped.spoken:
            words.extend(timed)
        where = f"chunk {chunk.index} ({chunk.offset:.1f}-{chunk.offset + chunk.duration:.1f} s)"
        if mapped.placed == 0:
            estimated.append(chunk.index)
        elif mapped.missed:
            warnings.append(f"{where}: the aligner placed {mapped.placed} of "
                            f"{mapped.placed + mapped.missed} words; the times of the other "
                            f"{mapped.missed} are estimated between their neighbours")
        if mapped.dropped and mapped.placed:
            warnings.append(f"{where}: {mapped.dropped} aligner units matched no text and were "
                            "dropped")
        prev_language = out.language
    if estimated:
        warnings.append("no word times in chunk" + ("s " if len(estimated) > 1 else " ")
                        + ", ".join(map(str, estimated)) + ": cue times there are estimated "
                        "from character counts")
    return Transcript(
        text="".join(text_parts),
        language=_dominant(chunks, outputs),
        languages=_languages_in_order(outputs),
        duration=round(duration, 3),
        words=words,
        segments=build_segments(pieces, subtitle, until=round(duration, 3)),
        chunks=infos,
        warnings=warnings,
        subtitle=subtitle,
        pieces=pieces,
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
