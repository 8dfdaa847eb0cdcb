"""DNSMOS P.835 (SIG, BAK, OVRL) with the ONNX model shipped by ``speechmos``.

Only the model file is taken from the package: its Python front end imports
librosa for the P.808 score, which archivox does not need. The P.835 model
reads raw 16 kHz waveform in windows of 9.01 s; a clip is scored as the mean
over windows hopped by 1 s, and clips shorter than one window are repeated
until they fill it (as the reference implementation does). Scores are on
the 1-5 MOS scale.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from archivox.errors import ModelNotFoundError

DNSMOS_RATE_HZ = 16_000
_WINDOW_SAMPLES = int(9.01 * DNSMOS_RATE_HZ)
_HOP_SAMPLES = DNSMOS_RATE_HZ
# Third-order polynomials mapping the network's raw outputs to MOS (the
# non-personalised DNSMOS P.835 calibration).
_POLY_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
_POLY_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_POLY_OVR = np.poly1d([-0.06766283, 1.11546468, 0.04602535])

_lock = threading.Lock()
_session = None


@dataclass
class DnsmosScores:
    sig: float
    bak: float
    ovrl: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}sig": self.sig, f"{prefix}bak": self.bak, f"{prefix}ovrl": self.ovrl}


def model_path() -> Path:
    try:
        import speechmos
    except ImportError as exc:
        raise ModelNotFoundError("DNSMOS needs the 'speechmos' package: pip install speechmos") from exc
    path = Path(speechmos.__file__).parent / "dnsmos_models" / "sig_bak_ovr.onnx"
    if not path.is_file():
        raise ModelNotFoundError(f"DNSMOS model not found at {path}; reinstall speechmos")
    return path


def _get_session():
    global _session
    with _lock:
        if _session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            # The arena would keep the largest batch's activations for the life
            # of the worker process (about 2 GB for 16 windows).
            opts.enable_cpu_mem_arena = False
            _session = ort.InferenceSession(str(model_path()), opts, providers=["CPUExecutionProvider"])
        return _session


def dnsmos(audio: np.ndarray, sample_rate_hz: int, max_windows: int | None = 32) -> DnsmosScores:
    """Score (samples,) or (channels, samples) audio; channels are averaged first.

    ``max_windows`` bounds the cost on long recordings: at most that many
    9.01 s windows, evenly spread over the clip, are scored (None: all).
    Returns NaN scores for empty or silent input, which DNSMOS cannot judge.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.size == 0 or not np.any(x):
        return DnsmosScores(float("nan"), float("nan"), float("nan"))
    if sample_rate_hz != DNSMOS_RATE_HZ:
        g = gcd(int(sample_rate_hz), DNSMOS_RATE_HZ)
        x = resample_poly(x, DNSMOS_RATE_HZ // g, int(sample_rate_hz) // g)
    x = np.clip(x, -1.0, 1.0).astype(np.float32)
    if x.size < _WINDOW_SAMPLES:
        x = np.tile(x, -(-_WINDOW_SAMPLES // x.size))
    n_windows = int(np.floor(x.size / DNSMOS_RATE_HZ - 9.01)) + 1
    starts = [i * _HOP_SAMPLES for i in range(n_windows) if i * _HOP_SAMPLES + _WINDOW_SAMPLES <= x.size]
    if max_windows is not None and len(starts) > max_windows:
        pick = np.linspace(0, len(starts) - 1, max_windows).round().astype(int)
        starts = [starts[i] for i in pick]
    batch = np.stack([x[s : s + _WINDOW_SAMPLES] for s in starts])
    sess = _get_session()
    # Four windows at a time: the model's activations grow with the batch (about
    # 120 MB a window), and larger batches are no faster on the CPU.
    raw = np.concatenate([sess.run(None, {"input_1": batch[i : i + 4]})[0] for i in range(0, len(batch), 4)])
    return DnsmosScores(
        sig=float(np.mean(_POLY_SIG(raw[:, 0]))),
        bak=float(np.mean(_POLY_BAK(raw[:, 1]))),
        ovrl=float(np.mean(_POLY_OVR(raw[:, 2]))),
    )
