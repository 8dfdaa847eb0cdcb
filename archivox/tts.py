"""Offline speech synthesis with the espeak-ng library from ``espeakng-loader``.

Used to build example archives and test material without any recording or
network access. espeak-ng keeps its voice, rate, callback and synthesis
state in process-wide globals and is not thread-safe, so every call goes
through one lock, and runs on a private copy of the library loaded for that
call only, so that the same text always gives the same samples.

Audio comes back as ``float32`` mono shaped ``(samples,)`` in [-1, 1].
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archivox.errors import ConfigError

NATIVE_RATE_HZ = 22_050
MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450
MIN_RATE_HZ = 8_000
MAX_RATE_HZ = 192_000

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_EE_OK = 0
_EE_NOT_FOUND = 2

# A plain male voice without pitch flutter or roughness; tiny.en transcribes it
# at least as well as espeak-ng's stock voice.
DEFAULT_VARIANT = "Denis"

_INSTALL_HINT = "install it with `pip install espeakng-loader` (it ships libespeak-ng and its data)"

# int callback(short *wav, int numsamples, espeak_EVENT *events); events are not read.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SynthesisError(ConfigError):
    """espeak-ng is missing, refused a setting, or failed to synthesise."""


@dataclass
class _Engine:
    lib: ctypes.CDLL
    rate_hz: int
    callback: object  # kept referenced so that ctypes does not free the trampoline
    chunks: list[np.ndarray]
    has_seed: bool
    data_path: Path


def _find_srand():
    """libc's ``srand``: espeak-ng draws fricative and trill noise from libc's ``rand()``."""
    try:
        srand = ctypes.CDLL(None).srand
    except (OSError, AttributeError, TypeError):
        return None
    srand.argtypes = [ctypes.c_uint]
    srand.restype = None
    return srand


_lock = threading.Lock()
_private_copy: Path | None = None


def _library_copy() -> tuple[Path, Path]:
    """(private copy of libespeak-ng, data folder); the copy is made once per process.

    espeak-ng keeps synthesis state in C statics that neither espeak_Terminate
    nor espeak_Initialize resets (the pitch-flutter index, the position in
    the noise wave mixed into voiced consonants), so a second call with the
    same text gives different samples. A private copy of the library, loaded
    for one call and unloaded after it, starts every call from the same state;
    being private, it also leaves alone any espeak-ng another package loaded.
    The caller holds ``_lock``.
    """
    global _private_copy
    try:
        import espeakng_loader
    except ImportError as exc:
        raise SynthesisError(f"speech synthesis needs the espeakng-loader package: {_INSTALL_HINT}") from exc
    lib_path = Path(espeakng_loader.get_library_path())
    try:
        data_path = Path(espeakng_loader.get_data_path())
    except RuntimeError as exc:
        raise SynthesisError(f"espeak-ng data is missing ({exc}); reinstall it: {_INSTALL_HINT}") from exc
    if _private_copy is None or not _private_copy.is_file():
        if not lib_path.is_file():
            raise SynthesisError(f"espeak-ng library {lib_path} is missing; reinstall it: {_INSTALL_HINT}")
        try:
            folder = Path(tempfile.mkdtemp(prefix="archivox-espeak-"))
            atexit.register(shutil.rmtree, folder, True)
            _private_copy = Path(shutil.copy2(lib_path, folder / lib_path.name))
        except OSError as exc:
            raise SynthesisError(
                f"cannot copy {lib_path} to a temporary folder ({exc}); point TMPDIR at a writable folder"
            ) from exc
    return _private_copy, data_path


def _open_engine() -> _Engine:
    """Load a fresh instance of libespeak-ng and initialise it; the caller holds ``_lock``."""
    lib_path, data_path = _library_copy()
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as exc:
        raise SynthesisError(f"cannot load espeak-ng from {lib_path} ({exc}); reinstall it: {_INSTALL_HINT}") from exc

    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    # Present since espeak-ng 1.52.
    has_seed = hasattr(lib, "espeak_ng_SetRandSeed")
    if has_seed:
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int

    # buflength 0 = the library's default chunking; options 0 = no phoneme events.
    rate_hz = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), 0)
    if rate_hz <= 0:
        _close_engine(lib)
        raise SynthesisError(f"espeak_Initialize failed (returned {rate_hz}) with data at {data_path}; {_INSTALL_HINT}")

    chunks: list[np.ndarray] = []

    def on_audio(wav, numsamples, _events):
        # wav is NULL once, at the end of each utterance.
        if wav and numsamples > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # 0 = keep going

    callback = _SynthCallback(on_audio)
    lib.espeak_SetSynthCallback(callback)
    return _Engine(lib=lib, rate_hz=rate_hz, callback=callback, chunks=chunks, has_seed=has_seed, data_path=data_path)


def _close_engine(lib: ctypes.CDLL, terminate: bool = False) -> None:
    if terminate:
        lib.espeak_Terminate()
    unload = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
    if unload is not None:
        unload(lib._handle)


def _resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    if from_hz == to_hz:
        return audio
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(from_hz, to_hz)
    return resample_poly(audio, to_hz // g, from_hz // g).astype(np.float32)


def _speak(engine: _Engine, data: bytes, language: str, variant: str, words_per_minute: int, seed: int) -> np.ndarray:
    """Synthesise UTF-8 ``data`` (NUL-terminated) with a freshly opened engine. int16 (samples,)."""
    if not (engine.data_path / "voices" / "!v" / variant).is_file():
        # espeak-ng silently ignores an unknown variant; say so instead.
        known = sorted(p.name for p in (engine.data_path / "voices" / "!v").iterdir())
        raise SynthesisError(f"espeak-ng has no voice variant {variant!r}; known variants: {', '.join(known)}")
    voice = f"{language}+{variant}"
    err = engine.lib.espeak_SetVoiceByName(voice.encode())
    if err == _EE_NOT_FOUND:
        raise SynthesisError(
            f"espeak-ng has no language {language!r}; use a code such as 'en', 'en-us', 'de' or 'fr' "
            f"(the file names under {engine.data_path / 'lang'})"
        )
    if err != _EE_OK:
        raise SynthesisError(f"espeak_SetVoiceByName({voice!r}) failed with code {err}")
    engine.lib.espeak_SetParameter(_ESPEAK_RATE, int(words_per_minute), 0)
    if engine.has_seed:
        engine.lib.espeak_ng_SetRandSeed(int(seed))
    srand = _find_srand()
    if srand is not None:
        # Reseeds the process-wide libc generator; nothing in archivox relies on it.
        srand(int(seed) & 0xFFFFFFFF)
    buf = ctypes.create_string_buffer(data, len(data))
    err = engine.lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
    if err != _EE_OK:
        raise SynthesisError(f"espeak_Synth failed with code {err} for text of {len(data) - 1} bytes")
    engine.lib.espeak_Synchronize()
    return np.concatenate(engine.chunks) if engine.chunks else np.zeros(0, dtype=np.int16)


def synthesize(
    text: str,
    language: str = "en",
    rate_hz: int = 22_050,
    words_per_minute: int = 150,
    voice_variant: str | None = None,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Speak ``text`` and return float32 mono audio shaped ``(samples,)`` at ``rate_hz``.

    ``language`` is an espeak-ng voice name such as "en", "de", "fr", "en-us".
    ``voice_variant`` is an espeak-ng variant (a file name in
    ``espeak-ng-data/voices/!v`` such as "Denis", "Alex", "m3", "f2"), appended as
    ``language+variant``; None means :data:`DEFAULT_VARIANT`.

    The output is the same for the same arguments, in one process or across
    processes: every call runs on a freshly loaded library, and espeak-ng's
    own random generator (espeak-ng >= 1.52) and libc's ``rand()``, which it
    uses for noise, are reseeded with ``seed``.
    """
    if not isinstance(text, str) or not text.strip():
        raise SynthesisError(f"text to synthesise must be a non-empty string, got {text!r}")
    if not MIN_WORDS_PER_MINUTE <= words_per_minute <= MAX_WORDS_PER_MINUTE:
        raise SynthesisError(
            f"words_per_minute={words_per_minute} is outside [{MIN_WORDS_PER_MINUTE}, {MAX_WORDS_PER_MINUTE}]"
        )
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise SynthesisError(f"rate_hz={rate_hz} is outside [{MIN_RATE_HZ}, {MAX_RATE_HZ}]")
    variant = voice_variant or DEFAULT_VARIANT
    for what, name in (("language", language), ("voice_variant", variant)):
        # espeak-ng joins these into file paths; keep them plain names.
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise SynthesisError(f"{what}={name!r} may contain only letters, digits, '-' and '_'")
    voice = f"{language}+{variant}"

    data = text.encode("utf-8") + b"\0"
    with _lock:
        engine = _open_engine()
        try:
            pcm = _speak(engine, data, language, variant, words_per_minute, seed)
        finally:
            _close_engine(engine.lib, terminate=True)
        native_hz = engine.rate_hz

    if pcm.size == 0:
        raise SynthesisError(f"espeak-ng produced no audio for {text[:40]!r} with voice {voice!r}")
    audio = pcm.astype(np.float32) / 32768.0
    return _resample(audio, native_hz, rate_hz)
