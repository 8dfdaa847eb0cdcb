"""Exception hierarchy.

The split matters to the orchestration: a :class:`BadInputError` is a property
of the item (corrupt media, a path outside the archive) and is never retried,
while anything else may be transient (a full disk, a killed worker) and is.
"""

from __future__ import annotations


class ArchivoxError(Exception):
    """Base class of every error archivox raises on purpose."""


class BadInputError(ArchivoxError):
    """The item itself is unusable; retrying cannot help."""


class ManifestError(BadInputError):
    """A manifest row is wrong (missing column, duplicate id, bad path)."""


class MediaError(BadInputError):
    """ffmpeg could not read or decode the media."""


class FixityError(ArchivoxError):
    """An original's checksum changed while archivox was working on it."""


class ConfigError(ArchivoxError):
    """A setting is out of range or names something that does not exist."""


class ModelNotFoundError(ConfigError):
    """A named model is neither installed nor a local path."""
