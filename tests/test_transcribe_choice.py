"""Choosing the ASR view: observation mixing and the evidence-based choice between candidates."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import istft, stft

from archivox.errors import ConfigError
from archivox.tasks.transcribe import (
    Segment, TranscribeOptions, Transcript, asr_views, choose, combine, gtcrn_for_asr, observation_mix, score,
    transcribe_candidates, transcribe_item,
)
from signals import si_sdr_db, white_noise, word_error_rate

TEXT = ("The old recording was restored and then transcribed by the archive team. "
        "They worked through the night to finish it.")


def _t(segments, name="x") -> Transcript:
    return Transcript(segments, "en", 1.0, 10.0, "tiny.en", "0" * 64)


def _s(start, end, text, logprob, flags=()):
    return Segment(0, start, end, text, logprob, 0.05, 1.2, flags=list(flags))


def test_score_prefers_confident_text_and_punishes_flagged_text():
    confident = _t([_s(0, 4, "a clear sentence", -0.2)])
    unsure = _t([_s(0, 4, "a clear sentence", -0.9)])
    looping = _t([_s(0, 4, "the the the the", -0.1, ["repetition"])])
    empty = _t([])
    assert score(confident) > score(unsure) > score(empty) > score(looping)


def test_choose_records_winner_and_evidence():
    results = {
        "mix": _t([_s(0, 3, "we walked to the river", -0.25), _s(3, 5, "and back", -0.3)]),
        "pre_denoise": _t([_s(0, 3, "we walked to the liver", -0.6), _s(3, 5, "Thank you.", -0.2, ["in_silence"])]),
    }
    chosen = choose(results)
    assert chosen.candidate == "mix" and chosen is results["mix"]
    ev = chosen.evidence
    assert set(ev["scores"]) == {"mix", "pre_denoise"} and ev["scores"]["mix"] > ev["scores"]["pre_denoise"]
    assert ev["candidates"]["pre_denoise"]["flagged_segments"] == 1
    assert ev["agreement_with_chosen"]["pre_denoise"] == pytest.approx(1 - 3 / 7, abs=1e-3)  # river/liver, and back/thank you


def test_observation_mix_undoes_gain_and_lag():
    x = white_noise(4.0, level_db=-20.0, seed=4, rate_hz=16_000)[0]
    shifted = 0.1 * np.roll(x, 160)  # the restored file: 20 dB quieter and 10 ms late
    shifted[:160] = 0.0
    only_denoised = observation_mix(shifted, x, 0.0)
    assert si_sdr_db(only_denoised, x) > 20.0  # all but the 10 ms the lag cut off
    assert 20 * np.log10(np.std(only_denoised) / np.std(x)) == pytest.approx(0.0, abs=0.2)
    half = observation_mix(shifted, x, 0.5)
    assert si_sdr_db(half, x) > 20.0


def test_options_are_validated():
    with pytest.raises(ConfigError, match="mix_fraction=1.5"):
        TranscribeOptions(mix_fraction=1.5)
    with pytest.raises(ConfigError, match="asr_input='louder'.*auto"):
        TranscribeOptions(asr_input="louder")
    with pytest.raises(ConfigError, match="candidates"):
        TranscribeOptions(candidates=("mix", "nonsense"))


def _speech_16k() -> np.ndarray:
    tts = pytest.importorskip("archivox.tts")
    x = 0.5 * tts.synthesize(TEXT, rate_hz=16_000).astype(np.float32)
    pad = np.zeros(8000, np.float32)
    return np.concatenate([pad, x, pad])


def _over_suppressed(noisy: np.ndarray, keep_percent: float = 2.0) -> np.ndarray:
    """A denoiser gone too far: only the strongest STFT bins survive (musical noise, lost consonants)."""
    _, _, z = stft(noisy, 16_000, nperseg=512)
    mag = np.abs(z)
    _, y = istft(z * (mag > np.percentile(mag, 100 - keep_percent)), 16_000, nperseg=512)
    return (0.3 * y[: noisy.size]).astype(np.float32)  # and quieter, as after a loudness stage


@pytest.mark.slow
def test_auto_policy_avoids_a_damaging_denoiser(tmp_path):
    """Real decoding of three views; the choice must not be the view the denoiser damaged."""
    clean = _speech_16k()
    noisy = clean + white_noise(clean.size / 16_000, level_db=-42.0, seed=1, rate_hz=16_000)[0]
    restored = _over_suppressed(noisy)
    files = {}
    for name, audio in (("pre_denoise", noisy), ("restored", restored), ("original", noisy)):
        files[name] = tmp_path / f"{name}.wav"
        sf.write(str(files[name]), audio, 16_000, subtype="FLOAT")
    options = TranscribeOptions(device="cpu", candidates=("mix", "pre_denoise", "restored"), stretch_factors=(1.0,),
                                combine="choose")
    chosen, results = transcribe_candidates(files, options)
    errors = {name: word_error_rate(t.text(), TEXT) for name, t in results.items()}
    assert errors["restored"] >= 0.6, errors  # the setup really hurts recognition
    assert chosen.candidate != "restored"
    assert errors[chosen.candidate] <= 0.4, errors
    assert set(chosen.evidence["scores"]) == {"mix", "pre_denoise", "restored"}
    # Voting the same three decodes: the damaged one is outvoted.
    voted = combine({n: Transcript.from_dict(t.to_dict()) for n, t in results.items()}, TranscribeOptions())
    assert voted.candidate == "vote" and word_error_rate(voted.text(), TEXT) <= 0.4, voted.text()

    # Forcing a view decodes only that view.
    forced = transcribe_item(files, TranscribeOptions(device="cpu", asr_input="restored", stretch_factors=(1.0,)))
    assert forced.candidate == "restored" and list(forced.evidence["scores"]) == ["restored"]


def test_item_without_denoise_stage_uses_restored(tmp_path):
    path = tmp_path / "r.wav"
    sf.write(str(path), _speech_16k(), 16_000, subtype="FLOAT")
    tr = transcribe_item({"restored": path}, TranscribeOptions(device="cpu"))
    # The restored view at each of the three default speeds, voted.
    assert tr.candidate == "vote" and list(tr.evidence["scores"]) == ["restored", "restored@1.05", "restored@0.95"]
    assert word_error_rate(tr.text(), TEXT) <= 0.3


def test_three_candidates_lean_towards_the_shared_reading():
    results = {
        "mix": _t([_s(0, 3, "we walked down to the river", -0.40)]),
        "pre_denoise": _t([_s(0, 3, "we walked down to the river", -0.45)]),
        # The most confident, but alone in what it heard.
        "restored": _t([_s(0, 3, "she walked town to a liver", -0.30)]),
    }
    chosen = choose(results)
    assert chosen.candidate == "mix"
    assert chosen.evidence["mean_agreement"]["restored"] < chosen.evidence["mean_agreement"]["mix"]
    # Without the agreement term, confidence alone would have picked the odd one out.
    assert choose({k: Transcript.from_dict(v.to_dict()) for k, v in results.items()}, agreement_weight=0.0).candidate == "restored"


@pytest.mark.slow
def test_denoised_view_is_made_from_pre_denoise_unless_the_item_has_one(tmp_path):
    """The default policy decodes the denoiser's output before EQ and loudness, made here from the pre-denoise file."""
    tts = pytest.importorskip("archivox.tts")
    speech = 0.5 * tts.synthesize(TEXT, rate_hz=48_000).astype(np.float32)
    pad = np.zeros(48_000, np.float32)  # 1 s of noise alone before and after the speech
    clean = np.concatenate([pad, speech, pad])
    noisy = clean + white_noise(clean.size / 48_000, level_db=-35.0, seed=3, rate_hz=48_000)[0]
    files = {"pre_denoise": tmp_path / "pre_denoise.wav", "restored": tmp_path / "restored.wav"}
    sf.write(str(files["pre_denoise"]), np.stack([noisy, noisy], axis=1), 48_000, subtype="FLOAT")  # stereo, 48 kHz
    sf.write(str(files["restored"]), 0.3 * clean, 48_000, subtype="FLOAT")

    options = TranscribeOptions(device="cpu")
    assert options.candidates[0] == "denoised"
    views = asr_views(files, replace(options, candidates=(*options.candidates, "pre_denoise")))
    assert list(views) == [*options.candidates, "pre_denoise"]
    pre, den = views["pre_denoise"], views["denoised"]
    assert den.shape == pre.shape and den.dtype == np.float32
    lead = slice(1600, 14_400)  # 0.1-0.9 s: noise only

    def level_db(x):
        return 10 * np.log10(np.mean(x.astype(np.float64) ** 2))

    # The stage's default wet mix keeps a quarter of its input: about 12 dB less noise at most.
    assert 6.0 <= level_db(pre[lead]) - level_db(den[lead]) <= 13.0
    # Speech keeps its level (no loudness stage in this view).
    body = slice(20_000, pre.size - 20_000)
    assert abs(level_db(den[body]) - level_db(pre[body])) < 1.5

    # An item whose pipeline wrote the denoised audio is not denoised again.
    given = {**files, "denoised": tmp_path / "denoised.wav"}
    sf.write(str(given["denoised"]), 0.5 * noisy, 48_000, subtype="FLOAT")
    assert np.allclose(asr_views(given, options)["denoised"], 0.5 * views["pre_denoise"], atol=1e-4)

    # Decoded end to end: every view reads the text, and the choice is recorded.
    chosen, results = transcribe_candidates(files, options)
    assert list(results) == [v if f == 1.0 else f"{v}@{f:g}" for v, factors in options.decodes().items()
                             for f in factors]
    assert len(results) == 13  # three views at three speeds, the DeepFilterNet3 views at two more
    assert chosen.candidate == "vote" and list(chosen.evidence["scores"]) == list(results)
    assert word_error_rate(chosen.text(), TEXT) <= 0.3, chosen.text()


