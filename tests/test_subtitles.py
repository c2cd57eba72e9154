"""Broadcast-style cues: line width and count, cue duration, where cues and lines break, and the
`subtitle` request options. Whole files are checked through the `srt` and `webvtt-py` parsers."""

from __future__ import annotations

import io
import random
from datetime import timedelta

import pytest
import srt
import webvtt

from qwen_worker.base.types import AlignedToken
from qwen_worker.base.errors import ErrorCode, WorkerError
from qwen_worker.pipeline.formats import to_srt, to_vtt
from qwen_worker.base.types import Segment, Transcript, Word
from qwen_worker.pipeline.merge import merge_chunks
from qwen_worker.jobs.request import parse_request
from qwen_worker.base.types import SubtitleOptions
from qwen_worker.pipeline.subtitles import build_segments, ends_sentence, line_limit, width, wrap
from test_integrity import PROCESSOR, asr, check_integrity, chunks_of

DEFAULT = SubtitleOptions()


# ---- lines --------------------------------------------------------------------------------

def test_a_short_cue_stays_on_one_line():
    assert wrap("Welcome back to the show.", DEFAULT) == ["Welcome back to the show."]


def test_two_lines_are_balanced_and_break_between_words():
    text = "and how modern systems like Qwen3-ASR handle long recordings in noisy rooms"
    lines = wrap(text, DEFAULT)
    assert len(lines) == 2 and " ".join(lines) == text
    assert all(width(ln) <= 42 for ln in lines)
    assert abs(width(lines[0]) - width(lines[1])) <= 12


def test_a_break_after_punctuation_wins_over_perfect_balance():
    lines = wrap("Dr. Whitehorse joins us from Boston; she has worked on this for years.", DEFAULT)
    assert lines == ["Dr. Whitehorse joins us from Boston;", "she has worked on this for years."]


def test_chinese_lines_hold_16_characters_and_never_start_with_closing_marks():
    text = "今天我们来聊一聊语音识别技术的发展，以及大模型如何改变了这个领域。"
    lines = wrap(text, DEFAULT)
    assert "".join(lines) == text and len(lines) == 3  # a cue would hold only 2: see build
    assert all(width(ln) <= 16 for ln in lines)
    assert not any(ln[0] in "，。、）」”" for ln in lines)


def test_korean_counts_16_and_breaks_at_spaces_only():
    text = "오늘 학생들이 학교에 모여 공부를 했습니다"
    lines = wrap(text, DEFAULT)
    assert lines == ["오늘 학생들이 학교에", "모여 공부를 했습니다"]


def test_french_spaced_marks_stay_with_their_words():
    options = SubtitleOptions(max_line_width=12)
    for line in wrap("Il dit « bonjour » à tous : quoi ?", options):
        assert not line.endswith("«") and line[0] not in "»:?"


def test_a_word_longer_than_a_line_is_split_to_fit():
    url = "https://example.com/" + "a" * 90
    lines = wrap(url, DEFAULT)
    assert "".join(lines) == url and all(width(ln) <= 42 for ln in lines)


def test_cjk_width_follows_the_requested_width():
    assert SubtitleOptions().cjk_line_width == 16
    assert SubtitleOptions(max_line_width=32).cjk_line_width == 12
    assert line_limit("你好世界", SubtitleOptions(max_line_width=32)) == 12
    assert line_limit("Hello 你好", DEFAULT) == 42  # mostly Latin
    assert line_limit("오늘 학생들이", DEFAULT) == 16


# ---- sentences ----------------------------------------------------------------------------

def _w(text: str, space: bool = True) -> Word:
    return Word(text, 0.0, 0.1, space=" " if space else "")


@pytest.mark.parametrize("word,following,ends", [
    ("test.", _w("Then"), True),
    ("test.", None, True),
    ("why?", _w("Because"), True),
    ("3.", _w("5%", space=False), False),  # nagisa's "3" "." "5": a decimal
    ("12.", _w("30", space=False), False),
    ("Dr.", _w("Smith"), False),
    ("Mr.", _w("Jones"), False),
    ("U.S.A.", _w("Then"), False),
    ("e.g.", _w("Paris"), False),
    ("(Fig.", _w("2)"), False),
    ("No.", _w("5"), False),
    ("No.", _w("I"), True),  # an answer, not a number sign
    ("etc.", _w("Then"), True),
    ("ok...", _w("So"), True),
    ('"done."', _w("He"), True),
    ("でした。", _w("次", space=False), True),
    ("です.", _w("次", space=False), True),
    ("3,", _w("5"), False),
])
def test_sentence_ends(word, following, ends):
    assert ends_sentence(_w(word), following) is ends


# ---- cues ---------------------------------------------------------------------------------

def test_a_short_cue_lasts_at_least_the_minimum_where_the_next_allows():
    words = [Word("Yes.", 1.0, 1.2), Word("No.", 1.5, 1.7), Word("Maybe.", 5.0, 5.3)]
    segs = build_segments(words, DEFAULT, until=6.0)
    assert [(s.start, s.end) for s in segs] == [(1.0, 1.5), (1.5, 2.3), (5.0, 5.8)]


