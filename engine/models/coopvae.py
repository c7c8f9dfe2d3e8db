"""CoopVAEBM networks: the descriptor (EBM) f(x), the VAE encoder and the VAE generator.

Xie, Zheng, Li, "Learning Energy-Based Model with Variational Auto-Encoder as Amortized Sampler" (AAAI 2021).
Transcribed from the authors' TensorFlow 1 code, repository jianwen-xie/CoopVAEBM at commit b0a48c0, file
``model/modules.py``, ``net_type='cifar'`` (the default of ``main.py:17``), written here in NCHW. Cited below as
``modules.py:LINE``. ``docs/methods/coopvae.md`` has the full transcription, the training iteration and the MAC
counts; architecture only here (no Langevin, no losses).

Archs:

* ``"cifar10"``: (3, 32, 32), the authors' 'cifar' networks layer for layer.
* ``"digits"``: (1, 8, 8), ours (not the authors'): the same layer types scaled down for the 8×8 quickstart
  (one stride-2 stage fewer in every network, widths halved; docs/methods/coopvae.md, "Adaptation").

TF semantics kept:

* ``padding='SAME'``: TF pads ``total = max((out-1)·s + k - in, 0)`` rows, ``total // 2`` before and the rest after
  (:func:`tf_same_pads`). Symmetric cases become PyTorch ``padding=p``. A stride-2 transposed conv with an odd
  kernel (the generator's 3×3/2 layer) is asymmetric: TF's output is PyTorch's ``padding=0`` output with the
  *last* row and column cropped, which ``padding=1, output_padding=1`` would not reproduce (that crops the first
  row/column instead, a one-pixel shift of every tap); :class:`SameConvTranspose2d` crops like TF.
* Initialisation: conv / conv-transpose kernels N(0, 0.005²), biases 0 (``modules.py:10-23, 268-278``,
  ``custom_ops.py:106-110``); dense layers glorot-uniform kernels and zero biases (``tf.layers.dense`` defaults,
  ``modules.py:284-285``).
* Generator batch norm (``tf.contrib.layers.batch_norm(is_training=True)``, ``modules.py:472, 477, 482``): batch
  statistics always (training and sampling alike, also in ``eval()`` here), eps 1e-3, a learnable shift ``beta``
  and no scale (TF defaults center=True, scale=False): :class:`BatchNormShift`.
* Leaky ReLU slope 0.2 everywhere (``tf.nn.leaky_relu`` default; ``custom_ops.py:26-28``).

Differences that only matter when porting TF weights: kernel layout (TF [kh, kw, in, out] for conv,
[kh, kw, out, in] for conv-transpose) and the encoder's flatten order (TF flattens H, W, C; here C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stacks import IMAGE_SHAPES

__all__ = [
    "COOPVAE_ARCHS",
    "DESCRIPTOR_LAYERS",
    "ENCODER_LAYERS",
    "GENERATOR_SEED",
    "GENERATOR_LAYERS",
    "INIT_STD",
    "BN_EPS",
    "tf_same_pads",
    "BatchNormShift",
    "SameConvTranspose2d",
    "Descriptor",
    "VaeEncoder",
    "VaeGenerator",
    "build_coopvae_networks",
]

COOPVAE_ARCHS = ("cifar10", "digits")
INIT_STD = 0.005  # N(0, 0.005²) conv / conv-transpose kernels (modules.py:11, custom_ops.py:107)
BN_EPS = 1e-3  # tf.contrib.layers.batch_norm default epsilon
_LRELU = 0.2  # tf.nn.leaky_relu default alpha; custom_ops.leaky_relu(leakiness=0.2)

ConvSpec = tuple[int, int, int]  # (out channels, kernel, stride), TF padding 'SAME', leaky ReLU after
GenSpec = tuple[int, int, int, bool]  # (out channels, kernel, stride, batch norm), TF padding 'SAME'

# Descriptor convs; then a conv over the whole remaining map to 1 output, no activation ('fc', modules.py:22).
DESCRIPTOR_LAYERS: dict[str, list[ConvSpec]] = {
    # 64@32, 128@16, 256@8, 256@4 -> 1@1 (modules.py:10-23)
    "cifar10": [(64, 3, 1), (128, 4, 2), (256, 4, 2), (256, 4, 2)],
    # ours: 32@8, 64@4, 128@2 -> 1@1
    "digits": [(32, 3, 1), (64, 4, 2), (128, 4, 2)],
}

# Encoder convs; then flatten and two dense heads to nz: mean and 0.5·dense = log std (modules.py:283-287).
ENCODER_LAYERS: dict[str, list[ConvSpec]] = {
    # 64@32, 128@16, 256@8, 512@4 -> 8192 -> nz, nz (modules.py:268-285)
    "cifar10": [(64, 3, 1), (128, 4, 2), (256, 4, 2), (512, 4, 2)],
    # ours: 32@8, 64@4, 128@2 -> 512 -> nz, nz
    "digits": [(32, 3, 1), (64, 4, 2), (128, 4, 2)],
}

# Generator seed: z (nz) as a 1×1 map -> transposed conv with padding 'VALID' and kernel = size -> (channels, size,
# size), batch norm, leaky ReLU (modules.py:468-473).
GENERATOR_SEED: dict[str, tuple[int, int]] = {
    "cifar10": (256, 4),  # image_size // 8 = 4
    "digits": (128, 2),  # ours: image_size // 4 = 2
}

# Generator transposed convs after the seed: leaky ReLU after each except the last, which is followed by tanh and
# maps to the image channels (modules.py:475-491).
GENERATOR_LAYERS: dict[str, list[GenSpec]] = {
    # 128@8 (BN), 64@16 (BN), 64@32 (3×3/2, no BN), 3@32 (3×3/1, tanh)
    "cifar10": [(128, 4, 2, True), (64, 4, 2, True), (64, 3, 2, False), (3, 3, 1, False)],
    # ours: 64@4 (BN), 32@8 (3×3/2, no BN), 1@8 (3×3/1, tanh)
    "digits": [(64, 4, 2, True), (32, 3, 2, False), (1, 3, 1, False)],
}


def _check_arch(arch: str) -> tuple[int, int, int]:
    if arch not in COOPVAE_ARCHS:
        raise ValueError(f"unknown CoopVAEBM arch {arch!r}; expected one of {list(COOPVAE_ARCHS)}")
    return IMAGE_SHAPES[arch]


def tf_same_pads(size_in: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding of a conv along one axis: (before, after) for an input of ``size_in``.

    The output is ceil(size_in / stride); TF pads ``max((out-1)·stride + kernel - size_in, 0)`` in total, the odd
    pixel (if any) after. E.g. (32, 3, 1) -> (1, 1), (32, 4, 2) -> (1, 1), (32, 3, 2) -> (0, 1).
    """
    out = -(-size_in // stride)
    total = max((out - 1) * stride + kernel - size_in, 0)
    return total // 2, total - total // 2


def _same_conv(c_in: int, c_out: int, k: int, s: int, size_in: int) -> list[nn.Module]:
    before, after = tf_same_pads(size_in, k, s)
    if before == after:
        return [nn.Conv2d(c_in, c_out, k, s, before)]
    return [nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(c_in, c_out, k, s, 0)]


def _tf_init(module: nn.Module) -> None:
    """The authors' init: conv kernels N(0, 0.005²), dense kernels glorot-uniform, all biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)  # fan_in + fan_out, like TF's glorot_uniform_initializer
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class BatchNormShift(nn.Module):
    """``tf.contrib.layers.batch_norm(x, is_training=True)`` with TF's defaults: (N, C, H, W) -> same shape.

    y = (x - mean_b) / sqrt(var_b + 1e-3) + beta, with the mean and (biased) variance of the *current batch* over
    (N, H, W) per channel, in train() and eval() alike; beta (C,) learnable, initialised to 0 (center=True); no
    scale gamma (scale=False). The authors never run TF's moving-average update ops (no UPDATE_OPS dependency in
    model/model.py), and is_training=True everywhere, so there are no running statistics.
    """

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, None, None, None, self.bias, training=True, momentum=0.0, eps=self.eps)


class SameConvTranspose2d(nn.Module):
    """TF ``conv2d_transpose(..., padding='SAME')`` from (N, c_in, n, n) to (N, c_out, n·s, n·s).

    TF's op is the adjoint of a 'SAME' conv from n·s to n, whose padding is :func:`tf_same_pads` ``(n·s, k, s)``.
    Symmetric padding p is PyTorch's ``ConvTranspose2d(padding=p)``. Otherwise (odd k at stride 2: (0, 1)) the
    layer runs with ``padding=0`` (output (n-1)·s + k) and keeps ``before : before + n·s`` of each axis, i.e. drops
    the last row and column like TF. The weights live in ``self.conv`` (PyTorch layout (c_in, c_out, k, k)).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, size_in: int) -> None:
        super().__init__()
        self.size_out = size_in * stride
        before, after = tf_same_pads(self.size_out, kernel, stride)
        self.crop = before if before != after else -1  # -1: symmetric, PyTorch padding does it
        self.conv = nn.ConvTranspose2d(c_in, c_out, kernel, stride, before if self.crop < 0 else 0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.crop < 0:
            return y
        b, n = self.crop, self.size_out
        return y[:, :, b : b + n, b : b + n]


class Descriptor(nn.Module):
    """The EBM's f(x): (N, C, H, W) -> (N,); higher f = more probable (modules.py:8-25, 'cifar').

    p(x) ∝ exp(f(x)) · N(x; 0, σ_ref² I) (the Langevin update in model/model.py:146 is gradient ascent on
    f(x) - |x|²/(2σ_ref²)), so the energy is U(x) = -f(x) + |x|²/(2σ_ref²). SAME convs with bias and leaky ReLU
    (DESCRIPTOR_LAYERS), then a conv over the whole remaining map to one output with bias and no activation.

    Parameter counts: cifar10 1,710,465; digits 164,865.
    """

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.arch = arch
        self.image_shape = _check_arch(arch)
        c_in, size = self.image_shape[0], self.image_shape[1]
        layers: list[nn.Module] = []
        for c_out, k, s in DESCRIPTOR_LAYERS[arch]:
            layers += [*_same_conv(c_in, c_out, k, s, size), nn.LeakyReLU(_LRELU)]
            c_in, size = c_out, -(-size // s)
        layers.append(nn.Conv2d(c_in, 1, size))  # 'fc': kernel = the whole map, padding 'valid'
        self.net = nn.Sequential(*layers)
        _tf_init(self)

    def forward(self, x: Tensor) -> Tensor:
        # (N, C, H, W) -> (N, 1, 1, 1) -> (N,)
        return self.net(x).reshape(x.shape[0])


class VaeEncoder(nn.Module):
    """Inference network: (N, C, H, W) -> (mean (N, nz), log_std (N, nz)) (modules.py:266-287, 'cifar').

    SAME convs with bias and leaky ReLU (ENCODER_LAYERS), flatten, then two dense heads with bias: mean = dense(h),
    log_std = 0.5·dense(h) (the authors' ``sd``, a log standard deviation: z = mean + ε·exp(log_std), KL term
    -½·Σ(1 + 2·log_std - mean² - exp(2·log_std)), model/model.py:97). No activation on either head.

    Parameter counts: cifar10 (nz 100) 4,393,800; digits (nz 16) 180,768.
    """

    def __init__(self, arch: str, nz: int) -> None:
        super().__init__()
        self.arch = arch
        self.nz = nz
        self.image_shape = _check_arch(arch)
        c_in, size = self.image_shape[0], self.image_shape[1]
        layers: list[nn.Module] = []
        for c_out, k, s in ENCODER_LAYERS[arch]:
            layers += [*_same_conv(c_in, c_out, k, s, size), nn.LeakyReLU(_LRELU)]
            c_in, size = c_out, -(-size // s)
        self.net = nn.Sequential(*layers)
        self.n_features = c_in * size * size
        self.mean = nn.Linear(self.n_features, nz)
        self.log_std = nn.Linear(self.n_features, nz)
        _tf_init(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # (N, C, H, W) -> (N, n_features) -> (N, nz) twice
        h = self.net(x).flatten(1)
        return self.mean(h), 0.5 * self.log_std(h)


class VaeGenerator(nn.Module):
    """Generator g(z): (N, nz) -> (N, C, H, W) in (-1, 1) (modules.py:466-493, 'cifar').

    z as a (N, nz, 1, 1) map -> 'VALID' transposed conv to the seed map (GENERATOR_SEED) -> BN -> leaky ReLU ->
    SAME transposed convs (GENERATOR_LAYERS; BN where marked, leaky ReLU between, tanh at the end). Every
    transposed conv has a bias (zero init), also before a BN, where it is cancelled by the mean subtraction (kept:
    it is a trainable variable of the authors' graph). BN always uses batch statistics (:class:`BatchNormShift`),
    so one row's output depends on the rest of the batch, in eval() too.

    Parameter counts: cifar10 (nz 100) 1,104,515; digits (nz 16) 158,401.
    """

    def __init__(self, arch: str, nz: int) -> None:
        super().__init__()
        self.arch = arch
        self.nz = nz
        self.image_shape = _check_arch(arch)
        c_seed, size = GENERATOR_SEED[arch]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, c_seed, size),  # 1×1 -> size×size, padding 'VALID'
            BatchNormShift(c_seed),
            nn.LeakyReLU(_LRELU),
        ]
        c_in = c_seed
        specs = GENERATOR_LAYERS[arch]
        for i, (c_out, k, s, bn) in enumerate(specs):
            layers.append(SameConvTranspose2d(c_in, c_out, k, s, size))
            if bn:
                layers.append(BatchNormShift(c_out))
            layers.append(nn.Tanh() if i == len(specs) - 1 else nn.LeakyReLU(_LRELU))
            c_in, size = c_out, size * s
        if (c_in, size, size) != self.image_shape:
            raise AssertionError(f"{arch}: generator ends at {(c_in, size, size)}, not {self.image_shape}")
        self.net = nn.Sequential(*layers)
        _tf_init(self)

    def forward(self, z: Tensor) -> Tensor:
        # (N, nz) -> (N, nz, 1, 1) -> (N, C, H, W)
        return self.net(z.reshape(z.shape[0], self.nz, 1, 1))


def build_coopvae_networks(arch: str, nz: int) -> tuple[Descriptor, VaeEncoder, VaeGenerator]:
    """Freshly initialised (descriptor, encoder, generator) for ``arch`` ("cifar10": nz 100 in the authors' run)."""
    return Descriptor(arch), VaeEncoder(arch, nz), VaeGenerator(arch, nz)
