"""Per-segment hallucination flags for Whisper transcripts.

Whisper invents text: it loops on a phrase, fills silence or noise with stock
sentences ("Thank you for watching"), or switches language. archivox flags
such segments and keeps their text, so that a researcher sees the doubt
instead of a silent gap. Flags (strings stored in ``Segment.flags``):

- ``repetition``: a phrase of 1-8 words repeated back to back, or a segment
  that repeats the one before it word for word.
- ``compression_ratio``: the gzip compression ratio of the text is above the
  threshold (Whisper's own loop detector, 2.4 by default).
- ``low_logprob``: the mean token log-probability is below the threshold.
- ``in_silence``: most of the segment's words lie where the Silero VAD heard
  no speech.
- ``no_speech``: Whisper's own no-speech probability is high while the text is
  uncertain (the rule Whisper uses to skip a window; archivox decodes with it
  off and applies it here, so the window's text is kept).
- ``too_fast``: more text than anyone speaks in the segment's time (over 60
  characters a second; read speech runs at about 15, the fastest at about
  30): a loop that Whisper squeezed into the last fraction of a second.
- ``language_flip``: the text is written in a script that does not belong to
  the item's language (Latin text in a Russian item, CJK text in an English
  one), or its window was detected as another language with confidence.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from archivox.tasks.chain import check_range

FLAG_NAMES: tuple[str, ...] = (
    "repetition", "compression_ratio", "low_logprob", "in_silence", "no_speech", "too_fast", "language_flip",
)

# Languages whose ordinary text is in Latin letters (Whisper codes).
_LATIN_LANGUAGES = frozenset(
    "en de fr es it pt nl sv da no nn fi is et lv lt pl cs sk sl hr bs sr hu ro ca gl eu oc br cy ga mt "
    "sq tr az uz tk id ms jw su tl sw so yo ha ln haw mi la af lb fo vi ht sn".split()
)
_SCRIPT_OF = {  # non-Latin languages -> a Unicode name prefix of their letters
    "ru": "CYRILLIC", "uk": "CYRILLIC", "be": "CYRILLIC", "bg": "CYRILLIC", "mk": "CYRILLIC",
    "kk": "CYRILLIC", "mn": "CYRILLIC", "tt": "CYRILLIC", "ba": "CYRILLIC", "tg": "CYRILLIC",
    "el": "GREEK", "ar": "ARABIC", "fa": "ARABIC", "ur": "ARABIC", "ps": "ARABIC", "sd": "ARABIC",
    "he": "HEBREW", "yi": "HEBREW", "hi": "DEVANAGARI", "mr": "DEVANAGARI", "ne": "DEVANAGARI",
    "sa": "DEVANAGARI", "bn": "BENGALI", "as": "BENGALI", "ta": "TAMIL", "te": "TELUGU",
    "kn": "KANNADA", "ml": "MALAYALAM", "gu": "GUJARATI", "pa": "GURMUKHI", "si": "SINHALA",
    "th": "THAI", "lo": "LAO", "my": "MYANMAR", "km": "KHMER", "ka": "GEORGIAN", "hy": "ARMENIAN",
    "am": "ETHIOPIC", "ko": "HANGUL", "zh": "CJK", "ja": "CJK", "yue": "CJK", "bo": "TIBETAN",
}


@dataclass
class FlagOptions:
    """Thresholds of the flags; the defaults follow Whisper's own decoding fallbacks."""

    compression_ratio_max: float = 2.4
    logprob_min: float = -1.0
    no_speech_prob_min: float = 0.6
    # A segment is "in silence" when less than this share of its word time
    # overlaps VAD speech (padded by ``vad_pad_s``).
    speech_overlap_min: float = 0.25
    vad_threshold: float = 0.5
    vad_pad_s: float = 0.2
    min_repeats: int = 3
    script_mismatch_min: float = 0.5
    # Over 5000 segments of corpus speech (clean and degraded), 99.9 % ran
    # under 32 characters a second; short texts are left out because their
    # rate rests on a timestamp's rounding.
    chars_per_s_max: float = 60.0
    too_fast_min_chars: int = 20

    def __post_init__(self) -> None:
        check_range("compression_ratio_max", self.compression_ratio_max, 1.0, 10.0)
        check_range("logprob_min", self.logprob_min, -10.0, 0.0)
        check_range("no_speech_prob_min", self.no_speech_prob_min, 0.0, 1.0)
        check_range("speech_overlap_min", self.speech_overlap_min, 0.0, 1.0)
        check_range("vad_threshold", self.vad_threshold, 0.05, 0.95)
        check_range("vad_pad_s", self.vad_pad_s, 0.0, 2.0)
        check_range("min_repeats", self.min_repeats, 2, 20)
        check_range("script_mismatch_min", self.script_mismatch_min, 0.0, 1.0)
        check_range("chars_per_s_max", self.chars_per_s_max, 10.0, 1000.0)
        check_range("too_fast_min_chars", self.too_fast_min_chars, 1, 1000)


