"""Speakers on words, segments and every output format: the word-to-speaker merge (property
tested), the request keys, SRT/VTT/txt read back with the `srt` and `webvtt-py` parsers, and
the diarized path through the real worker with the real qwen-asr code on tiny models.

Turns are plain data here (what `Diarizer.diarize` returns); only the worker-level test needs
an object that produces them, see `LayoutTurns`."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import srt
import webvtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import media
from test_integrity import asr, check_integrity, chunks_of, files
from models import ENGLISH, ENGLISH_WORDS, engine_for, settings_for
from qwen_worker.jobs.output import transcript_fields
from qwen_worker.base.errors import ErrorCode, WorkerError
from qwen_worker.pipeline.formats import to_srt, to_text, to_vtt
from qwen_worker.base.types import Transcript
from qwen_worker.pipeline.merge import merge_chunks
from qwen_worker.jobs.request import parse_request
from qwen_worker.pipeline.speakers import (NEAREST_TURN_SECONDS, assign_speakers,
                                           diarize_transcript, talk_time)
from qwen_worker.base.types import SpeakerCount, Turn
from qwen_worker.base.types import SubtitleOptions, Word
from qwen_worker.pipeline.subtitles import build_segments, wrap
from qwen_worker.jobs.worker import Worker

# ---- data ---------------------------------------------------------------------------------


@st.composite
def words_and_turns(draw) -> tuple[list[Word], list[Turn]]:
    """Words in time order (some zero-length, some estimated or untimed, pauses between) and
    exclusive sorted turns of up to four speakers with gaps between them."""
    words: list[Word] = []
    t = draw(st.integers(0, 200)) / 100  # (integers: floats fail once torch set flush-to-zero)
    for i in range(draw(st.integers(0, 40))):
        t += draw(st.sampled_from([0.0, 0.05, 0.3, 1.2]))
        length = draw(st.sampled_from([0.0, 0.1, 0.25, 0.6, 2.0]))
        flag = draw(st.sampled_from(["", "", "estimated", "untimed"]))
        words.append(Word(f"w{i}", round(t, 3), round(t + length, 3), space=" " if i else "",
                          estimated=flag == "estimated", untimed=flag == "untimed"))
        t += length
    turns: list[Turn] = []
    s = draw(st.integers(0, 300)) / 100
    for _ in range(draw(st.integers(0, 12))):
        s += draw(st.sampled_from([0.0, 0.0, 0.2, 0.7, 3.0]))
        length = draw(st.sampled_from([0.05, 0.4, 1.5, 4.0]))
        turns.append(Turn(round(s, 3), round(s + length, 3),
                          draw(st.sampled_from(["SPEAKER_00", "SPEAKER_01", "SPEAKER_02",
                                                "SPEAKER_03"]))))
        s += length
    return words, turns


def _transcript(words: list[Word], duration: float | None = None,
                subtitle: SubtitleOptions = SubtitleOptions()) -> Transcript:
    """A transcript as `merge_chunks` leaves it: the timed words are also the cue pieces."""
    duration = duration if duration is not None else (words[-1].end + 1 if words else 1.0)
    aligned = [w for w in words if not w.untimed]
    return Transcript(" ".join(w.word for w in words), "English", ["English"], duration,
                      aligned, build_segments(words, subtitle, until=duration), [], [],
                      subtitle=subtitle, pieces=list(words))


def _overlap(w: Word, t: Turn) -> float:
    return min(w.end, t.end) - max(w.start, t.start)


def _gap(w: Word, t: Turn) -> float:
    return max(t.start - w.end, w.start - t.end, 0.0)


# ---- the merge ----------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(words_and_turns())
def test_each_word_gets_the_turn_it_overlaps_most_else_the_nearest_else_none(data):
    words, turns = data
    labels = {t.speaker for t in turns}
    got = assign_speakers(words, turns)
    assert len(got) == len(words)  # one answer per word: at most one speaker each
    for w, speaker in zip(words, got):
        assert speaker is None or speaker in labels
        most = max((_overlap(w, t) for t in turns), default=0.0)
        nearest = min((_gap(w, t) for t in turns), default=float("inf"))
        if most > 0:
            assert speaker in {t.speaker for t in turns if _overlap(w, t) == most}
        elif nearest <= NEAREST_TURN_SECONDS:
            assert speaker in {t.speaker for t in turns if _gap(w, t) == nearest}
        else:
            assert speaker is None
        # A word inside a turn is that turn's (zero-length ones strictly inside).
        for t in turns:
            if t.start <= w.start and w.end <= t.end and (w.end > w.start
                                                          or t.start < w.start < t.end):
                assert speaker == t.speaker, (w, t, turns)


@PROPERTY
@given(words_and_turns())
def test_diarized_transcript_keeps_text_and_times_and_never_mixes_speakers_in_a_segment(data):
    words, turns = data
    before = _transcript(words)
    after = diarize_transcript(before, turns)
    # Text, words and their times are unchanged; every word has the speaker of its time.
    assert after.text == before.text
    assert [(w.word, w.start, w.end) for w in after.words] == \
        [(w.word, w.start, w.end) for w in before.words]
    expected = dict(zip((w.word for w in words), assign_speakers(words, turns)))
    assert [w.speaker for w in after.pieces] == [expected[w.word] for w in words]
    assert [w.speaker for w in after.words] == [expected[w.word] for w in before.words]
    # Segments: every word exactly once, in order, each segment one speaker's words only.
    rest = list(after.pieces)
    for i, seg in enumerate(after.segments):
        assert seg.id == i
        n = len(seg.text.split(" "))
        mine, rest = rest[:n], rest[n:]
        assert seg.text == " ".join(w.word for w in mine)
        assert {w.speaker for w in mine} == {seg.speaker}
        assert seg.start == mine[0].start
    assert rest == []
    # A new segment starts wherever the speaker changes.
    starts = {seg.start for seg in after.segments}
    for prev, w in zip(after.pieces, after.pieces[1:]):
        if prev.speaker != w.speaker:
            assert w.start in starts
    assert after.speakers == talk_time(turns)
    assert sum(s["seconds"] for s in after.speakers) == pytest.approx(
        sum(t.end - t.start for t in turns), abs=0.01)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files(), st.lists(st.tuples(st.integers(0, 100), st.integers(0, 3)), max_size=10))
def test_a_diarized_file_keeps_every_integrity_rule(file, cuts):
    """Whole merged files (mixed aligned, unaligned, CJK and mark-only chunks, aligners that
    misbehave; test_integrity's generator) keep the whole invariant once diarized."""
    seconds, texts, languages, alignments, options = file
    chunks = chunks_of(*seconds)
    outputs = [asr(x, lang) for x, lang in zip(texts, languages)]
    t = merge_chunks(chunks, outputs, alignments, sum(seconds), [], options)
    # Turns: the file cut at drawn per-cent points, each stretch one of four speakers.
    points = sorted({0.0, sum(seconds), *(round(sum(seconds) * p / 100, 3) for p, _ in cuts)})
    turns = [Turn(a, b, f"SPEAKER_0{cuts[i % len(cuts)][1] if cuts else 0}")
             for i, (a, b) in enumerate(zip(points, points[1:])) if b > a]
    d = diarize_transcript(t, turns)
    check_integrity(d, texts, languages, [a is not None for a in alignments], options)
    assert d.text == t.text and d.words == t.words  # Word equality: text and times
    assert [w.space for w in d.words] == [w.space for w in t.words]
    assert all(w.speaker is not None for w in d.pieces) or not turns


def test_segments_are_cut_at_speaker_changes_within_one_sentence():
    words = [Word(w, i * 0.4, i * 0.4 + 0.3, space=" " if i else "")
             for i, w in enumerate("so what do you think I think it works".split())]
    turns = [Turn(0.0, 1.85, "SPEAKER_00"), Turn(1.85, 4.0, "SPEAKER_01")]
    out = diarize_transcript(_transcript(words), turns)
    assert [(s.text, s.speaker) for s in out.segments] == [
        ("so what do you think", "SPEAKER_00"), ("I think it works", "SPEAKER_01")]
    assert out.speakers == [{"speaker": "SPEAKER_00", "seconds": 1.85},
                            {"speaker": "SPEAKER_01", "seconds": 2.15}]
    d = transcript_fields(out)
    assert [w["speaker"] for w in d["words"]] == ["SPEAKER_00"] * 5 + ["SPEAKER_01"] * 4
    assert [s["speaker"] for s in d["segments"]] == ["SPEAKER_00", "SPEAKER_01"]
    assert d["speakers"] == out.speakers


def test_a_word_in_a_short_pause_takes_the_nearest_turn_and_a_far_one_none():
    words = [Word("a", 1.0, 1.2), Word("b", 1.3, 1.4), Word("c", 9.0, 9.5)]
    turns = [Turn(0.0, 1.1, "SPEAKER_00"), Turn(1.9, 3.0, "SPEAKER_01")]
    assert assign_speakers(words, turns) == ["SPEAKER_00", "SPEAKER_00", None]
    # Exactly the tolerance away counts as near (0.55 - 0.5 is 0.05000000000000004).
    assert assign_speakers([Word("d", 0.55, 0.55)], [Turn(0.0, 0.05, "SPEAKER_00")]) == \
        ["SPEAKER_00"]
    out = diarize_transcript(_transcript(words, duration=10.0), turns)
    assert out.segments[-1].speaker is None
    assert "speaker" in transcript_fields(out)["segments"][-1]  # null, not missing, once diarized


def test_without_diarization_the_output_has_no_speaker_fields():
    words = [Word("Hello,", 0.0, 0.5), Word("world.", 0.6, 1.0)]
    d = transcript_fields(_transcript(words))
    assert set(d) == {"text", "language", "languages", "duration", "words", "segments",
                      "chunks", "warnings"}
    assert set(d["words"][0]) == {"word", "start", "end", "space"}
    assert set(d["segments"][0]) == {"id", "start", "end", "text"}


# ---- formats ------------------------------------------------------------------------------

def _dialogue(subtitle: SubtitleOptions = SubtitleOptions()) -> Transcript:
    text = ("Good morning, everyone, and welcome back to the show. Thanks for having me, "
            "it is a pleasure to be here with you today. Let us start with <the news> & more.")
    words = [Word(w, i * 0.35, i * 0.35 + 0.3, space=" " if i else "")
             for i, w in enumerate(text.split())]
    second = next(i for i, w in enumerate(words) if w.word == "Thanks")
    third = next(i for i, w in enumerate(words) if w.word == "Let")
    turns = [Turn(0.0, words[second].start - 0.02, "SPEAKER_00"),
             Turn(words[second].start - 0.02, words[third].start - 0.02, "SPEAKER_01"),
             Turn(words[third].start - 0.02, words[-1].end + 0.5, "SPEAKER_00")]
    return diarize_transcript(_transcript(words, subtitle=subtitle), turns)


def test_srt_cues_carry_the_speaker_as_a_prefix_on_the_first_line():
    t = _dialogue()
    cues = list(srt.parse(to_srt(t)))
    assert len(cues) == len(t.segments) == 3
    assert any("\n" in cue.content for cue in cues)  # the label sits on the first line only
    for cue, seg in zip(cues, t.segments):
        lines = wrap(seg.text, t.subtitle)
        assert cue.content.split("\n") == [f"{seg.speaker}: {lines[0]}", *lines[1:]]
    assert {seg.speaker for seg in t.segments} == {"SPEAKER_00", "SPEAKER_01"}


def test_vtt_cues_carry_the_speaker_as_a_voice_tag():
    t = _dialogue()
    captions = webvtt.from_buffer(io.StringIO(to_vtt(t))).captions
    assert len(captions) == len(t.segments)
    for cap, seg in zip(captions, t.segments):
        assert cap.voice == seg.speaker
        # The cue text is escaped as WebVTT needs; the tag is the only markup.
        assert cap.text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") == \
            "\n".join(wrap(seg.text, t.subtitle))


def test_speaker_labels_off_keeps_speakers_in_json_but_not_in_cues_or_text():
    t = _dialogue(SubtitleOptions(speaker_labels=False))
    assert all(c.voice is None for c in webvtt.from_buffer(io.StringIO(to_vtt(t))).captions)
    assert "SPEAKER_" not in to_srt(t) and "SPEAKER_" not in to_text(t)
    assert to_text(t) == t.text + "\n"
    assert {s["speaker"] for s in transcript_fields(t)["segments"]} == {"SPEAKER_00", "SPEAKER_01"}


def test_text_starts_a_line_at_each_change_of_speaker():
    lines = to_text(_dialogue()).splitlines()
    assert [ln.split(": ", 1)[0] for ln in lines] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    assert lines[1] == ("SPEAKER_01: Thanks for having me, it is a pleasure to be here with "
                        "you today.")
    assert " ".join(ln.split(": ", 1)[1] for ln in lines) == _dialogue().text


# ---- the request --------------------------------------------------------------------------

URL = {"audio_url": "https://example.com/a.mp3"}


@pytest.mark.parametrize("extra,count,labels", [
    ({"diarize": True}, SpeakerCount(), True),
    ({"diarize": True, "num_speakers": 2}, SpeakerCount(num_speakers=2), True),
    ({"diarize": True, "min_speakers": 2, "max_speakers": 2}, SpeakerCount(None, 2, 2), True),
    ({"diarize": True, "max_speakers": 5, "speaker_labels": "none"},
     SpeakerCount(max_speakers=5), False),
    ({"diarize": True, "speaker_labels": "prefix"}, SpeakerCount(), True),
])
def test_speaker_keys_are_read(extra, count, labels):
    options = parse_request({**URL, **extra}, 100).options
    assert options.diarize and options.speakers == count
    assert options.subtitle.speaker_labels is labels


def test_no_diarize_by_default():
    options = parse_request(dict(URL), 100).options
    assert not options.diarize and options.speakers == SpeakerCount()


@pytest.mark.parametrize("extra,says", [
    ({"num_speakers": 2}, "num_speakers applies only with diarize: true"),
    ({"diarize": False, "min_speakers": 1, "max_speakers": 3},
     "min_speakers, max_speakers apply only with diarize: true"),
    ({"speaker_labels": "none"}, "speaker_labels applies only with diarize: true"),
    ({"diarize": True, "num_speakers": 0}, "num_speakers must be an integer from 1 to 20"),
    ({"diarize": True, "max_speakers": -1}, "max_speakers must be an integer from 1 to 20"),
    ({"diarize": True, "num_speakers": True}, "num_speakers must be an integer from 1 to 20"),
    ({"diarize": True, "num_speakers": 60}, "num_speakers must be an integer from 1 to 20"),
    ({"diarize": True, "word_timestamps": False}, "diarize needs word_timestamps"),
    ({"diarize": True, "num_speakers": 2.0}, "num_speakers should be int, not float"),
    ({"diarize": True, "min_speakers": "2"}, "min_speakers should be int, not str"),
    ({"diarize": True, "num_speakers": 2, "max_speakers": 3},
     "give either num_speakers or min_speakers/max_speakers, not both"),
    ({"diarize": True, "min_speakers": 4, "max_speakers": 3},
     "min_speakers must not exceed max_speakers"),
    ({"diarize": "true"}, "diarize should be bool, not str"),
    ({"diarize": True, "speaker_labels": "voice"}, "speaker_labels must be one of"),
    ({"diarize": True, "speakers": 2}, "unknown key 'speakers'"),
])
def test_bad_speaker_keys_are_invalid_input(extra, says):
    with pytest.raises(WorkerError) as err:
        parse_request({**URL, **extra}, 100)
    assert err.value.code is ErrorCode.INVALID_INPUT
    assert says in err.value.message


# ---- through the worker -------------------------------------------------------------------

# The tiny models say ENGLISH whatever the audio, its six words 0.24 s long every 0.48 s from
# 0 s: "Hello, world." ends at 0.72 s, "This" starts at 0.96 s.
CHANGE_SECONDS = 0.84


class LayoutTurns:
    """Turns from the test audio's known layout: SPEAKER_00 says "Hello, world.", SPEAKER_01
    the rest of the file. It stands in for the pyannote engine (diarize.Diarizer, built on
    another branch) only until that is merged, which replaces it here; the worker takes any
    object with `.diarize(samples, count)`. It records what it was called with."""

    last_count: SpeakerCount | None = None  # of any instance: the server's worker is inside

    def __init__(self) -> None:
        self.calls: list[tuple[float, SpeakerCount]] = []

    def diarize(self, samples: np.ndarray, count: SpeakerCount) -> list[Turn]:
        seconds = samples.shape[0] / 16000
        self.calls.append((seconds, count))
        LayoutTurns.last_count = count  # what the server's form fields arrived as
        return [Turn(0.0, CHANGE_SECONDS, "SPEAKER_00"),
                Turn(CHANGE_SECONDS, seconds, "SPEAKER_01")]


@pytest.fixture(scope="module")
def diarizing_worker(model_dirs, tmp_path_factory):
    settings = settings_for(model_dirs["english"], model_dirs["aligner"],
                            WORK_DIR=str(tmp_path_factory.mktemp("jobs")))
    source = LayoutTurns()
    engine = engine_for(model_dirs["english"], model_dirs["aligner"])
    return Worker(settings, engine, diarizer=source), Worker(settings, engine), source


@pytest.fixture(scope="module")
def audio_b64(tmp_path_factory) -> str:
    path = media.make_audio(tmp_path_factory.mktemp("audio") / "talk.mp3", 8.0)
    return base64.b64encode(path.read_bytes()).decode()


def test_diarized_job_through_the_worker(diarizing_worker, audio_b64):
    worker, _, source = diarizing_worker
    out = worker.handle({"id": "d1", "input": {
        "audio_base64": audio_b64, "diarize": True, "num_speakers": 2,
        "formats": ["srt", "vtt", "txt"]}})
    assert "error" not in out, out
    assert source.calls[-1][1] == SpeakerCount(num_speakers=2)
    assert source.calls[-1][0] == pytest.approx(8.0, abs=0.05)  # the whole file, decoded
    assert out["text"] == ENGLISH
    assert [w["word"] for w in out["words"]] == ENGLISH_WORDS
    for w in out["words"]:  # each word is the speaker of the turn it lies in
        assert w["speaker"] == ("SPEAKER_00" if w["end"] <= CHANGE_SECONDS else "SPEAKER_01")
    assert [w["speaker"] for w in out["words"]] == ["SPEAKER_00"] * 2 + ["SPEAKER_01"] * 4
    assert out["speakers"] == [
        {"speaker": "SPEAKER_00", "seconds": CHANGE_SECONDS},
        {"speaker": "SPEAKER_01", "seconds": pytest.approx(out["duration"] - CHANGE_SECONDS,
                                                           abs=0.002)}]
    assert [(s["text"], s["speaker"]) for s in out["segments"]] == [
        ("Hello, world.", "SPEAKER_00"), ("This is a test.", "SPEAKER_01")]
    cues = list(srt.parse(out["srt"]))
    assert [c.content.split(": ", 1)[0] for c in cues] == [s["speaker"] for s in out["segments"]]
    captions = webvtt.from_buffer(io.StringIO(out["vtt"])).captions
    assert [c.voice for c in captions] == [s["speaker"] for s in out["segments"]]
    assert out["txt"].splitlines()[0].startswith(out["segments"][0]["speaker"] + ": ")
    assert "diarize" in out["timings"]


def test_undiarized_job_on_a_diarizing_worker_is_unchanged(diarizing_worker, audio_b64):
    worker, _, source = diarizing_worker
    calls = len(source.calls)
    out = worker.handle({"id": "d2", "input": {"audio_base64": audio_b64,
                                               "formats": ["srt", "vtt", "txt"]}})
    assert len(source.calls) == calls
    assert "speakers" not in out and "diarize" not in out["timings"]
    assert all("speaker" not in w for w in out["words"])
    assert "SPEAKER_" not in out["srt"] + out["vtt"] + out["txt"]


def test_diarize_on_a_worker_without_a_diarizer_is_refused_before_any_download(
        diarizing_worker, tmp_path):
    _, plain, _ = diarizing_worker
    # Port 9 on loopback serves nothing: a download would fail with another code.
    out = plain.handle({"id": "d3", "input": {"audio_url": "http://127.0.0.1:9/a.mp3",
                                              "diarize": True}})
    assert out["error_code"] == ErrorCode.DIARIZATION_UNAVAILABLE.value
    assert out["error"].startswith("DIARIZATION_UNAVAILABLE: ")


def test_a_failing_diarizer_fails_the_job_with_engine_error(model_dirs, tmp_path, audio_b64):
    class Broken:  # a model fault, injected: the real engine's failures take this path
        def diarize(self, samples, count):
            raise RuntimeError("CUDA out of memory")

    settings = settings_for(model_dirs["english"], model_dirs["aligner"], WORK_DIR=str(tmp_path))
    worker = Worker(settings, engine_for(model_dirs["english"], model_dirs["aligner"]),
                    diarizer=Broken())
    out = worker.handle({"id": "d4", "input": {"audio_base64": audio_b64, "diarize": True}})
    assert out["error_code"] == ErrorCode.ENGINE_ERROR.value and "text" not in out
    assert "speaker diarization failed" in out["error"]  # not the transcription
    assert out["refresh_worker"] is True  # a GPU out of memory: the worker is replaced
    # The worker serves the next job.
    again = worker.handle({"id": "d5", "input": {"audio_base64": audio_b64}})
    assert again["text"] == ENGLISH



# ---- the OpenAI-compatible server ---------------------------------------------------------

@pytest.fixture(scope="module")
def diarizing_api(model_dirs, tmp_path_factory):
    """The server's app over real HTTP (uvicorn on loopback) with a worker that diarizes (the
    `LayoutTurns` stand-in until the pyannote engine is merged), spoken to with OpenAI's
    client."""
    import threading
    import time

    import openai
    import uvicorn

    from qwen_worker.api.http import ServerState, create_app, load_worker
    from worker_server import free_port

    settings = settings_for(model_dirs["english"], model_dirs["aligner"],
                            WORK_DIR=str(tmp_path_factory.mktemp("api-jobs")))
    state = ServerState(settings)

    def load(s):
        worker, tokenize = load_worker(s)
        return Worker(worker.settings, worker.engine, diarizer=LayoutTurns()), tokenize

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port,
                                           log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    state.start_loading(load).join(300)
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.05)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                        max_retries=0)
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def audio_file(tmp_path_factory):
    return media.make_audio(tmp_path_factory.mktemp("audio") / "talk.mp3", 8.0)


