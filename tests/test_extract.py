"""Probing and decoding with the real ffmpeg: containers, channels, broken and hostile inputs."""

from __future__ import annotations

import numpy as np
import pytest
from archivox.tasks.extract import (
    apply_channel_policy,
    decode,
    decode_to_file,
    has_audio,
    probe,
)
from media import transcode, video_with_audio, write_wav
from signals import rms_db, tone, white_noise

from archivox.errors import ConfigError, MediaError


@pytest.fixture(scope="module")
def stereo_wav(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extract")
    left = tone(440.0, 1.0, level_db=-20.0, rate_hz=44_100)
    right = white_noise(1.0, level_db=-40.0, rate_hz=44_100)
    return write_wav(folder / "stereo.wav", np.concatenate([left, right]), 44_100)


def test_wav_decodes_to_48k_float32_with_its_channels(stereo_wav):
    info = probe(stereo_wav)
    assert (info.sample_rate_hz, info.channels, info.video_streams) == (44_100, 2, 0)
    audio = decode(stereo_wav)
    assert audio.dtype == np.float32 and audio.shape[0] == 2
    assert abs(audio.shape[1] - 48_000) <= 2
    assert rms_db(audio[0]) == pytest.approx(-20.0, abs=0.3)


@pytest.mark.parametrize("suffix,args", [(".flac", []), (".mp3", ["-b:a", "128k"]), (".ogg", ["-c:a", "libvorbis"])])
def test_compressed_formats_decode(stereo_wav, tmp_path, suffix, args):
    encoded = transcode(stereo_wav, tmp_path / f"x{suffix}", *args)
    audio = decode(encoded)
    assert audio.shape[0] == 2
    assert abs(audio.shape[1] / 48_000 - 1.0) < 0.06  # MP3 adds encoder padding
    assert rms_db(audio[0]) == pytest.approx(-20.0, abs=1.0)


def test_video_container_first_audio_stream(stereo_wav, tmp_path):
    video = video_with_audio(stereo_wav, tmp_path / "clip.mp4", 1.0)
    info = probe(video)
    assert info.video_streams == 1 and info.audio_streams == 1
    assert decode(video).shape[0] == 2


def test_channel_policies_pick_the_speech_channel(stereo_wav):
    audio = decode(stereo_wav)
    speech, info = apply_channel_policy(audio, "speech")
    assert info["channel_used"] == 0 and speech.shape[0] == 1
    right, _ = apply_channel_policy(audio, "right")
    assert rms_db(right) < -35
    mixed, _ = apply_channel_policy(audio, "mix")
    np.testing.assert_allclose(mixed[0], audio.mean(axis=0), atol=1e-7)
    with pytest.raises(ConfigError, match="valid|one of"):
        apply_channel_policy(audio, "centre")


@pytest.mark.parametrize("policy", ["speech", "left", "right", "mix"])
def test_decoding_through_a_file_equals_decoding_in_memory(stereo_wav, tmp_path, policy):
    import soundfile as sf

    expected, expected_info = apply_channel_policy(decode(stereo_wav), policy)
    destination = tmp_path / "work" / "original.wav"
    info = decode_to_file(stereo_wav, destination, channel_policy=policy)
    written, rate = sf.read(destination, dtype="float32", always_2d=True)
    assert rate == 48_000 and written.shape == (expected.shape[1], 1)
    np.testing.assert_allclose(written[:, 0], expected[0], atol=1e-7)
    assert info == {**expected_info, "samples": expected.shape[1]}
    assert sorted(p.name for p in destination.parent.iterdir()) == ["original.wav"]  # ffmpeg's work file is gone


def test_decoding_through_a_file_leaves_nothing_when_it_fails(tmp_path):
    truncated = tmp_path / "cut.flac"
    truncated.write_bytes(b"fLaC" + bytes(40))
    with pytest.raises(MediaError):
        decode_to_file(truncated, tmp_path / "work" / "original.wav")
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []


def test_empty_truncated_and_non_media_files_fail_clearly(stereo_wav, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        decode(empty)
    flac = transcode(stereo_wav, tmp_path / "full.flac")
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(flac.read_bytes()[:300])
    with pytest.raises(MediaError, match="truncated.flac"):
        decode(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n" * 100)
    with pytest.raises(MediaError):
        decode(text)
    assert not has_audio(text) and has_audio(stereo_wav)
    with pytest.raises(MediaError, match="no such file"):
        probe(tmp_path / "missing.wav")


def test_hostile_file_names_are_read_as_plain_files(stereo_wav, tmp_path):
    for name in ["-i evil.wav", "http:x.wav", "semi;colon $(touch pwned).wav", "ünïcode 'q' \"d\".wav"]:
        target = tmp_path / name
        target.write_bytes(stereo_wav.read_bytes())
        assert decode(target).shape[0] == 2
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "name,text",
    [
        ("list.ffconcat", "ffconcat version 1.0\nfile '{target}'\n"),
        ("list.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{target}\n#EXT-X-ENDLIST\n"),
    ],
)
def test_playlists_cannot_reach_other_files(stereo_wav, tmp_path, name, text):
    # A playlist inside an archive must not make ffmpeg read the files (or
    # URLs) it names, inside the archive or outside it.
    playlist = tmp_path / name
    playlist.write_text(text.format(target=stereo_wav))
    with pytest.raises(MediaError):
        probe(playlist)
    with pytest.raises(MediaError):
        decode(playlist)
