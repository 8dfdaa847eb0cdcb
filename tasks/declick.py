"""Click and crackle removal: detect impulses in the AR prediction error, refill them by AR interpolation.

A click is a short broadband impulse that the recording's own short-term
spectrum cannot predict, so it stands out in the error of a linear predictor
fitted block by block. Voiced speech also leaves peaks in that error, one per
glottal pulse, so a sample counts as a click only when it stands
``threshold_db`` above both the robust level of the error around it and the
typical peak of the error in the surrounding 200 ms; a click is rare, the
glottal pulses are not. The error is matched to pulses of 1 to 4 samples,
not only to single-sample impulses: on full-band 48 kHz recordings the
one-sample detector listens mostly to the empty band above the anti-alias
roll-off, where a pulse of even width has a spectral null. An impulse that
corrupts only a few samples may clear a lower bar than a broader event.
An impulse whose least-squares amplitude is ``min_level_db`` under the
programme's level (the 99th percentile of |x|) is left alone: in clean read
speech those are the speaker's own mouth and breath ticks, 30-60 dB under
the peaks, and they made most of the false detections.
Marked runs are refilled from the surrounding signal by least-squares AR
interpolation, over the most likely pulse (start and width) near each
detection where the corrupted span found by the errors is longer than that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from archivox.tasks.armodel import block_ar, lsar_fill, matched_error, prediction_error
from archivox.tasks.chain import FULL_BAND_RATE_HZ, Stage, StageOutput, check_range

_BLOCK_S = 0.02
_PEAK_HOP_S = 0.01
_PEAK_CONTEXT_S = 0.1  # each side
_CORE_DB = 12.0  # forward and backward error both this far over their level: a corrupted sample
_LOOSE_DB = 12.0  # how much more lenient the search that refits the models is
_WIDTHS = 4  # pulses of 1 to this many samples each get their own statistic
_SHORT_DB = 8.0  # how much lower the bar is for an impulse whose corrupted core is short
_SHORT_S = 0.0001  # up to this long (100 us, 5 samples at 48 kHz)
# Under FULL_BAND_RATE_HZ 100 us is 1-2 samples, and a planted click of 3 or
# 4 samples corrupts 3 or 4: 43 of the 93 clicks missed on the 16 kHz
# tuning files (those with F1 under 0.95 at 5 clicks/s) stood 0-8 dB under
# the full gate, 39 of them 3-4 samples wide. There a core also counts as
# short when it is no longer than the most likely pulse (start and width)
# that explains it; the speech's own transients that clear the lower bar
# fit a pulse of 1-2 samples and corrupt more (8 of 9 on the clean tuning
# files, against 14 of 262 newly found clicks). The ninth, a faint release,
# sat 22 dB under the programme's level; the pulse must also be within
# ``_ONSET_LOUD_DB`` of it (the bound under which the onset gates take the
# speaker's own releases and onsets), as 245 of the 262 clicks were. A
# fainter wide click still has the full gate, as before.
# Four pulse widths and the lower bar for short cores find more of the
# speech's own error peaks too; this much on top of ``threshold_db`` keeps
# false detections on clean speech where the one-sample detector had them
# (0.97 a minute over the bench's 49 files, before and after).
_SEARCH_DB = 4.0
# Where the span of large forward and backward error is wider than a pulse
# (a click on a loud speech transient), refilling all of it erases the
# transient too: one such repair made 82 % of a file's remaining error
# (SI-SDR gain 8 dB; 16 dB when refilled over the pulse alone). The pulse
# is the start and width (1-4) with the largest statistic near the
# detection peak, which itself may sit on either edge of the pulse; this
# many samples either side are refilled with it.
_NARROW_PAD = 2
_PROGRAMME_PERCENTILE = 99.0  # the programme's level: robust to the clicks themselves (under 0.1 % of samples)
# A pulse at least this loud against the programme's level and this far
# over the local RMS is a click even where the predictor's error is too
# rough to show it clearly (fricatives and room noise of full-band 48 kHz
# recordings, where its statistic may sit ``_LOUD_FLOOR_DB`` under the gate):
# read speech makes no isolated spikes that loud. On the tuning files (bench
# offsets 1 and 3, planting seed shifted by 1000) this path found most of
# the remaining misses and added no false detection on the clean files.
_LOUD_DB = -6.0
_LOUD_LOCAL_DB = 6.0
_LOUD_FLOOR_DB = -20.0
# Dense loud clicks whiten the models fitted around them; the lenient search
# and refit run this many times (the second pass finds the clicks that the
# first models hid: 20 clicks/s on full-band voices).
_REFITS = 2
# A weak candidate at the start of a louder sound is that sound's onset (a
# plosive burst, a step the waveform does not come back from), not an
# additive impulse: on the clean tuning files these made 5 of the 7 false
# detections (speaker p234, burst onsets of p286 and CMU "cathy"). A
# candidate is an onset when the 2 ms after the pulse are ``_ONSET_RISE_DB``
# louder (RMS) than the 2 ms before it and peak ``_ONSET_UNDER_DB`` above the
# pulse's own amplitude. Only candidates within ``_ONSET_MARGIN_DB`` of the
# gate, under ``_ONSET_LOUD_DB`` re the programme's level and off the
# loud-pulse path are asked: a strong or loud impulse is a click wherever it
# sits (without the level bound, 20 clicks/s in the CMU "cathy" voice lost
# clicks on rising speech).
_ONSET = True
_ONSET_S = 0.002
_ONSET_RISE_DB = 6.0
_ONSET_UNDER_DB = 6.0
_ONSET_MARGIN_DB = 8.0
_ONSET_LOUD_DB = -10.0


# Under FULL_BAND_RATE_HZ speech fills the band up to Nyquist and the rules tuned at
# 48 kHz (where the band above ~8 kHz is nearly empty) take the speech's own
# transients for clicks: 25 false detections a minute on the clean 16 kHz
# tuning files (bench offsets 1 and 3, 79 files, 9.7 min). The changes below
# apply under it only; 48 kHz detections are unchanged.
# The order scaled with the rate (11 at 16 kHz) leaves the formants of a
# full-band voice in the error; 20 (the usual rate/1000 + 4 for speech)
# whitens them: false detections 25 -> 15 a minute, F1 at 5 clicks/s
# 0.936 -> 0.949 on the tuning files. 30 cut them to 10 but lost clicks at
# 20 a second (F1 0.964 -> 0.960, gain 14.3 -> 13.4 dB).
_FULL_BAND_ORDER = 20 / 32
# Most of the remaining false detections at 16 kHz are plosive releases: the
# burst's first sample is a spike after a quiet closure, followed by noise as
# loud. Such a candidate is an onset when the median prediction error over the
# 8 ms after the pulse (backward error, which the pulse does not reach) is
# ``_BURST_RISE_DB`` over that of the 8 ms before it (forward error), and the
# 2 ms after it peak within ``_BURST_UNDER_DB`` of the pulse's own amplitude.
# Medians, because glottal pulses make the error peaky. A candidate
# ``_BURST_MARGIN_DB`` over its gate is a click wherever it sits. On the
# tuning files: false detections 148 -> 66 and 45 of 13,852 planted-click
# detections lost (order 20).
_BURST_S = 0.008
_BURST_PEAK_S = 0.002
_BURST_RISE_DB = 10.0
_BURST_UNDER_DB = -9.0
_BURST_MARGIN_DB = 15.0

# Speakers with sharp glottal closures (LibriSpeech 2414, 2609, VCTK p227)
# leave error peaks that the pitch compensation misses when the pulse's shape
# or sub-sample position changes from period to period. A candidate with a
# peak in the uncompensated matched error within ``_PULSE_UNDER_DB`` of its
# own one period (the block's, +-10 %) before AND after it is a glottal
# pulse; a click has no such neighbours unless it falls on one. The period
# must be the block's own: with any period from 2.5 to 16 ms, at 20 clicks/s
# the other clicks made neighbours for 71 of 11,035 detected clicks.
_PULSE_JITTER = 2
_PULSE_UNDER_DB = -8.0
_PULSE_MARGIN_DB = 6.0
# At the start or end of voicing a glottal pulse has neighbours on one side
# only: peaks within ``_PULSE_UNDER_DB`` one and two periods before it, or
# one and two periods after it, count too. Other candidates are left out
# (at 20 clicks/s they would make the neighbours). Tuning files: 53 -> 50.
_PULSE_SIDE_PERIODS = 2
# A pulse under the local RMS whose next 2 ms peak ``_MASKED_OVER_DB`` over
# its own amplitude sits inside a sound far louder than itself: the
# speaker's own (and a click there would be masked). Candidates
# ``_BURST_MARGIN_DB`` over the gate are kept.
_MASKED_OVER_DB = 12.0
_MASKED_LOCAL_DB = 0.0

# At and above FULL_BAND_RATE_HZ (sources recorded at full band) the clean
# speech's detections were, on the 29 corpus files recorded at 48 kHz (1.9
# min, 8 detections, all VCTK p234): 3 mouth clicks before speaking (real
# impulses, left to the restorer), 3 stop releases and 2 fricative onsets.
# The gates above cost planted clicks there: the burst gate took the 5/s
# gain of a CMU "cathy" file from 12.7 to 7.3 dB, and the masked-pulse gate
# drops clicks in loud speech. What the releases and onsets share, and the
# clicks those gates lost do not: the spike is faint (under
# ``_ONSET_LOUD_DB`` re the programme's level, the onset gate's bound) and
# under ``_QUIET_ONSET_LOCAL_DB`` over the local RMS, the error rises
# ``_QUIET_ONSET_RISE_DB`` over the 8 ms (the burst gate's measure) and the
# 2 ms after it peak within ``_QUIET_ONSET_UNDER_DB`` of it. Where the most
# likely pulse sits outside the corrupted span, the span's largest pulse is
# the level (a 4-sample click at 48 kHz may fit best 12 samples off). The
# lenient searches do not ask (the gate there kept the models from being
# refitted around clicks), nor does the second look after the repair next to
# a refilled region (it took what the refill had left of a click for an
# onset: 20 clicks/s, 34 -> 21 dB on a LibriSpeech file). Clean 48 kHz
# files: 8 -> 4 detections; with clicks planted (seeds 1005 + i, 5 and
# 20/s) no file's F1 or SI-SDR gain fell.
_QUIET_ONSET_RISE_DB = 5.0
_QUIET_ONSET_UNDER_DB = -3.0
_QUIET_ONSET_LOCAL_DB = 10.0

# Under FULL_BAND_RATE_HZ the lenient paths (the loud-pulse path, the short
# core's lower bar) and the detections just over the gate find clicks in
# crackle; in clean read speech they find the speaker's own glottal pulses,
# voicing onsets and stop releases: 65 detections in 19.2 min of the 159
# clean 16 kHz corpus files, 45 of them under the full gate (40 of those
# loud pulses, 31 in LibriSpeech 2414, 2609 and 3005). A recording
# with crackle has many clicks, most of them well over the gate; clean speech
# has a few marginal ones. So an item (one channel of one block) with fewer
# than ``_SPARSE_PER_MINUTE`` detections a minute over the full gate keeps
# only those ``_SPARSE_MARGIN_DB`` over it. On the 79 tuning files (bench
# offsets 1 and 3) the clean files' detections went 40 -> 8 and, with 5 or 20
# clicks/s planted (at least 69 a minute over the gate), no detection changed.
# The price is paid where clicks are sparse: at 0.25 planted clicks/s 75 % of
# them are still found (97 % before), at 0.5/s 89 % (97 %), at 1/s all that
# were. A count of 45 a minute took 2 more of the clean detections, and lost
# a third of the clicks at 0.25-0.5/s.
_SPARSE_PER_MINUTE = 10.0
_SPARSE_MARGIN_DB = 3.0
# At and above FULL_BAND_RATE_HZ the same rule, judged on at least this many
# detections over the gate. The clean speech recorded at 48 kHz kept 4
# detections in 1.9 min (VCTK p234: 3 mouth clicks before the speaker starts,
# 1 faint release), each in a 4-5 s file where one detection over the gate
# already makes 12-15 a minute; within a run's 60 s block it would make 1.
# With 3: 1 detection left (p234_005's mouth click, 9 dB over the gate); with
# clicks planted at 5 and 20/s no file's F1 or SI-SDR gain changed.
_SPARSE_AT_LEAST_FULL_BAND = 3
# The same prior the other way: an item with crackle (at least
# ``sparse_clicks_per_minute`` a minute over the full gate) has clicks for
# certain, and there some of them sit far under the gate, inside loud voiced
# speech whose own error is as large (41 of the 93 missed on the failing
# 16 kHz tuning files were more than 8 dB under it, 0-6 dB over the local
# RMS). So in such an item the second look after the repair also keeps a
# candidate down to ``_CRACKLE_BAR_DB`` under the full gate (no further for
# a short core), when its pulse is within ``_CRACKLE_LEVEL_DB`` of the
# programme's level, its corrupted core is no longer than the pulse, and it
# is not next to a refilled region (what a refill left there was looked at
# already). Clean items are not touched: the rule needs the crackle first.
# On the 20 failing tuning files the new candidates that were clicks sat
# 3 dB under the programme and 10 dB under the gate (medians), the others
# (19 of 27 in LibriSpeech 2414 and 3005, whose glottal pulses made most of
# the clean detections) 6 and 14 dB, and 16 of 22 of those spanned more
# samples than their pulse, against 31 of 170 clicks. Tuning files (bench offsets 1 and 3, 79): files with F1 >= 0.95
# at 5 clicks/s 69 -> 74, at 20/s 68 -> 76; SI-SDR gain >= 10 dB 69 -> 75 at
# both; missed clicks 86 -> 43 and 513 -> 323, extra detections 54 -> 59 and
# 78 -> 86; the clean files unchanged.
_CRACKLE_BAR_DB = 16.0
_CRACKLE_LEVEL_DB = -8.0
_REFILLED_AWAY = 2 * _WIDTHS
# Under FULL_BAND_RATE_HZ the refill, not the detector, limited the gain:
# each sample refilled is a sample of full-band speech lost (refilling exactly
# the planted samples gave 18-44 dB on six files, with 2 samples either side
# 14-26 dB), and a region built on a core of 1-2 samples beside or inside a
# 4-sample click left the rest of the click in place. So the searches whose
# regions are refilled pad by ``_FULL_BAND_PAD`` sample and cover the most
# likely pulse as well as the core when the two lie within ``_WIDTHS``
# samples, the pulse placed on the error before pitch compensation (which
# carries dense clicks' copies one period away). No pad at all lost up to
# 22 dB on files where the pulse was a sample off. Numbers and the variants
# dropped: bench/results/declick-16k-2026-11-22-vm-session8.md.
_FULL_BAND_PAD = 1


def _order_for(rate_hz: int, order: int) -> int:
    if rate_hz < FULL_BAND_RATE_HZ:
        return max(8, int(round(order * _FULL_BAND_ORDER)))
    return max(8, int(round(order * rate_hz / 48_000)))


def _robust_level(values: np.ndarray, block: int) -> np.ndarray:
    """Per-sample robust sigma of ``values`` (n,): 1.4826 x the median absolute value of its block."""
    n = values.size
    blocks = -(-n // block)
    padded = np.pad(np.abs(values), (0, blocks * block - n), mode="edge")
    return np.repeat(1.4826 * np.median(padded.reshape(blocks, block), axis=1) + 1e-15, block)[:n]


def _typical_peak(values: np.ndarray, rate_hz: int) -> np.ndarray:
    """Per-sample median of the 10 ms maxima of |values| over +-100 ms. (n,)"""
    n = values.size
    hop = max(1, int(_PEAK_HOP_S * rate_hz))
    hops = -(-n // hop)
    maxima = np.pad(np.abs(values), (0, hops * hop - n)).reshape(hops, hop).max(axis=1)
    typical = ndimage.median_filter(maxima, size=2 * int(_PEAK_CONTEXT_S / _PEAK_HOP_S) + 1, mode="nearest")
    return np.repeat(typical, hop)[:n] + 1e-15


def _pitch_compensated(values: np.ndarray, rate_hz: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """values with the voiced pitch-pulse train taken out (signed), (n,) -> (n,), and each block's
    period in samples, 0 where unvoiced (blocks,).

    Voiced speech leaves one peak per glottal pulse in the prediction error;
    each is predictable from the pulse one period earlier (or later), while a
    click is not. Per block, the period T and gain b come from the error's own
    autocorrelation; the result is whichever of v(t) - b v(t-T+j) and
    v(t) - b v(t+T+j) is smallest in magnitude over a +-2 sample jitter j,
    so that a click neither cancels nor leaves a ghost one period later.
    """
    n = values.size
    blocks = -(-n // block)
    low, high = int(rate_hz / 400), int(rate_hz / 60)
    span = 1 << int(np.ceil(np.log2(2.5 * high)))  # long enough for two of the longest periods
    padded = np.pad(values, (span // 2, span))
    frames = np.lib.stride_tricks.sliding_window_view(padded, span)[::block][:blocks] * np.hanning(span)
    spectrum = np.abs(sp_fft.rfft(frames.astype(np.float32), n=2 * span, axis=1)) ** 2
    acf = sp_fft.irfft(spectrum, axis=1)[:, : high + 1].astype(np.float64)
    lag = low + np.argmax(acf[:, low : high + 1], axis=1)
    gain = np.clip(acf[np.arange(blocks), lag] / (acf[:, 0] + 1e-30), 0.0, 1.0)
    gain[gain < 0.3] = 0.0  # unvoiced: nothing periodic to take out
    lag_t = np.repeat(lag, block)[:n]
    gain_t = np.repeat(gain, block)[:n]
    # In-place updates: this loop is the stage's hottest spot.
    base = np.arange(n) - lag_t
    best = np.full(n, np.inf)
    signed = values.copy()
    index = np.empty(n, dtype=np.intp)
    candidate = np.empty(n)
    size = np.empty(n)
    better = np.empty(n, dtype=bool)
    for offset in (0, 2):  # one period back, then one period ahead
        for j in range(-2, 3):
            np.add(base, offset * lag_t + j, out=index)
            np.clip(index, 0, n - 1, out=index)
            np.multiply(gain_t, values[index], out=candidate)
            np.subtract(values, candidate, out=candidate)
            np.abs(candidate, out=size)
            np.less(size, best, out=better)
            np.copyto(best, size, where=better)
            np.copyto(signed, candidate, where=better)
    return signed, np.where(gain > 0, lag, 0)


def _width_statistic(matched: np.ndarray, coefs: np.ndarray, block: int,
                     widths: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Evidence for a one-signed pulse of w = 1 .. ``widths`` samples starting at each sample.

    matched: signed matched error (n,); returns one (n,) statistic per width,
    and per width the (n,) factor that turns the statistic into the pulse's
    least-squares amplitude.
    A pulse of w equal samples at t adds C 1_w to the prediction error, C
    holding shifted copies of c = [1, -a1, ..., -ap]; correlating the error
    with that pattern gives 1_w^T m_w (m the matched error), whose noise
    level is sqrt(1_w^T R_w 1_w), R_w the Toeplitz autocorrelation of c.
    Each width's statistic is scaled to the noise level of the one-sample
    one (|matched|, w = 1). Full-band 48 kHz recordings
    have an empty band above their anti-alias roll-off where the whitening
    filter's gain is highest, and a pulse of even width has a null there,
    so the one-sample statistic alone misses many two- and four-sample clicks.
    """
    n = matched.size
    blocks = coefs.shape[0]
    taps = np.concatenate([np.ones((blocks, 1)), -coefs], axis=1)
    r = np.stack([np.einsum("bi,bi->b", taps[:, : taps.shape[1] - k], taps[:, k:]) for k in range(widths)], axis=1)
    total = blocks * block
    padded = np.concatenate([matched, np.zeros(widths - 1 + max(0, total - n))])
    stats = [np.abs(matched)]
    # A pulse's least-squares amplitude is its statistic over sqrt(r0) * noise.
    to_amplitude = [np.repeat(1.0 / np.maximum(r[:, 0], 1e-30), block)[:n]]
    running = padded.copy()
    for w in range(2, widths + 1):
        running[: padded.size - w + 1] += padded[w - 1 :]  # running[t] = sum of m[t..t+w-1]
        lags = np.abs(np.subtract.outer(np.arange(w), np.arange(w)))
        noise = np.sqrt(np.maximum(r[:, lags].sum(axis=(1, 2)), 1e-30))  # (blocks,)
        scale = np.repeat(np.sqrt(r[:, 0]) / noise, block)[:n]
        stats.append(np.abs(running[:n]) * scale)
        to_amplitude.append(np.repeat(1.0 / (np.sqrt(np.maximum(r[:, 0], 1e-30)) * noise), block)[:n])
    return stats, to_amplitude


