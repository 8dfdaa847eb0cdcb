"""Transcription with the real tiny.en model (CTranslate2 on the CPU, int8)."""

from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from archivox.errors import ConfigError, ModelNotFoundError
from archivox.models.whisper import load_whisper, resolve_model_path
from archivox.tasks.transcribe import TranscribeOptions, Transcript, to_whisper_input, transcribe_item
from signals import RATE_HZ, white_noise, word_error_rate

SENTENCE = "The old recording was restored and then transcribed by the archive team."


def _write(path: Path, audio: np.ndarray, rate_hz: int = RATE_HZ) -> Path:
    """audio: (channels, samples)."""
    subtype = "PCM_24" if path.suffix == ".flac" else "FLOAT"
    sf.write(str(path), np.asarray(audio, dtype=np.float32).T, rate_hz, subtype=subtype)
    return path


def _tts(text: str, rate_hz: int = RATE_HZ, language: str = "en") -> np.ndarray:
    tts = pytest.importorskip("archivox.tts")
    return tts.synthesize(text, language=language, rate_hz=rate_hz)


def test_model_is_loaded_once_and_identified():
    a = load_whisper("tiny.en", device="cpu")
    b = load_whisper("tiny.en", device="cpu")
    assert a is b
    assert a.device == "cpu" and a.compute_type == "int8"
    assert not a.multilingual
    assert len(a.sha256) == 64 and a.path.is_dir()
    # The same folder named by path shares the loaded model's weights identity.
    c = load_whisper(str(a.path), device="cpu")
    assert c.sha256 == a.sha256 and c.name == str(a.path)


def test_unknown_model_name_says_what_to_install_or_give():
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("large-v3")
    message = str(err.value)
    assert "large-v3" in message and "pip install" in message and "path" in message
    assert "never downloads" in message


def test_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model_path(str(tmp_path))


def test_silence_and_hiss_give_no_text(tmp_path):
    audio = np.zeros((2, 6 * RATE_HZ), dtype=np.float32)
    audio[:, 3 * RATE_HZ:] = white_noise(3.0, level_db=-70.0, seed=3)
    tr = transcribe_item({"restored": _write(tmp_path / "quiet.flac", audio)}, TranscribeOptions(device="cpu"))
    assert tr.text() == ""
    assert tr.segments == []
    assert tr.duration_s == pytest.approx(6.0, abs=0.01)


def test_stereo_48k_speech_is_transcribed_with_word_times(tmp_path):
    speech = _tts(SENTENCE)  # (samples,)
    lead_s = 1.0
    audio = np.zeros((2, int((lead_s + 1.0) * RATE_HZ) + speech.size), dtype=np.float32)
    audio[:, int(lead_s * RATE_HZ): int(lead_s * RATE_HZ) + speech.size] = 0.5 * speech
    tr = transcribe_item({"restored": _write(tmp_path / "item.wav", audio)}, TranscribeOptions(device="cpu"))
    assert word_error_rate(tr.text(), SENTENCE) <= 0.25, tr.text()
    assert tr.language == "en" and tr.model_name == "tiny.en"
    words = [w for s in tr.segments for w in s.words]
    assert len(words) >= 8
    # Word times are in the file's time base (the VAD cut must be mapped back).
    assert words[0].start_s == pytest.approx(lead_s, abs=0.4)
    assert all(b.start_s >= a.start_s for a, b in zip(words, words[1:]))
    assert words[-1].end_s <= tr.duration_s + 0.05
    back = Transcript.from_dict(tr.to_dict())
    assert back == tr


def test_english_only_model_refuses_a_german_item_clearly(tmp_path):
    path = _write(tmp_path / "x.wav", np.zeros((1, RATE_HZ), dtype=np.float32))
    with pytest.raises(ConfigError, match="English-only.*'de'.*base"):
        transcribe_item({"restored": path}, TranscribeOptions(device="cpu", on_language_mismatch="error"), language="de")


