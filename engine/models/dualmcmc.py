"""Networks of Dual-MCMC Teaching (Cui & Han, NeurIPS 2023): EBM E(x), generator g_θ(z), inference q_φ(z|x).

Architecture only (no training logic). The recipe, the sources and the paper-vs-code differences are in
docs/methods/dualmcmc.md; "nets.py L…" below means the authors' jcui1224/dual-MCMC at commit aac3c4c.

Conventions (theirs, kept so that their released checkpoints load with ``strict=True``):

* ``DualMCMCEnergy`` returns an **energy**: lower means more probable. Their Langevin step is
  ``x ← x − ½s²·∇E(x) + n·U`` (train.py L47-62) and their EBM loss ``(mean E(data) − mean E(samples)) / T``
  with ``T = (n/s)²`` (train.py L90, L152-153), so the paper's ``f_α(x)`` is ``−E(x)/T``.
* ``DualMCMCInference`` returns ``(mu, logvar)``. The authors call the second head ``log_sigma``, but it is the
  log-*variance*: ``std = exp(½·log_sigma)`` (train.py L17-20) and ``var = exp(log_sigma)`` (train.py L22-25).
* Submodule names equal theirs (``conv_1``, ``block2``, ``lin_5``; ``lin_1``, ``bn_5``, ``conv5``; ``main.0``,
  ``conv51``, ``conv52``), spectral norm is the hook-based ``torch.nn.utils.spectral_norm`` that their ``add_sn``
  uses (utils.py L28-34: every Conv2d and Linear of the EBM, state keys ``weight_orig``/``weight_u``/``weight_v``).
* Initialisation (their ``weights_init``, nets.py L6-15, applied by train.py L200-245): ``xavier_normal_`` on every
  Conv2d weight (gain 1); BatchNorm2d weight ~ N(0, 1) (not N(1, 0.02)), bias 0; every Linear and every conv bias
  keeps PyTorch's default init. In the EBM the init comes before the spectral norm, so ``weight_orig`` is the
  Xavier draw. Modules are built, initialised and normed in their order, so a seeded build draws the same numbers.

Shapes differ from theirs only in squeezed singleton dimensions: E returns (B,) (theirs (B, 1)); q returns
(B, nz) heads (theirs (B, nz, 1, 1)); g accepts z as (B, nz) or (B, nz, 1, 1), as theirs does (``z.view``).

Archs: ``cifar10`` (3×32×32) and ``celeba64`` (3×64×64) are theirs; ``digits`` (1×8×8, the engine's CPU
quickstart) is ours, the cifar10 structure scaled down (docs/methods/dualmcmc.md "Digits variant"): widths ÷8
(ngf = ndf = 64, nif = 16), generator bottom 2×2 with two up-blocks (2→4→8) instead of 4×4 with three, the
inference stack keeps its 3×3 stem and one 4×4/2 halving (8→4) before the 4×4 heads, the EBM its two halvings
(8→4→2) and two full-resolution blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .stacks import IMAGE_SHAPES

__all__ = [
    "DUALMCMC_ARCHS",
    "DUALMCMC_WIDTHS",
    "DualMCMCEnergy",
    "DualMCMCGenerator",
    "DualMCMCInference",
    "DualMCMCNetworks",
    "EnergyBlock",
    "EnergyStartBlock",
    "GeneratorBlock",
    "authors_init",
    "build_dualmcmc_networks",
]

DUALMCMC_ARCHS = ("cifar10", "celeba64", "digits")

# (ngf, ndf, nif) per arch: config.py L14-16 (cifar10), L55-57 (celeba64); digits = cifar10 ÷ 8.
DUALMCMC_WIDTHS: dict[str, tuple[int, int, int]] = {
    "cifar10": (512, 512, 128),
    "celeba64": (1024, 1024, 128),
    "digits": (64, 64, 16),
}

# EBM: per residual block (right shift of ndf giving its width, downsample?); the first is the start block.
# cifar10 nets.py L209-212: 512@16, 512@8, 512@8, 512@8. celeba64 L233-237: 64@32, 128@16, 256@8, 512@4, 1024@2.
_ENERGY_BLOCKS: dict[str, list[tuple[int, bool]]] = {
    "cifar10": [(0, True), (0, True), (0, False), (0, False)],
    "celeba64": [(4, True), (3, True), (2, True), (1, True), (0, True)],
    "digits": [(0, True), (0, True), (0, False), (0, False)],  # 64@4, 64@2, 64@2, 64@2
}

# Generator: (bottom width, right shifts of ngf giving each up-block's output width); the Linear maps to ngf.
# cifar10 nets.py L104-109: 512@4 -> 512@8 -> 512@16 -> 512@32. celeba64 L130-136: 1024@4 -> 512@8 -> ... -> 64@64.
_GENERATOR_BLOCKS: dict[str, tuple[int, list[int]]] = {
    "cifar10": (4, [0, 0, 0]),
    "celeba64": (4, [1, 2, 3, 4]),
    "digits": (2, [0, 0]),  # 64@2 -> 64@4 -> 64@8
}

# Inference: (multiplier of nif, kernel, stride, padding) per bias-free conv, each followed by LeakyReLU(0.2),
# then two 4×4 valid convs (with bias) to nz. cifar10 nets.py L28-38: 128@32, 256@16, 512@8, 1024@4 -> 1.
# celeba64 L50-60: the stem is 4×4/2 instead of 3×3/1: 128@32, 256@16, 512@8, 1024@4 -> 1.
_INFERENCE_CONVS: dict[str, list[tuple[int, int, int, int]]] = {
    "cifar10": [(1, 3, 1, 1), (2, 4, 2, 1), (4, 4, 2, 1), (8, 4, 2, 1)],
    "celeba64": [(1, 4, 2, 1), (2, 4, 2, 1), (4, 4, 2, 1), (8, 4, 2, 1)],
    "digits": [(1, 3, 1, 1), (2, 4, 2, 1)],  # 16@8, 32@4 -> 1
}
_INFERENCE_HEAD_KERNEL = 4  # nets.py L37-38 / L59-60: Conv2d(nif*8, nz, 4, 1, 0)
_LRELU_SLOPE = 0.2  # nets.py L29 etc.


def _check_arch(arch: str) -> None:
    if arch not in DUALMCMC_ARCHS:
        raise ValueError(f"unknown dual-MCMC arch {arch!r}; expected one of {list(DUALMCMC_ARCHS)}")


def authors_init(module: nn.Module) -> None:
    """Their ``weights_init`` (nets.py L6-15), on every submodule in registration order.

    Conv2d: weight ← xavier_normal_ (bias untouched: default U(±1/√fan_in)). BatchNorm2d: weight ← N(0, 1),
    bias ← 0. Linear and everything else: untouched (PyTorch default).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight)
            nn.init.zeros_(m.bias)