def find_clicks(
    x: np.ndarray,
    rate_hz: int,
    order: int = 32,
    threshold_db: float = 34.0,
    peak_ratio_db: float = 6.0,
    min_relative_db: float = -10.0,
    max_click_ms: float = 3.0,
    coefs: np.ndarray | None = None,
    min_level_db: float = -30.0,
    onset_gate: bool = True,
    refilled: list[tuple[int, int]] | None = None,
    crackle_db: float = 0.0,
    fit_refill: bool = False,
) -> list[tuple[int, int, float]]:
    """Click regions of one channel x: (n,) float64, as [(start, stop, margin_db)]: [start, stop) in samples,
    and how far the detection statistic stood over the full gate (negative: a lenient path took it).

    A sample is a click candidate when, for a pulse of some width from 1 to
    4 samples starting there, the matched prediction error is
    ``threshold_db`` above its robust level in the block and ``peak_ratio_db``
    above its typical peak over +-100 ms, and the prediction error itself is
    no more than ``-min_relative_db`` below the signal's local RMS (so that
    faint ticks buried in loud speech, which nobody hears, are left alone).
    An impulse whose corrupted core is at most 100 us long needs 8 dB less.
    Impulses whose amplitude is under ``min_level_db`` relative to the 99th
    percentile of |x| are not clicks to repair.
    ``onset_gate``: at ``FULL_BAND_RATE_HZ`` and above, tell faint stop
    releases and fricative onsets from clicks (``Declick.find`` leaves it off
    in the lenient searches that refit the models). ``refilled``: [start,
    stop) regions of x already refilled; a candidate next to one is what the
    refill left of a click, never an onset.
    ``crackle_db`` > 0 (an item with crackle, see ``_CRACKLE_BAR_DB``): also keep a candidate up to this
    far under the full gate whose pulse is within ``_CRACKLE_LEVEL_DB`` of the programme and away from
    ``refilled``.
    ``fit_refill``: under ``FULL_BAND_RATE_HZ``, fit each region to the click for the refill (see
    ``_FULL_BAND_PAD``); ``Declick.find`` sets it for the searches whose regions it refills.
    """
    n = x.size
    p = _order_for(rate_hz, order)
    block = max(4 * p, int(_BLOCK_S * rate_hz))
    if n < 2 * block:
        return []
    if coefs is None:
        coefs = block_ar(x, p, block)
    error = prediction_error(x, coefs, block)
    error[:p] = 0.0  # the predictor has no past there
    full_band = rate_hz < FULL_BAND_RATE_HZ
    fit_refill = fit_refill and full_band
    uncompensated = matched_error(error, coefs, block)
    compensated, periods = _pitch_compensated(uncompensated, rate_hz, block)
    if full_band:
        pulses = ndimage.maximum_filter1d(np.abs(uncompensated), 2 * _PULSE_JITTER + 1)
    local_rms = np.sqrt(np.maximum(ndimage.uniform_filter1d(x * x, int(_PEAK_HOP_S * rate_hz) | 1), 0) + 1e-20)
    big_error = ndimage.maximum_filter1d(np.abs(error), 7) >= local_rms * 10 ** (min_relative_db / 20)
    # Each pulse width against its own levels: the wider the pulse, the more
    # of the speech's own low-frequency error its statistic collects.
    matched = np.zeros(n)  # statistic over its gate, best width
    amplitude = np.zeros(n)  # the largest pulse amplitude of any width
    stats, to_amplitude = _width_statistic(compensated, coefs, block, _WIDTHS)
    # Where the region is fitted for the refill, the pulse is placed on the error before the pitch compensation;
    # computed only once a region needs it: a clean item has none.
    placing = None
    for stat, factor in zip(stats, to_amplitude):
        gate = np.maximum(
            _robust_level(stat, block) * 10 ** ((threshold_db + _SEARCH_DB) / 20),
            _typical_peak(stat, rate_hz) * 10 ** (peak_ratio_db / 20),
        )
        matched = np.maximum(matched, stat / gate)
        amplitude = np.maximum(amplitude, stat * factor)
    # Ticks this far under the programme are inaudible and, in clean read
    # speech, are the speaker's own mouth and breath noises.
    programme = np.percentile(np.abs(x), _PROGRAMME_PERCENTILE)
    faintest = programme * 10 ** (min_level_db / 20)
    # An impulse that corrupts only a few samples is a click far more often
    # than a broader event is, so it may clear a lower bar (see below).
    pulse = ndimage.maximum_filter1d(amplitude, 7)  # the largest amplitude near each sample
    loud = (pulse >= programme * 10 ** (_LOUD_DB / 20)) & (
        pulse >= local_rms * 10 ** (_LOUD_LOCAL_DB / 20)) & (matched > 10 ** (_LOUD_FLOOR_DB / 20))
    crackle_bar = 10 ** (-crackle_db / 20)
    short_bar = 10 ** (-_SHORT_DB / 20)
    hits = np.flatnonzero(((matched > min(crackle_bar, short_bar)) | loud) & big_error)
    if hits.size == 0:
        return []
    # Group hits closer than half the predictor order (one click lights up
    # the matched error for p samples around it), then narrow each group to
    # the samples the click itself corrupted: there both the forward and the
    # backward prediction errors are large, while the forward error's tail
    # after a click and the backward error's tail before it are not both.
    backward = _backward_error(x, coefs, block)
    level = _robust_level(error, block)
    core = np.minimum(np.abs(error), np.abs(backward)) > level * 10 ** (_CORE_DB / 20)
    breaks = np.flatnonzero(np.diff(hits) > p // 2) + 1
    regions = []
    pad = _FULL_BAND_PAD if fit_refill else 2
    narrow_pad = _FULL_BAND_PAD if fit_refill else _NARROW_PAD
    longest = int(max_click_ms * 1e-3 * rate_hz)
    short = max(1, round(_SHORT_S * rate_hz))
    groups = np.split(hits, breaks)
    peaks = np.array([int(g[np.argmax(matched[g])]) for g in groups])
    for group in groups:
        # The corrupted samples sit around the matched error's peak; a voiced
        # pulse further off can light up ``core`` too, so look only near it.
        peak = int(group[np.argmax(matched[group])])
        lo, hi = max(0, peak - p // 2), min(n, peak + p // 2 + 1)
        inside = np.flatnonzero(core[lo:hi])
        if inside.size:
            start, stop = lo + int(inside[0]) - pad, lo + int(inside[-1]) + 1 + pad
        else:
            start, stop = peak - 2 * pad, peak + 1 + 2 * pad
        lo, hi = max(0, peak - 2 * _WIDTHS), min(n, peak + 2 * _WIDTHS + 1)
        first, width = _likeliest_pulse(stats, lo, hi)
        size = stats[width - 1][first] * to_amplitude[width - 1][first]  # its least-squares amplitude
        span = int(inside[-1] - inside[0]) + 1 if inside.size else 0  # the corrupted core's length (samples)
        short_core = bool(inside.size) and (span - 1 < short or (
            full_band and span <= width and size >= programme * 10 ** (_ONSET_LOUD_DB / 20)))
        if (matched[peak] <= 1.0 and not loud[peak]
                and not (short_core and (crackle_db <= 0.0 or matched[peak] > short_bar))
                # In an item with crackle a wide core is no objection within the short core's bar:
                # loud clicks in loud voiced speech widen their own core (9-13 samples at 16 kHz).
                # Of the clicks the second look still missed on the tuning files, 79 of 219 were
                # such, against 17 candidates that were no click.
                and (crackle_db <= 0.0 or matched[peak] <= crackle_bar
                     or (span > width and matched[peak] <= short_bar)
                     or abs(size) < programme * 10 ** (_CRACKLE_LEVEL_DB / 20)
                     or _near_refilled(first, refilled))):
            # Under the full threshold only a short corrupted core counts:
            # mouth noise and onsets corrupt many samples when they trip it.
            continue
        if amplitude[max(0, peak - 3) : peak + 4].max() < faintest:
            # (the largest amplitude near the peak: the peak may sit on either edge of the pulse)
            continue
        if stop - start > longest:
            # A long burst is not a click (a plosive, a door); leave it be.
            continue
        if (_ONSET and not loud[peak] and matched[peak] < 10 ** (_ONSET_MARGIN_DB / 20)
                and size < programme * 10 ** (_ONSET_LOUD_DB / 20)
                and _is_onset(x, first, width, size, rate_hz, peaks[peaks != peak])):
            continue
        if (full_band and matched[peak] < 10 ** (_BURST_MARGIN_DB / 20)
                and _opens_burst(x, error, backward, first, width, size, rate_hz, peaks[peaks != peak])):
            continue
        if (full_band and matched[peak] < 10 ** (_PULSE_MARGIN_DB / 20)
                and _is_glottal(pulses, np.abs(uncompensated), peak,
                                int(periods[min(peak // block, periods.size - 1)]), peaks[peaks != peak])):
            continue
        if (full_band and matched[peak] < 10 ** (_BURST_MARGIN_DB / 20)
                and abs(size) < local_rms[peak] * 10 ** (_MASKED_LOCAL_DB / 20)
                and _under_sound(x, first, width, size, rate_hz, peaks[peaks != peak], _MASKED_OVER_DB)):
            continue
        if (not full_band and onset_gate and matched[peak] < 10 ** (_BURST_MARGIN_DB / 20)
                and _is_quiet_onset(x, error, backward, amplitude, (start, stop), first, width, size, programme,
                                    float(local_rms[peak]), rate_hz, peaks[peaks != peak], refilled)):
            continue
        if fit_refill:
            if placing is None:
                placing = _width_statistic(uncompensated, coefs, block, _WIDTHS)[0]
            first, width = _likeliest_pulse(placing, lo, hi)
        if stop - start > _WIDTHS + 2 * pad:
            start, stop = first - narrow_pad, first + width + narrow_pad
        elif fit_refill and first < stop + _WIDTHS and first + width > start - _WIDTHS:
            # The refill covers the pulse as well as the core: either may miss part of the click.
            start, stop = min(start, first - narrow_pad), max(stop, first + width + narrow_pad)
        regions.append((max(start, p), min(stop, n - p), float(20 * np.log10(matched[peak] + 1e-30))))
    return [(s, e, m) for s, e, m in _merge_scored(regions) if e > s]


def _is_onset(x: np.ndarray, start: int, width: int, amplitude: float, rate_hz: int, others: np.ndarray) -> bool:
    """Whether the pulse x[start:start+width] (x: (n,)) of least-squares ``amplitude`` opens a louder sound.

    ``others``: the sample positions of the other candidates, left out of the
    comparison (at dense crackle another click often falls within 2 ms and
    must not pass for the sound)."""
    span = int(_ONSET_S * rate_hz)
    gap = 2  # the pulse's estimated start and width may be a sample or two off
    b0, a0 = max(0, start - gap - span), start + width + gap
    keep = np.ones(a0 + span - b0, dtype=bool)
    for q in others[(others > b0 - _WIDTHS) & (others < a0 + span + _WIDTHS)]:
        keep[max(0, q - _WIDTHS - b0) : max(0, q + 2 * _WIDTHS - b0)] = False
    window = x[b0 : a0 + span]
    keep = keep[: window.size]
    before = window[: max(0, start - gap) - b0][keep[: max(0, start - gap) - b0]]
    after = window[a0 - b0 :][keep[a0 - b0 :]]
    if before.size < span // 2 or after.size < span // 2:
        return False
    rise = np.sqrt(np.mean(after * after) / (np.mean(before * before) + 1e-20))
    return bool(rise >= 10 ** (_ONSET_RISE_DB / 20) and np.abs(after).max() >= abs(amplitude) * 10 ** (_ONSET_UNDER_DB / 20))


def _is_quiet_onset(x: np.ndarray, error: np.ndarray, backward: np.ndarray, amplitude: np.ndarray,
                    span: tuple[int, int], start: int, width: int, size: float, programme: float, local_rms: float,
                    rate_hz: int, others: np.ndarray, refilled: list[tuple[int, int]] | None) -> bool:
    """Whether a candidate at or above ``FULL_BAND_RATE_HZ`` is a faint stop release or fricative onset, not a click.

    The pulse x[start:start+width] of least-squares amplitude ``size``; x, error (forward prediction error),
    backward (backward error), amplitude (the largest pulse amplitude of any width at each sample): (n,).
    ``span``: [start, stop) of the corrupted span that the forward and backward errors found.
    On the clean speech recorded at 48 kHz the detections that were not clicks were releases and onsets: a
    faint spike (under ``_ONSET_LOUD_DB`` re the ``programme`` level and ``_QUIET_ONSET_LOCAL_DB`` over the
    ``local_rms``) that opens a noisy sound about as loud as itself (``_opens_burst`` with the
    ``_QUIET_ONSET_*`` thresholds). The planted clicks that the 16 kHz gates lost there were louder. The level
    is the span's largest pulse where the most likely pulse sits outside the span (a 4-sample click at 48 kHz
    may fit best 12 samples off, 20 dB under itself). Next to a region already refilled (``refilled``) a
    candidate is what the refill left of a click, never an onset. ``others``: the other candidates'
    positions, left out of the burst measure.
    """
    if _near_refilled(start, refilled):
        return False
    lo, hi = span
    level = abs(size) if lo <= start < hi else amplitude[max(0, lo) : hi].max(initial=abs(size))
    if level >= min(programme * 10 ** (_ONSET_LOUD_DB / 20), local_rms * 10 ** (_QUIET_ONSET_LOCAL_DB / 20)):
        return False
    return _opens_burst(x, error, backward, start, width, size, rate_hz, others, _QUIET_ONSET_RISE_DB,
                        _QUIET_ONSET_UNDER_DB)


def _away_from(others: np.ndarray, lo: int, hi: int, before: int, after: int) -> np.ndarray:
    """(hi - lo,) bool: the samples lo .. hi-1 outside every [q - before, q + after) of the ``others`` positions."""
    keep = np.ones(max(0, hi - lo), dtype=bool)
    for q in others[(others > lo - after) & (others < hi + before)]:
        keep[max(0, q - before - lo) : max(0, q + after - lo)] = False
    return keep


def _opens_burst(x: np.ndarray, error: np.ndarray, backward: np.ndarray, start: int, width: int, amplitude: float,
                 rate_hz: int, others: np.ndarray, rise_db: float = _BURST_RISE_DB,
                 under_db: float = _BURST_UNDER_DB) -> bool:
    """Whether the pulse x[start:start+width] of least-squares ``amplitude`` is the first spike of a noisy burst:
    the error rises ``rise_db`` and the 2 ms after it peak within ``under_db`` of it.

    x, error (forward prediction error), backward (backward error): (n,).
    ``others``: positions of the other candidates, left out of both windows
    (at 20 clicks/s another click often falls within 8 ms)."""
    n = x.size
    span, gap = int(_BURST_S * rate_hz), 2
    b0, b1 = max(0, start - gap - span), max(0, start - gap)
    a0, a1 = min(n, start + width + gap), min(n, start + width + gap + span)
    keep_b = _away_from(others, b0, b1, _WIDTHS, 2 * _WIDTHS)
    keep_a = _away_from(others, a0, a1, _WIDTHS, 2 * _WIDTHS)
    before = np.abs(error[b0:b1])[keep_b]
    after = np.abs(backward[a0:a1])[keep_a]
    if before.size < 4 or after.size < 4:
        return False
    rise = (np.median(after) + 1e-12) / (np.median(before) + 1e-12)
    if rise < 10 ** (rise_db / 20):
        return False
    near = x[a0 : min(n, a0 + int(_BURST_PEAK_S * rate_hz))][keep_a[: int(_BURST_PEAK_S * rate_hz)]]
    return bool(near.size and np.abs(near).max() >= abs(amplitude) * 10 ** (under_db / 20))


def _under_sound(x: np.ndarray, start: int, width: int, amplitude: float, rate_hz: int, others: np.ndarray,
                 over_db: float) -> bool:
    """Whether the 2 ms after the pulse x[start:start+width] (x: (n,)) peak ``over_db`` or more over its
    least-squares ``amplitude``; ``others`` (candidate positions) are left out."""
    n = x.size
    a0, a1 = min(n, start + width + 2), min(n, start + width + 2 + int(_BURST_PEAK_S * rate_hz))
    near = x[a0:a1][_away_from(others, a0, a1, _WIDTHS, 2 * _WIDTHS)]
    return bool(near.size and np.abs(near).max() >= abs(amplitude) * 10 ** (over_db / 20))


def _is_glottal(pulses: np.ndarray, size: np.ndarray, peak: int, period: int, others: np.ndarray) -> bool:
    """Whether the candidate at ``peak`` belongs to a voiced pulse train.

    ``size``: |uncompensated matched error| (n,); ``pulses``: the same
    max-filtered over the jitter (n,). True when peaks within
    ``_PULSE_UNDER_DB`` of the candidate's sit one ``period`` (+-10 %) before
    and after it, or one and two periods on the same side, away from the
    other candidates (``others``: their positions); False where unvoiced
    (period 0)."""
    if period <= 0:
        return False
    n = size.size
    bar = size[max(0, peak - 3) : peak + 4].max() * 10 ** (_PULSE_UNDER_DB / 20)
    lags = np.arange(int(0.9 * period), int(np.ceil(1.1 * period)) + 1)
    lags = lags[(peak - lags >= 0) & (peak + lags < n)]
    if lags.size and np.minimum(pulses[peak - lags], pulses[peak + lags]).max() >= bar:
        return True
    below, above = int(0.1 * period) + 1, int(np.ceil(0.1 * period)) + 2
    for sign in (-1, 1):
        for k in range(1, _PULSE_SIDE_PERIODS + 1):
            lo, hi = max(0, peak + sign * k * period - below), min(n, peak + sign * k * period + above)
            if hi <= lo:
                break
            near = np.where(_away_from(others, lo, hi, _WIDTHS + _PULSE_JITTER, _WIDTHS + _PULSE_JITTER + 1),
                            pulses[lo:hi], 0.0)
            if near.max() < bar:
                break
        else:
            return True
    return False


def _backward_error(x: np.ndarray, coefs: np.ndarray, block: int) -> np.ndarray:
    """Prediction error of x (n,) run backwards in time with the same models (autocorrelation
    models predict as well backwards as forwards)."""
    n = x.size
    blocks = coefs.shape[0]
    pad = blocks * block - n
    reversed_x = np.concatenate([np.zeros(pad), x[::-1]])
    return prediction_error(reversed_x, coefs[::-1], block)[pad:][::-1]


def fill_regions(x: np.ndarray, regions: list[tuple[int, int]], coefs: np.ndarray, block: int) -> np.ndarray:
    """Refill [start, stop) ranges of x (n,) by LSAR interpolation with each region's block model."""
    out = x.copy()
    p = coefs.shape[1]
    # Regions closer than the refill's context are refilled together, so that
    # neither is rebuilt from the other's corrupted samples.
    clusters: list[list[tuple[int, int]]] = []
    for start, stop in sorted(regions):
        if clusters and start - clusters[-1][-1][1] < 2 * p:
            clusters[-1].append((start, stop))
        else:
            clusters.append([(start, stop)])
    for cluster in clusters:
        first, last = cluster[0][0], cluster[-1][1]
        lo, hi = max(0, first - 2 * p), min(x.size, last + 2 * p)
        missing = np.zeros(hi - lo, dtype=bool)
        for start, stop in cluster:
            missing[start - lo : stop - lo] = True
        # A few samples between two detections belong to one pulse wider than
        # the detector's widest (two clicks side by side): refill them too.
        for (_, stop), (start, _) in zip(cluster, cluster[1:]):
            if start - stop <= 2 * _NARROW_PAD:
                missing[stop - lo : start - lo] = True
        a = coefs[min(first // block, coefs.shape[0] - 1)]
        out[lo:hi] = lsar_fill(out[lo:hi], missing, a)
    return out


@dataclass
class Declick(Stage):
    """Find clicks and crackle and refill them from the surrounding signal.

    ``threshold_db``: how far the matched prediction error of an impulse must
    rise above its robust level in the block; lower finds fainter clicks and
    risks consonants. ``peak_ratio_db``: how far above the typical error peak
    of the surrounding +-100 ms (glottal pulses) it must rise.
    ``min_relative_db``: clicks whose prediction error is further than this
    below the local signal RMS are masked by the programme and left alone.
    ``order``: predictor order at 48 kHz (scaled with the rate).
    ``max_click_ms``: longer bursts are not treated as clicks.
    ``min_level_db``: impulses whose amplitude is further than this under the
    programme's level (99th percentile of |x|) are left alone.
    ``thorough``: refit the models twice and search again after the repair,
    which finds dense clicks and the second click of close pairs; False does
    one refit and one search, about twice as fast, which is enough to count
    clicks (the diagnosis uses it).
    ``sparse_clicks_per_minute``: a channel with fewer clicks a minute than
    this over the full gate (at 32 kHz and above, or fewer than
    ``_SPARSE_AT_LEAST_FULL_BAND`` in all) is taken for clean speech and keeps
    only the clear ones (``_SPARSE_MARGIN_DB`` over the gate): the marginal
    ones there are the speaker's own pulses, releases and mouth clicks. 0 keeps every
    detection, for a tape with a few faint clicks a minute (at 0.25 clicks
    a second the rule finds 75 % of them, against 97 % without it). A channel
    with at least that many has crackle, and its second look after the
    repair (``thorough``) searches ``_CRACKLE_BAR_DB`` under the gate for the
    clicks inside loud speech; 0 turns that off too.
    """

    name = "declick"
    threshold_db: float = 34.0
    peak_ratio_db: float = 6.0
    min_relative_db: float = -10.0
    order: int = 32
    max_click_ms: float = 3.0
    min_level_db: float = -30.0
    thorough: bool = True
    sparse_clicks_per_minute: float = _SPARSE_PER_MINUTE

    def __post_init__(self) -> None:
        check_range("threshold_db", self.threshold_db, 16.0, 60.0)
        check_range("peak_ratio_db", self.peak_ratio_db, 6.0, 40.0)
        check_range("min_relative_db", self.min_relative_db, -60.0, 20.0)
        check_range("order", self.order, 8, 128)
        check_range("max_click_ms", self.max_click_ms, 0.1, 20.0)
        check_range("min_level_db", self.min_level_db, -120.0, 0.0)
        check_range("sparse_clicks_per_minute", self.sparse_clicks_per_minute, 0.0, 600.0)


    def _geometry(self, rate: int) -> tuple[int, int]:
        p = _order_for(rate, self.order)
        return p, max(4 * p, int(_BLOCK_S * rate))

    def find(self, x: np.ndarray, rate: int) -> tuple[list[tuple[int, int]], np.ndarray | None]:
        """Click regions of one channel x (n,) and the AR models to refill them with.

        """
        p, block = self._geometry(rate)
        if x.size < 2 * block:
            return [], None
        coefs = block_ar(x, p, block)
        # Loud clicks whiten the models fitted around them, which takes the
        # matched detector's gain away; a lenient first search finds enough of
        # them to refit the models on a repaired copy before the real search.
        for _ in range(_REFITS if self.thorough else 1):
            loose = [(s, e) for s, e, _ in find_clicks(
                x, rate, self.order, self.threshold_db - _LOOSE_DB, max(0.0, self.peak_ratio_db - 6),
                self.min_relative_db, self.max_click_ms, coefs=coefs, min_level_db=self.min_level_db, onset_gate=False)]
            if not loose:
                break
            coefs = block_ar(fill_regions(x, loose, coefs, block), p, block)
        scored = find_clicks(x, rate, self.order, self.threshold_db, self.peak_ratio_db,
                             self.min_relative_db, self.max_click_ms, coefs=coefs, min_level_db=self.min_level_db,
                             fit_refill=True)
        regions = [(s, e) for s, e, _ in scored]
        if regions and self.thorough:
            # Two clicks a few samples apart make one detection, refilled over
            # the likelier pulse; the other stands alone once that is repaired.
            # (On the tuning files such pairs at 20 clicks/s made 90 % of one
            # file's remaining error.)
            crackle = rate < FULL_BAND_RATE_HZ and _has_crackle(scored, x.size / rate, self.sparse_clicks_per_minute)
            again = find_clicks(fill_regions(x, regions, coefs, block), rate, self.order, self.threshold_db,
                                self.peak_ratio_db, self.min_relative_db, self.max_click_ms, coefs=coefs,
                                min_level_db=self.min_level_db, refilled=regions,
                                crackle_db=_CRACKLE_BAR_DB if crackle else 0.0, fit_refill=True)
            scored = _merge_scored(scored + again)
        scored = _without_marginal(scored, x.size / rate, self.sparse_clicks_per_minute,
                                   0 if rate < FULL_BAND_RATE_HZ else _SPARSE_AT_LEAST_FULL_BAND)
        return [(s, e) for s, e, _ in scored], coefs

    def detect(self, audio: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
        found = [self.find(np.asarray(ch, dtype=np.float64), sample_rate_hz) for ch in audio]
        minutes = audio.shape[1] / sample_rate_hz / 60 if audio.shape[1] else 0.0
        count = max((len(r) for r, _ in found), default=0)
        return {
            "clicks": int(sum(len(r) for r, _ in found)),
            "clicks_per_minute": round(count / minutes, 2) if minutes else 0.0,
            "_found": found,
        }

    def repair(self, audio: np.ndarray, sample_rate_hz: int, findings: Mapping[str, Any]) -> StageOutput:
        found = findings["_found"]
        if not any(regions for regions, _ in found):
            return StageOutput(audio, {"changed": False})
        _, block = self._geometry(sample_rate_hz)
        out = np.array(audio, dtype=np.float64)
        for c, (regions, coefs) in enumerate(found):
            if regions:
                out[c] = fill_regions(out[c], regions, coefs, block)
        samples = sum(e - s for regions, _ in found for s, e in regions)
        return StageOutput(
            out.astype(np.float32),
            {"changed": True, "samples_repaired": int(samples), "seconds_repaired": round(samples / sample_rate_hz, 4)},
        )


def _without_marginal(scored: list[tuple[int, int, float]], seconds: float,
                      per_minute: float = _SPARSE_PER_MINUTE, at_least: int = 0) -> list[tuple[int, int, float]]:
    """The scored regions [(start, stop, margin_db)] of an item ``seconds`` long, less the marginal ones
    when the item shows no crackle: fewer than ``per_minute`` a minute over the full gate, or fewer than
    ``at_least`` in all. ``per_minute`` 0 keeps every region."""
    if per_minute <= 0 or _has_crackle(scored, seconds, per_minute, at_least):
        return scored
    return [region for region in scored if region[2] >= _SPARSE_MARGIN_DB]


def _has_crackle(scored: list[tuple[int, int, float]], seconds: float, per_minute: float, at_least: int = 0) -> bool:
    """Whether an item ``seconds`` long has at least ``per_minute`` detections a minute over the full gate
    (and ``at_least`` in all) among its scored regions [(start, stop, margin_db)]; never when ``per_minute`` is 0."""
    confident = sum(1 for *_, margin_db in scored if margin_db > 0.0)
    return per_minute > 0 and confident >= max(at_least, per_minute * seconds / 60)


def _likeliest_pulse(statistics: list[np.ndarray], lo: int, hi: int) -> tuple[int, int]:
    """(first sample, width) of the largest statistic in [lo, hi) of any width; ``statistics[w]`` is width w + 1's."""
    fits = np.stack([stat[lo:hi] for stat in statistics])  # (widths, samples)
    w, t = np.unravel_index(int(np.argmax(fits)), fits.shape)
    return lo + int(t), int(w) + 1


def _near_refilled(position: int, refilled: list[tuple[int, int]] | None) -> bool:
    """Whether ``position`` lies within ``_REFILLED_AWAY`` samples of a [start, stop) region already refilled:
    a candidate there is what the refill left of a click."""
    return any(s - _REFILLED_AWAY <= position < e + _REFILLED_AWAY for s, e in refilled or ())


def _merge_scored(regions: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """(start, stop, margin_db) regions ([start, stop) in samples) sorted, overlapping ones joined, with the
    larger margin."""
    merged: list[tuple[int, int, float]] = []
    for start, stop, margin_db in sorted(regions):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop), max(merged[-1][2], margin_db))
        else:
            merged.append((start, stop, margin_db))
    return merged