def test_resampling_keeps_a_tone_at_its_frequency():
    t = np.arange(44_100) / 44_100
    x = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
    y = to_whisper_input(x, 44_100)
    assert y.shape == (16_000,) and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) * 16_000 / y.size == pytest.approx(440, abs=2)


@pytest.mark.corpus
def test_corpus_read_speech_is_transcribed(corpus, tmp_path):
    rows = [r for r in csv.DictReader(open(corpus / "manifest.csv")) if r["path"].startswith("speech_clean/cathy_")]
    errors = []
    for row in rows[:4]:
        tr = transcribe_item({"restored": corpus / row["path"]}, TranscribeOptions(device="cpu"))
        errors.append(word_error_rate(tr.text(), row["transcript"]))
    # tiny.en reads this clear studio speech with a few name errors at most.
    assert float(np.mean(errors)) <= 0.2, errors


def test_manifest_language_codes_are_normalised():
    from archivox.errors import BadInputError
    from archivox.tasks.transcribe import whisper_language

    assert whisper_language("en-GB") == "en"
    assert whisper_language("DEU") == "de" and whisper_language("ger") == "de"
    assert whisper_language("") is None and whisper_language(None) is None
    with pytest.raises(BadInputError, match="'klingon'.*ISO 639-1"):
        whisper_language("klingon")


def test_batched_decoding(tmp_path):
    speech = _tts(SENTENCE, rate_hz=16_000)
    audio = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(8000, np.float32)]).astype(np.float32)
    batched = transcribe_item({"restored": _write(tmp_path / "b.wav", audio[None, :], 16_000)},
                              TranscribeOptions(device="cpu", batch_size=4))
    assert word_error_rate(batched.text(), SENTENCE) <= 0.25, batched.text()


SECOND = "Each reel was copied to a new drive before anyone played it again."


def test_span_coverage_counts_overlapping_spans_once():
    from archivox.tasks.transcribe import SpanCoverage

    coverage = SpanCoverage([(4.0, 6.0), (0.0, 1.0), (0.5, 2.0), (9.0, 9.0)])
    assert coverage.seconds_within(0.0, 10.0) == pytest.approx(4.0)  # [0, 2) and [4, 6)
    assert coverage.seconds_within(1.5, 4.5) == pytest.approx(1.0)
    assert coverage.seconds_within(2.0, 4.0) == 0.0
    assert coverage.seconds_within(5.0, 5.5) == pytest.approx(0.5)
    assert SpanCoverage([]).seconds_within(0.0, 1.0) == 0.0
    # Thousands of segments against thousands of regions stay fast (was quadratic); each window
    # holds 1 s of two spans, the last window only of one.
    many = SpanCoverage((i * 3.0, i * 3.0 + 2.0) for i in range(20_000))
    assert sum(many.seconds_within(i * 3.0 + 1.0, i * 3.0 + 4.0) for i in range(20_000)) == pytest.approx(39_999.0)


def test_speech_a_decode_skipped_is_decoded_again_at_its_time(tmp_path):
    """Whisper can jump over whole sentences; the VAD stretch left uncovered is decoded on its own."""
    from archivox.tasks.hallucination import speech_regions
    from archivox.tasks.transcribe import _fill_skipped

    first, second = _tts(SENTENCE, rate_hz=16_000), _tts(SECOND, rate_hz=16_000)
    gap = np.zeros(16_000, np.float32)
    audio = np.concatenate([gap, first, gap, second, gap]).astype(np.float32)
    second_start_s = (2 * gap.size + first.size) / 16_000
    path = _write(tmp_path / "two.wav", audio[None, :], 16_000)
    options = TranscribeOptions(device="cpu", asr_input="restored")
    whole = transcribe_item({"restored": path}, options)
    # An ordinary decode covers its speech: nothing is decoded twice.
    assert whole.evidence["skipped_speech_filled"] == 0
    assert word_error_rate(whole.text(), f"{SENTENCE} {SECOND}") <= 0.25, whole.text()

    # The decode as it looks when Whisper jumped over the second sentence.
    kept = [s for s in whole.segments if s.end_s < second_start_s]
    assert kept and len(kept) < len(whole.segments)
    handle = load_whisper("tiny.en", device="cpu")
    runs = [(0.0, audio.size / 16_000, "en")]
    segments, filled = _fill_skipped(handle, audio, kept, speech_regions(audio), options, runs)
    assert filled == 1
    added = segments[len(kept):]
    assert word_error_rate(" ".join(s.text for s in added), SECOND) <= 0.25, [s.text for s in added]
    assert added[0].start_s == pytest.approx(second_start_s, abs=0.5)
    assert all(w.start_s >= second_start_s - 0.5 for s in added for w in s.words)
    assert segments[: len(kept)] == kept