def test_diarized_json_has_openais_shape(diarizing_api, audio_file):
    with open(audio_file, "rb") as f:
        result = diarizing_api.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json",
            chunking_strategy="auto")
    body = result.model_dump()
    assert body["task"] == "transcribe" and body["text"] == ENGLISH
    assert body["duration"] == pytest.approx(8.0, abs=0.05)
    assert body["usage"] == {"type": "duration", "seconds": body["duration"]}
    segments = body["segments"]
    assert [s["id"] for s in segments] == [f"seg_{i}" for i in range(len(segments))]
    assert {s["type"] for s in segments} == {"transcript.text.segment"}
    assert " ".join(s["text"] for s in segments) == ENGLISH
    assert [(s["text"], s["speaker"]) for s in segments] == [
        ("Hello, world.", "SPEAKER_00"), ("This is a test.", "SPEAKER_01")]
    assert all(a["end"] <= b["start"] for a, b in zip(segments, segments[1:]))


def test_verbose_json_segments_and_words_carry_the_speaker_when_diarized(diarizing_api,
                                                                           audio_file):
    with open(audio_file, "rb") as f:
        result = diarizing_api.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json",
            timestamp_granularities=["word", "segment"], extra_body={"diarize": "true"})
    body = result.model_dump()
    assert {s["speaker"] for s in body["segments"]} == {"SPEAKER_00", "SPEAKER_01"}
    assert [w["speaker"] for w in body["words"]] == ["SPEAKER_00"] * 2 + ["SPEAKER_01"] * 4
    with open(audio_file, "rb") as f:
        plain = diarizing_api.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json").model_dump()
    assert all("speaker" not in s for s in plain["segments"])


