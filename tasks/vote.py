"""Merging several decodes of one item word by word (ROVER).

Whisper's mistakes on degraded audio change with what it hears: the
denoised view, the mix, the GTCRN view, and each of them played a few per
cent slower or faster, err in different places. Choosing one whole decode
per stretch cannot take the right word from each; voting can. On all 169
untuned corpus utterances (bench/results/transcribe-2026-11-22-vm-session18.md)
the vote over nine decodes (three views at three speeds) read 0.81x raw's
WER against 0.86x for the evidence-based choice among three views at one
speed, and was better than raw in every condition. Three views at one speed
vote no better than they are chosen between: the gain comes from the
speeds, and from views whose errors differ. Since revision 8 the two
DeepFilterNet3 views are also decoded at 1.1 and 0.9 (13 decodes): 0.797x
on the 169, and 0.813x against the nine's 0.833x on a set under noises no
setting was tried on (bench/results/transcribe-2026-11-23-vm-session21.md);
0.738x on a second such set, under the noises of old carriers
(bench/results/transcribe-2026-11-23-vm-session22.md).

The method is Fiscus's ROVER (1997): the decodes are aligned into a word
confusion network by progressive edit-distance alignment, the most
confident decode first, and each slot keeps the word (or the gap) most
decodes agree on, ties going to the more confident decode. Words are
compared in a light normal form (lower case, no punctuation) while the
winner keeps its own spelling, punctuation and times.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from archivox.tasks.transcribe import (
    Segment, Transcript, Word, candidate_counts, score, shared_pause_stretches,
)

# Stretches (between pauses every decode shares) longer than this are voted
# on in parts, cut where one decode ended a segment: alignment costs
# (words x words) per decode, and an interview can run for minutes without
# a pause that every decode shares.
_MAX_UNIT_S = 30.0


@dataclasses.dataclass
class _Token:
    key: str  # the word in light normal form, what the vote compares
    word: Word
    segment: Segment
    agreement: float = 1.0  # share of the decodes that voted for it, once voted


def vote(
    results: Mapping[str, Transcript],
    min_pause_s: float = 0.3,
    flag: bool = True,
    regions: Sequence[tuple[float, float]] | None = None,
) -> Transcript:
    """One transcript whose every word is the one most of ``results`` agree on.

    ``results``: decodes of the same item on the item's clock (at least one
    with text). Each output segment is a segment of the decode most
    confident in its stretch, holding the voted words that fall in its time.
    ``flag``: flag the voted segments again (their text changed); ``regions``
    are the VAD speech stretches for the ``in_silence`` flag, which without
    them is carried over from the segment the words were placed in.

    Each voted word's ``agreement`` is the share of the decodes that read it.
    ``Transcript.candidate`` is ``"vote"``; ``evidence`` holds each decode's
    score and counts, the share of word slots all decodes agreed on, and each
    decode's agreement with the voted text.
    """
    from archivox.tasks.hallucination import flag_segments

    names = list(results)
    first = results[names[0]]
    windows = [tuple(w) for w in first.evidence.get("language_windows", [])]
    # Words of two languages are never compared: a unit ends where the language does.
    switches = [b for (_, b, lang, _), (_, _, nxt, _) in zip(windows, windows[1:]) if lang != nxt]
    units = _units(results, min_pause_s, switches)
    starts = [a for a, _ in units]
    tokens_by_unit = {n: _by_unit(_tokens(results[n]), starts, units) for n in names}
    frames_by_unit = {n: _by_unit(_spoken(results[n]), starts, units) for n in names}
    segments: list[Segment] = []
    slots = unanimous = 0
    # Per decode: word slots where it differs from the vote, and its words.
    differs = {n: 0 for n in names}
    counted = {n: 0 for n in names}
    for u, (start, end) in enumerate(units):
        tokens = {n: tokens_by_unit[n][u] for n in names}
        order = sorted(names, key=lambda n: -_mean_probability(tokens[n]))  # stable: ties keep the given order
        network = _align([tokens[n] for n in order])
        voted: list[_Token] = []
        for slot in network:
            ballots = [slot.get(i) for i in range(len(order))]
            tally: dict[str | None, int] = {}
            for ballot in ballots:
                key = ballot.key if ballot else None
                tally[key] = tally.get(key, 0) + 1
            winner = max(tally, key=tally.__getitem__)  # dicts keep insertion order: ties go to the more confident
            for name, ballot in zip(order, ballots):
                differs[name] += (ballot.key if ballot else None) != winner
                counted[name] += ballot is not None
            if winner is None:
                continue
            slots += 1
            unanimous += tally[winner] == len(order)
            chosen = next(b for b in ballots if b and b.key == winner)
            voted.append(dataclasses.replace(chosen, agreement=tally[winner] / len(order)))
        frame = frames_by_unit[order[0]][u]
        for seg, words in _place(voted, frame):
            text = "".join(t.word.word for t in words).strip()
            segments.append(dataclasses.replace(
                seg,
                # Grown to hold its words, but not past the unit (a language switch).
                start_s=min(seg.start_s, max(words[0].word.start_s, start)),
                end_s=max(seg.end_s, min(words[-1].word.end_s, end)),
                text=text,
                words=[dataclasses.replace(t.word, agreement=round(t.agreement, 4)) for t in words],
                compression_ratio=_compression_ratio(text),
                flags=list(seg.flags),
                candidate="vote",
            ))
    for i, seg in enumerate(segments):
        seg.index = i
    if flag:
        # Each voted segment still carries its frame segment's flags here.
        inherited = ["in_silence" in seg.flags for seg in segments]
        flag_segments(segments, first.language, regions=regions, window_languages=windows)
        if regions is None:
            for seg, silent in zip(segments, inherited):
                if silent and "in_silence" not in seg.flags:
                    seg.flags.append("in_silence")
    merged = dataclasses.replace(first, segments=segments, candidate="vote", evidence=dict(first.evidence))
    agreement = {n: round(1.0 - min(1.0, differs[n] / max(counted[n], slots, 1)), 4) for n in names}
    merged.evidence.update({
        "scores": {n: round(score(t), 4) for n, t in results.items()},
        "candidates": candidate_counts(results),
        "vote": {"decodes": len(names), "words": slots,
                 "unanimous_share": round(unanimous / slots, 4) if slots else 1.0, "units": len(units)},
        # As 1 - word edit distance / length, counted on the aligned slots.
        "agreement_with_chosen": agreement,
    })
    return merged


def _units(results: Mapping[str, Transcript], min_pause_s: float,
           switches: Sequence[float] = ()) -> list[tuple[float, float]]:
    """The stretches between shared pauses, cut at each language switch, and long ones between segments."""
    units: list[tuple[float, float]] = []
    for start, end in shared_pause_stretches(results, min_pause_s):
        if end - start <= _MAX_UNIT_S:
            units.append((start, end))
            continue
        # Cut in the gaps of the decode with the most segments there: its
        # segment ends are where Whisper itself heard a break.
        ends = max(
            ([s.end_s for s in _spoken(t) if start < s.end_s < end] for t in results.values()), key=len
        )
        at = start
        for cut in ends:
            if cut - at >= _MAX_UNIT_S / 2:
                units.append((at, cut))
                at = cut
        units.append((at, end))
    for cut in switches:
        units = [part for a, b in units for part in (((a, cut), (cut, b)) if a < cut < b else ((a, b),))]
    return units


def _spoken(transcript: Transcript) -> list[Segment]:
    return [s for s in transcript.segments if s.text.strip()]


def _middle(thing) -> float:
    return 0.5 * (thing.start_s + thing.end_s)


def _tokens(transcript: Transcript) -> list[_Token]:
    """The decode's words in reading order, each with its key for the vote.

    A segment decoded without word times gives its words spread evenly over
    its span, each as sure as the segment's mean log-probability says.
    """
    return [_Token(key, w, seg) for seg in _spoken(transcript) for w in (seg.words or _spread_words(seg))
            if (key := _key(w.word))]


def _by_unit(things: Sequence, starts: Sequence[float], units: Sequence[tuple[float, float]]) -> list[list]:
    """Tokens or segments grouped by the unit their middle falls in, or the nearest one, in order.

    (Whisper can time a word a little outside its segment, so into a pause.)
    """
    groups: list[list] = [[] for _ in units]
    if not units:
        return groups
    for thing in things:
        middle = _middle(thing.word if isinstance(thing, _Token) else thing)
        k = max(bisect.bisect_right(starts, middle) - 1, 0)
        if middle >= units[k][1] and k + 1 < len(units) and units[k + 1][0] - middle < middle - units[k][1]:
            k += 1
        groups[k].append(thing)
    return groups


def _spread_words(seg: Segment) -> list[Word]:
    parts = seg.text.split()
    step = (seg.end_s - seg.start_s) / max(len(parts), 1)
    p = float(np.exp(min(seg.avg_logprob, 0.0)))
    return [Word(seg.start_s + i * step, seg.start_s + (i + 1) * step, " " + w, p) for i, w in enumerate(parts)]


def _key(word: str) -> str:
    return re.sub(r"[^\w']+", "", word.lower()).strip("'")


def _mean_probability(tokens: Sequence[_Token]) -> float:
    return float(np.mean([t.word.probability for t in tokens])) if tokens else 0.0


def _align(sequences: Sequence[Sequence[_Token]]) -> list[dict[int, _Token]]:
    """A word confusion network: slots of {sequence index: token}; a missing index is a gap.

    Each sequence after the first is aligned to the network built so far by
    edit distance, where a word matches a slot holding the same word.
    """
    network: list[dict[int, _Token]] = [{0: t} for t in sequences[0]] if sequences else []
    for h, seq in enumerate(sequences[1:], start=1):
        rows, cols = len(network), len(seq)
        ids: dict[str, int] = {}
        seq_ids = np.array([ids.setdefault(t.key, len(ids)) for t in seq], dtype=np.int64)
        # substitute[i, j]: 0 where slot i already holds word j, else 1.
        substitute = np.ones((rows, cols))
        for i, slot in enumerate(network):
            held = [ids[t.key] for t in slot.values() if t.key in ids]
            if held:
                substitute[i, np.isin(seq_ids, held)] = 0.0
        steps = np.arange(cols + 1, dtype=float)
        cost = np.empty((rows + 1, cols + 1))
        cost[0] = steps
        for i in range(1, rows + 1):
            # Row by row: the diagonal and upward moves at once, then the
            # leftward (new slot) moves as a running minimum.
            best = np.empty(cols + 1)
            best[0] = i
            best[1:] = np.minimum(cost[i - 1, :-1] + substitute[i - 1], cost[i - 1, 1:] + 1.0)
            cost[i] = np.minimum.accumulate(best - steps) + steps
        i, j, merged = rows, cols, []
        # Back from the end, preferring a match, then a gap in seq, then a new slot.
        while i > 0 or j > 0:
            if i > 0 and j > 0 and cost[i, j] == cost[i - 1, j - 1] + substitute[i - 1, j - 1]:
                merged.append({**network[i - 1], h: seq[j - 1]})
                i, j = i - 1, j - 1
            elif i > 0 and cost[i, j] == cost[i - 1, j] + 1.0:
                merged.append(network[i - 1])
                i -= 1
            else:
                merged.append({h: seq[j - 1]})
                j -= 1
        network = merged[::-1]
    return network


def _place(voted: Sequence[_Token], frame: Sequence[Segment]) -> list[tuple[Segment, list[_Token]]]:
    """Voted words grouped into the frame's segments by time, in reading order.

    A word goes to the segment it falls in or, between segments, the nearer
    one, but never to one before the previous word's: the words keep the
    order the vote gave them. Segments that get no word are left out.
    """
    if not voted:
        return []
    if not frame:
        frame = [voted[0].segment]
    groups: list[list[_Token]] = [[] for _ in frame]
    at = 0
    for token in voted:
        middle = _middle(token.word)
        nearest = min(range(len(frame)), key=lambda k: max(frame[k].start_s - middle, middle - frame[k].end_s, 0.0))
        at = max(at, nearest)
        groups[at].append(token)
    return [(seg, words) for seg, words in zip(frame, groups) if words]


def _compression_ratio(text: str) -> float:
    """Whisper's measure of repetitiveness: UTF-8 length over zlib-compressed length."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