def test_quiet_cuts_fall_in_pauses_and_cover_the_span():
    from archivox.tasks.transcribe import WHISPER_RATE_HZ, quiet_cuts

    rate = WHISPER_RATE_HZ
    audio = 0.3 * np.random.default_rng(0).standard_normal(100 * rate).astype(np.float32)
    for pause_s in (28.0, 61.0):  # 0.3 s pauses where the cuts should go
        audio[int(pause_s * rate) : int((pause_s + 0.3) * rate)] = 0.0
    spans = quiet_cuts(audio, 0.0, 100.0, piece_s=40.0)
    assert spans[0][0] == 0.0 and spans[-1][1] == 100.0
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(b - a <= 40.0 for a, b in spans)
    assert [round(a[1], 1) for a in spans[:-1]] == [pytest.approx(28.15, abs=0.1), pytest.approx(61.15, abs=0.1)]
    assert quiet_cuts(audio, 10.0, 30.0, piece_s=40.0) == [(10.0, 30.0)]
    with pytest.raises(ConfigError, match=r"piece_s=5 is out of range"):
        TranscribeOptions(piece_s=5)


@pytest.mark.slow
def test_a_long_item_is_decoded_in_pieces_with_times_in_the_file(tmp_path):
    sentences = [SENTENCE, "Every tape in the collection was checked twice.", "The search finds words by their time."]
    parts, onsets_s, at = [], [], 0
    for i in range(14):
        speech = 0.5 * _tts(sentences[i % 3])
        if i % 3 == 2:
            onsets_s.append(at / RATE_HZ)  # "The search finds ..." starts here
        parts += [speech, np.zeros(int(1.5 * RATE_HZ), np.float32)]
        at += speech.size + int(1.5 * RATE_HZ)
    audio = np.concatenate(parts)[np.newaxis, :]
    path = _write(tmp_path / "long.wav", audio)
    assert audio.shape[1] / RATE_HZ > 60.0  # so that 30 s pieces make at least two cuts
    reference = " ".join(sentences[i % 3] for i in range(14))
    pieces = transcribe_item({"restored": path}, TranscribeOptions(device="cpu", piece_s=30.0))
    assert word_error_rate(pieces.text(), reference) <= 0.5, pieces.text()  # tiny.en on synthetic speech
    # Every piece's times are mapped back to the file: the word "search" is heard
    # where each "The search finds ..." sentence was placed, before and after the cuts.
    heard = [w.start_s for s in pieces.segments for w in s.words if "search" in w.word.lower()]
    assert len(heard) >= len(onsets_s) - 1
    assert all(min(abs(t - o) for o in onsets_s) < 1.5 for t in heard), (heard, onsets_s)
    assert pieces.segments[-1].end_s > 0.9 * audio.shape[1] / RATE_HZ


