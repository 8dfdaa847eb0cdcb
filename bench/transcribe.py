"""Word error rate of archivox's transcript against the raw and the denoised audio.

Takes read speech with reference transcripts from the shared corpus, degrades
it with corpus noise, mains hum, clicks and hiss at several SNRs, runs the
restoration stages this checkout has (DSP stages, then the denoiser), and
transcribes in one run, per condition:

- ``clean``: the undegraded speech,
- ``raw``: the degraded speech as it came in,
- ``dsp``: after the DSP stages only (the pre-denoise view),
- ``denoised``: the chain's restored output (DSP stages + denoiser + loudness),
- ``mix``: the observation-adding view,
- ``archivox``: the transcript ``transcribe_item`` keeps under its default policy (every candidate view
  decoded at each of ``TranscribeOptions.stretch_factors``, the decodes voted word by word),

WER with jiwer after Whisper's English text normaliser, plus speed. Writes a
Markdown table with ``--out``.

    python bench/transcribe.py --n 24 --out bench/results/transcribe-2026-11-21-$(hostname).md
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from signals import clicks, corpus_dir, hum  # noqa: E402

from archivox.tasks.dehum import active_level_db  # noqa: E402
from archivox.tasks.transcribe import (  # noqa: E402
    QUIET_INPUT_TARGET_DBFS, TranscribeOptions, Transcript, combine, combine_votes, gtcrn_for_asr,
    observation_mix, to_whisper_input, transcribe_candidates,
)

RATE_HZ = 48_000
NOISES = [
    "blanket_coffee-shop.ogg", "blanket_train.ogg", "blanket_city.ogg", "modsounds_rain_heavy_01.ogg",
    "esc50_vacuum_cleaner_4-172733-A-36_16k.wav", "modsounds_car_motor.ogg", "max-audio_typing.wav",
    "blanket_wind.ogg", "blanket_fireplace.ogg", "max-audio_crowd_cheering.wav", "audiomentations_bus.opus",
    "modsounds_jet_ambience.ogg",
]
# name: (noise SNR dB or None, hum SNR dB or None, clicks per second, hiss SNR dB or None)
CONDITIONS = {
    "noise 10 dB": (10.0, None, 0.0, None),
    "noise 5 dB": (5.0, None, 0.0, None),
    "noise 0 dB": (0.0, None, 0.0, None),
    "hum+clicks+hiss": (None, 5.0, 6.0, 20.0),
    "noise 5 dB+hum+clicks": (5.0, 10.0, 4.0, None),
}
# (n, holdout_of) of the utterances the choice policy and its settings were tuned on.
TUNING_SET = (24, 43)


def view_options(options: TranscribeOptions, view: str) -> TranscribeOptions:
    """How one view is decoded: ``raw`` is the anchor, faster-whisper on its own.

    So the anchor skips no-speech windows, gets no second decode of the
    speech it jumped over and is decoded at its own level; those are archivox's.
    """
    anchor = view == "raw"
    return replace(options, asr_input="restored", skip_no_speech=anchor,
                   stretch_factors=(1.0,) if anchor else options.stretch_factors,
                   fill_skipped_speech=options.fill_skipped_speech and not anchor,
                   quiet_input_dbfs=None if anchor else options.quiet_input_dbfs)


def speech_rows(corpus: Path) -> list[dict]:
    """The corpus manifest's clean read-speech rows that have a transcript, in path order."""
    with open(corpus / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] == "speech_clean" and r["transcript"].strip()]
    return sorted(rows, key=lambda r: r["path"])


def pick_rows(rows: list, n: int, holdout_of: int = 0) -> list:
    """``n`` rows spread evenly over ``rows``; with ``holdout_of``, only from the rows a pick of that many leaves out."""
    if holdout_of:
        taken = set(np.linspace(0, len(rows) - 1, min(holdout_of, len(rows))).round().astype(int).tolist())
        rows = [r for i, r in enumerate(rows) if i not in taken]
    pick = np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)
    return [rows[i] for i in pick]


