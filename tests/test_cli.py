"""The single-file commands and scan, as a user types them."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from archivox.cli import _run_options, build_parser, main
from archivox.errors import ConfigError
from archivox.manifest import read_manifest
from signals import RATE_HZ, tone


def test_scan_writes_a_manifest_of_readable_media(demo_archive, tmp_path, capsys):
    manifest = tmp_path / "scanned.csv"
    assert main(["scan", str(demo_archive.root), "-o", str(manifest), "--collection", "demo"]) == 0
    paths = {i.path for i in read_manifest(manifest)}
    good = {i.path for i in demo_archive.items if i.expected_status == "ok"}
    assert good <= paths
    assert "broken/empty.wav" not in paths and "manifest.csv" not in paths


def test_restore_one_file_with_chosen_stages(demo_archive, tmp_path, capsys):
    source = demo_archive.root / "interviews" / "mueller_1971.flac"
    output = tmp_path / "mueller.flac"
    assert main(["restore", str(source), "-o", str(output), "--stages", "dehum,declick,loudness",
                 "--set", "loudness.target_lufs=-20"]) == 0
    printed = capsys.readouterr().out
    assert "declick" in printed and "dehum" in printed and "denoise" not in printed
    info = sf.info(str(output))
    assert info.samplerate == 48_000 and info.subtype == "PCM_24"
    assert main(["restore", str(source), "-o", str(source)]) == 2  # never over the input
    assert main(["restore", str(source), "-o", str(output), "--stages", "hiss"]) == 2
    assert "unknown stage 'hiss'" in capsys.readouterr().err


def test_diagnose_reports_the_planted_hum(demo_archive, capsys):
    assert main(["diagnose", str(demo_archive.root / "interviews" / "mueller_1971.flac"), "--json"]) == 0
    diagnosis = json.loads(capsys.readouterr().out)
    assert abs(diagnosis["hum_fundamental_hz"] - 60.0) < 0.5


def test_transcribe_one_file_writes_sidecars(demo_archive, tmp_path, capsys):
    base = tmp_path / "newsreel"
    assert main(["transcribe", str(demo_archive.root / "film" / "newsreel_1949.mp4"), "-o", str(base)]) == 0
    assert "bridge" in capsys.readouterr().out.lower()
    for suffix in (".srt", ".vtt", ".txt", ".json"):
        assert (tmp_path / f"newsreel{suffix}").stat().st_size > 0
    assert main(["transcribe", str(demo_archive.root / "film" / "newsreel_1949.mp4"), "--model", "no-such-model"]) == 2
    assert "never downloads" in capsys.readouterr().err


def test_bracketed_names_and_long_errors_print_as_written(tmp_path, capsys):
    # Rich markup would swallow "[take 2]" as a style (and crash on a stray
    # closing tag); a long error must stay on one line whatever the width.
    (tmp_path / "[bold]").mkdir()
    source = tmp_path / "[bold]" / "reel [take 2].wav"
    sf.write(str(source), (0.1 * tone(440.0, 1.0) + 0.01).T, RATE_HZ)
    output = tmp_path / "restored [take 2].wav"
    assert main(["restore", str(source), "-o", str(output), "--stages", "dc"]) == 0
    printed = capsys.readouterr().out
    assert "[bold]" in printed and "[take 2]" in printed and output.exists()

    deep = tmp_path.joinpath(*["a-long-folder-name-for-a-collection"] * 6)
    deep.mkdir(parents=True)
    assert main(["run", str(source), "--root", str(deep), "--out", str(deep)]) == 2
    err = capsys.readouterr().err
    assert f"--out {deep} is the archive root; choose an output folder" in err
    assert main(["run", str(source), "--root", str(deep), "--out", str(deep / "restored")]) == 2
    assert "is inside the archive root" in capsys.readouterr().err


def test_run_chooses_the_transcript_among_the_views_asked_for():
    def options(*extra):
        return _run_options(build_parser().parse_args(["run", "m.csv", "--out", "o", *extra])).transcribe

    assert options().candidates == ("denoised", "mix", "gtcrn")
    assert options("--asr-views", "denoised, pre_denoise").candidates == ("denoised", "pre_denoise")
    with pytest.raises(ConfigError, match="candidates=.*'raw'"):
        options("--asr-views", "denoised,raw")
    assert options().stretch_factors == (1.0, 1.05, 0.95) and options().combine == "auto"
    one_speed = options("--asr-speeds", "1", "--asr-combine", "choose")
    assert one_speed.stretch_factors == (1.0,) and one_speed.combine == "choose"
    assert options().extra_decodes == ("denoised@1.1", "denoised@0.9", "mix@1.1", "mix@0.9")
    assert one_speed.decodes() == {"denoised": (1.0,), "mix": (1.0,), "gtcrn": (1.0,)}
    assert options("--asr-extra-decodes", "none").extra_decodes == ()
    assert options("--asr-speeds", "1,1.05", "--asr-extra-decodes", "mix@1.1").decodes() == {
        "denoised": (1.0, 1.05), "mix": (1.0, 1.05, 1.1), "gtcrn": (1.0, 1.05)}
    with pytest.raises(ConfigError, match="'mix1.1' is not VIEW@FACTOR"):
        options("--asr-extra-decodes", "mix1.1")
    assert options().temperature_fallback and not options("--no-asr-fallback").temperature_fallback
    with pytest.raises(ConfigError, match="--asr-speeds 'fast'"):
        options("--asr-speeds", "fast")
    with pytest.raises(ConfigError, match=r"stretch_factors=2.0 is out of range"):
        options("--asr-speeds", "1,2")
