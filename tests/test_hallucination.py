"""Hallucination flags: loops, text in silence or noise, script flips; real VAD, real tiny.en."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from archivox.errors import ConfigError
from archivox.tasks.hallucination import FlagOptions, flag_segments, repeated_run, script_share, speech_overlap
from archivox.tasks.transcribe import Segment, TranscribeOptions, Word, to_whisper_input, transcribe_candidates
from signals import RATE_HZ, clicks, hum, white_noise

SENTENCES = [
    "The committee met on a cold morning in March.",
    "Nobody remembered where the old key had been kept.",
    "She wrote the names of the villages in a small notebook.",
    "We walked along the river until the road turned north.",
    "The recording was made in the back room of the shop.",
    "His father worked at the mill for forty years.",
    "They sang the same song at every wedding.",
    "The school closed when the last family moved away.",
    "A letter arrived from the city in the spring.",
    "Everyone agreed that the winter had been hard.",
    "The bridge was rebuilt after the flood.",
]
# Stock sentences Whisper is known to invent over silence and noise.
HALLUCINATIONS = [
    "Thank you for watching.", "Thank you.", "Please subscribe to my channel.", "Bye.",
    "I'll see you next time.", "Thanks for watching!", "So, let's get started.", "Okay.",
    "Subtitles by the Amara.org community", "You",
]


def _segment(start_s: float, end_s: float, text: str, **kw) -> Segment:
    words = text.split()
    step = (end_s - start_s) / max(len(words), 1)
    ws = [Word(start_s + i * step, start_s + (i + 1) * step, " " + w, 0.8) for i, w in enumerate(words)]
    defaults = dict(avg_logprob=-0.3, no_speech_prob=0.05, compression_ratio=1.1)
    defaults.update(kw)
    return Segment(0, start_s, end_s, text, words=ws, **defaults)


def test_repeated_run_finds_loops_and_spares_prose():
    assert repeated_run("thank you thank you thank you thank you".split()) == 4
    assert repeated_run("the the the".split()) == 3
    assert repeated_run("i went to the shop and then i went home".split()) == 1
    assert repeated_run("a b c d e f a b c d e f a b c d e f".split()) == 3


def test_flags_from_whisper_statistics():
    segs = [
        _segment(0, 2, "A perfectly ordinary sentence."),
        _segment(2, 4, "Yes yes yes yes yes.", compression_ratio=3.2),
        _segment(4, 6, "Mumbled something.", avg_logprob=-1.4, no_speech_prob=0.8),
        _segment(6, 8, "Дом стоял на холме."),
    ]
    flag_segments(segs, "en", regions=[(0.0, 10.0)])
    assert segs[0].flags == []
    assert set(segs[1].flags) == {"repetition", "compression_ratio"}
    assert set(segs[2].flags) == {"low_logprob", "no_speech"}
    assert segs[3].flags == ["language_flip"]


def test_segment_repeating_the_previous_one_is_flagged():
    segs = [_segment(0, 2, "We will now take a short break."), _segment(2, 4, "We will now take a short break.")]
    flag_segments(segs, "en", regions=[(0.0, 4.0)])
    assert segs[0].flags == [] and segs[1].flags == ["repetition"]


def test_text_squeezed_into_a_moment_is_flagged_too_fast():
    # As decoded from a real noisy corpus item (bench/transcribe.py, noise 5 dB+hum+clicks):
    # a loop of 22 words in the last 0.68 s, with a compression ratio under Whisper's threshold.
    loop = "And then I'm going to take a look at what I'm going to do, and I'm going to take a look at what I'm going to do."
    segs = [_segment(0.05, 6.53, "I am sure I can sleep, and I've had several moments since when I seem to remember."),
            _segment(8.59, 9.27, loop, compression_ratio=1.84),
            _segment(9.5, 9.8, "Yes, sir.")]
    flag_segments(segs, "en", regions=[(0.0, 10.0)])
    assert [s.flags for s in segs] == [[], ["too_fast"], []]


def test_script_share_by_language():
    assert script_share("Hello there", "en") == 1.0
    assert script_share("Привет", "en") == 0.0
    assert script_share("Привет", "ru") == 1.0
    assert script_share("こんにちは世界", "ja") == 1.0
    assert script_share("1 2 3 !", "en") == 1.0  # no letters: nothing to judge


def test_speech_overlap_uses_word_times():
    seg = _segment(0.0, 4.0, "one two three four")  # words at 0-1, 1-2, 2-3, 3-4 s
    assert speech_overlap(seg, [(0.0, 2.0)]) == pytest.approx(0.5)
    assert speech_overlap(seg, []) == 0.0


def test_bad_threshold_is_refused():
    with pytest.raises(ConfigError, match=r"speech_overlap_min=1.5.*\[0.0, 1.0\]"):
        FlagOptions(speech_overlap_min=1.5)


def _gap(kind: int, seconds: float, seed: int) -> np.ndarray:
    """Non-speech of several kinds: (samples,) at 48 kHz."""
    n = int(seconds * RATE_HZ)
    if kind == 0:
        return np.zeros(n, np.float32)
    if kind == 1:
        return white_noise(seconds, level_db=-35.0, seed=seed)[0]
    if kind == 2:
        return hum(50.0, seconds, level_db=-30.0)[0] + white_noise(seconds, level_db=-50.0, seed=seed)[0]
    return clicks(seconds, 6.0, amplitude=0.3, seed=seed)[0][0] + white_noise(seconds, -55.0, seed=seed)[0]


def test_planted_text_in_silence_and_noise_is_caught(tmp_path):
    """Ten stretches of silence or noise, each given an invented sentence; at least 9 must be flagged."""
    tts = pytest.importorskip("archivox.tts")
    pieces, gaps, t = [], [], 0.0
    for i, sentence in enumerate(SENTENCES):
        speech = 0.3 * tts.synthesize(sentence, rate_hz=RATE_HZ)
        pieces.append(speech)
        t += speech.size / RATE_HZ
        if i < len(SENTENCES) - 1:
            gap = _gap(i % 4, 5.0, seed=i)
            pieces.append(gap)
            gaps.append((t, t + gap.size / RATE_HZ))
            t += gap.size / RATE_HZ
    audio16 = to_whisper_input(np.concatenate(pieces), RATE_HZ)
    # Real decoding without the VAD filter, so that the model hears the gaps too.
    options = TranscribeOptions(device="cpu", vad=False, asr_input="restored")
    transcript, _ = transcribe_candidates({"restored": audio16}, options)
    real = transcript.segments
    assert len(real) >= 8
    # Plant one invented sentence inside each gap, with Whisper statistics that look
    # confident, so that only the audio can tell it is invented.
    planted = [_segment(s + 1.0, e - 1.0, text) for (s, e), text in zip(gaps, HALLUCINATIONS)]
    segments = sorted(real + planted, key=lambda s: s.start_s)
    flag_segments(segments, "en", audio16)
    caught = sum(1 for s in planted if "in_silence" in s.flags)
    false = [s for s in real if s.flags and not any(min(s.end_s, e) - max(s.start_s, b) > 0.5 * (s.end_s - s.start_s) for b, e in gaps)]
    assert caught >= 9, [(s.text, s.flags) for s in planted]
    assert len(false) <= 1, [(s.text, s.flags, s.start_s) for s in false]


def test_window_whisper_would_skip_as_silence_is_kept_and_flagged():
    """faster-whisper drops a window with a high no-speech probability and uncertain text; archivox keeps it, flagged.

    34 s of hiss after a sentence puts a window of its own over hiss alone,
    where tiny.en's text has a no-speech probability near 1 and a mean
    log-probability under -1: the window faster-whisper's rule would skip.
    """
    tts = pytest.importorskip("archivox.tts")
    speech = 0.3 * tts.synthesize("The archive keeps every tape it is given.", rate_hz=RATE_HZ)
    audio16 = to_whisper_input(np.concatenate([speech, white_noise(34.0, level_db=-35.0, seed=1)[0]]), RATE_HZ)
    options = TranscribeOptions(device="cpu", vad=False, asr_input="restored")
    transcript, _ = transcribe_candidates({"restored": audio16}, options)
    speech_end_s = speech.size / RATE_HZ
    in_hiss = [s for s in transcript.segments if s.start_s > speech_end_s + 1.0]
    assert in_hiss, [(s.start_s, s.text) for s in transcript.segments]
    assert all({"no_speech", "in_silence"} & set(s.flags) for s in in_hiss), [(s.text, s.flags) for s in in_hiss]
    # faster-whisper's default, kept as an option: the window is skipped.
    skipped, _ = transcribe_candidates({"restored": audio16}, dataclasses.replace(options, skip_no_speech=True))
    assert skipped.segments and not [s for s in skipped.segments if s.start_s > speech_end_s + 1.0]
