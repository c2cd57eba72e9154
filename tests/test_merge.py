"""Merging chunk results: offsets, seams, punctuation on words, segments."""

from __future__ import annotations

import numpy as np

from qwen_worker.base.types import Chunk
from qwen_worker.base.types import AlignedToken, AsrOutput
from qwen_worker.pipeline.merge import (SLOWEST_SECONDS_PER_CHAR, align_words, build_segments,
                                        merge_chunks)
from qwen_worker.base.types import Word


def _out(text: str, language: str = "English") -> AsrOutput:
    return AsrOutput(language, text, output_tokens=10, hit_token_limit=False, repetition_loop=False)


def _chunks(*seconds: float) -> list[Chunk]:
    out, start = [], 0
    audio = np.zeros(int(sum(seconds) * 16000), np.float32)
    for i, s in enumerate(seconds):
        end = start + int(s * 16000)
        out.append(Chunk(i, start, end, audio[start:end]))
        start = end
    return out


def _tokens(words: list[str], step: float = 0.5) -> list[AlignedToken]:
    return [AlignedToken(w, i * step, i * step + 0.4) for i, w in enumerate(words)]


def test_punctuation_and_casing_go_back_onto_aligned_words():
    text = '"Hello," she said — "it\'s 3.5 well-known things!" OK.'
    tokens = _tokens(["Hello", "she", "said", "it's", "35", "wellknown", "things", "OK"])
    words = align_words(text, tokens, "English", 10.0).words
    assert [w.word for w in words] == ['"Hello,"', "she", "said —", '"it\'s', "3.5",
                                       "well-known", 'things!"', "OK."]
    assert [w.start for w in words] == [t.start for t in tokens]


def test_chinese_characters_keep_their_punctuation():
    text = "你好，世界。“这是”测试。"
    words = align_words(text, _tokens(list("你好世界这是测试")), "Chinese", 10.0).words
    assert [w.word for w in words] == ["你", "好，", "世", "界。", "“这", "是”", "测", "试。"]
    assert not any(w.space_before for w in words)


def test_tokens_that_do_not_spell_the_text_keep_the_text_and_count_the_misses():
    mapped = align_words("Hello world", _tokens(["Hello", "there"]), "English", 10.0)
    assert [w.word for w in mapped.words] == ["Hello", "world"]
    assert (mapped.placed, mapped.missed, mapped.dropped) == (1, 1, 1)
    assert mapped.words[1].estimated and mapped.words[1].start >= mapped.words[0].end


def test_offsets_shift_words_into_file_time_and_seams_get_a_space():
    chunks = _chunks(270.0, 265.5, 64.5)
    outs = [_out("Hello world."), _out("Second part."), _out("The end.")]
    aligned = [_tokens(["Hello", "world"]), _tokens(["Second", "part"]), _tokens(["The", "end"])]
    t = merge_chunks(chunks, outs, aligned, 600.0, [])
    assert t.text == "Hello world. Second part. The end."
    starts = [w.start for w in t.words]
    assert starts == [0.0, 0.5, 270.0, 270.5, 535.5, 536.0]
    assert [c.start for c in t.chunks] == [0.0, 270.0, 535.5]
    assert [s.text for s in t.segments] == ["Hello world.", "Second part.", "The end."]
    assert t.duration == 600.0


def test_chinese_seams_join_without_a_space():
    chunks = _chunks(100.0, 100.0)
    outs = [_out("你好。", "Chinese"), _out("再见。", "Chinese")]
    t = merge_chunks(chunks, outs, [_tokens(["你", "好"]), _tokens(["再", "见"])], 200.0, [])
    assert t.text == "你好。再见。"
    assert t.segments[0].text == "你好。" and t.segments[1].text == "再见。"


def test_times_are_clamped_monotonic_and_inside_the_chunk():
    chunks = _chunks(10.0, 10.0)
    wild = [AlignedToken("a", 3.0, 2.0), AlignedToken("b", 1.0, 50.0), AlignedToken("c", -1, 4.0)]
    t = merge_chunks(chunks, [_out("a b c"), _out("a b c")], [wild, wild], 20.0, [])
    times = [x for w in t.words for x in (w.start, w.end)]
    assert all(0 <= x <= 20.0 for x in times)
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)
    assert all(w.end >= w.start for w in t.words)
    assert max(w.end for w in t.words[:3]) <= 10.0


def test_language_is_the_longest_spoken_and_languages_keep_first_appearance():
    chunks = _chunks(50.0, 200.0, 50.0)
    outs = [_out("Hi.", "English"), _out("你好。", "Chinese"), _out("Bye.", "English")]
    t = merge_chunks(chunks, outs, [None, None, None], 300.0, [])
    assert t.language == "Chinese"
    assert t.languages == ["English", "Chinese"]
    assert t.text == "Hi. 你好。 Bye."
    assert t.words == [] and [s.start for s in t.segments] == [0.0, 50.0, 250.0]
    assert any("estimated" in w and "0, 1, 2" in w for w in t.warnings)