def test_srt_from_the_server_names_speakers_and_counts_pass_through(diarizing_api, audio_file):
    with open(audio_file, "rb") as f:
        text = diarizing_api.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="vtt",
            extra_body={"diarize": "true", "min_speakers": "1", "max_speakers": "3"})
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    assert [c.voice for c in captions] == ["SPEAKER_00", "SPEAKER_01"]
    assert LayoutTurns.last_count == SpeakerCount(min_speakers=1, max_speakers=3)


@pytest.mark.parametrize("kwargs,param", [
    # OpenAI's own fields, as its client sends them ...
    ({"known_speaker_names": ["agent"],
      "known_speaker_references": ["data:audio/wav;base64,AAAA"]}, "known_speaker_names[]"),
    ({"chunking_strategy": "manual"}, "chunking_strategy"),
    # ... and ours.
    ({"extra_body": {"num_speakers": "two"}}, "num_speakers"),
    ({"extra_body": {"diarize": "maybe"}}, "diarize"),
])
def test_diarization_fields_we_cannot_honour_are_400(diarizing_api, audio_file, kwargs, param):
    import openai

    with open(audio_file, "rb") as f, pytest.raises(openai.BadRequestError) as exc_info:
        diarizing_api.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json",
            **kwargs)
    assert exc_info.value.body["param"] == param
    assert exc_info.value.body["code"] == "INVALID_INPUT"


