"""Test sets for the transcription vote, under noises bench/transcribe.py never uses.

    python bench/fresh_set.py decode --cache DIR [--set 2] [--no-fallback] [--shard 0 --shards 2]
    python bench/fresh_set.py score --cache DIR [--set 2]

Each set is 80 of the corpus utterances with transcripts (a seeded draw),
each degraded in bench/transcribe.py's five conditions with 12 corpus noise
clips that no other set uses and seeds of its own, restored as the pipeline
restores, and decoded through ``transcribe_candidates``: raw as the bench's
anchor, and the views at the speeds the set names. ``score`` votes the
ensembles those decodes allow and prints each one's WER per condition, its
ratio to raw's, and a bootstrap over utterances.

- Set 1 (session 21) settled a disagreement between the tuning set and the
  169: every view at five speeds, so that bigger ensembles could be compared.
  It was fixed before its first result
  (bench/results/transcribe-2026-11-23-vm-session21.md) and is now used.
- Set 2 (session 22) measures the shipped default (revision 8's 13 decodes)
  once more, under noises of old carriers (vinyl, film, VHS hum, electrical
  static) and rooms. Nothing is tuned on it
  (bench/results/transcribe-2026-11-23-vm-session22.md).

Set 2's 400 items took 48 minutes in two processes (``--shards 2``) on a
2-core machine; set 1, with two more decodes an item, about an hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transcribe as bench  # noqa: E402  (bench/transcribe.py, beside this file)

UTTERANCES = 80
DEFAULT = "13 (revision 8)"
SPEEDS = (1.0, 1.05, 0.95, 1.1, 0.9)
VIEWS = ("denoised", "mix0.3", "gtcrn")


@dataclasses.dataclass(frozen=True)
class FreshSet:
    noises: tuple[str, ...]  # corpus noise/ clips, cycled over items
    draw_seed: int  # which utterances
    seed_base: int  # item (k, condition ci) is degraded with seed seed_base + 10 k + ci
    speeds: Mapping[str, tuple[float, ...]]  # view -> the speeds it is decoded at


SETS = {
    1: FreshSet(
        noises=(
            "blanket_storm.ogg", "modsounds_rain_medium.ogg", "tumult_world_city3_traffic.wav",
            "tumult_world_crowd.wav", "tumult_machine1_computer_fan.wav", "tumult_machine9_hallway_ventilation.wav",
            "modsounds_airplane_prop.ogg", "max-audio_train.wav", "noisereduce_cafe_short.wav",
            "tumult_world_underground_metro.wav", "modsounds_wind.ogg", "speechcommands_doing_the_dishes.wav",
        ),
        draw_seed=2026_11_23,
        seed_base=7000,
        speeds={view: SPEEDS for view in VIEWS},
    ),
    2: FreshSet(
        noises=(
            "tumult_vinyl2_oldvinyl.wav", "tumult_vinyl5_crackle.wav", "tumult_static2_electrical_noise.wav",
            "tumult_static3_old_film.wav", "tumult_hum5_vhs_hum.wav", "tumult_machine11_washing_machine.wav",
            "modsounds_rain_heavy_02.ogg", "modsounds_fire_crackle.ogg", "max-audio_car_engine.wav",
            "tumult_world_rain5_thunder_traffic.wav", "ambientengine_water.mp3", "alarmclock_city.mp3",
        ),
        draw_seed=2026_11_24,
        seed_base=9000,
        # What revision 8 decodes, and nothing else.
        speeds={"denoised": SPEEDS, "mix0.3": SPEEDS, "gtcrn": SPEEDS[:3]},
    ),
}


def _rows(corpus: Path, fresh: FreshSet) -> list[dict]:
    rows = bench.speech_rows(corpus)
    picked = sorted(np.random.default_rng(fresh.draw_seed).choice(len(rows), UTTERANCES, replace=False))
    return [rows[i] for i in picked]


def decode(args) -> None:
    from archivox.tasks.transcribe import TranscribeOptions, gtcrn_for_asr, observation_mix, to_whisper_input

    corpus = bench.corpus_dir()
    fresh = SETS[args.set]
    rows = _rows(corpus, fresh)
    noises = [bench.load(corpus / "noise" / name) for name in fresh.noises]
    args.cache.mkdir(parents=True, exist_ok=True)
    (args.cache / "refs.json").write_text(json.dumps([r["transcript"] for r in rows]))
    options = TranscribeOptions(device=args.device, stretch_factors=SPEEDS, extra_decodes=())
    # The anchor stays faster-whisper as it comes; --no-fallback is archivox's option, for its views.
    anchor = options
    if args.no_fallback:
        options = dataclasses.replace(options, temperature_fallback=False)
    jobs = [(ci, cond, k) for ci, cond in enumerate(bench.CONDITIONS) for k in range(len(rows))]
    for n, (ci, cond, k) in enumerate(jobs):
        dest = args.cache / f"{ci}_{k}.json"
        if n % args.shards != args.shard or dest.exists():
            continue
        t = time.perf_counter()
        speech = bench.load(corpus / rows[k]["path"])
        degraded = bench.degrade(speech, cond, noises[_clip_of(k, ci, len(noises))],
                                 seed=fresh.seed_base + 10 * k + ci)
        pre, denoised, restored, _ = bench.restore_item(degraded)
        raw16, pre16, den16, rest16 = (to_whisper_input(x, bench.RATE_HZ) for x in (degraded, pre, denoised, restored))
        views = {"denoised": den16, "mix0.3": observation_mix(rest16, pre16, 0.3), "gtcrn": gtcrn_for_asr(pre16)}
        decoded = {**bench._decode_views({"raw": raw16}, anchor, {}),
                   **bench._decode_views(views, options, dict(fresh.speeds))}
        partial = dest.with_suffix(".partial")
        partial.write_text(json.dumps({name: transcript.to_dict() for name, transcript in decoded.items()}))
        partial.replace(dest)
        print(f"{n + 1}/{len(jobs)} {cond} utterance {k}: {time.perf_counter() - t:.1f} s", flush=True)


def _clip_of(k: int, ci: int, clips: int) -> int:
    """The noise clip utterance ``k`` is degraded with in condition ``ci``."""
    return (k * 5 + ci) % clips


def _names(views, speeds) -> list[str]:
    return [v if s == 1.0 else f"{v}@{s:g}" for v in views for s in speeds]


def score(args) -> None:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    from archivox.tasks.transcribe import Transcript
    from archivox.tasks.vote import vote

    norm = EnglishTextNormalizer()
    refs = json.loads((args.cache / "refs.json").read_text())
    nine = _names(VIEWS, SPEEDS[:3])
    candidates = {
        "denoised alone": ["denoised"],
        "mix alone": ["mix0.3"],
        "GTCRN alone": ["gtcrn"],
        "9 (revision 7)": nine,
        DEFAULT: _names(VIEWS[:2], SPEEDS) + _names(VIEWS[2:], SPEEDS[:3]),
        "15": _names(VIEWS, SPEEDS),
        "10 (denoised, mix)": _names(VIEWS[:2], SPEEDS),
        "9 + raw": nine + ["raw"],
    }
    fresh = SETS[args.set]
    decoded_names = set(_names(["raw"], [1.0])) | {n for v, fs in fresh.speeds.items() for n in _names([v], fs)}
    ensembles = {name: m for name, m in candidates.items() if set(m) <= decoded_names}
    conditions = len(bench.CONDITIONS)
    shape = (conditions, len(refs))
    raw, words = np.zeros(shape), np.zeros(shape)
    errors = {name: np.zeros(shape) for name in ensembles}

    def counts(ref: str, hyp: str) -> tuple[int, int]:
        o = jiwer.process_words(norm(ref), norm(hyp) or "<empty>")
        return o.substitutions + o.deletions + o.insertions, o.hits + o.substitutions + o.deletions

    for ci in range(conditions):
        for k, ref in enumerate(refs):
            path = args.cache / f"{ci}_{k}.json"
            if not path.exists():
                raise SystemExit(f"{path} is missing: run `decode` to the end first")
            decoded = {n: Transcript.from_dict(d) for n, d in json.loads(path.read_text()).items()}
            raw[ci, k], words[ci, k] = counts(ref, decoded["raw"].text())
            for name, members in ensembles.items():
                # A single view is read as it was decoded, not voted with itself.
                hyp = (decoded[members[0]] if len(members) == 1
                       else vote({m: decoded[m] for m in members}, flag=False))
                errors[name][ci, k] = counts(ref, hyp.text())[0]

    def ratio(e, pick):
        return np.mean(e[:, pick].sum(1) / words[:, pick].sum(1)) / np.mean(raw[:, pick].sum(1) / words[:, pick].sum(1))

    everyone = np.arange(len(refs))
    picks = np.random.default_rng(0).integers(0, len(refs), size=(2000, len(refs)))
    print("| decodes | " + " | ".join(bench.CONDITIONS)
          + " | ratio | utterances better / worse than raw | 95 % (bootstrap over utterances) |")
    print("|---|" + "---:|" * conditions + "---:|---|---|")
    print("| raw | " + " | ".join(f"{100 * raw[c].sum() / words[c].sum():.1f}" for c in range(conditions))
          + " | 1 | | |")
    for name, e in errors.items():
        spread = [ratio(e, p) for p in picks]
        print(f"| {name} | " + " | ".join(f"{100 * e[c].sum() / words[c].sum():.1f}" for c in range(conditions))
              + f" | {ratio(e, everyone):.3f} | {int((e.sum(0) < raw.sum(0)).sum())} / {int((e.sum(0) > raw.sum(0)).sum())}"
              + f" | {np.percentile(spread, 2.5):.3f}-{np.percentile(spread, 97.5):.3f} |")

    default = errors.get(DEFAULT)
    if default is None:
        return
    # The hum+clicks+hiss condition has no clip.
    noisy = [ci for ci, spec in enumerate(bench.CONDITIONS.values()) if spec[0] is not None]
    print(f"\nBy noise clip, {DEFAULT}, over the {len(noisy)} conditions with a clip (WER %):\n")
    print("| noise clip | raw | default | ratio |\n|---|---:|---:|---:|")
    for i, clip in enumerate(fresh.noises):
        cells = [(ci, k) for ci in noisy for k in range(len(refs)) if _clip_of(k, ci, len(fresh.noises)) == i]
        r, d, w = (sum(a[c] for c in cells) for a in (raw, default, words))
        print(f"| {clip} | {100 * r / w:.1f} | {100 * d / w:.1f} | {d / r:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("decode", "score"))
    parser.add_argument("--cache", type=Path, required=True, help="folder for the decodes (one JSON per item)")
    parser.add_argument("--shard", type=int, default=0, help="with --shards: which share of the items to decode")
    parser.add_argument("--shards", type=int, default=1, help="decode in this many processes, one per shard")
    parser.add_argument("--set", type=int, default=1, choices=sorted(SETS), help="which fresh set")
    parser.add_argument("--no-fallback", action="store_true",
                        help="decode the views with TranscribeOptions.temperature_fallback off (raw keeps it)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    (decode if args.command == "decode" else score)(args)


if __name__ == "__main__":
    main()
