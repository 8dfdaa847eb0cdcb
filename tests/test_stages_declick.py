"""Declick: planted clicks are found (F1 within +-1 ms) and refilled; clean speech is left alone."""

from __future__ import annotations

import numpy as np
import pytest

from archivox.errors import ConfigError
from archivox.tasks.declick import Declick
from signals import (RATE_HZ, after_closures, click_pairs, clicks, event_f1, fricative_onsets, load_speech,
                     noise_bursts, plosive_onsets, si_sdr_db, speech_like)

TOLERANCE = RATE_HZ // 1000  # +-1 ms


def _run(stage: Declick, clean: np.ndarray, rate_per_s: float, amplitude: float, seed: int) -> tuple[float, float]:
    """(F1, SI-SDR improvement in dB) for clicks planted in ``clean``."""
    planted, positions = clicks(clean.shape[1] / RATE_HZ, rate_per_s, amplitude=amplitude, seed=seed)
    noisy = clean + planted
    regions, _ = stage.find(noisy[0].astype(np.float64), RATE_HZ)
    f1, _, _ = event_f1(np.array([start for start, _ in regions]), positions, TOLERANCE)
    out = stage(noisy).audio
    return f1, si_sdr_db(out, clean) - si_sdr_db(noisy, clean)


@pytest.mark.parametrize("rate_per_s", [5, 20])
def test_generated_speech_clicks_found_and_repaired(rate_per_s: float) -> None:
    # speech_like carries a white-noise component under its voicing, so its
    # prediction error is noisier than a real voice's: the stage's threshold
    # for noisy material applies.
    stage = Declick(threshold_db=24.0)
    clean = speech_like(5.0, seed=3)
    f1, gain_db = _run(stage, clean, rate_per_s, amplitude=0.3, seed=rate_per_s)
    assert f1 >= 0.95
    assert gain_db >= 10.0
    assert stage.detect(clean, RATE_HZ)["clicks"] == 0


def test_nothing_found_means_no_change() -> None:
    clean = speech_like(4.0, seed=4)
    out = Declick()(clean)
    assert out.metrics["changed"] is False and out.metrics["found_clicks"] == 0
    np.testing.assert_array_equal(out.audio, clean)
    assert not any(k.startswith("found__") for k in out.metrics)


def test_ticks_far_under_the_programme_are_left_alone() -> None:
    # The same impulses, once 45 dB and once 12 dB under the programme's
    # level (99th percentile of |x|): only the audible ones are clicks.
    stage = Declick(threshold_db=24.0)
    clean = speech_like(5.0, seed=3)
    level = float(np.percentile(np.abs(clean), 99))
    # At 12 dB under, session-3 code found 46 of the 50 (F1 0.958); since
    # the onset gate 44 (F1 0.936): two more sit on pitch pulses where the
    # generated voice rises over 10 dB within 2 ms and are taken for the
    # onset (the cost of that gate, see the session-4 stages results).
    for under_db, wanted in ((45.0, 0.0), (12.0, 0.93)):
        planted, positions = clicks(5.0, 10, amplitude=level * 10 ** (-under_db / 20), seed=11)
        regions, _ = stage.find((clean + planted)[0].astype(np.float64), RATE_HZ)
        f1, _, recall = event_f1(np.array([start for start, _ in regions]), positions, TOLERANCE)
        if wanted:
            assert f1 >= wanted, (under_db, f1)
        else:
            assert recall == 0.0, (under_db, recall)


def test_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match="valid range"):
        Declick(threshold_db=3.0)
    with pytest.raises(ConfigError, match="valid range"):
        Declick(min_level_db=10.0)


# Files where the bench's per-file numbers sit near the corpus median; the
# bench table covers the whole corpus, including the harder 48 kHz full-band
# and mouth-click-prone voices.
CORPUS_FILES = ["librispeech_1688-142285-0008.flac", "vctk_p225_022.wav"]


