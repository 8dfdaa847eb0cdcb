"""The DeepFilterNet3 port on a CUDA GPU: the same results as the CPU path and the C runtime.

CI has no GPU, so every test here skips there with its reason; on a GPU worker
they prove the CUDA path (`python -m pytest tests/test_denoise_cuda.py`).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from archivox.models import dfn3
from archivox.models.denoisers import load_denoiser
from archivox.models.dfn3_runtime import denoise_reference
from archivox.tasks.chain import build_chain
from signals import RATE_HZ, rms_db, si_sdr_db, speech_like, white_noise

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here: the DFN3 port's CUDA path is checked only where one is"
)

# cuDNN's convolutions and GRUs sum in another order than the CPU kernels, so
# the GPU matches the CPU to float rounding carried through the recurrences,
# not bit for bit. The issue asks for >= 25 dB against the C runtime.
GPU_PARITY_DB = 50.0


@pytest.fixture(scope="module")
def gpu():
    return load_denoiser("dfn3", device="cuda")


@pytest.fixture(scope="module")
def cpu():
    return load_denoiser("dfn3", device="cpu")


def noisy_speech(duration_s: float, noise_db: float = -30.0, seed: int = 0, rate_hz: int = RATE_HZ) -> np.ndarray:
    clean = speech_like(duration_s, seed=seed, rate_hz=rate_hz)[0]
    return (clean + white_noise(duration_s, noise_db, seed=seed + 1, rate_hz=rate_hz)[0]).astype(np.float32)


def test_auto_puts_the_model_on_the_gpu(gpu):
    auto = load_denoiser("dfn3", device="auto")
    assert auto.device == "cuda"
    assert all(p.is_cuda for p in auto.engine.net.parameters())
    assert auto.engine.batch_items  # enhance_many stacks items into one batch on a GPU
    assert gpu.weights_sha256 == auto.weights_sha256


def test_gpu_matches_the_c_runtime(gpu):
    noisy = noisy_speech(4.0, seed=3)
    ref = denoise_reference(noisy)
    out = gpu.engine.enhance(noisy)
    assert out.audio.dtype == np.float32 and out.audio.shape == (1, noisy.size)
    assert si_sdr_db(out.audio[0], ref.audio) >= GPU_PARITY_DB
    n = out.lsnr_db.shape[1]
    assert np.abs(out.lsnr_db[0, : n - 2] - ref.lsnr_db[2:n]).max() < 0.1


def test_gpu_matches_the_c_runtime_with_an_attenuation_limit(gpu):
    noisy = noisy_speech(2.0, seed=5)
    ref = denoise_reference(noisy, attenuation_limit_db=6.0)
    out = gpu.engine.enhance(noisy, attenuation_limit_db=6.0)
    assert si_sdr_db(out.audio[0], ref.audio) >= GPU_PARITY_DB


def test_gpu_batch_equals_items_alone(gpu):
    eng = dfn3.DFN3Engine(gpu.engine.net, torch.device("cuda"), chunk_frames=200)
    items = [noisy_speech(d, seed=s) for d, s in ((1.3, 7), (2.9, 9), (0.1, 11))]
    batched = eng.enhance_many(items)
    for item, res in zip(items, batched):
        assert res.audio.shape == (1, item.size)
        assert si_sdr_db(res.audio[0], eng.enhance(item).audio[0]) >= GPU_PARITY_DB


def test_gpu_chunks_join_without_seams(gpu):
    noisy = noisy_speech(8.0, seed=13)
    whole = dfn3.DFN3Engine(gpu.engine.net, torch.device("cuda"), chunk_frames=10_000).enhance(noisy).audio[0]
    chunked = dfn3.DFN3Engine(gpu.engine.net, torch.device("cuda"), chunk_frames=100).enhance(noisy).audio[0]
    for seam in range(100 * 480, noisy.size - 4800, 100 * 480):
        window = slice(seam - 4800, seam + 4800)
        if rms_db(whole[window]) > -70:
            assert si_sdr_db(chunked[window], whole[window]) >= 35.0


@pytest.mark.parametrize("rate_hz", [16_000, 44_100])
def test_gpu_stereo_at_other_rates_matches_the_cpu(gpu, cpu, rate_hz):
    left, right = noisy_speech(3.0, seed=15, rate_hz=rate_hz), noisy_speech(3.0, seed=17, rate_hz=rate_hz)
    stereo = np.stack([left, right])
    on_gpu, on_cpu = gpu(stereo, rate_hz).audio, cpu(stereo, rate_hz).audio
    assert on_gpu.shape == stereo.shape
    for ch in range(2):
        assert si_sdr_db(on_gpu[ch], on_cpu[ch]) >= GPU_PARITY_DB


def test_gpu_silence_short_and_full_scale_inputs(gpu):
    silent = gpu(np.zeros((1, RATE_HZ), np.float32), RATE_HZ).audio
    assert np.all(np.isfinite(silent)) and np.abs(silent).max() < 1e-6
    short = gpu(noisy_speech(0.1, seed=19), RATE_HZ).audio
    assert short.shape == (1, RATE_HZ // 10) and np.all(np.isfinite(short))
    loud = np.clip(np.random.default_rng(21).standard_normal(RATE_HZ) * 2.0, -1.0, 1.0).astype(np.float32)
    out = gpu(loud, RATE_HZ).audio
    assert np.all(np.isfinite(out)) and np.abs(out).max() <= 4.0


def test_the_chain_stage_runs_on_the_gpu():
    noisy = noisy_speech(3.0, seed=23)
    params = {"denoise": {"wet_mix": 1.0, "dnsmos": False}}
    on_gpu = build_chain(["denoise"], params, device="cuda")(noisy[None], RATE_HZ)
    on_cpu = build_chain(["denoise"], params, device="cpu")(noisy[None], RATE_HZ)
    record = on_gpu.records[0]
    assert record.device == "cuda" and record.params["device"] == "cuda"
    assert record.metrics["realtime_factor"] > 0
    assert si_sdr_db(on_gpu.audio[0], on_cpu.audio[0]) >= GPU_PARITY_DB


@pytest.mark.corpus
def test_gpu_parity_on_voicebank_demand(gpu, corpus):
    files = sorted((corpus / "vb_demand" / "noisy").glob("*.wav"))[:5]
    assert files, "no VoiceBank+DEMAND pairs in the corpus"
    x48 = [resample_poly(sf.read(f, dtype="float32")[0], RATE_HZ, 16_000).astype(np.float32) for f in files]
    for f, x, res in zip(files, x48, gpu.engine.enhance_many(x48)):
        assert si_sdr_db(res.audio[0], denoise_reference(x).audio) >= GPU_PARITY_DB, f.name
