"""Timed words -> subtitle cues, and cue text -> lines.

Broadcast conventions: a cue holds at most `max_line_count` lines of at most `max_line_width`
characters (16 when the text is mostly Chinese, Japanese or Korean, each full-width character
counted as one), lasts at most `max_cue_seconds` and, where the next cue leaves room, at least
MIN_CUE_SECONDS. Cues end at sentence ends and pauses; lines break at word boundaries and are
balanced. A cue or line never breaks where a space-delimited text has no space, unless the
text goes on without one for longer than a whole cue (or line) holds.

`segments` are these cues, one line of text each; the SRT and VTT writers break it into lines
with `wrap`, the same breaking `build_segments` uses to decide what fits.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from typing import Sequence

from qwen_worker.base.types import Segment, SubtitleOptions, Word

SENTENCE_END = frozenset(".!?。！？…؟।")
# Marks after which a clause ends: a cue cut there reads better than one mid-clause.
CLAUSE_END = frozenset(",;:，、；：—–") | SENTENCE_END
# Closing marks a cue or line must not start with, opening marks it must not end with.
NO_LINE_START = frozenset(",.!?:;%)]}»›”’、。，．！？：；）」』】〕〉》〙〗・ー…‥々ゝゞヽヾ"
                          "ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ")
NO_LINE_END = frozenset("([{«‹“‘¿¡$£€¥（「『【〔〈《〘〖")
CLOSERS = "\"')]}»›”’」』）》〉】〕"

# Abbreviations whose period never ends a sentence (titles, Latin and reference forms) ...
ABBREVIATIONS = frozenset({
    "Dr", "Mr", "Mrs", "Ms", "Mx", "Prof", "Sr", "Jr", "Sra", "Srta", "Dra", "Mme", "Mlle",
    "Hr", "Fr", "Gen", "Col", "Capt", "Lt", "Sgt", "Rev", "Hon", "Mt", "Ft", "St", "vs",
    "cf", "approx", "ca", "viz", "Messrs", "Bros", "Dept", "Univ",
})
# ... and those that do not when a number follows ("Fig. 3", "No. 5"; "No." alone is an answer).
NUMBER_ABBREVIATIONS = frozenset({"No", "Nos", "Nr", "Fig", "Figs", "Vol", "Vols", "pp",
                                  "Art", "Ch", "Eq", "Sec", "Abb", "Bd"})
# "U.S.A.", "e.g.", "i.e.", "a.m.", "z.B.", "т.е.", and single initials ("J. R. R. Tolkien").
_INITIALISM = re.compile(r"^(?:[^\W\d_]\.){2,}$|^[^\W\d_]\.$")


# ---- characters ---------------------------------------------------------------------------

def is_kept(ch: str) -> bool:
    """What the aligner keeps of a text: letters, digits and "'" (qwen-asr's is_kept_char)."""
    return ch == "'" or unicodedata.category(ch)[0] in "LN"


# Character classes: CJK width (ideographs, kana, hangul, full-width forms), breaks freely
# (written without spaces: all of those but hangul), adds no width (combining, format).
_WIDE, _FREE, _ZERO = 1, 2, 4


@functools.cache
def _flags(ch: str) -> int:
    """A character's class, looked up once: cue building asks about every character often."""
    o = ord(ch)
    hangul = (0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F or 0xA960 <= o <= 0xA97F
              or 0xAC00 <= o <= 0xD7FF or 0xFFA0 <= o <= 0xFFDC)
    wide = unicodedata.east_asian_width(ch) in ("W", "F", "H")
    zero = unicodedata.category(ch) in ("Mn", "Me", "Cf")
    return wide * _WIDE | (wide and not hangul) * _FREE | zero * _ZERO


def cuts_freely(ch: str) -> bool:
    """Written without spaces between words (Chinese, Japanese): a break may sit beside it.
    Korean is wide but space-delimited."""
    return bool(_flags(ch) & _FREE)


def breakable(a: str, b: str) -> bool:
    """May a cue or a line break between two adjacent non-space characters?"""
    if b in NO_LINE_START or a in NO_LINE_END:
        return False
    return bool((_flags(a) | _flags(b)) & _FREE)


def width(text: str) -> int:
    """Characters as a reader counts them: combining marks and format characters add none."""
    if text.isascii():
        return len(text)
    return len(text) - sum(1 for ch in text if _flags(ch) & _ZERO)


def _measure(text: str, options: SubtitleOptions) -> tuple[int, int]:
    """(width, line limit) of a text in one pass: the limit is the CJK one when at least half
    of the non-space characters are CJK."""
    if text.isascii():
        return len(text), options.max_line_width
    size = wide = spaces = 0
    for ch in text:
        f = _flags(ch)
        size += not f & _ZERO
        wide += f & _WIDE
        spaces += ch.isspace()
    chars = len(text) - spaces
    return size, (options.cjk_line_width if chars and 2 * wide >= chars
                  else options.max_line_width)


def line_limit(text: str, options: SubtitleOptions) -> int:
    return _measure(text, options)[1]


# ---- sentences ----------------------------------------------------------------------------

def _is_abbreviation(token: str, following: Word | None) -> bool:
    token = token.lstrip(CLOSERS + "([{«‹“‘¿¡")
    if _INITIALISM.match(token):
        return True
    stem = token[:-1]
    if stem in ABBREVIATIONS:
        return True
    return (stem in NUMBER_ABBREVIATIONS and following is not None
            and following.word[:1].isdigit())


def ends_sentence(word: Word, following: Word | None) -> bool:
    """Does a sentence end after `word`? Not after decimals (3.5), times (12.30), initialisms
    (U.S.A.) or known abbreviations (Dr., e.g., Fig. 2)."""
    core = word.word.rstrip(CLOSERS)
    if not core or core[-1] not in SENTENCE_END:
        return False
    if core[-1] in ".!?" and following is not None and not following.space_before:
        first = following.word[:1]
        # "3." + "5%" or "U." + "S.": the text goes on without a space, so it is one token.
        if first and is_kept(first) and not cuts_freely(first):
            return False
    if core[-1] == "." and not core.endswith(".."):
        return not _is_abbreviation(core.split()[-1], following)
    return True


def _abbreviated(word: Word, following: Word) -> bool:
    return word.word.rstrip(CLOSERS).endswith(".") and not ends_sentence(word, following)


def _clause_end(word: str) -> bool:
    core = word.rstrip(CLOSERS)
    return bool(core) and core[-1] in CLAUSE_END


# ---- lines --------------------------------------------------------------------------------

def _break_points(text: str, limit: int) -> list[tuple[int, int]]:
    """(end of a line, start of the next) at every place a line may break. `text` has single
    spaces only (see `wrap`)."""
    points: list[tuple[int, int]] = []
    ascii_only = text.isascii()  # then only spaces break (nothing cuts freely)
    for i in range(1, len(text)):
        a, b = text[i - 1], text[i]
        if a == " " or (ascii_only and b != " "):
            continue
        if b == " ":
            # French spacing ("Quoi ?", "« oui »") puts spaces where a line must not break.
            if i + 1 < len(text) and a not in NO_LINE_END and text[i + 1] not in NO_LINE_START:
                points.append((i, i + 1))
        elif (_flags(a) | _flags(b)) & _FREE and b not in NO_LINE_START and a not in NO_LINE_END:
            points.append((i, i))
    # A run longer than a line (a URL, a long compound) breaks anywhere: the only way to fit.
    forced: list[tuple[int, int]] = []
    start = 0
    for end, nxt in [*points, (len(text), len(text))]:
        if width(text[start:end]) > limit:
            inside = [k for k in range(start + 1, end)
                      if unicodedata.category(text[k]) not in ("Mn", "Me")]
            polite = [k for k in inside
                      if text[k] not in NO_LINE_START and text[k - 1] not in NO_LINE_END]
            steps = zip([start, *polite], [*polite, end])
            if any(width(text[a:b]) > limit for a, b in steps):
                polite = inside
            forced.extend((k, k) for k in polite)
        start = nxt
    return sorted(set(points) | set(forced))


def _prefix_widths(text: str) -> list[int]:
    if text.isascii():
        return list(range(len(text) + 1))
    out = [0]
    for ch in text:
        out.append(out[-1] + (not _flags(ch) & _ZERO))
    return out


def _greedy(text: str, limit: int, points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Fewest lines: each line takes as much as fits (optimal for the count)."""
    pw = _prefix_widths(text)
    chosen: list[tuple[int, int]] = []
    start = 0
    i = 0  # points before i end at or before `start`
    while pw[-1] - pw[start] > limit:
        while i < len(points) and points[i][0] <= start:
            i += 1
        if i == len(points):
            break
        j = i
        while j + 1 < len(points) and pw[points[j + 1][0]] - pw[start] <= limit:
            j += 1
        chosen.append(points[j])  # the last that fits, or the first when none does
        start = points[j][1]
    return chosen


def _lines(text: str, cuts: Sequence[tuple[int, int]]) -> list[str]:
    bounds = [0, *[x for cut in cuts for x in cut], len(text)]
    return [text[bounds[i]:bounds[i + 1]].strip() for i in range(0, len(bounds), 2)]


def _line_count(text: str, limit: int) -> int:
    if width(text) <= limit:
        return 1
    return len(_greedy(text, limit, _break_points(text, limit))) + 1


def wrap(text: str, options: SubtitleOptions) -> list[str]:
    """Break one cue's text into the fewest lines that fit, as balanced as possible, preferring
    a break after punctuation when it costs little balance."""
    text = " ".join(text.split())
    limit = line_limit(text, options)
    if width(text) <= limit:
        return [text] if text else []
    points = _break_points(text, limit)
    greedy = _greedy(text, limit, points)
    if len(greedy) + 1 > 3:
        return _lines(text, greedy)
    bonus = max(1, limit // 8)  # how much imbalance a break after punctuation may buy

    def cost(cuts: tuple[tuple[int, int], ...]) -> tuple[int, int, int]:
        widths = [width(ln) for ln in _lines(text, cuts)]
        punct = sum(1 for end, _ in cuts if text[end - 1] in CLAUSE_END)
        # then the evener lines, then the shorter first line (bottom-heavy reads easier)
        return max(widths) - bonus * punct, max(widths) - min(widths), widths[0]

    fitting = (cuts for cuts in itertools.combinations(points, len(greedy))
               if all(width(ln) <= limit for ln in _lines(text, cuts)))
    return _lines(text, min(fitting, key=cost, default=tuple(greedy)))


# ---- cues ---------------------------------------------------------------------------------

def join_words(words: Sequence[Word]) -> str:
    text = ""
    for w in words:
        text = _extend(text, w)
    return text


def _extend(text: str, word: Word) -> str:
    """A cue's text with one more word: one space where the text had any, none inside."""
    return text + (" " if text and word.space_before else "") + " ".join(word.word.split())


def can_cut(before: Word, after: Word) -> bool:
    """May a cue end between two words? Only at a space, or beside CJK characters."""
    return after.space_before or breakable(before.word[-1], after.word[0])


def _text_fits(text: str, options: SubtitleOptions) -> bool:
    size, limit = _measure(text, options)
    lines = options.max_line_count
    if size <= limit:
        return True
    if size > lines * limit + lines - 1:  # wider than all lines and the spaces between them
        return False
    return _line_count(text, limit) <= lines


def _time_fits(first: Word, last: Word, options: SubtitleOptions) -> bool:
    # Untimed words (text spread over a chunk) say nothing about when a sentence is spoken:
    # such cues are cut by their text alone, and their times capped in `build_segments`.
    if first.untimed and last.untimed:
        return True
    return last.end - first.start <= options.max_cue_seconds


def _split_long(word: Word, options: SubtitleOptions) -> list[Word]:
    """A word that fills more than a whole cue on its own (a long URL) is cut into line-sized
    pieces, its time shared by length."""
    if len(word.word) <= options.cjk_line_width or _text_fits(" ".join(word.word.split()),
                                                              options):
        return [word]
    text = " ".join(word.word.split())
    limit = line_limit(text, options)
    bounds = [0, *[x for cut in _greedy(text, limit, _break_points(text, limit)) for x in cut],
              len(text)]
    spans = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    span = word.end - word.start
    out = []
    for a, b in spans:
        out.append(Word(text[a:b].strip(), word.start + span * a / len(text),
                        word.start + span * b / len(text),
                        space=word.space if a == 0 else " " * text[a - 1].isspace(),
                        estimated=word.estimated, untimed=word.untimed, speaker=word.speaker))
    return out


def _cut_point(cue: list[Word], nxt: Word) -> int | None:
    """How many words of a full cue to close: the last place a cue may end, or an earlier
    clause end that keeps at least a third of the cue. None when it may end nowhere."""
    after = [cue[k] if k < len(cue) else nxt for k in range(1, len(cue) + 1)]
    allowed = [k for k in range(1, len(cue) + 1) if can_cut(cue[k - 1], after[k - 1])]
    if not allowed:
        return None
    # "Dr." | "Smith": a title or abbreviation reads badly at the end of a cue.
    allowed = [k for k in allowed if not _abbreviated(cue[k - 1], after[k - 1])] or allowed
    third = len(join_words(cue)) / 3
    for k in reversed(allowed):
        if len(join_words(cue[:k])) < third:
            break
        if _clause_end(cue[k - 1].word):
            return k
    return allowed[-1]


def group_words(words: Sequence[Word], options: SubtitleOptions) -> list[list[Word]]:
    """Words -> cues: cut at sentence ends and pauses, and before a cue outgrows its limits."""
    groups: list[list[Word]] = []
    cue: list[Word] = []
    text = ""  # join_words(cue), kept as the cue grows
    for w in (piece for word in words for piece in _split_long(word, options)):
        if cue and can_cut(cue[-1], w) and (
                ends_sentence(cue[-1], w) or w.start - cue[-1].end >= options.pause_seconds):
            groups.append(cue)
            cue, text = [], ""
        while cue:
            text_fits = _text_fits(_extend(text, w), options)
            if text_fits and _time_fits(cue[0], w, options):
                break
            k = _cut_point(cue, w)
            if k is None:
                if text_fits:
                    break  # too long in time only, and no place to cut: the cue outlasts the limit
                k = len(cue)  # text with no space for longer than a cue: cut it anyway
            groups.append(cue[:k])
            cue = cue[k:]
            text = join_words(cue)
        cue.append(w)
        text = _extend(text, w)
    if cue:
        groups.append(cue)
    return groups


def build_segments(words: Sequence[Word], options: SubtitleOptions = SubtitleOptions(),
                   until: float | None = None) -> list[Segment]:
    """Cues over the words. Cue times: first start to last end, so a cue never ends before its
    words do (`group_words` cuts cues to `max_cue_seconds` by their words' times: only a word
    that alone lasts longer, or words with no place to cut between them, make a longer cue);
    cut to the next cue's start (no overlap: words that do not overlap, as `merge_chunks` gives
    them, are never cut by it); stretched to `min_cue_seconds` where the next cue (or `until`,
    the end of the audio) leaves room. Untimed words (text spread over a chunk) hold a cue open
    for at most `max_cue_seconds`."""
    groups = group_words(words, options)
    segments: list[Segment] = []
    for i, group in enumerate(groups):
        start = group[0].start
        end = max(min(w.end, start + options.max_cue_seconds) if w.untimed else w.end
                  for w in group)
        room = groups[i + 1][0].start if i + 1 < len(groups) else until
        if room is not None and room >= start:
            end = min(end, room)
            end = max(end, min(start + options.min_cue_seconds, room))
        elif room is None:
            end = max(end, start + options.min_cue_seconds)
        segments.append(Segment(i, round(start, 3), round(max(end, start), 3), join_words(group)))
    return segments