@pytest.mark.corpus
@pytest.mark.parametrize("rate_per_s", [5, 20])
def test_corpus_speech_clicks_f1_and_sisdr(corpus, rate_per_s: float) -> None:
    stage = Declick()
    for name in CORPUS_FILES:
        clean = load_speech(corpus / "speech_clean" / name)
        # Clicks from -12 to -6 dB under the file's own peak.
        f1, gain_db = _run(stage, clean, rate_per_s, amplitude=0.5 * float(np.abs(clean).max()), seed=rate_per_s)
        assert f1 >= 0.95, (name, f1)
        assert gain_db >= 10.0 if rate_per_s >= 20 else gain_db >= 7.0, (name, gain_db)


@pytest.mark.corpus
def test_corpus_clean_speech_has_at_most_one_false_click_per_minute(corpus) -> None:
    names = CORPUS_FILES + ["cathy_arctic_a0001_1592748574.wav", "librispeech_2412-153948-0000.flac"]
    stage = Declick()
    found = 0
    seconds = 0.0
    for name in names:
        clean = load_speech(corpus / "speech_clean" / name)
        found += stage.detect(clean, RATE_HZ)["clicks"]
        seconds += clean.shape[1] / RATE_HZ
    assert found <= seconds / 60.0 + 1e-9, (found, seconds)


def test_plosive_onsets_are_not_clicks_but_clicks_of_their_height_are() -> None:
    # A burst that starts with a sharp step and stays (a plosive, -20 dB re
    # the programme's level, in a pause over -50 dB room tone) trips the
    # impulse detector at its leading edge; a two-sample impulse of the same
    # height at the same place is a click. Session-3 code found 21 of the 30
    # onsets and 21 of the 30 impulses; now 2 and 21.
    from scipy import signal

    stage = Declick()
    b, a = signal.butter(2, 4000 / (RATE_HZ / 2))
    onsets_found = clicks_found = total = 0
    for seed in (3, 4, 5):
        clean = speech_like(5.0, seed=seed)
        level = float(np.percentile(np.abs(clean), 99))
        room = signal.lfilter(b, a, np.random.default_rng(seed).standard_normal(clean.shape[1]))
        clean = clean + (room * level * 10 ** (-50 / 20) / room.std()).astype(np.float32)[None, :]
        bursts, positions = plosive_onsets(5.0, 2, amplitude=level * 10 ** (-20 / 20), seed=seed)
        impulses = np.zeros_like(bursts)
        impulses[0, positions] = bursts[0, positions]
        impulses[0, positions + 1] = bursts[0, positions + 1]
        onsets_found += len(stage.find((clean + bursts)[0].astype(np.float64), RATE_HZ)[0])
        clicks_found += len(stage.find((clean + impulses)[0].astype(np.float64), RATE_HZ)[0])
        total += positions.size
    assert onsets_found <= 0.1 * total, (onsets_found, total)
    assert clicks_found >= 0.6 * total, (clicks_found, total)


@pytest.mark.corpus
def test_corpus_mouth_clicks_and_onsets_of_impulsive_voices(corpus) -> None:
    # The clean files of the tuning set with the most detections in session 3
    # (speaker p234's mouth clicks and plosive onsets, burst onsets of p286
    # and CMU "cathy"): 7 detections then, 2 in session 6 (both in
    # vctk_p234_004: a genuine mouth click and a dip, neither an onset), none
    # since the item prior applies at 48 kHz.
    names = ["vctk_p234_004.wav", "vctk_p234_006.wav", "vctk_p286_011.wav", "cathy_arctic_a0023_1592748016.wav"]
    stage = Declick()
    found = sum(stage.detect(load_speech(corpus / "speech_clean" / name), RATE_HZ)["clicks"] for name in names)
    assert found <= 3, found


