"""Test dummies that are files: small media written with the same ffmpeg archivox uses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from archivox.tasks.extract import ffmpeg_exe


def write_wav(path: Path, audio: np.ndarray, rate_hz: int, subtype: str = "PCM_16") -> Path:
    """audio: (channels, samples) float."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(audio).T, rate_hz, subtype=subtype)
    return path


def transcode(source: Path, destination: Path, *args: str) -> Path:
    """Run ffmpeg on local files (test set-up only)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), *args, str(destination)],
        check=True,
        timeout=120,
    )
    return destination


def video_with_audio(source_wav: Path, destination: Path, duration_s: float) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"color=c=gray:s=64x48:r=5:d={duration_s}",
            "-i", str(source_wav), "-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
            str(destination),
        ],
        check=True,
        timeout=120,
    )
    return destination