def test_a_file_two_views_read_in_a_row_is_read_once(tmp_path, monkeypatch):
    import archivox.tasks.transcribe as transcribe

    files = {}
    for i, name in enumerate(("restored", "pre_denoise", "denoised")):
        files[name] = tmp_path / f"{name}.wav"
        sf.write(str(files[name]), white_noise(2.0, level_db=-30.0, seed=i, rate_hz=16_000)[0], 16_000)
    reads: list[str] = []
    real = transcribe.load_audio_16k
    monkeypatch.setattr(transcribe, "load_audio_16k", lambda path: reads.append(Path(path).stem) or real(path))

    # The default order: the mix, then the GTCRN view, which reads the pre-denoise file again.
    views = asr_views(files, TranscribeOptions())
    assert list(views) == ["denoised", "mix", "gtcrn"]
    assert sorted(reads) == ["denoised", "pre_denoise", "restored"]
    expected_mix = observation_mix(real(files["restored"]), real(files["pre_denoise"]), 0.3)
    assert np.allclose(views["mix"], expected_mix)
    assert np.allclose(views["gtcrn"], gtcrn_for_asr(real(files["pre_denoise"])))

    # A view in between: the file is let go and read again, so no two files wait through a decode.
    reads.clear()
    asr_views(files, TranscribeOptions(candidates=("pre_denoise", "denoised", "mix")))
    assert sorted(reads) == ["denoised", "pre_denoise", "pre_denoise", "restored"]