def test_server_vad_chunking_is_refused(diarizing_api, audio_file):
    import openai

    with open(audio_file, "rb") as f, pytest.raises(openai.BadRequestError) as exc_info:
        diarizing_api.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json",
            chunking_strategy={"type": "server_vad", "threshold": 0.5})
    assert exc_info.value.body["param"] == "chunking_strategy"
    assert "auto" in exc_info.value.body["message"]


def test_bad_counts_reach_the_worker_check_and_are_400(diarizing_api, audio_file):
    import openai

    with open(audio_file, "rb") as f, pytest.raises(openai.BadRequestError) as exc_info:
        diarizing_api.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="diarized_json",
            extra_body={"min_speakers": "3", "max_speakers": "2"})
    assert exc_info.value.body["code"] == "INVALID_INPUT"
    assert "min_speakers must not exceed max_speakers" in exc_info.value.body["message"]


@pytest.mark.parametrize("fields,param", [
    ({"response_format": ["diarized_json"], "diarize": ["false"]}, "diarize"),
    ({"response_format": ["json"], "diarize": ["true"]}, "response_format"),
    ({"response_format": ["text"], "diarize": ["1"]}, "response_format"),
])
def test_diarize_with_a_format_that_contradicts_it_is_refused(fields, param):
    """diarize=false cannot give diarized_json; json and text have no place for speakers (the
    diarizer's minutes would be thrown away)."""
    from qwen_worker.api.openai import FormError, parse_form

    with pytest.raises(FormError) as err:
        parse_form(fields, has_file=True)
    assert err.value.param == param and err.value.code is ErrorCode.INVALID_INPUT


def test_diarized_json_form_maps_onto_a_diarizing_job():
    from qwen_worker.api.openai import job_input, parse_form

    form = parse_form({"response_format": ["diarized_json"], "chunking_strategy": ["auto"],
                       "min_speakers": ["2"], "max_speakers": ["4"]}, has_file=True)
    assert job_input(form) == {"context": "", "word_timestamps": True, "diarize": True,
                               "min_speakers": 2, "max_speakers": 4}
    plain = job_input(parse_form({"response_format": ["json"]}, has_file=True))
    assert "diarize" not in plain and plain["word_timestamps"] is False
