"""Tests for engine.models.coopvae: the CoopVAEBM networks (docs/methods/coopvae.md).

Parameter and MAC counts are written out as arithmetic over the authors' layer list (jianwen-xie/CoopVAEBM @ b0a48c0,
model/modules.py:10-23 descriptor, 268-285 encoder, 468-491 generator; 'digits' is our scaled-down arch).
Convention for MACs: a conv counts out_pixels·k²·c_in·c_out, a transposed conv in_pixels·k²·c_in·c_out, a dense
layer in·out; biases, BN, activations are not counted. FlopCounterMode reports 2 FLOPs per MAC.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.models.coopvae import (
    BN_EPS,
    INIT_STD,
    BatchNormShift,
    Descriptor,
    SameConvTranspose2d,
    VaeEncoder,
    VaeGenerator,
    build_coopvae_networks,
    tf_same_pads,
)

NZ = {"cifar10": 100, "digits": 16}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------
# Hand counts from the layer lists: conv k·k·c_in·c_out + c_out; dense in·out + out; BN beta: C
# ---------------------------------------------------------------------------------------------------

PARAMS = {
    ("descriptor", "cifar10"): (3 * 3 * 3 * 64 + 64) + (4 * 4 * 64 * 128 + 128) + (4 * 4 * 128 * 256 + 256)
    + (4 * 4 * 256 * 256 + 256) + (4 * 4 * 256 * 1 + 1),
    ("encoder", "cifar10"): (3 * 3 * 3 * 64 + 64) + (4 * 4 * 64 * 128 + 128) + (4 * 4 * 128 * 256 + 256)
    + (4 * 4 * 256 * 512 + 512) + 2 * (4 * 4 * 512 * 100 + 100),
    ("generator", "cifar10"): (4 * 4 * 100 * 256 + 256) + 256 + (4 * 4 * 256 * 128 + 128) + 128
    + (4 * 4 * 128 * 64 + 64) + 64 + (3 * 3 * 64 * 64 + 64) + (3 * 3 * 64 * 3 + 3),
    ("descriptor", "digits"): (3 * 3 * 1 * 32 + 32) + (4 * 4 * 32 * 64 + 64) + (4 * 4 * 64 * 128 + 128)
    + (2 * 2 * 128 * 1 + 1),
    ("encoder", "digits"): (3 * 3 * 1 * 32 + 32) + (4 * 4 * 32 * 64 + 64) + (4 * 4 * 64 * 128 + 128)
    + 2 * (2 * 2 * 128 * 16 + 16),
    ("generator", "digits"): (2 * 2 * 16 * 128 + 128) + 128 + (4 * 4 * 128 * 64 + 64) + 64
    + (3 * 3 * 64 * 32 + 32) + (3 * 3 * 32 * 1 + 1),
}

# Forward MACs per image (docs/methods/coopvae.md, "MAC count").
MACS = {
    ("descriptor", "cifar10"): 32 * 32 * 3 * 3 * 3 * 64 + 16 * 16 * 4 * 4 * 64 * 128 + 8 * 8 * 4 * 4 * 128 * 256
    + 4 * 4 * 4 * 4 * 256 * 256 + 1 * 4 * 4 * 256 * 1,
    ("encoder", "cifar10"): 32 * 32 * 3 * 3 * 3 * 64 + 16 * 16 * 4 * 4 * 64 * 128 + 8 * 8 * 4 * 4 * 128 * 256
    + 4 * 4 * 4 * 4 * 256 * 512 + 2 * 8192 * 100,
    ("generator", "cifar10"): 1 * 4 * 4 * 100 * 256 + 4 * 4 * 4 * 4 * 256 * 128 + 8 * 8 * 4 * 4 * 128 * 64
    + 16 * 16 * 3 * 3 * 64 * 64 + 32 * 32 * 3 * 3 * 64 * 3,
    ("descriptor", "digits"): 8 * 8 * 3 * 3 * 1 * 32 + 4 * 4 * 4 * 4 * 32 * 64 + 2 * 2 * 4 * 4 * 64 * 128
    + 1 * 2 * 2 * 128 * 1,
    ("encoder", "digits"): 8 * 8 * 3 * 3 * 1 * 32 + 4 * 4 * 4 * 4 * 32 * 64 + 2 * 2 * 4 * 4 * 64 * 128
    + 2 * 512 * 16,
    ("generator", "digits"): 1 * 2 * 2 * 16 * 128 + 2 * 2 * 4 * 4 * 128 * 64 + 4 * 4 * 3 * 3 * 64 * 32
    + 8 * 8 * 3 * 3 * 32 * 1,
}


def test_the_hand_counts_are_the_numbers_in_the_doc() -> None:
    assert [PARAMS[(n, "cifar10")] for n in ("descriptor", "encoder", "generator")] == [1_710_465, 4_393_800, 1_104_515]
    assert [MACS[(n, "cifar10")] for n in ("descriptor", "encoder", "generator")] == [
        85_659_648,
        104_071_168,
        28_393_472,
    ]
    assert [PARAMS[(n, "digits")] for n in ("descriptor", "encoder", "generator")] == [164_865, 180_768, 158_401]
    assert [MACS[(n, "digits")] for n in ("descriptor", "encoder", "generator")] == [1_067_520, 1_083_392, 845_824]


def nets(arch: str) -> dict[str, nn.Module]:
    d, e, g = build_coopvae_networks(arch, NZ[arch])
    return {"descriptor": d, "encoder": e, "generator": g}


@pytest.mark.parametrize("arch", ["cifar10", "digits"])
def test_param_counts(arch: str) -> None:
    with torch.device("meta"):
        built = nets(arch)
    for name, net in built.items():
        assert n_params(net) == PARAMS[(name, arch)], name


@pytest.mark.parametrize("arch", ["cifar10", "digits"])
def test_shapes(arch: str) -> None:
    torch.manual_seed(0)
    d, e, g = build_coopvae_networks(arch, NZ[arch])
    shape = (1, 8, 8) if arch == "digits" else (3, 32, 32)
    assert d.image_shape == e.image_shape == g.image_shape == shape
    x = torch.rand(5, *shape) * 2 - 1
    f = d(x)
    assert f.shape == (5,)
    mean, log_std = e(x)
    assert mean.shape == log_std.shape == (5, NZ[arch])
    y = g(torch.randn(5, NZ[arch]))
    assert y.shape == (5, *shape)
    assert y.abs().max() < 1  # tanh
    assert d(x[:1]).shape == (1,)  # no squeeze to a 0-d tensor


@pytest.mark.parametrize("arch", ["cifar10", "digits"])
def test_forward_macs(arch: str) -> None:
    torch.manual_seed(0)
    built = nets(arch)
    shape = (1, 8, 8) if arch == "digits" else (3, 32, 32)
    batch = 2
    inputs = {"descriptor": torch.randn(batch, *shape), "encoder": torch.randn(batch, *shape),
              "generator": torch.randn(batch, NZ[arch])}
    for name, net in built.items():
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(inputs[name])
        assert counter.get_total_flops() == 2 * batch * MACS[(name, arch)], name


def test_init() -> None:
    torch.manual_seed(0)
    for name, net in nets("cifar10").items():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                w = m.weight
                assert abs(w.std().item() - INIT_STD) < 0.1 * INIT_STD, (name, tuple(w.shape))
                assert abs(w.mean().item()) < 0.1 * INIT_STD
            elif isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                bound = (6.0 / (fan_in + fan_out)) ** 0.5  # glorot uniform U(-b, b), std b/√3
                assert m.weight.abs().max() <= bound
                assert abs(m.weight.std().item() - bound / 3**0.5) < 0.02 * bound
            else:
                continue
            assert m.bias is not None and torch.all(m.bias == 0), name
        for m in net.modules():
            if isinstance(m, BatchNormShift):
                assert torch.all(m.bias == 0)


def test_batch_norm_uses_batch_statistics_in_eval() -> None:
    torch.manual_seed(0)
    d, e, g = build_coopvae_networks("digits", 16)
    for net in (d, e, g):
        net.eval()
    z = torch.randn(6, 16)
    z2 = z.clone()
    z2[1:] = torch.randn(5, 16) * 3
    with torch.no_grad():
        assert not torch.allclose(g(z)[0], g(z2)[0], atol=1e-4)  # row 0 depends on the other rows
        x = torch.rand(6, 1, 8, 8)
        x2 = x.clone()
        x2[1:] = torch.rand(5, 1, 8, 8)
        assert torch.allclose(d(x)[0], d(x2)[0])  # the descriptor and the encoder have no BN
        assert torch.allclose(e(x)[0][0], e(x2)[0][0])
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in g.modules())
    assert sum(isinstance(m, BatchNormShift) for m in g.modules()) == 2
    assert len(list(g.buffers())) == 0  # no running statistics


def test_batch_norm_shift_is_tf_batch_norm() -> None:
    torch.manual_seed(0)
    bn = BatchNormShift(4)
    assert [name for name, _ in bn.named_parameters()] == ["bias"]  # beta only: center=True, scale=False
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
    x = torch.randn(7, 4, 3, 3) * 0.05 + 1.0
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)  # tf.nn.moments: the biased variance
    expected = (x - mean) / torch.sqrt(var + BN_EPS) + bn.bias.view(1, 4, 1, 1)
    bn.eval()
    assert torch.allclose(bn(x), expected, atol=1e-5)


def test_tf_same_pads() -> None:
    assert tf_same_pads(32, 3, 1) == (1, 1)
    assert tf_same_pads(32, 4, 2) == (1, 1)
    assert tf_same_pads(8, 4, 2) == (1, 1)
    assert tf_same_pads(32, 3, 2) == (0, 1)  # the generator's 3×3/2 layer: odd pixel after
    assert tf_same_pads(28, 5, 2) == (1, 2)  # the authors' 'mnist' descriptor conv1
    assert tf_same_pads(7, 4, 1) == (1, 2)


def tf_same_conv_adjoint(y: torch.Tensor, w: torch.Tensor, k: int, s: int, size_out: int) -> torch.Tensor:
    """TF conv2d_transpose(SAME): the vector-Jacobian product of TF's SAME conv (explicit pads, then VALID conv)."""
    before, after = tf_same_pads(size_out, k, s)
    x = torch.zeros(y.shape[0], w.shape[1], size_out, size_out, requires_grad=True)
    fwd = F.conv2d(F.pad(x, (before, after, before, after)), w, stride=s)  # w: (c_in, c_out, k, k) of the convT
    assert fwd.shape == y.shape
    (grad,) = torch.autograd.grad(fwd, x, y)
    return grad


