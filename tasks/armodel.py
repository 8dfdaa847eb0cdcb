"""Autoregressive (linear-prediction) tools shared by the declick and declip stages.

Signals are float64 1-D arrays here; stages loop over channels.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft
from scipy import linalg



def block_ar(x: np.ndarray, order: int, block: int) -> np.ndarray:
    """Predictor coefficients per block of ``block`` samples. x: (n,) -> (blocks, order).

    The convention is x[t] ~ sum_i a[i] x[t-1-i]. Each block's model comes
    from the autocorrelation of a Hann-windowed stretch twice the block long,
    centred on the block, with a little white-noise correction so that band-
    limited audio (a 16 kHz source at 48 kHz) still gives a stable model.
    """
    n = x.size
    blocks = max(1, -(-n // block))
    span = 2 * block
    padded = np.pad(x, (block // 2, span))
    frames = np.lib.stride_tricks.sliding_window_view(padded, span)[::block][:blocks] * np.hanning(span)
    nfft = 1 << int(np.ceil(np.log2(2 * span)))
    spectrum = np.abs(sp_fft.rfft(frames, n=nfft, axis=1)) ** 2
    acf = sp_fft.irfft(spectrum, n=nfft, axis=1)[:, : order + 1]
    acf[:, 0] = acf[:, 0] * (1 + 1e-4) + 1e-12
    coefs = np.zeros((blocks, order))
    for b in range(blocks):
        try:
            coefs[b] = linalg.solve_toeplitz(acf[b, :order], acf[b, 1 : order + 1])
        except (linalg.LinAlgError, ValueError):
            coefs[b] = 0.0
    return coefs


def prediction_error(x: np.ndarray, coefs: np.ndarray, block: int) -> np.ndarray:
    """Forward prediction error with each block's own predictor. x: (n,), coefs: (blocks, order) -> (n,)."""
    order = coefs.shape[1]
    n = x.size
    blocks = coefs.shape[0]
    total = blocks * block
    padded = np.concatenate([np.zeros(order), x, np.zeros(max(0, total - n))])
    # past[t] = [x[t-1], x[t-2], ..., x[t-order]], grouped by block.
    past = np.lib.stride_tricks.sliding_window_view(padded, order)[:total, ::-1].reshape(blocks, block, order)
    prediction = np.einsum("bto,bo->bt", past, coefs).reshape(-1)[:n]
    return x - prediction


def _residual_matrix(a: np.ndarray, length: int) -> np.ndarray:
    """A with (A @ y)[r] = y[r+p] - sum_i a[i] y[r+p-1-i] for a segment of ``length``. (length-p, length)."""
    order = a.size
    rows = length - order
    taps = np.concatenate([-a[::-1], [1.0]])  # multiplies y[r], ..., y[r+p]
    matrix = np.zeros((rows, length))
    r = np.arange(rows)
    for j, tap in enumerate(taps):
        matrix[r, r + j] = tap
    return matrix


def lsar_fill(segment: np.ndarray, missing: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Least-squares AR interpolation (Janssen, Veldhuis and Vries 1986).

    The samples of ``segment`` where ``missing`` is True are replaced by the
    values that make the AR prediction error over the segment smallest; the
    segment should carry at least ``len(a)`` known samples on each side.
    segment, missing: (L,). Returns a new (L,) array.
    """
    if not missing.any() or segment.size <= a.size:
        return segment.copy()
    matrix = _residual_matrix(a, segment.size)
    unknown = matrix[:, missing]
    known = matrix[:, ~missing] @ segment[~missing]
    values, *_ = np.linalg.lstsq(unknown, -known, rcond=None)
    out = segment.copy()
    out[missing] = values
    return out


def matched_error(error: np.ndarray, coefs: np.ndarray, block: int) -> np.ndarray:
    """The prediction error filtered by its own time-reversed whitening filter. (n,) -> (n,).

    An additive impulse at t leaves the pattern c = [1, -a1, ..., -ap] in the
    error from t onwards; correlating with c collects all of it (the least-
    squares detector of an impulse in AR noise, after Vaseghi and Rayner).
    A glottal pulse puts one spike in the error without that pattern, so it
    gains far less than a click does.
    """
    order = coefs.shape[1]
    n = error.size
    blocks = coefs.shape[0]
    total = blocks * block
    taps = np.concatenate([np.ones((blocks, 1)), -coefs], axis=1)  # (blocks, p+1)
    padded = np.concatenate([error, np.zeros(order + max(0, total - n))])
    future = np.lib.stride_tricks.sliding_window_view(padded, order + 1)[:total].reshape(blocks, block, order + 1)
    return np.einsum("bto,bo->bt", future, taps).reshape(-1)[:n]