def load(path: Path, rate_hz: int = RATE_HZ) -> np.ndarray:
    """Any audio file -> mono float32 (samples,) at rate_hz."""
    import soundfile as sf
    from scipy.signal import resample_poly

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr != rate_hz:
        g = math.gcd(sr, rate_hz)
        mono = resample_poly(mono, rate_hz // g, sr // g)
    return mono.astype(np.float32)


def at_snr(signal: np.ndarray, interference: np.ndarray, snr_db: float) -> np.ndarray:
    """Scale ``interference`` so that signal / interference power is ``snr_db``."""
    ps = np.mean(signal.astype(np.float64) ** 2)
    pi = np.mean(interference.astype(np.float64) ** 2) + 1e-20
    return (interference * math.sqrt(ps / pi / 10 ** (snr_db / 10))).astype(np.float32)


def degrade(speech: np.ndarray, condition: str, noise: np.ndarray, seed: int) -> np.ndarray:
    noise_snr, hum_snr, click_rate, hiss_snr = CONDITIONS[condition]
    n = speech.size
    rng = np.random.default_rng(seed)
    out = speech.copy()
    if noise_snr is not None:
        reps = int(math.ceil((n + RATE_HZ) / noise.size))
        tiled = np.tile(noise, reps)
        start = int(rng.integers(0, tiled.size - n))
        out += at_snr(speech, tiled[start : start + n], noise_snr)
    if hum_snr is not None:
        out += at_snr(speech, hum(50.0, n / RATE_HZ, drift_hz=0.2)[0, :n], hum_snr)
    if hiss_snr is not None:
        out += at_snr(speech, rng.standard_normal(n).astype(np.float32), hiss_snr)
    if click_rate:
        c, _ = clicks(n / RATE_HZ, click_rate, amplitude=0.5, seed=seed)
        out += c[0, :n]
    return np.clip(out, -1.0, 1.0)


def restore_item(degraded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(pre_denoise, denoised, restored, stage names), each mono ``(samples,)`` at RATE_HZ.

    Made the way archivox's pipeline makes them (``tasks.pipeline.restore``
    with default run options): the item is diagnosed, the ``auto`` preset
    picks the stages worth running and their settings, and the audio entering
    the denoise stage and the first finishing stage (EQ) is kept. Only DNSMOS
    scoring (metrics, not audio) is switched off, for speed. ``denoised`` is
    what ``tasks.transcribe.denoise_for_asr`` makes from ``pre_denoise``
    (the same stage, run once here instead of twice).
    """
    from archivox.config import RunOptions
    from archivox.tasks.chain import build_chain
    from archivox.tasks.pipeline import plan_stages

    audio = degraded[None, :]
    _, names, params = plan_stages(audio, RATE_HZ, RunOptions())
    if "denoise" not in names:
        raise SystemExit("this checkout has no denoise stage; the bench needs one")
    params = {**params, "denoise": {**params.get("denoise", {}), "dnsmos": False}}
    chain = build_chain(names, params, device="auto")
    after = names[names.index("denoise") + 1 :]
    result = chain(audio, RATE_HZ, keep_before=["denoise", *after[:1]])
    denoised = result.before[after[0]] if after else result.audio
    return result.before["denoise"][0], denoised[0], result.audio[0], names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="utterances per condition")
    ap.add_argument("--holdout-of", type=int, default=0,
                    help="pick the --n utterances among those that a run with --n HOLDOUT_OF does not use "
                         "(a tuning set disjoint from the reported one)")
    ap.add_argument("--all-but-tuning", action="store_true",
                    help=f"every utterance except the tuning set (--n {TUNING_SET[0]} --holdout-of {TUNING_SET[1]}), "
                         "for the widest measurement that the choice policy was not tuned on; --n and --holdout-of "
                         "are then ignored")
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated condition names")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--mix-fractions", default="0.3", help="observation-adding fractions to compare")
    ap.add_argument("--candidates", default=None,
                    help="comma-separated views archivox chooses among (default: TranscribeOptions' own)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/archivox-bench-transcribe"),
                    help="where per-view transcripts are kept between runs (policies can then be compared without decoding again)")
    ap.add_argument("--flag-minutes", type=float, default=6.0,
                    help="minutes of clean corpus speech over which hallucination flags are counted (0: skip)")
    ap.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                    help="time restoration and transcription afresh (never from --cache)")
    ap.add_argument("--long", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure long items whose conditions change (see _long_items)")
    ap.add_argument("--long-only", action="store_true", help="measure only the long items")
    ap.add_argument("--flags-only", action="store_true",
                    help="only count hallucination flags on --flag-minutes of clean speech (all of it: --flag-minutes 30)")
    ap.add_argument("--transfer-level-dbfs", type=float, default=None,
                    help="scale each degraded utterance to this active level before restoring and decoding it "
                         "(a quiet or hot transfer); single utterances only, not the long items")
    ap.add_argument("--quiet-input-dbfs", default=None,
                    help="TranscribeOptions.quiet_input_dbfs for archivox's views ('none': decode at their own level)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    corpus = corpus_dir()
    if corpus is None:
        raise SystemExit("the shared corpus is not present (../shared/corpus or $ARCHIVOX_CORPUS)")
    norm = EnglishTextNormalizer()
    if args.flags_only:
        _write(args, _flag_rate(corpus, args.flag_minutes, TranscribeOptions(model=args.model, device=args.device)))
        return
    rows = speech_rows(corpus)
    if args.all_but_tuning:
        tuning = {r["path"] for r in pick_rows(rows, *TUNING_SET)}
        rows = [r for r in rows if r["path"] not in tuning]
    else:
        rows = pick_rows(rows, args.n, args.holdout_of)
    noises = [load(corpus / "noise" / name) for name in NOISES]
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    fractions = [float(f) for f in args.mix_fractions.split(",")]
    options = TranscribeOptions(model=args.model, device=args.device)
    if args.candidates:
        options = replace(options, candidates=tuple(c.strip() for c in args.candidates.split(",") if c.strip()))
    if args.quiet_input_dbfs is not None:
        lift = None if args.quiet_input_dbfs.lower() == "none" else float(args.quiet_input_dbfs)
        options = replace(options, quiet_input_dbfs=lift)
    all_views = ["raw", "dsp", "restored", "denoised"] + [f"mix{f:g}" for f in fractions] + ["gtcrn"]

    def errors(refs, hyps):
        """(word errors, reference words) per utterance; an empty reference counts 0 and 0."""
        out_e, out_n = [], []
        for r, h in zip(refs, hyps):
            rn = norm(r)
            if not rn.strip():
                out_e.append(0); out_n.append(0)
                continue
            o = jiwer.process_words(rn, norm(h) or "<empty>")
            out_e.append(o.substitutions + o.deletions + o.insertions)
            out_n.append(o.hits + o.substitutions + o.deletions)
        return np.array(out_e, float), np.array(out_n, float)

    def pooled(counts):
        """Pooled WER in %, from ``errors``: all utterances' errors over all their reference words."""
        e, n = counts
        return 100.0 * e.sum() / max(n.sum(), 1.0)

    def wer(refs, hyps):
        return pooled(errors(refs, hyps))

    refs = [r["transcript"] for r in rows]
    speech = [load(corpus / r["path"]) for r in rows]
    audio_s = sum(s.size for s in speech) / RATE_HZ
    clean_opts = replace(options, asr_input="restored", stretch_factors=(1.0,))
    t0 = time.perf_counter()
    clean_hyps = [transcribe_candidates({"restored": to_whisper_input(s, RATE_HZ)}, clean_opts)[0].text() for s in speech]
    asr_seconds = time.perf_counter() - t0
    clean_wer = wer(refs, clean_hyps)
    print(f"{len(rows)} utterances, {audio_s:.0f} s; clean WER {clean_wer:.1f} %  ({asr_seconds:.1f} s)", flush=True)

    if args.long_only:
        _write(args, _long_items(args, rows, speech, noises, conditions, options, wer))
        return

    view_of = {"mix": f"mix{options.mix_fraction:g}", "pre_denoise": "dsp", "restored": "restored",
               "denoised": "denoised", "original": "raw", "gtcrn": "gtcrn"}
    revision6_factors = tuple(f for f in (1.0, 1.05, 0.95) if f in options.stretch_factors)
    # name: (candidates, stretch factors, how they are combined)
    policies = {
        "denoised+dsp": (("denoised", "pre_denoise"), (1.0,), "choose"),
        "restored+dsp": (("restored", "pre_denoise"), (1.0,), "choose"),
        "denoised+mix": (("denoised", "mix"), (1.0,), "choose"),
        "denoised+dsp+restored": (("denoised", "pre_denoise", "restored"), (1.0,), "choose"),
        "denoised+dsp+mix (revision 5's default)": (("denoised", "pre_denoise", "mix"), (1.0,), "choose"),
        "denoised+dsp+raw": (("denoised", "pre_denoise", "original"), (1.0,), "choose"),
        "vote, denoised+dsp+mix": (("denoised", "pre_denoise", "mix"), (1.0,), "vote"),
        "choose, default decodes": (options.decodes(), None, "choose"),
        "vote, denoised at each speed": (("denoised",), options.stretch_factors, "vote"),
        "vote, revision 6's default (denoised+dsp+mix x 1, 1.05, 0.95)":
            (("denoised", "pre_denoise", "mix"), revision6_factors, "vote"),
        "vote, revision 7's default (denoised+mix+gtcrn x 1, 1.05, 0.95)":
            (("denoised", "mix", "gtcrn"), revision6_factors, "vote"),
    }
    # Views that are candidates are decoded at every stretch factor of the
    # default's decodes too, and the DSP-only view for revision 6's default.
    stretched = _stretch_factors(options)
    stretch_views = {view_of[c] for c in options.candidates} | {"dsp"}
    all_decodes = all_views + [f"{v}@{f:g}" for v in all_views if v in stretch_views for f in stretched]

    def decodes_of(candidates, factors):
        """{product name: the bench's decode}, in the order transcribe_candidates decodes them.

        ``candidates``: views, each decoded at ``factors``; or {view: its factors} (``factors`` None).
        """
        plan = candidates if factors is None else {c: factors for c in candidates}
        return {
            (c if f == 1.0 else f"{c}@{f:g}"): _copy(results[view_of[c] if f == 1.0 else f"{view_of[c]}@{f:g}"])
            for c, fs in plan.items() for f in fs
        }

    table = []
    per_utterance = []  # per condition: ((archivox errors, words), (raw errors, words)), one entry per utterance
    policy_rows = []
    timing = {"restore_s": 0.0, "decode_views_s": 0.0, "views_decoded": 0}
    stages_run: dict[str, dict[str, int]] = {}
    cache = _cache_root(args)
    if cache is not None and args.transfer_level_dbfs is not None:
        cache = cache / f"level{args.transfer_level_dbfs:g}"
    if cache is not None and options.quiet_input_dbfs != TranscribeOptions().quiet_input_dbfs:
        cache = cache / f"lift{options.quiet_input_dbfs}"
    for cond in conditions:
        hyps = {v: [] for v in all_decodes}
        chosen = {name: [] for name in policies}
        default_hyps = []
        winners: dict[str, int] = {}
        lifted: dict[str, int] = {}
        for i, (s, row) in enumerate(zip(speech, rows)):
            results = _cached(cache, cond, row, all_decodes + ["stages"])
            if results is None:
                degraded = degrade(s, cond, noises[i % len(noises)], seed=1000 + i)
                if args.transfer_level_dbfs is not None:
                    level = active_level_db(degraded[None], RATE_HZ)
                    degraded = degraded * np.float32(10 ** ((args.transfer_level_dbfs - level) / 20))
                t = time.perf_counter()
                pre, denoised, restored, names = restore_item(degraded)
                timing["restore_s"] += time.perf_counter() - t
                raw16, pre16, den16, rest16 = (to_whisper_input(x, RATE_HZ) for x in (degraded, pre, denoised, restored))
                views = {"raw": raw16, "dsp": pre16, "restored": rest16, "denoised": den16}
                for f in fractions:
                    views[f"mix{f:g}"] = observation_mix(rest16, pre16, f)
                views["gtcrn"] = gtcrn_for_asr(pre16)
                t = time.perf_counter()
                # Each view decoded once (candidates at every speed); the policies below combine these.
                results = _decode_views({v: views[v] for v in all_views}, options,
                                        {v: (1.0, *stretched) for v in stretch_views})
                timing["decode_views_s"] += time.perf_counter() - t
                timing["views_decoded"] += len(results)
                # The stages the diagnosis chose, kept with the decodes (as an empty transcript's evidence).
                results["stages"] = Transcript([], "en", 1.0, 0.0, "", "", evidence={"stages": names})
                _store(cache, cond, row, results)
            for name in results["stages"].evidence["stages"]:
                stages_run.setdefault(cond, {}).setdefault(name, 0)
                stages_run[cond][name] += 1
            for v in all_decodes:
                hyps[v].append(results[v].text())
                if results[v].evidence.get("input_gain_db"):
                    lifted[v] = lifted.get(v, 0) + 1
            default = (options.decodes(), None, options.combine)
            for name, (cands, factors, how) in list(policies.items()) + [("default", default)]:
                pick_tr = combine(decodes_of(cands, factors), replace(options, combine=how))
                (default_hyps if name == "default" else chosen[name]).append(pick_tr.text())
                if name == "default":
                    winners[pick_tr.candidate] = winners.get(pick_tr.candidate, 0) + 1
        counts = {v: errors(refs, hyps[v]) for v in all_decodes}
        counts["archivox"] = errors(refs, default_hyps)
        w = {v: pooled(c) for v, c in counts.items()}
        table.append((cond, w, winners))
        per_utterance.append((counts["archivox"], counts["raw"]))
        policy_rows.append((cond, {k: wer(refs, v) for k, v in chosen.items()}))
        print(cond, {k: round(v, 1) for k, v in w.items()}, winners, flush=True)
        if lifted:
            print(f"  views raised to {QUIET_INPUT_TARGET_DBFS:g} dBFS before decoding (quiet_input_dbfs): {lifted}", flush=True)

    lines = _report(args, rows, audio_s, clean_wer, table, policy_rows, all_decodes, timing, stages_run,
                    asr_seconds, options)
    lines += _spread(per_utterance)
    if args.long:
        lines += _long_items(args, rows, speech, noises, conditions, options, wer)
    if args.flag_minutes > 0:
        lines += _flag_rate(corpus, args.flag_minutes, options)
    if args.speed:
        lines += _speed(corpus, rows, speech, noises, options, norm)
    _write(args, lines)


def _decode_views(audio: dict, options: TranscribeOptions, factors_of: dict) -> dict:
    """{view or view@factor: transcript}: each view of ``audio`` decoded at its ``factors_of`` (1 when not named)."""
    results = {}
    for v, x in audio.items():
        vo = replace(view_options(options, v), stretch_factors=factors_of.get(v, (1.0,)), extra_decodes=())
        for name, tr in transcribe_candidates({"restored": x}, vo)[1].items():
            results[v + name[len("restored"):]] = tr
    return results


def _describe_decodes(options: TranscribeOptions) -> str:
    """"denoised at 1, 1.05, 0.95, 1.1, 0.9; mix at ...; 13 decodes"."""
    plan = options.decodes()
    views = "; ".join(f"{v} at {', '.join(f'{f:g}' for f in fs)}" for v, fs in plan.items())
    return f"{views}: {sum(len(fs) for fs in plan.values())} decodes"


def _stretch_factors(options: TranscribeOptions) -> list[float]:
    """Every factor other than 1 that the default decodes some view at, in order."""
    return [f for f in dict.fromkeys(f for fs in options.decodes().values() for f in fs) if f != 1.0]


def _write(args, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def _long_items(args, rows, speech, noises, conditions, options, wer, pause_s: float = 0.8) -> list[str]:
    """WER on long items whose condition changes from one utterance to the next, like an interview's.

    Item k joins, with ``pause_s`` of quiet between them, utterance
    (k + j * step) % n degraded by condition j, for every condition j: the
    same degraded utterances as the main table (same noise clip and seed),
    grouped differently, so each condition still covers every utterance
    once. Each item is restored whole, as the pipeline restores an item, and
    its views are decoded whole (the candidates at every stretch factor);
    the table compares archivox's default with choosing one view per item
    and choosing stretch by stretch among the views at their own speed. Per
    condition, each utterance is scored on the words whose middle falls in
    its time span.
    """
    n = len(rows)
    step = max(1, n // max(len(conditions), 1))
    rng = np.random.default_rng(7)
    root = _cache_root(args)
    cache = root / "long" if root is not None else None
    views = ("raw", "dsp", "denoised", "mix", "gtcrn")
    view_of = {"original": "raw", "pre_denoise": "dsp", "denoised": "denoised", "mix": "mix", "gtcrn": "gtcrn"}
    missing = [c for c in options.candidates if c not in view_of]
    factors_of = {view_of[c]: factors for c, factors in options.decodes().items()}
    if missing:
        raise SystemExit(f"the long items decode no {missing} view; give candidates among {sorted(view_of)}")
    policies = ("raw", "dsp", "denoised", "mix", "gtcrn", "item", "stretch", "archivox")
    decodes = list(views) + [f"{v}@{f:g}" for v, factors in factors_of.items() for f in factors if f != 1.0]
    hyps: dict[str, list[str]] = {k: [] for k in policies}
    # Per condition: the utterances' references and each policy's words inside their spans.
    by_cond = {c: {"refs": [], **{k: [] for k in policies}} for c in conditions}
    refs: list[str] = []
    stretch_views: dict[str, int] = {}
    stretches, seconds = 0, 0.0
    for k in range(n):
        members = [((k + j * step) % n, cond) for j, cond in enumerate(conditions)]
        refs.append(" ".join(rows[i]["transcript"] for i, _ in members))
        spans, t = [], 0.0
        for i, _ in members:
            spans.append((t, t + speech[i].size / RATE_HZ))
            t = spans[-1][1] + pause_s
        # Named by what the item is made of: another --n joins other utterances under the same k.
        made_of = hashlib.sha256("|".join(f"{rows[i]['path']}@{cond}" for i, cond in members).encode()).hexdigest()
        row = {"path": f"long_{k:03d}_{made_of[:12]}.wav"}
        # Drawn for every item, cached or not, so that item k's audio does
        # not depend on which items an earlier run left in the cache.
        quiet = (1e-3 * rng.standard_normal(int(pause_s * RATE_HZ))).astype(np.float32)
        results = _cached(cache, "long", row, decodes)
        found = {} if results is not None else _cached_some(cache, "long", row, decodes)
        if results is None:
            # Decodes a cache of this revision holds already (an earlier
            # release's, where the views did not change) are not made again.
            wanted = {v: tuple(f for f in factors_of.get(v, (1.0,)) if (v if f == 1.0 else f"{v}@{f:g}") not in found)
                      for v in views}
            parts = []
            for i, cond in members:
                parts += [degrade(speech[i], cond, noises[i % len(noises)], seed=1000 + i), quiet]
            degraded = np.concatenate(parts)
            pre, denoised, restored, _ = restore_item(degraded)
            audio = {v: to_whisper_input(x, RATE_HZ) for v, x in zip(views, (degraded, pre, denoised))}
            audio["mix"] = observation_mix(to_whisper_input(restored, RATE_HZ), audio["dsp"], options.mix_fraction)
            audio["gtcrn"] = gtcrn_for_asr(audio["dsp"])
            made = _decode_views({v: audio[v] for v in views if wanted[v]}, options, wanted)
            _store(cache, "long", row, made)
            results = {**found, **made}
        seconds += results["raw"].duration_s
        pair = {c: results[view_of[c]] for c in options.candidates}
        one_speed = replace(options, combine="choose")
        by_stretch = combine({c: _copy(t) for c, t in pair.items()}, replace(one_speed, choose_by="stretch"))
        everything = {(c if f == 1.0 else f"{c}@{f:g}"): _copy(results[view_of[c] if f == 1.0 else f"{view_of[c]}@{f:g}"])
                      for c, factors in options.decodes().items() for f in factors}
        picked = {**{v: results[v] for v in views},
                  "item": combine({c: _copy(t) for c, t in pair.items()}, replace(one_speed, choose_by="item")),
                  "stretch": by_stretch, "archivox": combine(everything, options)}
        for key, tr in picked.items():
            hyps[key].append(tr.text())
            for (i, cond), text in zip(members, _words_in_spans(tr, spans)):
                by_cond[cond][key].append(text)
        for (i, cond) in members:
            by_cond[cond]["refs"].append(rows[i]["transcript"])
        for st in by_stretch.evidence.get("stretches", [{"view": by_stretch.candidate}]):
            stretches += 1
            stretch_views[st["view"]] = stretch_views.get(st["view"], 0) + 1
        print(f"long item {k + 1}/{n}", flush=True)
    w = {key: wer(refs, h) for key, h in hyps.items()}
    print("long items", {k: round(v, 1) for k, v in w.items()}, flush=True)
    lines = [
        "",
        f"## Long items whose condition changes ({n} items, {seconds / 60:.1f} min)",
        "",
        f"Each item joins {len(conditions)} of the utterances above, each in another condition "
        f"({', '.join(conditions)}), with {pause_s:g} s of quiet between them; each condition still covers every "
        "utterance once, with the same degradation as in the table above. Items are restored whole, as the pipeline "
        "restores an item, and each view is decoded whole. WER in %, all items pooled; per condition, each "
        "utterance is scored on the words (word timestamps) whose middle falls inside its span.",
        "",
        f"archivox's default: {_describe_decodes(options)}, combined by `{options.combine}`. The two columns "
        "before it choose among the same views at their own speed (revision 5's default was per stretch).",
        "",
        "| condition | raw | dsp | denoised | mix | gtcrn | one view per item | view chosen per stretch "
        "| **archivox (default)** | archivox / raw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cond_w = {}
    for cond in conditions:
        cw = {key: wer(by_cond[cond]["refs"], by_cond[cond][key]) for key in policies}
        cond_w[cond] = cw
        lines.append(f"| {cond} | {cw['raw']:.1f} | {cw['dsp']:.1f} | {cw['denoised']:.1f} | {cw['mix']:.1f} | {cw['gtcrn']:.1f} | {cw['item']:.1f} "
                     f"| {cw['stretch']:.1f} | **{cw['archivox']:.1f}** | {cw['archivox'] / cw['raw']:.2f} |")
    mean = {key: float(np.mean([cw[key] for cw in cond_w.values()])) for key in policies}
    lines += [
        f"| mean over conditions | {mean['raw']:.1f} | {mean['dsp']:.1f} | {mean['denoised']:.1f} | {mean['mix']:.1f} "
        f"| {mean['gtcrn']:.1f} | {mean['item']:.1f} | {mean['stretch']:.1f} "
        f"| **{mean['archivox']:.1f}** | {mean['archivox'] / mean['raw']:.2f} |",
        f"| whole items pooled | {w['raw']:.1f} | {w['dsp']:.1f} | {w['denoised']:.1f} | {w['mix']:.1f} | {w['gtcrn']:.1f} | {w['item']:.1f} "
        f"| {w['stretch']:.1f} | **{w['archivox']:.1f}** | {w['archivox'] / w['raw']:.2f} |",
        "",
        f"Stretches chosen per view: {', '.join(f'{v} {c}' for v, c in sorted(stretch_views.items()))} "
        f"({stretches} stretches, {stretches / n:.1f} per item).",
    ]
    return lines


def _words_in_spans(transcript, spans: list[tuple[float, float]]) -> list[str]:
    """The transcript's words split by time, one text per span: a word goes to the span it falls in,
    the cut between two spans being the middle of the pause between them.

    A segment without word timings counts by its own middle.
    """
    out: list[list[str]] = [[] for _ in spans]
    # Cut in the middle of each pause: Whisper's word times run a little early or late.
    cuts = [0.5 * (b + a) for (_, b), (a, _) in zip(spans[:-1], spans[1:])]
    for seg in transcript.segments:
        timed = [(0.5 * (w.start_s + w.end_s), w.word) for w in seg.words] or [(0.5 * (seg.start_s + seg.end_s), seg.text)]
        for middle, word in timed:
            out[int(np.searchsorted(cuts, middle))].append(word.strip())
    return [" ".join(words) for words in out]


def _flag_rate(corpus: Path, minutes: float, options: TranscribeOptions) -> list[str]:
    """Flags per 5 minutes on clean read speech (utterances joined with 1 s pauses, decoded as long items)."""
    from archivox.tasks.hallucination import flag_counts

    rows = speech_rows(corpus)
    pause = np.zeros(16_000, np.float32)
    items, current, total = [], [], 0.0
    for r in rows:
        x = to_whisper_input(load(corpus / r["path"], 16_000), 16_000)
        current += [x, pause]
        total += x.size / 16_000 + 1.0
        if sum(c.size for c in current) > 120 * 16_000:  # two-minute items, like an interview excerpt
            items.append(np.concatenate(current))
            current = []
        if total >= minutes * 60:
            break
    if current:
        items.append(np.concatenate(current))
    opts = replace(options, asr_input="restored")
    counts: dict[str, int] = {}
    flagged, segments, examples = 0, 0, []
    t = time.perf_counter()
    for audio in items:
        tr, _ = transcribe_candidates({"restored": audio}, opts)
        segments += len(tr.segments)
        for name, n in flag_counts(tr.segments).items():
            counts[name] = counts.get(name, 0) + n
        for s in tr.segments:
            if s.flags:
                flagged += 1
                examples.append(f"{s.flags} {s.text[:60]!r}")
    seconds = time.perf_counter() - t
    per5 = flagged / (total / 300.0)
    print(f"flags on clean speech: {flagged} of {segments} segments in {total / 60:.1f} min", counts, flush=True)
    return [
        "",
        f"Hallucination flags on clean read speech: {total / 60:.1f} min of corpus utterances (joined into "
        f"{len(items)} items of about 2 min with 1 s pauses, default options): **{flagged} flagged segments of "
        f"{segments}, {per5:.2f} per 5 minutes**; by flag: "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + (f"; e.g. {examples[:3]}" if examples else "")
        + f" ({seconds:.0f} s).",
        "The planted-hallucination check (text placed in 5 s stretches of silence, hiss, hum and clicks between "
        "utterances) is a test: tests/test_hallucination.py::test_planted_text_in_silence_and_noise_is_caught.",
    ]


def _speed(corpus, rows, speech, noises, options, norm) -> list[str]:
    """Wall-clock speed of the default policy per item, and of batched against sequential decoding.

    The default policy is timed the way the pipeline runs it: from the
    restored and pre-denoise files, so that views made at transcription
    time (``denoised``) are made and timed too.
    """
    import tempfile

    import jiwer
    import soundfile as sf

    from archivox.models.whisper import load_whisper

    h = load_whisper(options.model, options.device, options.compute_type)
    n = min(6, len(speech))
    restore_s = decode_s = single_s = 0.0
    audio_s = 0.0
    work = Path(tempfile.mkdtemp(prefix="archivox-bench-speed-"))
    for i in range(n):
        degraded = degrade(speech[i], "noise 5 dB", noises[i % len(noises)], seed=1000 + i)
        audio_s += degraded.size / RATE_HZ
        t = time.perf_counter()
        pre, _, restored, _ = restore_item(degraded)
        restore_s += time.perf_counter() - t
        files = {"restored": work / "restored.flac", "pre_denoise": work / "pre_denoise.wav"}
        sf.write(str(files["restored"]), restored, RATE_HZ)
        sf.write(str(files["pre_denoise"]), pre, RATE_HZ, subtype="FLOAT")
        t = time.perf_counter()
        transcribe_candidates(files, options)
        decode_s += time.perf_counter() - t
        t = time.perf_counter()
        transcribe_candidates(files, replace(options, asr_input="restored", stretch_factors=(1.0,)))
        single_s += time.perf_counter() - t
    # A long item (utterances joined) decoded sequentially and batched.
    long_rows = [r for r in rows][:12]
    pause = np.zeros(8000, np.float32)
    long16 = np.concatenate([np.concatenate([to_whisper_input(load(corpus / r["path"], 16_000), 16_000), pause]) for r in long_rows])
    ref = norm(" ".join(r["transcript"] for r in long_rows))
    modes = []
    for batch in (0, 8):
        t = time.perf_counter()
        tr, _ = transcribe_candidates({"restored": long16}, replace(options, asr_input="restored", batch_size=batch))
        modes.append((batch, time.perf_counter() - t, 100 * jiwer.wer(ref, norm(tr.text()))))
    long_s = long16.size / 16_000
    return [
        "",
        f"Speed ({h.device}, {h.compute_type}; {platform.node()}; wall clock, the machine shared with other work):",
        "",
        f"- restoration chain: {audio_s:.0f} s of audio in {restore_s:.1f} s ({audio_s / restore_s:.1f}x real time)",
        f"- transcription, default policy ({_describe_decodes(options)}): "
        f"{decode_s:.1f} s "
        f"({audio_s / decode_s:.1f}x real time); one decode of one view only: {single_s:.1f} s "
        f"({audio_s / single_s:.1f}x real time)",
        f"- a {long_s:.0f} s item: "
        + "; ".join(f"{'sequential' if b == 0 else f'batched ({b})'} {sec:.1f} s ({long_s / sec:.1f}x real time, WER {w:.1f} %)"
                    for b, sec, w in modes),
    ]


def _cache_root(args) -> Path | None:
    """Where this model's decodes are kept: per code revision, so that a release's run never reads an older one's."""
    from archivox.tasks.chain import RESTORATION_REVISION
    from archivox.tasks.transcribe import TRANSCRIPTION_REVISION

    if not args.cache:
        return None
    revision = f"restoration{RESTORATION_REVISION}-transcription{TRANSCRIPTION_REVISION}"
    return args.cache / args.model.replace("/", "_") / revision


def _cached(cache, cond, row, views):
    from archivox.tasks.exports import read_json

    if cache is None:
        return None
    paths = {v: cache / cond.replace(" ", "_") / f"{Path(row['path']).stem}.{v}.json" for v in views}
    if not all(p.is_file() for p in paths.values()):
        return None
    results = {v: read_json(p) for v, p in paths.items()}
    # A cache written before a flag was added lacks it; the flags that need
    # only a segment's text and times are checked again.
    from archivox.tasks.hallucination import too_fast

    for tr in results.values():
        for seg in tr.segments:
            if "too_fast" not in seg.flags and too_fast(seg):
                seg.flags.append("too_fast")
    return results


def _cached_some(cache, cond, row, views) -> dict:
    """The decodes among ``views`` that the cache holds for ``row``."""
    if cache is None:
        return {}
    return {v: r[v] for v in views if (r := _cached(cache, cond, row, [v])) is not None}


def _store(cache, cond, row, results):
    from archivox.tasks.exports import write_sidecars

    if cache is None:
        return
    folder = cache / cond.replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    for v, tr in results.items():
        write_sidecars(tr, folder / f"{Path(row['path']).stem}.{v}", formats=["json"])


def _copy(tr):
    from archivox.tasks.transcribe import Transcript

    return Transcript.from_dict(tr.to_dict())


def _spread(per_utterance, resamples: int = 2000, goal: float = 0.8) -> list[str]:
    """How far the archivox / raw ratio can be trusted: a sign count per utterance and a bootstrap over utterances.

    The conditions degrade the same utterances, so a difference "in every
    condition" is not that many independent results; a few utterances can
    carry a whole set (session 16). Utterances are resampled whole, all
    conditions together.
    """
    if not per_utterance:
        return []
    arc = np.stack([a[0] for a, _ in per_utterance])  # (conditions, utterances)
    raw = np.stack([r[0] for _, r in per_utterance])
    words = per_utterance[0][0][1]
    diff = arc.sum(axis=0) - raw.sum(axis=0)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, words.size, size=(resamples, words.size))
    counts = np.stack([np.bincount(p, minlength=words.size) for p in picks])  # (resamples, utterances)
    n = counts @ words
    ratio = (counts @ arc.T / n[:, None]).mean(axis=1) / np.maximum((counts @ raw.T / n[:, None]).mean(axis=1), 1e-12)
    point = (arc.sum(axis=1) / words.sum()).mean() / max((raw.sum(axis=1) / words.sum()).mean(), 1e-12)
    lo, hi = np.percentile(ratio, [2.5, 97.5])
    return [
        "",
        f"Per utterance, all conditions together: archivox has fewer word errors than raw on {(diff < 0).sum()}, "
        f"more on {(diff > 0).sum()}, as many on {(diff == 0).sum()}.",
        f"Bootstrap over utterances ({resamples} resamples): archivox / raw {point:.3f}, 95 % interval "
        f"{lo:.3f}-{hi:.3f}; {100 * np.mean(ratio <= goal):.1f} % of resamples at or under {goal:g}.",
    ]


def _report(args, rows, audio_s, clean_wer, table, policy_rows, all_views, timing, stages_run,
            asr_seconds, options):
    from archivox.models.whisper import load_whisper

    h = load_whisper(options.model, options.device, options.compute_type)
    lines = [
        f"# Transcription WER, {args.model} ({h.device}, {h.compute_type}), {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}.",
        "Command: `python bench/transcribe.py "
        + ("--all-but-tuning" if args.all_but_tuning else f"--n {args.n}")
        + (f" --holdout-of {args.holdout_of}" if args.holdout_of and not args.all_but_tuning else "")
        + f" --mix-fractions {args.mix_fractions}"
        + (f" --transfer-level-dbfs {args.transfer_level_dbfs:g}" if args.transfer_level_dbfs is not None else "")
        + (f" --quiet-input-dbfs {args.quiet_input_dbfs}" if args.quiet_input_dbfs is not None else "")
        + "`",
        "",
        f"{len(rows)} corpus read-speech utterances ({audio_s:.0f} s, {len(set(r['source_repo'] for r in rows))} sources), "
        f"each degraded per condition with a corpus noise clip (cycled over {len(NOISES)}), 50 Hz hum with harmonics, "
        "clicks and white hiss at the SNRs named. WER in % (jiwer, Whisper's English normaliser), all utterances pooled.",
        "Restoration as the pipeline runs it (default run options: diagnosis, `auto` preset, the stages it picks, "
        "DNSMOS off). Views: `raw` the degraded input; `dsp` the chain's audio entering the denoise stage "
        "(pre_denoise); `restored` the chain's output (after EQ and loudness); `denoised` the audio leaving the "
        "denoise stage (before EQ and loudness); `mixF` observation adding, (1-F) x restored (level-matched) + "
        "F x dsp. Every view is decoded with the same model and options "
        f"(beam {options.beam_size}, VAD {'on' if options.vad else 'off'}, word timestamps "
        f"{'on' if options.word_timestamps else 'off'}, faster-whisper's default temperature fallback); `raw`, "
        "the anchor, as faster-whisper decodes by default (its own no-speech rule on, no second decode of speech it "
        "jumped over), the other views as archivox decodes (such text kept and flagged; skipped speech decoded "
        "again).",
        f"`archivox`: `transcribe_item`'s default policy: {_describe_decodes(options)} (resampled: 1.05 plays "
        f"5 % slower and lower; times mapped back), combined by `{options.combine}`"
        + (" (word by word, each word the one most decodes share)." if combine_votes(options) else
           " (best evidence kept: confidence plus agreement between candidates).")
        + f" Columns `VIEW@F` are a view decoded at stretch factor F.",
        "Stages the diagnosis chose, per condition (items): "
        + "; ".join(f"{c}: " + ", ".join(f"{k} {v}" for k, v in sorted(st.items()) if k not in ("denoise", "eq", "loudness"))
                    for c, st in stages_run.items()) + ".",
        "",
        f"Clean speech WER: **{clean_wer:.1f} %**",
        "",
        "| condition | " + " | ".join(all_views) + " | archivox | archivox / raw | chosen view (count) |",
        "|---|" + "---:|" * (len(all_views) + 2) + "---|",
    ]
    ratios = []
    for cond, w, winners in table:
        ratio = w["archivox"] / w["raw"] if w["raw"] > 0 else float("nan")
        ratios.append((w["archivox"], w["raw"]))
        lines.append(
            f"| {cond} | " + " | ".join(f"{w[v]:.1f}" for v in all_views)
            + f" | **{w['archivox']:.1f}** | {ratio:.2f} | "
            + ", ".join(f"{k} {n}" for k, n in sorted(winners.items())) + " |"
        )
    pooled_a = np.mean([a for a, _ in ratios])
    pooled_r = np.mean([r for _, r in ratios])
    lines += [
        "",
        f"Mean over conditions: raw {pooled_r:.1f} %, archivox {pooled_a:.1f} % "
        f"(ratio {pooled_a / pooled_r:.2f}).",
        "",
        "Other candidate policies (WER %):",
        "",
        "| condition | " + " | ".join(policy_rows[0][1]) + " |",
        "|---|" + "---:|" * len(policy_rows[0][1]),
    ]
    for cond, w in policy_rows:
        lines.append(f"| {cond} | " + " | ".join(f"{v:.1f}" for v in w.values()) + " |")
    lines += [
        "",
        f"Clean pass: {audio_s:.0f} s of audio decoded in {asr_seconds:.1f} s ({audio_s / asr_seconds:.1f}x real time, one view).",
    ]
    return lines


if __name__ == "__main__":
    main()
