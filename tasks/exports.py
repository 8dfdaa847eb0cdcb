"""Transcript sidecar files: SRT, WebVTT, plain text, JSON and a QDA text.

Every file is written atomically (a temporary file in the same folder, then
``os.replace``) so that an interrupted run never leaves half a subtitle file
that a later run would mistake for a finished one. Segments carrying
hallucination flags keep their text; the flags are shown beside it so that a
reader decides, not archivox.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from archivox.errors import ConfigError
from archivox.tasks.transcribe import Segment, Transcript, Word

FORMATS: tuple[str, ...] = ("srt", "vtt", "txt", "json", "qda.txt")


def write_sidecars(transcript: Transcript, base: Path, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Write ``base`` + ".srt", ".vtt", ".txt", ".json", ".qda.txt".

    ``base`` is the item's output file (``out/item.wav`` gives
    ``out/item.wav.srt``...). Returns {format: path}, format keys as in
    ``FORMATS`` with "qda.txt" reported as "qda".
    """
    unknown = [f for f in formats if f not in _RENDERERS]
    if unknown:
        raise ConfigError(f"unknown transcript format(s) {unknown}; valid formats are {', '.join(FORMATS)}")
    base = Path(base)
    written: dict[str, Path] = {}
    for fmt in formats:
        path = base.parent / f"{base.name}.{fmt}"
        _write_atomic(path, _RENDERERS[fmt](transcript))
        written["qda" if fmt == "qda.txt" else fmt] = path
    return written


def to_srt(transcript: Transcript) -> str:
    blocks = []
    for n, seg in enumerate(_spoken(transcript), start=1):
        lines = [str(n), f"{_clock(seg.start_s, ',')} --> {_clock(seg.end_s, ',')}", seg.text]
        if seg.flags:
            lines.append(_flag_note(seg))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def to_vtt(transcript: Transcript) -> str:
    out = ["WEBVTT", ""]
    for seg in _spoken(transcript):
        if seg.flags:
            # NOTE blocks are comments in WebVTT: players ignore them, readers see them.
            out += [f"NOTE {_flag_note(seg)}", ""]
        out += [f"{_clock(seg.start_s, '.')} --> {_clock(seg.end_s, '.')}", _vtt_escape(seg.text), ""]
    return "\n".join(out)


def to_txt(transcript: Transcript) -> str:
    """One line per segment: ``[HH:MM:SS.mmm --> HH:MM:SS.mmm] text  {flags}``."""
    lines = []
    for seg in _spoken(transcript):
        line = f"[{_clock(seg.start_s, '.')} --> {_clock(seg.end_s, '.')}] {seg.text}"
        if seg.flags:
            line += f"  {_flag_note(seg)}"
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def to_json(transcript: Transcript) -> str:
    return json.dumps(transcript.to_dict(), ensure_ascii=False, indent=1) + "\n"


def to_qda(transcript: Transcript) -> str:
    """Timestamped paragraphs in the f4/f5transkript convention.

    One paragraph per segment, a blank line between paragraphs, each ending
    with a ``#hh:mm:ss-d#`` time mark (tenths of a second) at its start and
    its end: the time marks MAXQDA recognises when it imports a transcript
    linked to its media file, and which NVivo's transcript import reads as
    well.
    """
    paragraphs = []
    for seg in _spoken(transcript):
        text = seg.text + (f" {_flag_note(seg)}" if seg.flags else "")
        paragraphs.append(f"{_qda_mark(seg.start_s)} {text} {_qda_mark(seg.end_s)}")
    return "\n\n".join(paragraphs) + ("\n" if paragraphs else "")


_RENDERERS: dict[str, Callable[[Transcript], str]] = {
    "srt": to_srt,
    "vtt": to_vtt,
    "txt": to_txt,
    "json": to_json,
    "qda.txt": to_qda,
}


# --- readers, so that tests and downstream tools can load the files back ---

_CUE = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d{3})\s+-->\s+(\d+):(\d\d):(\d\d)[,.](\d{3})")
_QDA = re.compile(r"#(\d+):(\d\d):(\d\d)-(\d)#")


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """SRT -> [(start_s, end_s, text)], flag notes dropped."""
    return _parse_cues(text, unescape=False)


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    """WebVTT -> [(start_s, end_s, text)], NOTE blocks dropped."""
    if not text.startswith("WEBVTT"):
        raise ValueError("not a WebVTT file: it must start with 'WEBVTT'")
    return _parse_cues(text)


def parse_txt(text: str) -> list[tuple[float, float, str]]:
    out = []
    for line in text.splitlines():
        m = _CUE.search(line)
        if m:
            body = line[m.end() + 1 :].strip()
            out.append((_secs(m.groups()[:4]), _secs(m.groups()[4:]), _strip_note(body)))
    return out


def parse_qda(text: str) -> list[tuple[float, float, str]]:
    out = []
    for para in text.split("\n\n"):
        marks = list(_QDA.finditer(para))
        if len(marks) < 2:
            continue
        start, end = (int(a) * 3600 + int(b) * 60 + int(c) + int(d) / 10 for a, b, c, d in
                      (marks[0].groups(), marks[-1].groups()))
        body = para[marks[0].end() : marks[-1].start()].strip()
        out.append((start, end, _strip_note(body)))
    return out


def read_json(path: Path) -> Transcript:
    return Transcript.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _parse_cues(text: str, unescape: bool = True) -> list[tuple[float, float, str]]:
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            m = _CUE.search(line)
            if m:
                body = [l for l in lines[i + 1 :] if not l.startswith("[flagged:")]
                body_text = "\n".join(body).strip()
                out.append((_secs(m.groups()[:4]), _secs(m.groups()[4:]), _vtt_unescape(body_text) if unescape else body_text))
                break
    return out


def _spoken(transcript: Transcript) -> list[Segment]:
    return [s for s in transcript.segments if s.text.strip()]


def _flag_note(seg: Segment) -> str:
    return f"[flagged: {', '.join(seg.flags)}]"


def _strip_note(body: str) -> str:
    return re.sub(r"\s*\[flagged: [^\]]*\]\s*$", "", body).strip()


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, int(math.floor(seconds * 1000 + 0.5)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _qda_mark(seconds: float) -> str:
    tenths = max(0, int(math.floor(seconds * 10 + 0.5)))  # half up, not to even
    s, d = divmod(tenths, 10)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"#{h:02d}:{m:02d}:{s:02d}-{d}#"


def _secs(groups: Sequence[str]) -> float:
    h, m, s, ms = (int(g) for g in groups)
    return h * 3600 + m * 60 + s + ms / 1000


def _vtt_escape(text: str) -> str:
    # "-->" inside a cue would end it early; & and < start entities/tags.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = [
    "FORMATS", "write_sidecars", "to_srt", "to_vtt", "to_txt", "to_json", "to_qda",
    "parse_srt", "parse_vtt", "parse_txt", "parse_qda", "read_json", "Word",
]