def test_a_cue_never_ends_before_its_words_nor_overlaps_the_next():
    # A word that alone outlasts max_cue_seconds keeps its cue open: a cue that ended at 7 s
    # would leave the word it shows without a cue for the rest of it.
    one = build_segments([Word("stuck", 0.0, 30.0)], SubtitleOptions(max_cue_seconds=3))
    assert (one[0].start, one[0].end) == (0.0, 30.0)
    # Words that overlap (merge_chunks never gives such): no overlap between cues wins.
    words = [Word("stuck", 0.0, 30.0), Word("next.", 10.0, 10.5)]
    segs = build_segments(words, DEFAULT, until=60.0)
    assert segs[0].end == 10.0 and segs[1].start == 10.0
    # Words that only span more than max_cue_seconds together are cut into cues that keep it.
    words = [Word("one", 0.0, 3.0), Word("two", 3.0, 6.0), Word("three.", 6.0, 9.0)]
    segs = build_segments(words, DEFAULT, until=60.0)
    assert [(s.text, s.start, s.end) for s in segs] == [("one two", 0.0, 6.0),
                                                        ("three.", 6.0, 9.0)]


def test_a_long_sentence_is_cut_at_a_clause_not_mid_phrase():
    text = ("When we started this project, nobody believed that a model this small could "
            "transcribe an hour of audio in under a minute.")
    words = [Word(w, i * 0.25, i * 0.25 + 0.2) for i, w in enumerate(text.split())]
    segs = build_segments(words, DEFAULT)
    assert segs[0].text == "When we started this project,"
    assert " ".join(s.text for s in segs) == text


# ---- whole files --------------------------------------------------------------------------

ENGLISH_WORDS = ("the of and to in is it that was for on are with as they be at one have this "
                 "from by hot word but what some we can out other were all there when up use "
                 "your how said an each she which do their time if will way about many then "
                 "them write would like so these her long make thing see him two has look more "
                 "day could go come did number sound no most people my over know water than call "
                 "first who may down side been now find recognition transcription broadcasting "
                 "internationalisation").split()
CHINESE_CHARS = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
                 "同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自"
                 "二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日"
                 "那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变"
                 "条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总"
                 "次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指"
                 "几九区强放决西被干做必战先回则任取据处")
CHINESE_LATIN = ["GPU", "AI", "Qwen", "API", "5G"]


def _english_chunk(rng: random.Random, seconds: float) -> tuple[str, list[tuple[float, float]]]:
    """Sentences of common words with commas and an abbreviation now and then; per-word times
    at a speaking pace with pauses between sentences."""
    words, times, t = [], [], 0.2
    while True:
        n = rng.randint(3, 28)
        sentence = [rng.choice(ENGLISH_WORDS) for _ in range(n)]
        if rng.random() < 0.2:
            sentence.insert(rng.randrange(n), rng.choice(["Dr.", "Mr.", "U.S.", "e.g."]))
        for i in range(len(sentence) - 1):
            if rng.random() < 0.08:
                sentence[i] += ","
        sentence[0] = sentence[0].capitalize()
        sentence[-1] += rng.choice([".", ".", "?", "!"])
        spans = []
        for w in sentence:
            d = 0.06 * len(w) + 0.1
            spans.append((t, t + d))
            t += d + rng.uniform(0.02, 0.12)
        if t > seconds - 0.5:
            return " ".join(words), times
        words.extend(sentence)
        times.extend(spans)
        t += rng.uniform(0.1, 1.4)


def _chinese_chunk(rng: random.Random, seconds: float) -> tuple[str, list[tuple[float, float]]]:
    pieces, times, t = [], [], 0.2
    while True:
        n = rng.randint(4, 40)
        sentence = []
        for i in range(n):
            latin = rng.random() < 0.05 and (not sentence or not sentence[-1].isascii())
            sentence.append(rng.choice(CHINESE_LATIN) if latin else rng.choice(CHINESE_CHARS))
            if 0 < i < n - 1 and rng.random() < 0.08:
                sentence[-1] += "，"
        sentence[-1] += rng.choice(["。", "。", "？", "！"])
        spans = []
        for _ in sentence:
            spans.append((t, t + 0.18))
            t += 0.22 + rng.uniform(0.0, 0.06)
        if t > seconds - 0.5:
            return "".join(pieces), times
        pieces.extend(sentence)
        times.extend(spans)
        t += rng.uniform(0.1, 1.2)


def _ten_minute_file(language: str, make, options: SubtitleOptions) -> Transcript:
    rng = random.Random(8)
    seconds = [270.0, 265.5, 64.5]
    texts, alignments = [], []
    for s in seconds:
        text, times = make(rng, s)
        units, _ = PROCESSOR.encode_timestamp(text, language)
        assert len(units) == len(times)
        alignments.append([AlignedToken(u, round(a, 3), round(b, 3))
                           for u, (a, b) in zip(units, times)])
        texts.append(text)
    t = merge_chunks(chunks_of(*seconds), [asr(x, language) for x in texts], alignments, 600.0,
                     [], options)
    check_integrity(t, texts, [language] * 3, [True] * 3, options)
    assert t.warnings == []
    return t


