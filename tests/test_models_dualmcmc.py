"""Tests for engine.models.dualmcmc (docs/methods/dualmcmc.md): shapes, parameter counts from the authors' layer
list (jcui1224/dual-MCMC aac3c4c nets.py), their state-dict names, their initialisation, spectral norm, and the
per-forward multiply-accumulate counts that the doc's per-iteration budget is built from.

Full-width cifar10/celeba64 networks are built on the meta device (shapes and counts cost nothing there); value
checks run on CPU with the digits widths, or once at full cifar10 width for the init statistics.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.models.dualmcmc import (
    DUALMCMC_WIDTHS,
    DualMCMCEnergy,
    DualMCMCGenerator,
    DualMCMCInference,
    DualMCMCNetworks,
    build_dualmcmc_networks,
)

NZ = {"cifar10": 128, "celeba64": 128, "digits": 16}  # config.py L20 / L61; digits: the quickstart's nz
# Small tensors on a loaded 2-core runner: single-threaded torch (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {"cifar10": (3, 32, 32), "celeba64": (3, 64, 64), "digits": (1, 8, 8)}


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def meta_networks(arch: str) -> DualMCMCNetworks:
    with torch.device("meta"):
        return build_dualmcmc_networks(arch, NZ[arch])


# ---------------------------------------------------------------------------------------------------------
# Parameter counts, by hand from the layer lists (nets.py L24-250). Conv k×k c_in→c_out: k²·c_in·c_out (+c_out
# with bias); BatchNorm2d(c): 2c; Linear: in·out (+out).


def gen_block(ci: int, co: int) -> int:
    # _GenBlock with upsample: bn_1(ci) + bn_2(co) + conv1 3×3 (bias) + conv2 3×3 (bias) + sc 1×1 (bias)
    return 2 * ci + 2 * co + (9 * ci * co + co) + (9 * co * co + co) + (ci * co + co)


def ebm_block(ci: int, co: int, sc: bool) -> int:
    # EBMBlock / EBMBlockStart: conv1 3×3 + conv2 3×3 (+ sc 1×1), no biases
    return 9 * ci * co + 9 * co * co + (ci * co if sc else 0)


def gen_params(nz: int, bw: int, widths: list[int], c_img: int) -> int:
    lin = nz * bw * bw * widths[0] + bw * bw * widths[0]
    blocks = sum(gen_block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
    return lin + blocks + 2 * widths[-1] + (9 * widths[-1] * c_img + c_img)


def inf_params(c_img: int, stem_k: int, widths: list[int], nz: int) -> int:
    stem = stem_k * stem_k * c_img * widths[0]
    rest = sum(16 * a * b for a, b in zip(widths[:-1], widths[1:], strict=True))  # 4×4, no bias
    return stem + rest + 2 * (16 * widths[-1] * nz + nz)  # conv51 + conv52: 4×4 with bias


EXPECTED_PARAMS = {
    # cifar10: nz 128, ngf = ndf = 512, nif 128
    "cifar10": (
        # G: 128·8192 + 8192 = 1,056,768; 3 × 4,984,320; bn_5 1,024; conv5 13,827
        gen_params(128, 4, [512, 512, 512, 512], 3),
        # E: start 3→512 (sc) 2,374,656; block2 (sc) 4,980,736; block3, block4 4,718,592 each; lin_5 512
        ebm_block(3, 512, True) + ebm_block(512, 512, True) + 2 * ebm_block(512, 512, False) + 512,
        # I: 3,456 + 524,288 + 2,097,152 + 8,388,608 + 2 × 2,097,280
        inf_params(3, 3, [128, 256, 512, 1024], 128),
    ),
    # celeba64: nz 128, ngf = ndf = 1024, nif 128; channels halve (G) / double (E) per block
    "celeba64": (
        gen_params(128, 4, [1024, 512, 256, 128, 64], 3),
        ebm_block(3, 64, True) + sum(ebm_block(c, 2 * c, True) for c in (64, 128, 256, 512)) + 1024,
        inf_params(3, 4, [128, 256, 512, 1024], 128),
    ),
    # digits: nz 16, ngf = ndf = 64, nif 16 (cifar10 ÷ 8), bottom 2×2, two up-blocks, one 4×4/2 halving in I
    "digits": (
        gen_params(16, 2, [64, 64, 64], 1),
        ebm_block(1, 64, True) + ebm_block(64, 64, True) + 2 * ebm_block(64, 64, False) + 64,
        inf_params(1, 3, [16, 32], 16),
    ),
}


def test_hand_counts_spelled_out() -> None:
    assert EXPECTED_PARAMS["cifar10"] == (16_024_579, 16_793_088, 15_208_064)
    assert EXPECTED_PARAMS["celeba64"] == (12_220_675, 19_536_768, 15_210_752)
    assert EXPECTED_PARAMS["digits"] == (161_601, 262_848, 24_752)
    assert 128 * 8192 + 8192 == 1_056_768 and gen_block(512, 512) == 4_984_320
    assert ebm_block(3, 512, True) == 2_374_656 and ebm_block(512, 512, True) == 4_980_736


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_param_counts(arch: str) -> None:
    n = meta_networks(arch)
    assert (count(n.generator), count(n.energy), count(n.inference)) == EXPECTED_PARAMS[arch]


# ---------------------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_shapes_full_width(arch: str) -> None:
    n = meta_networks(arch)
    b, nz = 3, NZ[arch]
    with torch.device("meta"):
        x = n.generator(torch.zeros(b, nz))
        assert x.shape == (b, *SHAPES[arch])
        assert n.generator(torch.zeros(b, nz, 1, 1)).shape == x.shape  # their (B, nz, 1, 1) layout too
        assert n.energy(x).shape == (b,)
        mu, logvar = n.inference(x)
    assert mu.shape == logvar.shape == (b, nz)


def test_digits_values_on_cpu() -> None:
    torch.manual_seed(0)
    n = build_dualmcmc_networks("digits", 16)
    z = torch.randn(5, 16) * 10.0
    x = n.generator(z)
    assert x.shape == (5, 1, 8, 8) and x.abs().max() < 1.0  # tanh
    torch.testing.assert_close(n.generator(z[:, :, None, None]), x)
    e = n.energy(x)
    mu, logvar = n.inference(x)
    assert e.shape == (5,) and mu.shape == logvar.shape == (5, 16)
    assert all(torch.isfinite(t).all() for t in (e, mu, logvar))
    assert not torch.equal(mu, logvar)  # two separate heads


def test_layer_wiring_cifar10() -> None:
    n = meta_networks("cifar10")
    convs = [m for m in n.inference.main if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], m.bias is None) for m in convs] == [
        (128, 3, 1, 1, True), (256, 4, 2, 1, True), (512, 4, 2, 1, True), (1024, 4, 2, 1, True)]
    slopes = [m.negative_slope for m in n.inference.main if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.2] * 4
    assert n.inference.conv51.kernel_size == (4, 4) and n.inference.conv51.bias is not None
    assert n.energy.conv_1.downsample and n.energy.block2.downsample
    assert not n.energy.block3.downsample and not n.energy.block3.learnable_sc
    assert all(m.bias is None for m in n.energy.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    bns = [m for m in n.generator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 7 and all(m.eps == 1e-5 and m.momentum == 0.1 and m.affine for m in bns)


def test_unknown_arch() -> None:
    with pytest.raises(ValueError, match="unknown dual-MCMC arch"):
        build_dualmcmc_networks("svhn", 100)


# ---------------------------------------------------------------------------------------------------------
# State-dict names as theirs (their checkpoints load with strict=True)


def test_state_dict_keys_cifar10() -> None:
    n = meta_networks("cifar10")
    sn = ("weight_orig", "weight_u", "weight_v")
    e_layers = ["conv_1.conv1", "conv_1.conv2", "conv_1.sc", "block2.conv1", "block2.conv2", "block2.sc",
                "block3.conv1", "block3.conv2", "block4.conv1", "block4.conv2", "lin_5"]
    assert list(n.energy.state_dict()) == [f"{m}.{k}" for m in e_layers for k in sn]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    g_keys = ["lin_1.weight", "lin_1.bias"]
    for b in ("block2", "block3", "block4"):
        g_keys += [f"{b}.bn_1.{k}" for k in bn] + [f"{b}.bn_2.{k}" for k in bn]
        g_keys += [f"{b}.{c}.{k}" for c in ("conv1", "conv2", "sc") for k in ("weight", "bias")]
    g_keys += [f"bn_5.{k}" for k in bn] + ["conv5.weight", "conv5.bias"]
    assert list(n.generator.state_dict()) == g_keys
    i_keys = [f"main.{j}.weight" for j in (0, 2, 4, 6)] + ["conv51.weight", "conv51.bias", "conv52.weight",
                                                          "conv52.bias"]
    assert list(n.inference.state_dict()) == i_keys


def test_state_dict_keys_celeba64_heads() -> None:
    n = meta_networks("celeba64")
    assert "lin_6.weight_orig" in n.energy.state_dict() and "block5.sc.weight_u" in n.energy.state_dict()
    assert "bn_6.running_var" in n.generator.state_dict() and "conv6.weight" in n.generator.state_dict()
    assert n.inference.main[0].kernel_size == (4, 4) and n.inference.main[0].stride == (2, 2)


# ---------------------------------------------------------------------------------------------------------
# Initialisation (nets.py L6-15): xavier_normal_ convs, BN weight N(0, 1) and bias 0, Linear default


def xavier_std(w: torch.Tensor) -> float:
    rf = w[0, 0].numel()
    return math.sqrt(2.0 / (w.shape[1] * rf + w.shape[0] * rf))


@pytest.fixture(scope="module")
def cifar10_cpu() -> DualMCMCNetworks:
    torch.manual_seed(1234)
    return build_dualmcmc_networks("cifar10", 128)


def test_init_cifar10(cifar10_cpu: DualMCMCNetworks) -> None:
    g, e, q = cifar10_cpu.generator, cifar10_cpu.energy, cifar10_cpu.inference
    for w in (e.conv_1.conv2.weight_orig, e.block4.conv1.weight_orig, g.block4.conv1.weight,
              q.main[6].weight, q.conv51.weight, q.conv52.weight):
        assert w.std().item() == pytest.approx(xavier_std(w), rel=0.01)
        assert abs(w.mean().item()) < 0.05 * xavier_std(w)
    # e.g. 512→512 3×3: √(2 / (9·512 + 9·512)) = 0.014731; I's 512→1024 4×4: √(2 / 24576) = 0.0090211
    assert xavier_std(e.conv_1.conv2.weight_orig) == pytest.approx(0.014731, rel=1e-4)
    assert xavier_std(q.main[6].weight) == pytest.approx(0.0090211, rel=1e-4)
    bn_w = torch.cat([m.weight.detach() for m in g.modules() if isinstance(m, nn.BatchNorm2d)])  # 7 × 512
    assert bn_w.std().item() == pytest.approx(1.0, abs=0.05) and abs(bn_w.mean().item()) < 0.1
    assert all(torch.all(m.bias == 0) for m in g.modules() if isinstance(m, nn.BatchNorm2d))
    # Linear and conv biases keep PyTorch's default U(±1/√fan_in)
    bound = 1 / math.sqrt(128)
    assert g.lin_1.weight.abs().max() <= bound and g.lin_1.weight.std().item() == pytest.approx(
        bound / math.sqrt(3), rel=0.01)
    assert g.block2.conv1.bias.abs().max() <= 1 / math.sqrt(9 * 512)
    assert q.conv51.bias.abs().max() <= 1 / math.sqrt(16 * 1024)


def test_spectral_norm_on_every_energy_layer() -> None:
    torch.manual_seed(0)
    e = DualMCMCEnergy("digits", 16)
    layers = [m for m in e.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 11 and all(hasattr(m, "weight_orig") and hasattr(m, "weight_u") for m in layers)
    with torch.no_grad():
        for _ in range(100):  # one power iteration per training-mode forward, as theirs
            e(torch.zeros(1, 1, 8, 8))
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().reshape(m.weight.shape[0], -1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.01)
    assert not any(hasattr(m, "weight_orig") for m in DualMCMCEnergy("digits", 8, spectral_norm=False).modules())


def test_factory_builds_in_their_order() -> None:
    torch.manual_seed(7)
    n = build_dualmcmc_networks("digits", 16)
    torch.manual_seed(7)
    ngf, ndf, nif = DUALMCMC_WIDTHS["digits"]
    g = DualMCMCGenerator("digits", 16, ngf)
    e = DualMCMCEnergy("digits", ndf)
    q = DualMCMCInference("digits", 16, nif)
    for a, b in ((n.generator, g), (n.energy, e), (n.inference, q)):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------------------
# Multiply-accumulates per sample and forward (conv + linear only), the units of the doc's per-iteration budget


def forward_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(m: nn.Module, inp: object, out: torch.Tensor) -> None:
        nonlocal total
        per_out = m.in_channels * m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) else m.in_features
        total += out[0].numel() * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.device("meta"):
        model(x)
    for h in handles:
        h.remove()
    return total


def test_forward_macs_cifar10() -> None:
    n = meta_networks("cifar10")
    k3 = 9 * 512 * 512  # one 512→512 3×3 conv per output pixel
    # G: lin_1 128·8192; per up-block at output side s: 2·k3·s² + 512²·s²; conv5 9·512·3·32²
    g = 128 * 8192 + sum(2 * k3 * s * s + 512 * 512 * s * s for s in (8, 16, 32)) + 9 * 512 * 3 * 32 * 32
    # E: start block at 32² (conv1 9·3·512, conv2 k3) + sc 3·512 at 16²; block2 at 16² (2 convs + sc before the
    # pool); block3, block4 at 8²; lin_5 512
    e = (9 * 3 * 512 + k3) * 32 * 32 + 3 * 512 * 16 * 16 + (2 * k3 + 512 * 512) * 16 * 16 + 4 * k3 * 8 * 8 + 512
    # I: 3×3 3→128 at 32², 4×4 convs to 16², 8², 4²; two 4×4 heads 1024→128 at 1²
    q = 9 * 3 * 128 * 32 * 32 + 16 * (128 * 256 * 16 * 16 + 256 * 512 * 8 * 8 + 512 * 1024 * 4 * 4)
    q += 2 * 16 * 1024 * 128
    assert (g, e, q) == (6_709_313_536, 4_309_516_800, 410_386_432)
    with torch.device("meta"):
        z, x = torch.zeros(2, 128), torch.zeros(2, 3, 32, 32)
    assert forward_macs(n.generator, z) == g
    assert forward_macs(n.energy, x) == e
    assert forward_macs(n.inference, x) == q
