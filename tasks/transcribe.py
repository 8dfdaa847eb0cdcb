"""Transcription of one item with faster-whisper.

Audio reaches Whisper as float32 mono ``(samples,)`` at 16 kHz; the item's
files (any rate, any channel count) are mixed down and resampled here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from archivox.errors import ConfigError, MediaError

WHISPER_RATE_HZ = 16_000


@dataclass
class TranscribeOptions:
    """How an item is transcribed.

    ``model``: "tiny.en", "base" or a local CTranslate2 folder. ``language``:
    ISO code that overrides detection for every item (a manifest row's
    language overrides it in turn). ``beam_size``: 1-20.
    """

    model: str = "tiny.en"
    language: str | None = None
    device: str = "auto"
    compute_type: str = "auto"
    vad: bool = True
    word_timestamps: bool = True
    beam_size: int = 5
    # What an English-only model does with an item whose language is not
    # English: "fallback" transcribes it with ``fallback_model``, "error"
    # refuses it.
    on_language_mismatch: str = "fallback"
    fallback_model: str = "base"

    def __post_init__(self) -> None:
        if not 1 <= self.beam_size <= 20:
            raise ConfigError(f"beam_size={self.beam_size!r} is out of range; valid range is [1, 20]")
        if self.on_language_mismatch not in ("fallback", "error"):
            raise ConfigError(
                f"on_language_mismatch={self.on_language_mismatch!r} is not valid; use 'fallback' or 'error'"
            )


@dataclass
class Word:
    start_s: float
    end_s: float
    word: str
    probability: float


@dataclass
class Segment:
    index: int
    start_s: float
    end_s: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    words: list[Word] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


@dataclass
class Transcript:
    segments: list[Segment]
    language: str
    language_probability: float
    duration_s: float
    model_name: str
    model_sha256: str
    candidate: str = "restored"
    evidence: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The whole transcript as one line of running text."""
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Transcript":
        data = dict(data)
        segments = []
        for s in data.pop("segments", []):
            s = dict(s)
            words = [Word(**w) for w in s.pop("words", []) or []]
            segments.append(Segment(words=words, **s))
        return cls(segments=segments, **data)


def load_audio_16k(path: Path) -> np.ndarray:
    """Read an audio file and return mono float32 ``(samples,)`` at 16 kHz."""
    import soundfile as sf

    try:
        audio, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise MediaError(f"cannot read audio {path}: {exc}") from exc
    return to_whisper_input(audio.T, rate_hz)


def to_whisper_input(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    """``(channels, samples)`` or ``(samples,)`` at ``rate_hz`` -> mono float32 ``(samples,)`` at 16 kHz."""
    from scipy.signal import resample_poly

    audio = np.asarray(audio, dtype=np.float32)
    mono = audio if audio.ndim == 1 else audio.mean(axis=0)
    if rate_hz != WHISPER_RATE_HZ:
        g = math.gcd(int(rate_hz), WHISPER_RATE_HZ)
        mono = resample_poly(mono, WHISPER_RATE_HZ // g, int(rate_hz) // g).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def transcribe_item(
    sources: Mapping[str, Path], options: TranscribeOptions | None = None, language: str | None = None
) -> Transcript:
    """Transcribe one item.

    ``sources``: audio files of the item: "restored" (always), "pre_denoise"
    (the chain's audio right before denoising, when it had a denoise stage) and
    "original". ``language``: the manifest row's language, which overrides
    ``options.language`` and detection.
    """
    from archivox.models.whisper import load_whisper

    options = options or TranscribeOptions()
    if "restored" not in sources:
        raise ConfigError(f"transcribe_item needs a 'restored' source; got {sorted(sources)}")
    language = language or options.language
    handle = _model_for(options, language)
    audio = load_audio_16k(Path(sources["restored"]))
    return _run_whisper(handle, audio, options, language, candidate="restored")


def _model_for(options: TranscribeOptions, language: str | None):
    """The model to use for an item in ``language`` (None: unknown, to be detected)."""
    from archivox.models.whisper import load_whisper

    handle = load_whisper(options.model, options.device, options.compute_type)
    if handle.multilingual or language in (None, "en"):
        return handle
    if options.on_language_mismatch == "error":
        raise ConfigError(
            f"model {handle.name!r} is English-only but the item's language is {language!r}; "
            "use a multilingual model (--model base, pip install 'archivox[multilingual]') "
            "or set on_language_mismatch='fallback'"
        )
    return load_whisper(options.fallback_model, options.device, options.compute_type)


def _run_whisper(handle, audio: np.ndarray, options: TranscribeOptions, language: str | None, candidate: str) -> Transcript:
    """One decoding pass. ``audio``: mono float32 ``(samples,)`` at 16 kHz."""
    if not handle.multilingual and language not in (None, "en"):
        raise ConfigError(
            f"model {handle.name!r} is English-only but the item's language is {language!r}; "
            "use a multilingual model (--model base, pip install 'archivox[multilingual]')"
        )
    segments_iter, info = handle.model.transcribe(
        audio,
        language=language if handle.multilingual else "en",
        beam_size=options.beam_size,
        vad_filter=options.vad,
        word_timestamps=options.word_timestamps,
    )
    segments = [
        Segment(
            index=i,
            start_s=float(s.start),
            end_s=float(s.end),
            text=s.text.strip(),
            avg_logprob=float(s.avg_logprob),
            no_speech_prob=float(s.no_speech_prob),
            compression_ratio=float(s.compression_ratio),
            words=[Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in (s.words or [])],
        )
        for i, s in enumerate(segments_iter)
    ]
    return Transcript(
        segments=segments,
        language=info.language,
        language_probability=float(info.language_probability),
        duration_s=float(audio.size / WHISPER_RATE_HZ),
        model_name=handle.name,
        model_sha256=handle.sha256,
        candidate=candidate,
        evidence={},
    )