def _seconds(td: timedelta) -> float:
    return round(td.total_seconds(), 3)


def _vtt_seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return round(int(h) * 3600 + int(m) * 60 + float(s), 3)


@pytest.mark.parametrize("language,make,options", [
    ("English", _english_chunk, SubtitleOptions()),
    ("English", _english_chunk, SubtitleOptions(max_line_width=32, max_line_count=1,
                                                max_cue_seconds=4)),
    ("Chinese", _chinese_chunk, SubtitleOptions()),
    ("Chinese", _chinese_chunk, SubtitleOptions(max_line_width=60, max_line_count=3,
                                                max_cue_seconds=10)),
])
def test_every_cue_of_a_ten_minute_file_keeps_the_limits(language, make, options):
    t = _ten_minute_file(language, make, options)
    limit = options.max_line_width if language == "English" else options.cjk_line_width
    cues = list(srt.parse(to_srt(t)))
    vtt = webvtt.from_buffer(io.StringIO(to_vtt(t))).captions
    assert len(cues) == len(vtt) == len(t.segments) > 60
    for i, (cue, caption, seg) in enumerate(zip(cues, vtt, t.segments)):
        lines = cue.content.split("\n")
        assert caption.text.split("\n") == lines
        assert 1 <= len(lines) <= options.max_line_count
        assert all(width(ln) <= limit for ln in lines), lines
        joined = (" " if language == "English" else "").join(lines)
        assert joined == seg.text
        start, end = _seconds(cue.start), _seconds(cue.end)
        assert (start, end) == (_vtt_seconds(caption.start), _vtt_seconds(caption.end))
        assert end - start <= options.max_cue_seconds + 1e-9
        following = _seconds(cues[i + 1].start) if i + 1 < len(cues) else 600.0
        assert end <= following
        assert end - start >= options.min_cue_seconds - 1e-9 or end == following
    if language == "English":
        # Abbreviations did not end cues; sentence ends did.
        assert not any(s.text.endswith(("Dr.", "Mr.", "e.g.")) for s in t.segments)


def test_no_cue_contains_an_arrow_in_either_format():
    seg = Segment(0, 0.0, 2.0, "a --> b ---> c <!-- d -->")
    t = Transcript("x", "English", ["English"], 3.0, [], [seg], [], [])
    srt_text = to_srt(t)
    vtt_text = to_vtt(t)
    assert srt_text.split("\n")[2:] == ["a -> b -> c <!-- d ->", ""]
    assert vtt_text.split("\n\n")[1].split("\n")[1:] == [
        "a --&gt; b ---&gt; c &lt;!-- d --&gt;", ""]
    assert list(srt.parse(srt_text))[0].content == "a -> b -> c <!-- d ->"
    assert webvtt.from_buffer(io.StringIO(vtt_text)).captions[0].text == (
        "a --&gt; b ---&gt; c &lt;!-- d --&gt;")


def test_writers_break_lines_with_the_transcripts_own_options():
    seg = Segment(0, 0.0, 2.0, "one two three four five six seven")
    narrow = SubtitleOptions(max_line_width=15, max_line_count=3)
    t = Transcript("x", "English", ["English"], 3.0, [], [seg], [], [], narrow)
    assert list(srt.parse(to_srt(t)))[0].content == "one two three\nfour five\nsix seven"


# ---- request ------------------------------------------------------------------------------

def _parse(**extra):
    return parse_request({"audio_url": "https://example.com/a.mp3", **extra}, 2000)


def test_subtitle_options_reach_the_pipeline():
    assert _parse().options.subtitle == SubtitleOptions()
    got = _parse(subtitle={"max_line_width": 32, "max_line_count": 1, "max_cue_seconds": 4.5})
    assert got.options.subtitle == SubtitleOptions(max_line_width=32, max_line_count=1,
                                                   max_cue_seconds=4.5)


@pytest.mark.parametrize("subtitle,message", [
    ({"max_line_widht": 32}, "unknown key 'max_line_widht' in subtitle"),
    ({"max_line_width": 5}, "subtitle.max_line_width must be an integer from 10 to 100"),
    ({"max_line_width": 40.5}, "subtitle.max_line_width must be an integer from 10 to 100"),
    ({"max_line_count": 4}, "subtitle.max_line_count must be an integer from 1 to 3"),
    ({"max_cue_seconds": 0.5}, "subtitle.max_cue_seconds must be a number from 1 to 30"),
    ({"max_cue_seconds": True}, "subtitle.max_cue_seconds must be a number from 1 to 30"),
    ("wide", "subtitle should be dict, not str"),
])
def test_bad_subtitle_options_are_rejected_with_the_allowed_keys(subtitle, message):
    with pytest.raises(WorkerError) as err:
        _parse(subtitle=subtitle)
    assert err.value.code == ErrorCode.INVALID_INPUT
    assert message in str(err.value)
    if isinstance(subtitle, dict):
        assert "max_line_width, max_line_count, max_cue_seconds" in str(err.value)
