"""Energy network f_θ(y, t) of diffusion recovery likelihood (Gao et al., ICLR 2021; ``docs/methods/drl.md`` §5).

Written from the authors' TensorFlow code, ruiqigao/recovery_likelihood @ c77cc05: ``network.py`` (class
``net_res_temb2``, "network.py:149" below means that file and line), ``nn.py`` (layers, spectral norm, init) and
the flag defaults in ``config.py``. The authors' CIFAR-10 run uses ``--num_res_blocks=8`` (README.md:23).

f_θ is a log-density up to a constant (higher = more probable); the engine's energy is E = −f_θ. Shapes: images
y (B, C, H, W) (NCHW; the authors are NHWC), integer levels t (B,) in 0..T−1, output (B,).

Structure (every flag at its config.py default: normalize=None, act=lrelu, final_act=relu, use_attention=False,
resamp_with_conv=False, spec_norm=True, res_conv_shortcut=True, res_use_scale=True, dropout=0):

    temb  = Dense_SN(4ch)(sinusoid(t, ch)) → lrelu → Dense_SN(4ch)                 network.py:163-164, 204-206
    h     = Conv3x3_SN(ch)(y)                                                        network.py:173, 210
    for each level i (ch·ch_mult[i] channels), num_res_blocks ResBlocks, then AvgPool2 except after the last
    ResBlock(h) = h' + Conv3x3_SN,≤1(·g)(lrelu(Conv3x3_SN(lrelu(h)) + Dense_SN(lrelu(temb))))
              h' = h, or Conv3x3_SN(h) when the width changes                    network.py:87-110
    f     = Σ_c [Σ_{h,w} relu(h)]_c · Dense(ch·ch_mult[-1])(lrelu(temb))_c            network.py:223-233

Spectral norm (nn.py:66-125): one power iteration per forward, u kept as a buffer and updated on every call
(the authors' layer updates u on every call, inference and Langevin steps included); the weight is reshaped to
(out, −1) (the same singular values as the authors' (−1, out)). The zero-initialised second conv of each block
uses the "lower bound" variant W/σ·min(σ, 1) (σ += 1e-6), i.e. it is only scaled down when σ > 1. The time
projection dense2 (``temb/dense2``) has no spectral norm. ``dense_out`` (network.py:194) is built but never
called, so it owns no parameters and is absent here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DRLNetConfig",
    "DRL_CIFAR10",
    "DRL_DIGITS",
    "LRELU_SLOPE",
    "SpectralNorm",
    "timestep_embedding",
    "DRLResBlock",
    "DRLEnergyNet",
    "DRL_NETS",
    "LangevinStepGraph",
    "build_drl_energy",
    "forward_macs",
    "frozen_u",
    "score_and_input_grad",
    "spectral_norm_macs",
]

LRELU_SLOPE = 0.2  # tf.nn.leaky_relu's default alpha (network.py:13)


@dataclass(frozen=True)
class DRLNetConfig:
    """Hyper-parameters of :class:`DRLEnergyNet`.

    ch: base width (model.py:70, 128); ch_mult: width multiplier per resolution (model.py:59-60, (1, 2, 2, 2) at
    32×32); num_res_blocks per resolution (README.md:23, 8 for CIFAR-10; config.py:42 default 2); in_ch: image
    channels; image_size: H = W the network is built for (only checked, the readout sums over space).
    """

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    in_ch: int
    image_size: int
    spec_norm: bool = True  # config.py:51


# The authors' headline CIFAR-10 (T6) network: README.md:23 `--num_res_blocks=8`, model.py:59-60, 70.
DRL_CIFAR10 = DRLNetConfig(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, in_ch=3, image_size=32)
# CPU quickstart on sklearn's 8×8 digits (ours; docs/methods/drl.md §5.3): ch 128 → 32, one downsampling
# (8 → 4, the same 4×4 last resolution as CIFAR's 32 → 4), 2 blocks per resolution (config.py:42's default).
DRL_DIGITS = DRLNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=2, in_ch=1, image_size=8)
# model.arch -> network (engine.config.DRL_ARCHS names the same keys; a test keeps them equal).
DRL_NETS: dict[str, DRLNetConfig] = {"cifar10": DRL_CIFAR10, "digits": DRL_DIGITS}


def _variance_scaling_uniform_(w: Tensor, fan_in: int, fan_out: int, scale: float) -> None:
    """TF variance_scaling(scale, mode='fan_avg', distribution='uniform'): U(±√(3·scale/((fan_in+fan_out)/2)))
    with scale 0 replaced by 1e-10 (nn.py:9-10)."""
    s = 1e-10 if scale == 0 else scale
    limit = math.sqrt(3.0 * s / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        w.uniform_(-limit, limit)


class SpectralNorm(nn.Module):
    """W/σ(W) with σ from one power iteration per call (nn.py:66-125); wraps a Linear or Conv2d ``layer``.

    ``lower_bound``: W/σ·min(σ, 1) with σ += 1e-6 (nn.py:112-114), used for layers initialised at scale 0.
    The buffer ``u`` (out,) starts as TruncatedNormal(std 0.02) (nn.py:85-88); it is updated in place on every
    call (``update_u`` False freezes it). σ is computed from detached u, v, so gradients flow only through W
    (nn.py:107-110).
    """

    u: Tensor

    def __init__(self, layer: nn.Linear | nn.Conv2d, lower_bound: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.lower_bound = lower_bound
        self.update_u = True
        out = layer.weight.shape[0]
        u = torch.empty(out)
        nn.init.trunc_normal_(u, std=0.02, a=-0.04, b=0.04)  # TF's truncated normal cuts at 2 std
        self.register_buffer("u", u)

    def normalized_weight(self) -> Tensor:
        w = self.layer.weight
        w_mat = w.reshape(w.shape[0], -1)  # (out, in·k·k)
        with torch.no_grad():
            v = F.normalize(self.u @ w_mat, dim=0, eps=1e-12)  # (in·k·k,)
            u = F.normalize(w_mat @ v, dim=0, eps=1e-12)  # (out,)
            if self.update_u:
                self.u.copy_(u)
        sigma = u @ (w_mat @ v)
        if self.lower_bound:
            sigma = sigma + 1e-6
            return w / sigma * torch.clamp(sigma, max=1.0)
        return w / sigma

    def forward(self, x: Tensor) -> Tensor:
        w = self.normalized_weight()
        if isinstance(self.layer, nn.Conv2d):
            return F.conv2d(x, w, self.layer.bias, padding=self.layer.padding)
        return F.linear(x, w, self.layer.bias)


def _dense(n_in: int, n_out: int, spec_norm: bool, init_scale: float = 1.0) -> nn.Module:
    """nn.dense (nn.py:128-169): bias 0, fan_avg uniform init, optional spectral norm."""
    lin = nn.Linear(n_in, n_out)
    _variance_scaling_uniform_(lin.weight, n_in, n_out, init_scale)
    nn.init.zeros_(lin.bias)
    return SpectralNorm(lin, lower_bound=init_scale == 0) if spec_norm else lin


def _conv3x3(c_in: int, c_out: int, spec_norm: bool, init_scale: float = 1.0) -> nn.Module:
    """nn.conv2d (nn.py:172-223) at its defaults: 3×3, stride 1, 'SAME' (padding 1), bias 0."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    _variance_scaling_uniform_(conv.weight, 9 * c_in, 9 * c_out, init_scale)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return SpectralNorm(conv, lower_bound=init_scale == 0) if spec_norm else conv


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """(B,) integer levels → (B, dim) float32 [sin(t·f_k), cos(t·f_k)], f_k = exp(−k·ln 10⁴/(dim/2 − 1)).

    nn.py:226-245. The level index itself (0..T−1) is the argument: no ×1000 rescaling. Odd ``dim`` is zero-padded.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(k * (-math.log(10000.0) / (half - 1)))
    arg = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 == 1 else emb


class DRLResBlock(nn.Module):
    """resnet_block (network.py:60-110) with normalize=None and dropout=0 (both config.py defaults).

    h = conv1(lrelu(x)) + temb_proj(lrelu(temb))[:, :, None, None]; h = conv2(lrelu(h)) with conv2 = (W*x + b)·g,
    W initialised at scale 0 (≈ 0) under lower-bound spectral norm, g = 1 a learned per-channel scale
    (``res_use_scale``, nn.py:194-202); out = shortcut(x) + h, shortcut a 3×3 spectral-normed conv
    (``res_conv_shortcut``; nn.conv2d's default 3×3 filter) only when the width changes.
    x (B, c_in, H, W), temb (B, temb_ch) → (B, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, temb_ch: int, spec_norm: bool = True) -> None:
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.temb_proj = _dense(temb_ch, c_out, spec_norm)
        self.conv1 = _conv3x3(c_in, c_out, spec_norm)
        self.conv2 = _conv3x3(c_out, c_out, spec_norm, init_scale=0.0)
        self.g = nn.Parameter(torch.ones(c_out))
        self.shortcut = _conv3x3(c_in, c_out, spec_norm) if c_in != c_out else None

    def forward(self, x: Tensor, temb_act: Tensor) -> Tensor:
        # temb_act = lrelu(temb), shared by all blocks (the authors apply lrelu inside each block: same values).
        h = self.conv1(F.leaky_relu(x, LRELU_SLOPE))
        h = h + self.temb_proj(temb_act)[:, :, None, None]
        h = self.conv2(F.leaky_relu(h, LRELU_SLOPE)) * self.g[None, :, None, None]
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + h


class DRLEnergyNet(nn.Module):
    """net_res_temb2 (network.py:149-235): y (B, in_ch, S, S), t (B,) int → f_θ(y, t) (B,).

    Trainable parameters 34,833,408 for :data:`DRL_CIFAR10` and 239,040 for :data:`DRL_DIGITS` (hand count in
    tests/test_models_drl.py); the spectral-norm u vectors are buffers (22,912 and 928 elements).
    """

    def __init__(self, cfg: DRLNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch, sn = cfg.ch, cfg.spec_norm
        temb_ch = 4 * ch
        self.temb_dense0 = _dense(ch, temb_ch, sn)
        self.temb_dense1 = _dense(temb_ch, temb_ch, sn)
        self.temb_dense2 = _dense(temb_ch, ch * cfg.ch_mult[-1], spec_norm=False)  # network.py:165: no SN
        self.conv_in = _conv3x3(cfg.in_ch, ch, sn)
        # levels[i][j]: block j at resolution i (the authors' level_{i}_block_{j}, network.py:181).
        self.levels = nn.ModuleList()
        c_in = ch
        for mult in cfg.ch_mult:
            blocks: list[nn.Module] = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(DRLResBlock(c_in, ch * mult, temb_ch, sn))
                c_in = ch * mult
            self.levels.append(nn.ModuleList(blocks))

    @property
    def resolutions(self) -> Sequence[int]:
        """Feature-map side per level: image_size, image_size/2, … (AvgPool2 between levels, network.py:54)."""
        return [self.cfg.image_size // 2**i for i in range(len(self.cfg.ch_mult))]

    def time_features(self, t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """lrelu(temb(t)) (B, 4ch): the time MLP's output as every block and the readout read it (no y)."""
        temb = timestep_embedding(t, self.cfg.ch).to(dtype)  # (B, ch)
        temb = self.temb_dense1(F.leaky_relu(self.temb_dense0(temb), LRELU_SLOPE))  # (B, 4ch)
        return F.leaky_relu(temb, LRELU_SLOPE)

    def score(self, y: Tensor, temb_act: Tensor) -> Tensor:
        """f_θ(y, t) (B,) given the time features of :meth:`time_features` (the part of the forward that reads y)."""
        h = self.conv_in(y)  # (B, ch, S, S)
        last = len(self.levels) - 1
        for i, blocks in enumerate(self.levels):
            assert isinstance(blocks, nn.ModuleList)
            for block in blocks:
                h = block(h, temb_act)
            if i != last:
                h = F.avg_pool2d(h, 2)  # tf.nn.avg_pool(·, 2, 2, 'SAME') on even sides
        h = F.relu(h).sum(dim=(2, 3))  # (B, ch·ch_mult[-1])
        return (h * self.temb_dense2(temb_act)).sum(dim=1)  # (B,)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        if y.dim() != 4 or y.shape[1] != self.cfg.in_ch or y.shape[2] != y.shape[3]:
            raise ValueError(f"y has shape {tuple(y.shape)}; expected (B, {self.cfg.in_ch}, S, S)")
        if t.dim() == 0:
            t = t.expand(y.shape[0])
        return self.score(y, self.time_features(t, y.dtype))


def _lrelu_grad(pre: Tensor, grad: Tensor) -> Tensor:
    """∂lrelu(pre)/∂pre · grad: 1 for pre > 0, else the slope (tf.nn.leaky_relu's and PyTorch's gradient)."""
    return torch.where(pre > 0, grad, grad * LRELU_SLOPE)


def _conv_t(grad: Tensor, conv: nn.Module) -> Tensor:
    """The input gradient of a 3×3 'SAME' conv (spectral-normed or not): its transpose applied to ``grad``."""
    w = conv.normalized_weight() if isinstance(conv, SpectralNorm) else conv.weight
    assert isinstance(w, Tensor)
    return F.conv_transpose2d(grad, w, padding=1)


def score_and_input_grad(net: DRLEnergyNet, y: Tensor, temb_act: Tensor) -> tuple[Tensor, Tensor]:
    """(f_θ(y, t) (B,), ∂f/∂y (B, C, S, S)) with the backward written out (no autograd), for exported graphs.

    Random-free, autograd-free operators only (conv, conv_transpose, where, pooling as a reshape-mean and its
    nearest-neighbour spread), so ``torch.export`` and the ONNX exporter take it as a plain forward graph; tested
    against autograd in tests/test_drl.py. Spectral norm runs as in :meth:`SpectralNorm.forward` (set
    ``update_u`` False first: an exported graph holds u as a constant).
    """
    acts: list[tuple[Tensor, Tensor, Tensor, DRLResBlock]] = []  # per block: its input h, conv1's output, g
    pooled: list[int] = []  # block counts after which the forward pooled
    h = net.conv_in(y)
    last = len(net.levels) - 1
    for i, blocks in enumerate(net.levels):
        assert isinstance(blocks, nn.ModuleList)
        for block in blocks:
            assert isinstance(block, DRLResBlock)
            c1 = block.conv1(F.leaky_relu(h, LRELU_SLOPE)) + block.temb_proj(temb_act)[:, :, None, None]
            acts.append((h, c1, block.g, block))
            h2 = block.conv2(F.leaky_relu(c1, LRELU_SLOPE)) * block.g[None, :, None, None]
            h = (h if block.shortcut is None else block.shortcut(h)) + h2
        if i != last:
            h = F.avg_pool2d(h, 2)
            pooled.append(len(acts))
    d = net.temb_dense2(temb_act)  # (B, C_last)
    f = (F.relu(h).sum(dim=(2, 3)) * d).sum(dim=1)
    grad = torch.where(h > 0, d[:, :, None, None].expand_as(h), torch.zeros_like(h))
    for j in range(len(acts), 0, -1):
        if j in pooled:  # avg_pool2d(2)'s backward: each input pixel gets a quarter of its output's gradient
            grad = grad.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 0.25
        h_in, c1, g, block = acts[j - 1]
        inner = _lrelu_grad(c1, _conv_t(grad * g[None, :, None, None], block.conv2))
        through = _lrelu_grad(h_in, _conv_t(inner, block.conv1))
        grad = through + (grad if block.shortcut is None else _conv_t(grad, block.shortcut))
    return f, _conv_t(grad, net.conv_in)


@contextlib.contextmanager
def frozen_u(*nets: nn.Module) -> Iterator[None]:
    """Every :class:`SpectralNorm` of ``nets`` without its power-iteration update (u read, not written) inside the
    block; the previous flags afterwards. Draws that must not move the training state use it."""
    layers = [m for net in nets for m in net.modules() if isinstance(m, SpectralNorm)]
    flags = [m.update_u for m in layers]
    for m in layers:
        m.update_u = False
    try:
        yield
    finally:
        for m, flag in zip(layers, flags, strict=True):
            m.update_u = flag


def build_drl_energy(cfg: DRLNetConfig = DRL_CIFAR10) -> DRLEnergyNet:
    """A freshly initialised :class:`DRLEnergyNet` with the authors' init (fan-avg uniform, zero biases)."""
    return DRLEnergyNet(cfg)


def forward_macs(cfg: DRLNetConfig, image_size: int | None = None) -> tuple[int, int]:
    """Multiply-accumulates of one forward for ONE example: (convolutions, dense layers).

    Convs: Σ H·W·9·c_in·c_out over conv_in, each block's conv1/conv2 and the width-changing 3×3 shortcuts.
    Dense: the time MLP (ch·4ch + 4ch·4ch + 4ch·ch_last), each block's temb_proj (4ch·c_out) and the readout
    inner product (ch_last). Elementwise work (activations, pooling, sums) and the spectral-norm power
    iterations (:func:`spectral_norm_macs`, per call, independent of the batch) are excluded.
    DRL_CIFAR10 at 32×32: (5,590,351,872, 4,129,024) ≈ 5.59 GMAC; DRL_DIGITS at 8×8: (4,737,024, 53,312).
    """
    s = cfg.image_size if image_size is None else image_size
    ch, temb_ch = cfg.ch, 4 * cfg.ch
    conv = s * s * 9 * cfg.in_ch * ch
    dense = ch * temb_ch + temb_ch * temb_ch + temb_ch * ch * cfg.ch_mult[-1] + ch * cfg.ch_mult[-1]
    c_in = ch
    for i, mult in enumerate(cfg.ch_mult):
        side = s // 2**i
        c_out = ch * mult
        for _ in range(cfg.num_res_blocks):
            conv += side * side * 9 * (c_in * c_out + c_out * c_out)
            if c_in != c_out:
                conv += side * side * 9 * c_in * c_out
            dense += temb_ch * c_out
            c_in = c_out
    return conv, dense


def spectral_norm_macs(net: nn.Module) -> int:
    """MACs of one call's power iterations over every :class:`SpectralNorm` in ``net``: 3·numel(W) each
    (v = uW, u = Wv, σ = u·(Wv)); paid once per forward call whatever the batch size."""
    return sum(3 * m.layer.weight.numel() for m in net.modules() if isinstance(m, SpectralNorm))


class LangevinStepGraph(nn.Module):
    """One Langevin step of the conditional EBM at a level given as input, as a plain forward graph (no autograd, no
    random op), what ``engine.export`` exports for DRL's sampler (``docs/methods/drl.md`` §3):

        (t (1,) int64, y, x̃, ξ (B, C, S, S)) -> y + ½s_t²·(∇_y f(y, t)/s_t² − 2c_t·(y − x̃)) + n·s_t·ξ

    i.e. y + ½s_t²·∇_y log p(y | x̃, t) + n·s_t·ξ with log p = f/s_t² − c_t‖y − x̃‖², c_t = r_t/(2σ_{t+1}²). Constants:
    ``temb`` (T, 4ch) the levels' time features, ``coef`` (T, 4) = [s_t², 1/s_t², c_t, n·s_t]. ``dtype``: the
    network's autocast dtype (the step arithmetic stays fp32). ∇_y f is :func:`score_and_input_grad`'s.
    """

    temb: Tensor
    coef: Tensor

    def __init__(self, net: DRLEnergyNet, temb: Tensor, coef: Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("temb", temb, persistent=False)
        self.register_buffer("coef", coef.float(), persistent=False)
        self.dtype = dtype

    def forward(self, t: Tensor, y: Tensor, x_tilde: Tensor, xi: Tensor) -> Tensor:
        c = self.coef[t]  # (1, 4)
        cast = (torch.autocast(y.device.type, dtype=self.dtype) if self.dtype != torch.float32
                else contextlib.nullcontext())
        with frozen_u(self.net), cast:
            _, g = score_and_input_grad(self.net, y, self.temb[t].expand(y.shape[0], -1))
        grad = g.float() * c[:, 1] - 2.0 * c[:, 2] * (y - x_tilde)
        return y + 0.5 * c[:, 0] * grad + c[:, 3] * xi