def test_views_are_decoded_one_at_a_time(tmp_path):
    # Three two-minute views held at once would need three times one view's
    # memory; decoded one after another, the peak is about one view's.
    import tracemalloc

    rate_hz, seconds = 16_000, 120
    files = {}
    for i, name in enumerate(("restored", "pre_denoise", "original")):
        files[name] = tmp_path / f"{name}.wav"
        sf.write(str(files[name]), white_noise(seconds, level_db=-70.0, seed=i, rate_hz=rate_hz)[0], rate_hz)
    one_view_bytes = seconds * rate_hz * 4

    def peak_bytes(candidates) -> int:
        options = TranscribeOptions(candidates=candidates, flag=False)
        transcribe_candidates(files, options)  # warm the model first
        tracemalloc.start()
        try:
            transcribe_candidates(files, options)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    extra = peak_bytes(("restored", "pre_denoise", "original")) - peak_bytes(("restored",))
    assert extra < 0.5 * one_view_bytes, f"{extra / one_view_bytes:.2f} views more at the peak with three candidates"


def test_stretch_choice_takes_each_stretch_from_the_view_that_reads_it_best():
    # Two stretches separated by a pause both views share: the denoised view
    # is sure of the first, the DSP view of the second.
    denoised = _t([_s(0.0, 4.0, "the tape was found in the attic", -0.2),
                   _s(6.0, 9.0, "bright lakes of soda", -1.1)])
    dsp = _t([_s(0.1, 4.1, "the tape was found in the addict", -0.7),
              _s(6.1, 9.0, "twenty miles to the south", -0.3)])
    chosen = choose({"denoised": denoised, "pre_denoise": dsp}, by="stretch")
    assert chosen.text() == "the tape was found in the attic twenty miles to the south"
    assert [s.candidate for s in chosen.segments] == ["denoised", "pre_denoise"]
    assert [s.index for s in chosen.segments] == [0, 1]
    assert chosen.candidate == "denoised+pre_denoise"
    assert [st["view"] for st in chosen.evidence["stretches"]] == ["denoised", "pre_denoise"]

    # One candidate for the whole item: the one with the better mean.
    whole = choose({"denoised": _t(list(denoised.segments)), "pre_denoise": _t(list(dsp.segments))}, by="item")
    assert whole.candidate in ("denoised", "pre_denoise") and len(whole.segments) == 2