@pytest.mark.parametrize(("k", "s", "n"), [(3, 2, 4), (4, 2, 4), (3, 1, 5), (3, 2, 16)])
def test_same_conv_transpose_places_pixels_like_tf(k: int, s: int, n: int) -> None:
    torch.manual_seed(0)
    layer = SameConvTranspose2d(2, 3, k, s, n)
    with torch.no_grad():
        layer.conv.weight.normal_()
        layer.conv.bias.zero_()
    y = torch.randn(2, 2, n, n)
    out = layer(y)
    assert out.shape == (2, 3, n * s, n * s)
    assert torch.allclose(out, tf_same_conv_adjoint(y, layer.conv.weight.detach(), k, s, n * s), atol=1e-5)
    if (k, s) == (3, 2):  # PyTorch's usual padding=1, output_padding=1 puts the taps one pixel off
        usual = F.conv_transpose2d(y, layer.conv.weight, stride=2, padding=1, output_padding=1)
        assert usual.shape == out.shape and not torch.allclose(usual, out, atol=1e-3)


def test_unknown_arch() -> None:
    with pytest.raises(ValueError, match="unknown CoopVAEBM arch"):
        Descriptor("svhn")
    with pytest.raises(ValueError, match="unknown CoopVAEBM arch"):
        VaeEncoder("mnist", 8)
    with pytest.raises(ValueError, match="unknown CoopVAEBM arch"):
        VaeGenerator("celeba64", 8)
