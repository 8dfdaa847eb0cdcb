"""Broadband noise reduction with a neural denoiser (DeepFilterNet3 by default)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from archivox.errors import ConfigError
from archivox.tasks.chain import Stage, StageOutput, check_range


@dataclass
class Denoise(Stage):
    """Remove broadband noise (hiss, room noise, crowd, traffic) from speech.

    ``wet_mix`` mixes the dry input back in: archive practice is to keep
    some room tone rather than leave speech in an unnatural vacuum, and to
    use less for lossy sources (MP3) where the model's artefacts are more
    audible. 0.75 removes about 12 dB of noise at most from the mix.
    ``attenuation_limit_db`` caps the model's own suppression (100 = no cap).
    The model hears the item brought into the level range it works in
    (-30 to -16 dBFS active level for DeepFilterNet3, which mutes quieter
    speech as noise); the gain is undone on its output and reported as the
    metric ``input_gain_db``.
    ``dnsmos`` scores SIG/BAK/OVRL before and after (up to
    ``dnsmos_max_windows`` 9 s windows each, so long files stay cheap).
    ``device`` is "auto", "cpu" or "cuda[:N]"; reading it back gives the
    device actually used.
    """

    name = "denoise"
    model: str = "dfn3"
    attenuation_limit_db: float = 100.0
    wet_mix: float = 0.75
    dnsmos: bool = True
    dnsmos_max_windows: int = 16
    device: str = "auto"

    def __post_init__(self) -> None:
        from archivox.models.denoisers import available_denoisers

        if self.model not in available_denoisers():
            raise ConfigError(f"unknown denoiser {self.model!r}; valid names are {', '.join(available_denoisers())}")
        check_range("attenuation_limit_db", self.attenuation_limit_db, 1.0, 100.0)
        check_range("wet_mix", self.wet_mix, 0.0, 1.0)
        check_range("dnsmos_max_windows", self.dnsmos_max_windows, 1, 10_000)
        request = self._device_request
        if not (request in ("auto", "cpu") or request == "cuda" or request.startswith("cuda:")):
            raise ConfigError(f"device={request!r} is not supported; valid devices are 'auto', 'cpu', 'cuda', 'cuda:N'")

    def detect(self, audio: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
        if not self.dnsmos or audio.shape[1] == 0:
            return {}
        from archivox.models.dnsmos import dnsmos

        return dnsmos(audio, sample_rate_hz, self.dnsmos_max_windows).as_dict("dnsmos_before_")

    def repair(self, audio: np.ndarray, sample_rate_hz: int, findings: Mapping[str, Any]) -> StageOutput:
        if audio.shape[1] == 0:
            return StageOutput(audio, {"changed": False, "reason": "empty audio"})
        from archivox.models.denoisers import load_denoiser

        denoiser = load_denoiser(self.model, self._device_request)
        started = time.perf_counter()
        out = denoiser(
            audio,
            sample_rate_hz,
            attenuation_limit_db=None if self.attenuation_limit_db >= 100 else self.attenuation_limit_db,
            wet_mix=self.wet_mix,
        )
        seconds = time.perf_counter() - started
        duration_s = audio.shape[1] / sample_rate_hz
        lsnr = out.lsnr_db
        metrics: dict[str, Any] = {"changed": True}
        if lsnr.size:  # GTCRN estimates no SNR
            # The model's own estimate of the speech-to-noise ratio per 10 ms
            # frame, in [-15, 35] dB; the median ignores pauses better than the mean.
            metrics.update(lsnr_median_db=float(np.median(lsnr)), lsnr_mean_db=float(np.mean(lsnr)))
        metrics |= {
            # Non-zero where the item was too quiet (or too loud) for the model
            # and was brought into its range for the model's eyes only.
            "input_gain_db": out.input_gain_db,
            "seconds": seconds,
            "realtime_factor": duration_s / seconds if seconds > 0 else float("inf"),
            **denoiser.provenance(),
        }
        if self.dnsmos:
            from archivox.models.dnsmos import dnsmos

            metrics.update(dnsmos(out.audio, sample_rate_hz, self.dnsmos_max_windows).as_dict("dnsmos_after_"))
        return StageOutput(out.audio, metrics)


def _get_device(self: Denoise) -> str:
    from archivox.models.denoisers import resolve_device

    return resolve_device(self._device_request)


def _set_device(self: Denoise, value: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"device={value!r} must be a string such as 'auto', 'cpu' or 'cuda'")
    self._device_request = value


# The dataclass field ``device`` holds what was asked for ("auto"); the
# property reports what is used, which the chain records per stage. Assigned
# after @dataclass so that the generated __init__ keeps the "auto" default.
Denoise.device = property(_get_device, _set_device)  # type: ignore[assignment]