@pytest.mark.parametrize("gap", [6, 9, 12])
def test_clicks_a_few_samples_apart_are_both_repaired(gap: int) -> None:
    # One detection covers both impulses of a pair; refilling only the
    # likelier pulse left the other in place (2 dB gain). The second search
    # finds it and both are refilled in one piece.
    stage = Declick(threshold_db=24.0)
    clean = speech_like(2.0, seed=7)
    noisy = clean.copy()
    noisy[0, 48_000:48_002] += 0.3
    noisy[0, 48_000 + gap : 48_003 + gap] -= 0.25
    gain_db = si_sdr_db(stage(noisy).audio, clean) - si_sdr_db(noisy, clean)
    assert gain_db >= 20.0, gain_db


def test_click_pairs_in_generated_speech_are_repaired() -> None:
    stage = Declick(threshold_db=24.0)
    clean = speech_like(4.0, seed=7)
    planted, positions = click_pairs(4.0, 5, amplitude=0.3, seed=5)
    noisy = clean + planted
    regions, _ = stage.find(noisy[0].astype(np.float64), RATE_HZ)
    _, _, recall = event_f1(np.array([start for start, _ in regions]), positions, TOLERANCE)
    assert recall >= 0.8, recall
    assert si_sdr_db(stage(noisy).audio, clean) - si_sdr_db(noisy, clean) >= 6.0


@pytest.mark.corpus
def test_corpus_speech_click_pairs_repaired(corpus) -> None:
    # Pairs of impulses a few samples apart at 3 pairs/s, -12 to -6 dB under
    # the file's peak: refilling one pulse per detection gained 2-3 dB here.
    stage = Declick()
    for name in CORPUS_FILES:
        clean = load_speech(corpus / "speech_clean" / name)
        planted, _ = click_pairs(clean.shape[1] / RATE_HZ, 3, amplitude=0.5 * float(np.abs(clean).max()), seed=2)
        noisy = clean + planted
        gain_db = si_sdr_db(stage(noisy).audio, clean) - si_sdr_db(noisy, clean)
        assert gain_db >= 15.0, (name, gain_db)


SOURCE_RATE_HZ = 16_000  # 159 of the corpus's 194 speech files; declick runs there before resampling