def test_stretch_choice_drops_text_that_only_one_view_hears_in_a_pause():
    denoised = _t([_s(0.0, 3.0, "we walked to the river", -0.3), _s(5.0, 7.0, "Thank you.", -0.2, ["in_silence"])])
    dsp = _t([_s(0.0, 3.0, "we walked to the liver", -0.5)])
    chosen = choose({"denoised": denoised, "pre_denoise": dsp}, by="stretch")
    assert chosen.text() == "we walked to the river"
    assert chosen.evidence["stretches"][1]["view"] == "pre_denoise"  # empty beats a flagged segment


def test_one_stretch_gives_the_item_choice():
    a = _t([_s(0.0, 3.0, "one long sentence", -0.4)])
    b = _t([_s(0.2, 3.1, "one long sentences", -0.6)])
    by_item = choose({"a": _t(list(a.segments)), "b": _t(list(b.segments))}, by="item")
    by_stretch = choose({"a": a, "b": b}, by="stretch")
    assert by_item.text() == by_stretch.text() and by_stretch.candidate == "a"
    assert "stretches" not in by_stretch.evidence
    with pytest.raises(ConfigError, match="choose_by"):
        TranscribeOptions(choose_by="segment")


def test_stretch_choice_leaves_the_candidates_as_decoded():
    a = _t([_s(0.0, 2.0, "first part", -0.2), _s(4.0, 6.0, "second bit", -0.9)])
    b = _t([_s(0.0, 2.0, "first parts", -0.8), _s(4.0, 6.0, "second part", -0.1)])
    for t in (a, b):
        for i, seg in enumerate(t.segments):
            seg.index = i
    before = (a.to_dict(), b.to_dict())
    chosen = choose({"a": a, "b": b}, by="stretch")
    assert chosen.text() == "first part second part"
    assert (a.to_dict(), b.to_dict()) == before