def _add_spectral_norm(module: nn.Module) -> None:
    """Their ``add_sn`` (utils.py L28-34): hook-based spectral norm (1 power iteration per training-mode forward,
    eps 1e-12, u and v ~ normalised N(0, 1)) on every Conv2d and Linear, depth first in registration order."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.utils.spectral_norm(m)


# ---------------------------------------------------------------------------------------------------------
# EBM E(x)


class EnergyStartBlock(nn.Module):
    """First EBM block (``EBMBlockStart``, nets.py L177-202), no pre-activation.

    h = conv2(ReLU(conv1(x))), both 3×3 s1 p1 without bias, then AvgPool(2) if downsampling;
    y = AvgPool(2)(x) then 1×1 conv without bias (when c_in ≠ c_out or downsampling); out = h + y.
    (B, c_in, H, W) -> (B, c_out, H/2, W/2) (or H, W without downsampling).
    """

    def __init__(self, c_in: int, c_out: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.learnable_sc = c_in != c_out or downsample
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        if self.learnable_sc:
            self.sc = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(x)))
        y = x
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            y = F.avg_pool2d(y, 2)
        if self.learnable_sc:
            y = self.sc(y)
        return h + y


class EnergyBlock(nn.Module):
    """Pre-activation EBM block (``EBMBlock``, nets.py L151-175).

    h = conv2(ReLU(conv1(ReLU(x)))), both 3×3 s1 p1 without bias, then AvgPool(2) if downsampling;
    y = 1×1 conv without bias (when c_in ≠ c_out or downsampling) then AvgPool(2); identity otherwise.
    (B, c_in, H, W) -> (B, c_out, H/2, W/2) (or H, W without downsampling).
    """

    def __init__(self, c_in: int, c_out: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.learnable_sc = c_in != c_out or downsample
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        if self.learnable_sc:
            self.sc = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        y = self.sc(x) if self.learnable_sc else x
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            y = F.avg_pool2d(y, 2)
        return h + y


class DualMCMCEnergy(nn.Module):
    """Image energy E(x) (``_Cifar10_netE`` nets.py L204-223, ``_CelebA64_netE`` L226-250): (B, C, H, W) -> (B,).

    conv_1 (start block) → block2 … blockK → ReLU → global average pool → Linear(width → 1, no bias). Spectral
    norm on every conv and the Linear (train.py L221). No normalisation layer, no bias anywhere.
    cifar10 (ndf 512): 16,793,088 parameters; celeba64 (ndf 1024): 23,664,704; digits (ndf 64): 262,848.
    """

    def __init__(self, arch: str, ndf: int, spectral_norm: bool = True, init: bool = True) -> None:
        super().__init__()
        _check_arch(arch)
        self.arch = arch
        self.ndf = ndf
        self.image_shape = IMAGE_SHAPES[arch]
        c_in = self.image_shape[0]
        names = []
        for i, (shift, down) in enumerate(_ENERGY_BLOCKS[arch]):
            c_out = ndf >> shift
            name = "conv_1" if i == 0 else f"block{i + 1}"
            block = EnergyStartBlock(c_in, c_out, down) if i == 0 else EnergyBlock(c_in, c_out, down)
            self.add_module(name, block)
            names.append(name)
            c_in = c_out
        self._blocks = tuple(names)
        self.head_name = f"lin_{len(names) + 1}"
        self.add_module(self.head_name, nn.Linear(c_in, 1, bias=False))
        if init:
            authors_init(self)
        if spectral_norm:
            _add_spectral_norm(self)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, width, h, h) -> ReLU, mean over h×h -> (B, width) -> (B, 1) -> (B,)
        h = x
        for name in self._blocks:
            h = self.get_submodule(name)(h)
        h = F.relu(h)
        h = F.avg_pool2d(h, h.shape[2]).flatten(1)  # their avg_pool2d(x, x.shape[2]) on square maps
        return self.get_submodule(self.head_name)(h).squeeze(-1)


# ---------------------------------------------------------------------------------------------------------
# Generator g_θ(z)


class GeneratorBlock(nn.Module):
    """Pre-activation up-block (``_GenBlock``, nets.py L68-95).

    h = conv2(ReLU(BN2(conv1(Up(ReLU(BN1(x))))))), convs 3×3 s1 p1 with bias;
    y = 1×1 conv with bias of Up(x) (when c_in ≠ c_out or upsampling); out = h + y.
    Up = bilinear ×2 with align_corners=True. BN: BatchNorm2d defaults (eps 1e-5, momentum 0.1, affine, running
    stats). (B, c_in, H, W) -> (B, c_out, 2H, 2W).
    """

    def __init__(self, c_in: int, c_out: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.learnable_sc = c_in != c_out or upsample
        # Registration order as theirs (bn_1, bn_2, conv1, conv2, sc): it fixes the order of the seeded draws.
        self.bn_1 = nn.BatchNorm2d(c_in)
        self.bn_2 = nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        if self.learnable_sc:
            self.sc = nn.Conv2d(c_in, c_out, 1)

    def _up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True) if self.upsample else x

    def forward(self, x: Tensor) -> Tensor:
        h = self._up(F.relu(self.bn_1(x)))
        h = self.conv2(F.relu(self.bn_2(self.conv1(h))))
        y = self._up(x)
        if self.learnable_sc:
            y = self.sc(y)
        return h + y


class DualMCMCGenerator(nn.Module):
    """Generator g_θ: (B, nz) or (B, nz, 1, 1) -> (B, C, H, W) in (−1, 1) (``_Cifar10_netG`` nets.py L97-121,
    ``_CelebA64_netG`` L123-149).

    lin_1: Linear(nz → bw²·ngf) with bias, viewed (B, ngf, bw, bw) → up-blocks → BN → ReLU → 3×3 conv to C
    (with bias) → tanh. p(x|z) = N(g(z), σ²I) with σ = 0.3 in their config (docs/methods/dualmcmc.md).
    cifar10 (nz 128, ngf 512): 16,024,579 parameters; celeba64 (nz 128, ngf 1024): 9,073,155; digits
    (nz 16, ngf 64): 161,601.
    """

    def __init__(self, arch: str, nz: int, ngf: int, init: bool = True) -> None:
        super().__init__()
        _check_arch(arch)
        self.arch = arch
        self.nz = nz
        self.ngf = ngf
        self.image_shape = IMAGE_SHAPES[arch]
        self.bottom_width, shifts = _GENERATOR_BLOCKS[arch]
        self.lin_1 = nn.Linear(nz, self.bottom_width**2 * ngf)
        c_in = ngf
        names = []
        for i, shift in enumerate(shifts):
            c_out = ngf >> shift
            names.append(f"block{i + 2}")
            self.add_module(names[-1], GeneratorBlock(c_in, c_out, upsample=True))
            c_in = c_out
        self._blocks = tuple(names)
        k = len(shifts) + 2  # cifar10: bn_5 / conv5, celeba64: bn_6 / conv6
        self.bn_name, self.out_name = f"bn_{k}", f"conv{k}"
        self.add_module(self.bn_name, nn.BatchNorm2d(c_in))
        self.add_module(self.out_name, nn.Conv2d(c_in, self.image_shape[0], 3, 1, 1))
        if init:
            authors_init(self)

    def forward(self, z: Tensor) -> Tensor:
        # (B, nz[, 1, 1]) -> (B, bw²·ngf) -> (B, ngf, bw, bw) -> ... -> (B, C, H, W)
        h = self.lin_1(z.reshape(z.shape[0], self.nz))
        h = h.view(z.shape[0], self.ngf, self.bottom_width, self.bottom_width)
        for name in self._blocks:
            h = self.get_submodule(name)(h)
        h = F.relu(self.get_submodule(self.bn_name)(h))
        return self.get_submodule(self.out_name)(h).tanh()


# ---------------------------------------------------------------------------------------------------------
# Inference model q_φ(z|x)


class DualMCMCInference(nn.Module):
    """Inference model q_φ(z|x) = N(mu, diag(exp(logvar))): (B, C, H, W) -> (mu, logvar), each (B, nz)
    (``_Cifar10_netI`` nets.py L24-44, ``_CelebA64_netI`` L46-66).

    main: bias-free convs, each followed by LeakyReLU(0.2), down to (B, 8·nif, 4, 4) (digits: 2·nif); conv51 and
    conv52: 4×4 valid convs with bias to nz (mean, log-variance). No normalisation, no output activation.
    cifar10 (nz 128, nif 128): 15,208,064 parameters; celeba64: 15,210,752; digits (nz 16, nif 16): 24,752.
    """

    def __init__(self, arch: str, nz: int, nif: int, init: bool = True) -> None:
        super().__init__()
        _check_arch(arch)
        self.arch = arch
        self.nz = nz
        self.nif = nif
        self.image_shape = IMAGE_SHAPES[arch]
        layers: list[nn.Module] = []
        c_in = self.image_shape[0]
        for mult, k, s, p in _INFERENCE_CONVS[arch]:
            layers += [nn.Conv2d(c_in, nif * mult, k, s, p, bias=False), nn.LeakyReLU(_LRELU_SLOPE)]
            c_in = nif * mult
        self.main = nn.Sequential(*layers)  # state keys main.0, main.2, ... as theirs
        self.conv51 = nn.Conv2d(c_in, nz, _INFERENCE_HEAD_KERNEL, 1, 0)  # mean
        self.conv52 = nn.Conv2d(c_in, nz, _INFERENCE_HEAD_KERNEL, 1, 0)  # log-variance (their "log_sigma")
        if init:
            authors_init(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # (B, C, H, W) -> (B, c, 4, 4) -> 2 × (B, nz, 1, 1) -> 2 × (B, nz)
        h = self.main(x)
        return self.conv51(h).flatten(1), self.conv52(h).flatten(1)


# ---------------------------------------------------------------------------------------------------------
# Factory


@dataclass
class DualMCMCNetworks:
    """The three networks of one dual-MCMC run."""

    generator: DualMCMCGenerator
    energy: DualMCMCEnergy
    inference: DualMCMCInference


def build_dualmcmc_networks(
    arch: str,
    nz: int,
    ngf: int | None = None,
    ndf: int | None = None,
    nif: int | None = None,
    spectral_norm: bool = True,
    init: bool = True,
) -> DualMCMCNetworks:
    """g_θ, E and q_φ for ``arch`` (one of DUALMCMC_ARCHS), widths defaulting to DUALMCMC_WIDTHS[arch].

    Built in their order G, E, I (train.py L278-280), each initialised as theirs (``init``) and the EBM
    spectrally normed (``spectral_norm``). Their runs use nz = 128 for cifar10 and celeba64 (config.py L20, L61).
    """
    _check_arch(arch)
    d_ngf, d_ndf, d_nif = DUALMCMC_WIDTHS[arch]
    generator = DualMCMCGenerator(arch, nz, d_ngf if ngf is None else ngf, init=init)
    energy = DualMCMCEnergy(arch, d_ndf if ndf is None else ndf, spectral_norm=spectral_norm, init=init)
    inference = DualMCMCInference(arch, nz, d_nif if nif is None else nif, init=init)
    return DualMCMCNetworks(generator=generator, energy=energy, inference=inference)