def _voice_with_releases(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated speech at 16 kHz with plosive releases: 30 ms of closure (a -60 dB floor), then a spike and
    noise in place of the voice. ((1, n) float64, release sample indices)"""
    voice = speech_like(6.0, seed=seed, rate_hz=SOURCE_RATE_HZ).astype(np.float64)
    level = float(np.percentile(np.abs(voice), 99))
    bursts, positions = noise_bursts(6.0, 2, 0.7 * level, seed=seed, rate_hz=SOURCE_RATE_HZ)
    return after_closures(voice, bursts, positions, level, seed=seed, rate_hz=SOURCE_RATE_HZ), positions


def test_plosive_releases_at_16_khz_are_not_clicks_but_clicks_there_are() -> None:
    # At 16 kHz a burst's first sample stands out of the prediction error like
    # a click; the noise after it is what tells them apart. The 48 kHz rules
    # (order scaled to 11, no burst gate) took 61 of these 36 releases for
    # clicks (several per burst) and found the planted clicks with F1
    # 0.62-0.69; now 6 and 0.79-0.90.
    found, f1s = 0, []
    stage = Declick()
    for seed in (1, 2, 3):
        clean, releases = _voice_with_releases(seed)
        found += len(stage.find(clean[0], SOURCE_RATE_HZ)[0])
        planted, positions = clicks(6.0, 5, amplitude=0.5 * float(np.abs(clean).max()), seed=seed,
                                    rate_hz=SOURCE_RATE_HZ)
        regions, _ = stage.find((clean + planted)[0], SOURCE_RATE_HZ)
        f1s.append(event_f1(np.array([start for start, _ in regions]), positions, SOURCE_RATE_HZ // 1000)[0])
    assert found <= 9, found
    assert np.mean(f1s) >= 0.8, f1s


@pytest.mark.corpus
def test_corpus_16_khz_speech_at_its_own_rate(corpus) -> None:
    # Four 16 kHz files of the tuning set whose own transients the 48 kHz
    # rules took for clicks (21 detections on the clean files, F1 at 5
    # clicks/s 0.92-0.96): plosive releases (p227, p226, 367-130732) and
    # LibriSpeech 2414's sharp glottal pulses. Now 2 detections.
    names = ["vctk_p227_016.wav", "vctk_p226_021.wav", "librispeech_367-130732-0002.flac",
             "librispeech_2414-128291-0007.flac"]
    stage = Declick()
    false_found = 0
    for i, name in enumerate(names):
        clean = load_speech(corpus / "speech_clean" / name, SOURCE_RATE_HZ).astype(np.float64)
        false_found += len(stage.find(clean[0], SOURCE_RATE_HZ)[0])
        planted, positions = clicks(clean.shape[1] / SOURCE_RATE_HZ, 5, amplitude=0.5 * float(np.abs(clean).max()),
                                    seed=40 + i, rate_hz=SOURCE_RATE_HZ)
        noisy = clean + planted
        regions, _ = stage.find(noisy[0], SOURCE_RATE_HZ)
        f1, _, _ = event_f1(np.array([start for start, _ in regions]), positions, SOURCE_RATE_HZ // 1000)
        gain_db = si_sdr_db(stage(noisy.astype(np.float32), SOURCE_RATE_HZ).audio, clean) - si_sdr_db(noisy, clean)
        assert f1 >= 0.95, (name, f1)
        assert gain_db >= 10.0, (name, gain_db)
    assert false_found <= 3, false_found


def _voice_with_fricative_onsets(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated speech at 48 kHz with faint stop releases into frication: 30 ms of closure (a -60 dB floor),
    then a spike 15 dB under the programme's level and 2-8 kHz noise 6 dB under the spike in place of the
    voice. ((1, n) float64, onset sample indices)"""
    voice = speech_like(6.0, seed=seed).astype(np.float64)
    level = float(np.percentile(np.abs(voice), 99))
    onsets, positions = fricative_onsets(6.0, 2, level * 10 ** (-15 / 20), noise_db=-6.0, seed=seed)
    return after_closures(voice, onsets, positions, level, seed=seed), positions


def test_faint_fricative_onsets_at_48_khz_are_not_clicks() -> None:
    # A source recorded at full band: the release spike of a faint stop into
    # frication stands out of the prediction error like a click. Session-5
    # code took 30 of these 36 onsets for clicks; now 7. (Clicks planted in
    # the same signals: F1 0.80-0.85 then, 0.90-0.97 now.)
    stage = Declick()
    taken = 0
    for seed in (1, 2, 3):
        clean, onsets = _voice_with_fricative_onsets(seed)
        starts = np.array([start for start, _ in stage.find(clean[0], RATE_HZ)[0]])
        taken += sum(bool(starts.size and np.abs(starts - p).min() <= TOLERANCE) for p in onsets)
    assert taken <= 12, taken


@pytest.mark.corpus
def test_corpus_speech_recorded_at_48_khz_releases_and_onsets(corpus) -> None:
    # Two clean files recorded at 48 kHz (VCTK p234) with 5 detections in
    # session 5: 2 stop releases and 2 fricative onsets, and a mouth click
    # before the speaker starts (a real impulse). Now 1, the mouth click.
    # Clicks planted there are still found and refilled.
    names = ["vctk_p234_003.wav", "vctk_p234_005.wav"]
    stage = Declick()
    false_found = 0
    for i, name in enumerate(names):
        clean = load_speech(corpus / "speech_clean" / name).astype(np.float64)
        false_found += len(stage.find(clean[0], RATE_HZ)[0])
        planted, positions = clicks(clean.shape[1] / RATE_HZ, 5, amplitude=0.5 * float(np.abs(clean).max()),
                                    seed=60 + i)
        noisy = clean + planted
        found = stage.detect(noisy, RATE_HZ)
        regions, _ = found["_found"][0]
        f1, _, _ = event_f1(np.array([start for start, _ in regions]), positions, TOLERANCE)
        gain_db = si_sdr_db(stage.repair(noisy, RATE_HZ, found).audio, clean) - si_sdr_db(noisy, clean)
        assert f1 >= 0.95, (name, f1)
        assert gain_db >= 10.0, (name, gain_db)
    assert false_found <= 2, false_found


def _source_rate_f1_and_gain(stage: Declick, clean: np.ndarray, seed: int) -> tuple[float, float]:
    """(F1 within 1 ms, SI-SDR gain in dB) of ``stage`` on ``clean`` (n,) at SOURCE_RATE_HZ with 5 clicks/s
    planted at half its peak, as the tuning harness plants them."""
    planted, positions = clicks(clean.size / SOURCE_RATE_HZ, 5, amplitude=0.5 * float(np.abs(clean).max()),
                                seed=seed, rate_hz=SOURCE_RATE_HZ)
    scale = 0.999 / np.abs(clean + planted[0]).max()
    clean, noisy = clean * scale, (clean + planted[0]) * scale
    regions, _ = stage.find(noisy, SOURCE_RATE_HZ)
    f1, _, _ = event_f1(np.array([start for start, _ in regions]), positions, SOURCE_RATE_HZ // 1000)
    gain_db = si_sdr_db(stage(noisy[None].astype(np.float32), SOURCE_RATE_HZ).audio, clean[None]) - si_sdr_db(
        noisy[None], clean[None])
    return f1, gain_db


def _clean_detections_and_planted_bars(corpus, cases: list[tuple[str, int]], min_f1: float,
                                       min_gain_db: float) -> list[int]:
    """Detections on each clean 16 kHz file of ``cases`` [(name, seed)]; asserts F1 and gain with 5 clicks/s planted."""
    stage = Declick()
    found = []
    for name, seed in cases:
        clean = load_speech(corpus / "speech_clean" / name, SOURCE_RATE_HZ)[0].astype(np.float64)
        clean *= 0.999 / np.abs(clean).max()
        found.append(len(stage.find(clean, SOURCE_RATE_HZ)[0]))
        f1, gain_db = _source_rate_f1_and_gain(stage, clean, seed)
        assert f1 >= min_f1, (name, f1)
        assert gain_db >= min_gain_db, (name, gain_db)
    return found


@pytest.mark.corpus
def test_corpus_16_khz_clicks_of_three_and_four_samples_under_the_full_gate(corpus) -> None:
    # At 16 kHz a 3- or 4-sample click corrupts 3-4 samples, more than the
    # 100 us (2 samples) that earned the lower bar. These four tuning files
    # (clicks planted as the tuning harness plants them) had F1 0.900-0.939
    # and 6.2-11.2 dB at 5 clicks/s; with the lower bar for a core no longer
    # than its pulse, 0.971-1.000 and 16.3-18.2 dB. The clean files kept
    # the same two detections (533-1066-0008 and p228_008, one each); both
    # were under the full gate, and the item prior now drops them.
    cases = [("librispeech_251-137823-0003.wav", 1017), ("librispeech_533-1066-0008.flac", 1030),
             ("vctk_p228_008.wav", 1043), ("cmu_arctic_aew_a0003.wav", 1005)]
    false_found = _clean_detections_and_planted_bars(corpus, cases, min_f1=0.95, min_gain_db=14.0)
    assert sum(false_found) <= 2, false_found



@pytest.mark.corpus
def test_corpus_16_khz_clean_speech_keeps_no_marginal_detection(corpus) -> None:
    # LibriSpeech 2414's and 3005's sharp glottal closures and voicing onsets
    # cleared the loud-pulse path's bar: 10 detections in these 28 s before
    # (7 and 3), none of them a click in the recording. An item without
    # crackle (few detections over the full gate) now keeps only the clear
    # ones; with 5 clicks/s planted the item has crackle and keeps what it
    # found (F1 0.957 and 21.2 dB, as before).
    stage = Declick()
    speech = {name: load_speech(corpus / "speech_clean" / name, SOURCE_RATE_HZ)[0].astype(np.float64)
              for name in ["librispeech_2414-128291-0002.flac", "librispeech_3005-163389-0006.flac"]}
    found, minutes = 0, 0.0
    for clean in speech.values():
        clean *= 0.999 / np.abs(clean).max()
        found += len(stage.find(clean, SOURCE_RATE_HZ)[0])
        minutes += clean.size / SOURCE_RATE_HZ / 60
    assert found / minutes <= 1.0, (found, minutes)
    # The rule is a parameter: 0 keeps every detection, as before it.
    every = Declick(sparse_clicks_per_minute=0.0)
    assert sum(len(every.find(clean, SOURCE_RATE_HZ)[0]) for clean in speech.values()) >= 5
    f1, gain_db = _source_rate_f1_and_gain(stage, speech["librispeech_2414-128291-0002.flac"], seed=2)
    assert f1 >= 0.95, f1
    assert gain_db >= 18.0, gain_db


@pytest.mark.corpus
def test_corpus_16_khz_clicks_inside_loud_speech_of_an_item_with_crackle(corpus) -> None:
    # With 5 clicks/s planted (as the tuning harness plants them) these two
    # tuning files missed 6 and 4 clicks that sat more than 8 dB under the
    # full gate inside loud voiced speech: F1 0.906 and 0.929, 8.9 and 9.8 dB.
    # The item has crackle (many clicks clear the gate), so the second look
    # searches 16 dB under it for pulses near the programme's level: F1 0.971
    # and 0.983, 15.8 and 15.2 dB. The clean files have no crackle and keep
    # no detection.
    cases = [("librispeech_2033-164914-0009.flac", 1014), ("vctk_p225_003.wav", 1033)]
    assert _clean_detections_and_planted_bars(corpus, cases, min_f1=0.96, min_gain_db=13.0) == [0, 0]


@pytest.mark.corpus
def test_corpus_48_khz_clean_speech_without_crackle_keeps_no_marginal_detection(corpus) -> None:
    # Recorded at 48 kHz, VCTK p234 has mouth noise before "We" (p234_004,
    # 0.74 s, 2 dB over the full gate), a faint release (2.70 s, under it) and
    # a mouth click in silence (p234_007, 0.67 s, 0.3 dB over it). In these
    # 4-5 s files one detection over the gate made 12-15 a minute, so the
    # item prior took them for crackle; with at least 3 needed, none is left.
    stage = Declick()
    found = {name: stage.find(load_speech(corpus / "speech_clean" / name)[0].astype(np.float64), RATE_HZ)[0]
             for name in ["vctk_p234_004.wav", "vctk_p234_007.wav"]}
    assert found == {"vctk_p234_004.wav": [], "vctk_p234_007.wav": []}, found


@pytest.mark.corpus
def test_corpus_16_khz_refill_fitted_to_the_click(corpus) -> None:
    # At 16 kHz a refill 2 samples wider than the click on each side loses
    # full-band speech, and a region built on a core of 1-2 samples inside or
    # beside a click left the rest of the click in place. With 5 clicks/s
    # planted (as the tuning harness plants them) these two tuning files had
    # F1 0.978 and 0.973 but 8.4 and 9.4 dB; with the region padded by one
    # sample and covering the most likely pulse (and the core condition
    # waived near the gate in an item with crackle), F1 1.000 and 0.982,
    # 14.4 and 14.9 dB. The clean files keep what they kept (none and one
    # detection).
    cases = [("librispeech_3331-159605-0007.flac", 1025), ("vctk_p226_023.wav", 1039)]
    false_found = _clean_detections_and_planted_bars(corpus, cases, min_f1=0.97, min_gain_db=12.0)
    assert sum(false_found) <= 1, false_found