def speech_regions(audio_16k: np.ndarray, threshold: float = 0.5, pad_s: float = 0.2) -> list[tuple[float, float]]:
    """Where the Silero VAD (shipped inside faster-whisper) hears speech, in seconds.

    ``audio_16k``: mono float32 ``(samples,)`` at 16 kHz.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if audio_16k.size == 0:
        return []
    opts = VadOptions(threshold=threshold, min_silence_duration_ms=300, speech_pad_ms=int(pad_s * 1000),
                      min_speech_duration_ms=100)
    return [(c["start"] / 16_000, c["end"] / 16_000) for c in get_speech_timestamps(audio_16k, opts)]


def flag_segments(
    segments: Sequence,
    language: str,
    audio_16k: np.ndarray | None = None,
    options: FlagOptions | None = None,
    regions: Sequence[tuple[float, float]] | None = None,
    window_languages: Sequence[tuple[float, float, str, float]] = (),
) -> None:
    """Set ``flags`` on each segment in place (previous flags are replaced).

    ``segments``: archivox ``Segment`` objects. ``audio_16k``: the audio the
    segments were decoded from, mono ``(samples,)`` at 16 kHz, for the VAD;
    or pass ``regions`` (speech stretches in seconds) computed already.
    ``window_languages``: (start_s, end_s, language, probability) per window
    where the item was checked window by window.
    """
    options = options or FlagOptions()
    if regions is None and audio_16k is not None:
        regions = speech_regions(audio_16k, options.vad_threshold, options.vad_pad_s)
    previous_words: list[str] = []
    for seg in segments:
        flags: list[str] = []
        words = _words(seg.text)
        if words and (repeated_run(words) >= options.min_repeats or (len(words) >= 3 and words == previous_words)):
            flags.append("repetition")
        if seg.compression_ratio > options.compression_ratio_max:
            flags.append("compression_ratio")
        if seg.avg_logprob < options.logprob_min:
            flags.append("low_logprob")
        if regions is not None and speech_overlap(seg, regions) < options.speech_overlap_min:
            flags.append("in_silence")
        if seg.no_speech_prob > options.no_speech_prob_min and seg.avg_logprob < options.logprob_min:
            flags.append("no_speech")
        if too_fast(seg, options):
            flags.append("too_fast")
        if _language_flip(seg, language, window_languages, options):
            flags.append("language_flip")
        seg.flags = flags
        previous_words = words


def too_fast(segment, options: FlagOptions | None = None) -> bool:
    """Whether the segment holds more text than can be spoken in its time."""
    options = options or FlagOptions()
    chars = len(segment.text.strip())
    return chars >= options.too_fast_min_chars and chars > options.chars_per_s_max * max(segment.end_s - segment.start_s, 0.0)


def repeated_run(words: Sequence[str], max_phrase: int = 8) -> int:
    """The most times any phrase of 1..max_phrase words repeats back to back in ``words``."""
    best = 1
    n = len(words)
    for size in range(1, min(max_phrase, n // 2) + 1):
        for start in range(0, size):
            run = 1
            i = start
            while i + 2 * size <= n:
                if words[i : i + size] == words[i + size : i + 2 * size]:
                    run += 1
                    best = max(best, run)
                else:
                    run = 1
                i += size
    return best


def speech_overlap(segment, regions: Sequence[tuple[float, float]]) -> float:
    """Share (0-1) of the segment's word time (its whole span if it has no words) inside ``regions``."""
    spans = [(w.start_s, w.end_s) for w in segment.words if w.end_s > w.start_s] or [(segment.start_s, segment.end_s)]
    total = sum(e - s for s, e in spans)
    if total <= 0:
        return 1.0
    inside = 0.0
    for s, e in spans:
        for rs, re_ in regions:
            inside += max(0.0, min(e, re_) - max(s, rs))
    return min(1.0, inside / total)


def script_share(text: str, language: str) -> float:
    """Share (0-1) of the letters in ``text`` that belong to the script of ``language``; 1.0 if unknown."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    if language in _LATIN_LANGUAGES:
        ok = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
    elif language in _SCRIPT_OF:
        prefix = _SCRIPT_OF[language]
        names = [unicodedata.name(c, "") for c in letters]
        if prefix == "CJK":
            ok = sum(1 for n in names if n.startswith(("CJK", "HIRAGANA", "KATAKANA")))
        else:
            ok = sum(1 for n in names if n.startswith(prefix))
    else:
        return 1.0
    return ok / len(letters)


def flag_counts(segments: Iterable) -> dict[str, int]:
    counts = {name: 0 for name in FLAG_NAMES}
    for seg in segments:
        for f in seg.flags:
            counts[f] = counts.get(f, 0) + 1
    return counts


def _language_flip(seg, language: str, window_languages, options: FlagOptions) -> bool:
    if script_share(seg.text, language) < options.script_mismatch_min:
        return True
    mid = 0.5 * (seg.start_s + seg.end_s)
    for start, end, lang, prob in window_languages:
        if start <= mid < end and lang != language and prob >= 0.8:
            return True
    return False


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]+", " ", text.lower()).split()