def test_a_quiet_transfer_is_raised_before_whisper_hears_it(tmp_path):
    from archivox.tasks.dehum import active_level_db
    from archivox.tasks.transcribe import QUIET_INPUT_TARGET_DBFS, transcribe_candidates

    speech = _tts(SENTENCE, rate_hz=16_000)
    x = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(8000, np.float32)])
    x = x + white_noise(x.size / 16_000, active_level_db(speech[None], 16_000) - 30.0, seed=1, rate_hz=16_000)[0]

    def at(level_dbfs: float) -> np.ndarray:
        return x * np.float32(10 ** ((level_dbfs - active_level_db(x[None], 16_000)) / 20))

    # One decode each: three speeds voted would compare the vote, and a decode
    # that falls back to sampling reads differently from run to run.
    options = TranscribeOptions(device="cpu", asr_input="restored", stretch_factors=(1.0,))
    nominal, _ = transcribe_candidates({"restored": at(QUIET_INPUT_TARGET_DBFS)}, options)
    # A transfer 20 dB under the corpus level.
    lifted, _ = transcribe_candidates({"restored": at(-45.0)}, options)
    as_given, _ = transcribe_candidates({"restored": at(-45.0)}, replace(options, quiet_input_dbfs=None))
    assert lifted.evidence["input_gain_db"] == pytest.approx(QUIET_INPUT_TARGET_DBFS + 45.0, abs=0.1)
    assert "input_gain_db" not in as_given.evidence and "input_gain_db" not in nominal.evidence
    assert lifted.text() == nominal.text()
    assert word_error_rate(lifted.text(), SENTENCE) <= 0.25, lifted.text()
    # What the lift is for: at its own level tiny.en misreads it.
    assert word_error_rate(as_given.text(), SENTENCE) > word_error_rate(lifted.text(), SENTENCE), as_given.text()


def test_only_quiet_audio_is_lifted():
    from archivox.tasks.dehum import active_level_db
    from archivox.tasks.transcribe import QUIET_INPUT_TARGET_DBFS, lift_quiet_input

    tone = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000).astype(np.float32)
    for level_dbfs, expected_gain_db in ((-20.0, 0.0), (-29.9, 0.0), (-40.0, QUIET_INPUT_TARGET_DBFS + 40.0)):
        audio = tone * np.float32(10 ** (level_dbfs / 20) * np.sqrt(2))
        out, gain_db = lift_quiet_input(audio, -30.0)
        assert gain_db == pytest.approx(expected_gain_db, abs=0.05)
        assert active_level_db(out[None], 16_000) == pytest.approx(max(level_dbfs, QUIET_INPUT_TARGET_DBFS)
                                                                  if gain_db else level_dbfs, abs=0.05)
    assert lift_quiet_input(np.zeros(16_000, np.float32), -30.0)[1] == 0.0
    assert lift_quiet_input(tone * np.float32(1e-4), None)[1] == 0.0
    # Hiss at -100 dBFS (a blank tape) is not lifted to speech level.
    assert lift_quiet_input(tone * np.float32(1e-5), -30.0)[1] == 50.0
    with pytest.raises(ConfigError, match="quiet_input_dbfs"):
        TranscribeOptions(quiet_input_dbfs=-10.0)


def test_without_the_fallback_a_repetitive_window_is_decoded_once(caplog):
    # Speech that really repeats reads as a decoding loop to faster-whisper's
    # compression-ratio rule, which then decodes the window again at five
    # sampling temperatures.
    speech = _tts(" ".join([SENTENCE] * 4), rate_hz=16_000)
    caplog.set_level(logging.DEBUG, logger="faster_whisper")
    options = TranscribeOptions(device="cpu", asr_input="restored", stretch_factors=(1.0,), temperature_fallback=False)
    transcript = transcribe_item({"restored": speech}, options)
    attempts = [r.getMessage() for r in caplog.records if "threshold is not met with temperature" in r.getMessage()]
    assert attempts and all("temperature 0.0 " in m for m in attempts), attempts
    assert word_error_rate(transcript.text(), " ".join([SENTENCE] * 4)) <= 0.25, transcript.text()
    assert TranscribeOptions(temperature_fallback=False) != TranscribeOptions()
