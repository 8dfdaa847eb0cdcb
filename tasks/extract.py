"""Probing and decoding media with ffmpeg.

Every ffmpeg call is hardened the same way: the input is passed as a
``file:`` URL (so a name such as ``http:x`` or ``-i`` is never read as a
protocol or an option), only the ``file`` protocol and a list of ordinary
audio/video demuxers are whitelisted (a playlist
cannot reach other files or the network), and the process has a timeout.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ffmpeg
import numpy as np
from archivox.tasks.chain import WORKING_RATE_HZ

from archivox.errors import ConfigError, MediaError

ChannelPolicy = Literal["mix", "left", "right", "speech"]
CHANNEL_POLICIES: tuple[str, ...] = ("mix", "left", "right", "speech")

# Demuxers archivox opens. Playlist and concatenation demuxers (hls, concat,
# dash, image sequences) are left out on purpose: they make ffmpeg read other
# files that a crafted item names, inside the archive or outside it.
ALLOWED_DEMUXERS: tuple[str, ...] = (
    "wav", "w64", "rf64", "aiff", "au", "caf", "voc", "flac", "mp3", "ogg", "aac", "ac3", "eac3", "dts",
    "truehd", "mlp", "amr", "amrnb", "amrwb", "ape", "wv", "tta", "tak", "shn", "mpc", "mpc8", "dsf", "iff",
    "xwma", "gsm", "mov", "mp4", "m4a", "3gp", "matroska", "webm", "avi", "mpeg", "mpegts", "asf",
    "flv", "rm", "mxf", "dv", "nut", "wsaud", "vqf", "sln", "s337m", "smjpeg", "mpegvideo",
)
_FORMAT_WHITELIST = ",".join(ALLOWED_DEMUXERS)

# Bytes of ffmpeg's stderr kept in an error message: enough to see the cause,
# not so much that a catalog row holds a whole log.
_STDERR_TAIL = 1500


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The system ffmpeg when on PATH, else the one shipped by imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a dependency of archivox
        raise ConfigError("no ffmpeg found: install ffmpeg or `pip install imageio-ffmpeg`") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


def _file_url(path: Path) -> str:
    return "file:" + str(Path(path).absolute())


def _stderr_tail(stderr: bytes) -> str:
    """ffmpeg's last words on one line (a catalog cell), decoder addresses dropped."""
    lines = [re.sub(r" @ 0x[0-9a-f]+", "", line).strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    return " | ".join(line for line in lines if line)[-_STDERR_TAIL:]


@dataclass(frozen=True)
class MediaInfo:
    """What probing found in a file."""

    container: str
    duration_s: float
    audio_streams: int
    video_streams: int
    sample_rate_hz: int
    channels: int
    codec: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def probe(path: Path, timeout_s: float = 60.0) -> MediaInfo:
    """Describe the first audio stream of ``path``; MediaError if there is none.

    PyAV (a dependency of faster-whisper) reads the header with the same
    libavformat as ffmpeg; only the file protocol and ``ALLOWED_DEMUXERS`` are allowed.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty (0 bytes)")
    try:
        with av.open(
            str(path.absolute()),
            options={"protocol_whitelist": "file", "format_whitelist": _FORMAT_WHITELIST},
            timeout=timeout_s,
        ) as container:
            audio = [s for s in container.streams if s.type == "audio"]
            video = [s for s in container.streams if s.type == "video" and not _is_cover_art(s)]
            if not audio:
                raise MediaError(f"{path}: no audio stream (found {len(video)} video stream(s))")
            first = audio[0]
            duration_s = _duration_s(container, first)
            rate = int(first.codec_context.sample_rate or first.rate or 0)
            channels = int(first.codec_context.channels if hasattr(first.codec_context, "channels") else first.codec_context.layout.nb_channels)
            if rate <= 0 or channels <= 0:
                raise MediaError(f"{path}: audio stream has no usable sample rate or channel count")
            return MediaInfo(
                container=str(container.format.name),
                duration_s=duration_s,
                audio_streams=len(audio),
                video_streams=len(video),
                sample_rate_hz=rate,
                channels=channels,
                codec=str(first.codec_context.name),
            )
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises many error types for bad media
        raise MediaError(f"{path}: not readable as media ({type(exc).__name__}: {exc})") from exc


def _is_cover_art(stream) -> bool:
    disposition = getattr(stream, "disposition", None)
    try:
        return bool(disposition is not None and int(disposition) & 0x400)  # AV_DISPOSITION_ATTACHED_PIC
    except TypeError:
        return False


def _duration_s(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return 0.0


def decode(
    path: Path,
    *,
    rate_hz: int = WORKING_RATE_HZ,
    stream_index: int = 0,
    timeout_s: float = 3600.0,
) -> np.ndarray:
    """Decode one audio stream to float32 (channels, samples) at ``rate_hz``.

    ``stream_index`` counts audio streams only (0 is the first audio stream).
    """
    path = Path(path)
    info = probe(path)
    if stream_index >= info.audio_streams:
        raise MediaError(f"{path}: audio stream {stream_index} asked for, file has {info.audio_streams}")
    stdout = _ffmpeg_decode(path, "pipe:", stream_index, timeout_s, format="f32le", ar=rate_hz)
    samples = np.frombuffer(stdout, dtype="<f4")
    channels = info.channels
    if samples.size == 0:
        raise MediaError(f"{path}: the audio stream decodes to zero samples")
    if samples.size % channels:
        # ffmpeg downmixed or upmixed layouts it cannot represent; trust the data over the header.
        channels = 1
    audio = samples.reshape(-1, channels).T.copy()
    if not np.all(np.isfinite(audio)):
        audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    return audio


def _ffmpeg_decode(path: Path, target: str, stream_index: int, timeout_s: float, **output_args) -> bytes:
    """Run the hardened ffmpeg decode of one audio stream to float32 PCM at ``target``; returns stdout."""
    command = (
        ffmpeg.input(_file_url(path), protocol_whitelist="file", format_whitelist=_FORMAT_WHITELIST)
        .output(target, acodec="pcm_f32le", map=f"0:a:{stream_index}", **output_args)
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-xerror", "-y")
        .compile(cmd=ffmpeg_exe())
    )
    try:
        proc = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"{path}: ffmpeg did not finish decoding within {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        raise MediaError(f"{path}: ffmpeg could not decode the audio: {_stderr_tail(proc.stderr)}")
    return proc.stdout


# Samples per channel read at a time when a decoded file is reduced to the working audio.
_PIECE_SAMPLES = WORKING_RATE_HZ * 60


def decode_to_file(
    path: Path,
    destination: Path,
    *,
    channel_policy: str = "speech",
    rate_hz: int | None = WORKING_RATE_HZ,
    stream_index: int = 0,
    timeout_s: float = 3600.0,
    gain_db: float = 0.0,
) -> dict:
    """Decode one audio stream into a mono float32 WAV at ``rate_hz`` (None: the stream's own), in bounded memory.

    What ``decode`` followed by ``apply_channel_policy`` gives, for items of
    any length: ffmpeg writes the decoded audio to a work file beside
    ``destination`` (RF64 past 4 GB), which is then reduced to one channel a
    minute at a time, scaled by ``gain_db``. Returns the channel information
    of ``apply_channel_policy`` plus ``samples``. ``destination`` appears
    only when complete.
    """
    import soundfile as sf

    from archivox.fsutil import atomic_path

    path, destination = Path(path), Path(destination)
    if channel_policy not in CHANNEL_POLICIES:
        raise ConfigError(f"channel policy {channel_policy!r} is not one of {', '.join(CHANNEL_POLICIES)}")
    info = probe(path)
    if stream_index >= info.audio_streams:
        raise MediaError(f"{path}: audio stream {stream_index} asked for, file has {info.audio_streams}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    decoded = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.decoded.wav")
    try:
        resample = {"ar": rate_hz} if rate_hz else {}
        _ffmpeg_decode(path, _file_url(decoded), stream_index, timeout_s, format="wav", rf64="auto", **resample)
        try:
            reader = sf.SoundFile(str(decoded))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise MediaError(f"{path}: the audio stream decodes to zero samples") from exc
        with reader:
            if reader.frames == 0:
                raise MediaError(f"{path}: the audio stream decodes to zero samples")
            channels = reader.channels
            if channels == 1:
                index = 0
            elif channel_policy == "mix":
                index = -1
            elif channel_policy in ("left", "right"):
                index = 0 if channel_policy == "left" else 1
            else:
                index = int(np.argmax(_speech_band_energy_of_file(reader, reader.samplerate)))
                reader.seek(0)
            with atomic_path(destination) as temporary, sf.SoundFile(
                str(temporary), "w", samplerate=reader.samplerate, channels=1, subtype="FLOAT", format="WAV"
            ) as writer:
                for piece in reader.blocks(blocksize=_PIECE_SAMPLES, dtype="float32", always_2d=True):
                    mono = piece.mean(axis=1) if index < 0 else piece[:, index]
                    if gain_db:
                        mono = mono * np.float32(10 ** (gain_db / 20))
                    if not np.all(np.isfinite(mono)):
                        mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
                    writer.write(mono)
            samples = reader.frames
    finally:
        decoded.unlink(missing_ok=True)
    return {"channel_policy": channel_policy, "channel_used": index, "channels_in": channels, "samples": samples}


def _speech_band_energy_of_file(reader, rate_hz: int) -> np.ndarray:
    """``speech_band_energy`` of a whole open sound file, read a piece at a time. Shape (channels,)."""
    from scipy import signal

    sos = signal.butter(4, [300, min(3400, rate_hz / 2 - 1)], btype="bandpass", fs=rate_hz, output="sos")
    state = np.zeros((sos.shape[0], reader.channels, 2))
    total = np.zeros(reader.channels)
    for piece in reader.blocks(blocksize=_PIECE_SAMPLES, dtype="float32", always_2d=True):
        band, state = signal.sosfilt(sos, piece.T.astype(np.float64), axis=1, zi=state)
        total += np.sum(band**2, axis=1)
    return total / max(reader.frames, 1)


def speech_band_energy(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    """Energy per channel in 300-3400 Hz, where speech carries its intelligibility. Shape (channels,)."""
    from scipy import signal

    sos = signal.butter(4, [300, min(3400, rate_hz / 2 - 1)], btype="bandpass", fs=rate_hz, output="sos")
    band = signal.sosfilt(sos, audio, axis=1)
    return np.mean(band.astype(np.float64) ** 2, axis=1)


def apply_channel_policy(audio: np.ndarray, policy: str, rate_hz: int = WORKING_RATE_HZ) -> tuple[np.ndarray, dict]:
    """Reduce (channels, samples) to (1, samples) according to ``policy``.

    ``speech`` keeps the channel with the most speech-band energy, which is
    right for field recordings where one microphone was not plugged in or
    picked up only the interviewer's room.
    """
    if policy not in CHANNEL_POLICIES:
        raise ConfigError(f"channel policy {policy!r} is not one of {', '.join(CHANNEL_POLICIES)}")
    channels = audio.shape[0]
    if channels == 1:
        return audio, {"channel_policy": policy, "channel_used": 0, "channels_in": 1}
    if policy == "mix":
        return audio.mean(axis=0, keepdims=True), {"channel_policy": policy, "channel_used": -1, "channels_in": channels}
    if policy == "left":
        index = 0
    elif policy == "right":
        index = 1
    else:
        index = int(np.argmax(speech_band_energy(audio, rate_hz)))
    return audio[index : index + 1], {"channel_policy": policy, "channel_used": index, "channels_in": channels}


def has_audio(path: Path) -> bool:
    """True when ffmpeg can read an audio stream from ``path`` (used by ``archivox scan``)."""
    try:
        probe(path, timeout_s=30.0)
    except MediaError:
        return False
    return True


def encode(audio: np.ndarray, rate_hz: int, destination: Path, *, codec_args: list[str], timeout_s: float = 600.0) -> None:
    """Encode float32 (channels, samples) to ``destination`` with ffmpeg (no atomicity here)."""
    audio = np.ascontiguousarray(np.asarray(audio, dtype="<f4").T)
    command = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "f32le", "-ar", str(rate_hz), "-ac", str(audio.shape[1]), "-i", "pipe:",
        *codec_args, _file_url(destination),
    ]
    try:
        proc = subprocess.run(command, input=audio.tobytes(), capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"ffmpeg did not finish encoding {destination} within {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        raise MediaError(f"ffmpeg could not encode {destination}: {_stderr_tail(proc.stderr)}")