def test_silent_chunk_adds_nothing():
    chunks = _chunks(30.0, 30.0)
    t = merge_chunks(chunks, [_out(""), _out("Only this.")], [None, _tokens(["Only", "this"])],
                     60.0, [])
    assert t.text == "Only this." and t.words[0].start == 30.0


def test_segments_cut_at_pauses_and_length():
    words = [Word("one", 0, 0.4), Word("two", 0.5, 0.9), Word("three", 3.0, 3.4)]
    assert [s.text for s in build_segments(words)] == ["one two", "three"]
    many = [Word(f"word{i}", i * 0.3, i * 0.3 + 0.2) for i in range(60)]
    segs = build_segments(many)
    assert all(len(s.text) <= 85 and s.end - s.start <= 7.0 for s in segs)
    assert " ".join(s.text for s in segs) == " ".join(w.word for w in many)


def test_units_out_of_step_with_the_text_time_only_the_words_they_spell():
    text = "He said apple pie is good."
    units = _tokens(["He", "said", "a", "apple", "pie", "zzz", "is", "good"])  # "a", "zzz" extra
    mapped = align_words(text, units, "English", 10.0)
    assert [(w.word, w.estimated) for w in mapped.words] == [
        ("He", False), ("said", False), ("apple", False), ("pie", False), ("is", False),
        ("good.", False)]
    assert mapped.dropped == 2 and mapped.missed == 0
    # A last unit that is only the head of a word does not split it.
    tail = align_words("He said apple.", _tokens(["He", "said", "a"]), "English", 10.0)
    assert [(w.word, w.estimated) for w in tail.words] == [
        ("He", False), ("said", False), ("apple.", True)]


def test_missed_words_are_timed_between_their_placed_neighbours():
    units = [AlignedToken("one", 1.0, 1.5), AlignedToken("four", 5.0, 5.5)]
    words = align_words("one two sixty four", units, "English", 10.0).words
    # 3.5 s between "one" and "four", shared 3:5 by characters; each lasts as long as the
    # chunk's placed words take per character (0.5 s for 3: 1/6 s each), not its whole share
    assert [(w.word, w.start, round(w.end, 4)) for w in words] == [
        ("one", 1.0, 1.5), ("two", 1.5, 2.0), ("sixty", 2.8125, 3.6458), ("four", 5.0, 5.5)]


def test_an_estimated_word_lasts_as_long_as_the_chunk_speaks_it():
    # The aligner stopped early in a 30 s chunk: the missed last word used to last until the
    # end of the chunk (27 s), and its cue ended 7 s in, long before the word did.
    units = _tokens(["He", "said", "that", "a"])  # 0.4 s each: 0.2, 0.1, 0.1 s a letter
    t = merge_chunks(_chunks(30.0), [_out("He said that apple.")], [units], 30.0, [])
    apple = t.words[-1]
    assert (apple.word, apple.estimated) == ("apple.", True)
    assert apple.start == t.words[2].end == 1.4
    assert apple.end == 1.9  # 5 letters at the chunk's median pace
    assert t.segments[-1].end >= apple.end
    # Before the first placed word: it ends where that word starts.
    units = [AlignedToken("fine", 20.0, 20.4)]
    first = align_words("So fine.", units, "English", 30.0).words[0]
    assert (first.word, first.estimated, first.end) == ("So", True, 20.0)
    assert first.start == 20.0 - 2 * 0.1
    # Nothing placed at all: spread over the chunk, each at most SLOWEST_SECONDS_PER_CHAR long.
    lone = align_words("Yes.", [], "English", 270.0).words
    assert lone[0].start == 0.0 and lone[0].end == 3 * SLOWEST_SECONDS_PER_CHAR


def test_every_cue_lasts_until_its_last_word_ends():
    units = _tokens(["Hello", "there", "this", "is", "it"])
    units[-1] = AlignedToken("it", 2.0, 9.5)  # the aligner stretched a word over a pause
    t = merge_chunks(_chunks(30.0, 30.0), [_out("Hello there, this is it."), _out("Next.")],
                     [units, _tokens(["Next"])], 60.0, [])
    # "it" alone lasts longer than max_cue_seconds (7): its cue lasts as long as it does
    assert [(s.text, s.start, s.end) for s in t.segments] == [
        ("Hello there,", 0.0, 0.9), ("this is", 1.0, 1.9), ("it.", 2.0, 9.5),
        ("Next.", 30.0, 30.8)]


def test_a_chunk_without_units_is_spread_over_the_chunk_by_characters():
    words = align_words("aa bb cccc", None, "Arabic", 8.0).words
    assert [(w.word, w.start, w.end, w.estimated) for w in words] == [
        ("aa", 0.0, 2.0, True), ("bb", 2.0, 4.0, True), ("cccc", 4.0, 8.0, True)]
