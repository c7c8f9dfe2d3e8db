"""DRL energy network (docs/methods/drl.md §5) against the authors' layer list (network.py, nn.py @ c77cc05)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.models.drl import (
    DRL_CIFAR10,
    DRL_DIGITS,
    DRLEnergyNet,
    DRLNetConfig,
    DRLResBlock,
    SpectralNorm,
    build_drl_energy,
    forward_macs,
    spectral_norm_macs,
    timestep_embedding,
)


def hand_param_count(ch: int, ch_mult: tuple[int, ...], nrb: int, in_ch: int) -> int:
    """Trainable parameters of net_res_temb2 from its layer list (network.py:161-194, nn.py):

    temb/dense0 ch→4ch, temb/dense1 4ch→4ch, temb/dense2 4ch→ch·mult[-1] (W + b each); conv_in 3×3 in_ch→ch;
    per block c_in→c_out: temb_proj 4ch→c_out, conv1 3×3 c_in→c_out, conv2 3×3 c_out→c_out + b + g,
    conv_shortcut 3×3 c_in→c_out when c_in ≠ c_out. dense_out is never called, so it has no weights.
    """
    t = 4 * ch
    n = (ch * t + t) + (t * t + t) + (t * ch * ch_mult[-1] + ch * ch_mult[-1])
    n += 9 * in_ch * ch + ch
    c_in = ch
    for m in ch_mult:
        c_out = ch * m
        for _ in range(nrb):
            n += t * c_out + c_out  # temb_proj
            n += 9 * c_in * c_out + c_out  # conv1
            n += 9 * c_out * c_out + c_out + c_out  # conv2 (W, b, g)
            if c_in != c_out:
                n += 9 * c_in * c_out + c_out  # conv_shortcut
            c_in = c_out
    return n


@pytest.fixture(scope="module")
def cifar_net() -> Iterator[DRLEnergyNet]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        yield build_drl_energy(DRL_CIFAR10)
    finally:
        torch.set_num_threads(threads)


def test_param_counts(cifar_net: DRLEnergyNet) -> None:
    n_cifar = sum(p.numel() for p in cifar_net.parameters())
    assert n_cifar == hand_param_count(128, (1, 2, 2, 2), 8, 3) == 34_833_408
    # the same count spelled out: temb MLP + conv_in + 8 blocks at 128 + 1 widening block + 23 blocks at 256
    assert n_cifar == (66_048 + 262_656 + 131_328) + 3_584 + 8 * 360_960 + 1_312_000 + 23 * 1_311_744
    n_digits = sum(p.numel() for p in build_drl_energy(DRL_DIGITS).parameters())
    assert n_digits == hand_param_count(32, (1, 2), 2, 1) == 239_040
    # spectral-norm u vectors are buffers of size out: every SN layer but temb/dense2
    n_u = sum(b.numel() for b in cifar_net.buffers())
    assert n_u == 512 + 512 + 128 + 8 * (128 + 128 + 128) + (256 * 4) + 23 * (256 * 3) == 22_912


def test_structure(cifar_net: DRLEnergyNet) -> None:
    assert [len(lv) for lv in cifar_net.levels] == [8, 8, 8, 8]
    assert cifar_net.resolutions == [32, 16, 8, 4]
    blocks = [b for lv in cifar_net.levels for b in lv]
    assert all(isinstance(b, DRLResBlock) for b in blocks)
    widening = [i for i, b in enumerate(blocks) if isinstance(b, DRLResBlock) and b.shortcut is not None]
    assert widening == [8]  # level 1, block 0: 128 → 256
    assert not isinstance(cifar_net.temb_dense2, SpectralNorm)  # network.py:165 spec_norm=False
    lower = [m for m in cifar_net.modules() if isinstance(m, SpectralNorm) and m.lower_bound]
    assert len(lower) == 32  # each block's conv2 (init_scale 0)


def test_cifar_forward_shape_and_macs(cifar_net: DRLEnergyNet) -> None:
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        f = cifar_net(y, torch.tensor([5]))
    assert f.shape == (1,) and torch.isfinite(f).all()
    conv, dense = forward_macs(DRL_CIFAR10)
    counts = fc.get_flop_counts()["Global"]
    assert counts[torch.ops.aten.convolution] == 2 * conv == 2 * 5_590_351_872
    assert dense == 4_129_024
    assert spectral_norm_macs(cifar_net) == 3 * sum(
        m.layer.weight.numel() for m in cifar_net.modules() if isinstance(m, SpectralNorm))


def test_digits_shapes_grad_and_macs() -> None:
    torch.manual_seed(1)
    net = build_drl_energy(DRL_DIGITS)
    y = (torch.rand(5, 1, 8, 8) * 2 - 1).requires_grad_(True)
    t = torch.tensor([0, 1, 2, 3, 5])
    with FlopCounterMode(display=False) as fc:
        f = net(y, t)
    assert f.shape == (5,)
    conv, dense = forward_macs(DRL_DIGITS)
    assert fc.get_flop_counts()["Global"][torch.ops.aten.convolution] == 2 * 5 * conv == 2 * 5 * 4_737_024
    (g,) = torch.autograd.grad(f.sum(), y)
    assert g.shape == y.shape and torch.isfinite(g).all()
    assert net(y.detach(), torch.tensor(2)).shape == (5,)  # a scalar level broadcasts (network.py:200-201)
    with pytest.raises(ValueError, match="expected"):
        net(torch.zeros(2, 3, 8, 8), t[:2])


def test_timestep_embedding() -> None:
    t = torch.tensor([0, 3])
    emb = timestep_embedding(t, 128)
    assert emb.shape == (2, 128)
    k = 10
    f_k = math.exp(-k * math.log(10000) / 63)
    assert emb[1, k].item() == pytest.approx(math.sin(3 * f_k), abs=1e-6)
    assert emb[1, 64 + k].item() == pytest.approx(math.cos(3 * f_k), abs=1e-6)
    assert emb[0, :64].abs().max().item() == 0.0 and emb[0, 64:].eq(1).all()
    assert timestep_embedding(t, 7).shape == (2, 7)


def _tf_sn_reference(w_tf: np.ndarray, u: np.ndarray, lower_bound: bool) -> tuple[np.ndarray, np.ndarray]:
    """SN._compute_weights (nn.py:97-122) in numpy: w_tf (…, out) the TF-layout kernel, u (1, out)."""
    w = w_tf.reshape(-1, w_tf.shape[-1])
    v = u @ w.T
    v = v / np.sqrt(max((v**2).sum(), 1e-12))
    u_new = v @ w
    u_new = u_new / np.sqrt(max((u_new**2).sum(), 1e-12))
    sigma = (v @ w @ u_new.T).item()
    if lower_bound:
        sigma += 1e-6
        return w_tf / sigma * min(sigma, 1.0), u_new
    return w_tf / sigma, u_new


@pytest.mark.parametrize("lower_bound", [False, True])
def test_spectral_norm_matches_the_authors_formula(lower_bound: bool) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    sn = SpectralNorm(conv, lower_bound=lower_bound)
    u0 = sn.u.double().numpy()[None, :].copy()
    w_tf = conv.weight.detach().double().permute(2, 3, 1, 0).numpy()  # (3, 3, in, out), the TF layout
    ref_w, ref_u = _tf_sn_reference(w_tf, u0, lower_bound)
    got = sn.normalized_weight().detach().double().permute(2, 3, 1, 0).numpy()
    np.testing.assert_allclose(got, ref_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sn.u.double().numpy(), ref_u[0], rtol=1e-5, atol=1e-7)  # u updated in place
    lin = nn.Linear(5, 3)
    sn_lin = SpectralNorm(lin)
    u0 = sn_lin.u.double().numpy()[None, :].copy()
    ref_w, _ = _tf_sn_reference(lin.weight.detach().double().T.numpy(), u0, False)
    np.testing.assert_allclose(sn_lin.normalized_weight().detach().double().T.numpy(), ref_w, rtol=1e-5, atol=1e-7)


def test_spectral_norm_converges_and_freezes() -> None:
    torch.manual_seed(3)
    sn = SpectralNorm(nn.Linear(16, 8))
    for _ in range(50):
        w = sn.normalized_weight()
    assert torch.linalg.matrix_norm(w.detach(), ord=2).item() == pytest.approx(1.0, abs=1e-4)
    sn.update_u = False
    u = sn.u.clone()
    sn(torch.zeros(2, 16))
    assert torch.equal(sn.u, u)


def test_authors_init() -> None:
    torch.manual_seed(4)
    block = DRLResBlock(8, 16, 32)
    # conv2: fan-avg uniform at scale 1e-10 (nn.py:10, network.py:79), bias 0, g = 1
    limit = math.sqrt(3e-10 / ((9 * 16 + 9 * 16) / 2))
    assert block.conv2.layer.weight.abs().max().item() <= limit
    assert block.g.eq(1).all()
    limit1 = math.sqrt(3.0 / ((9 * 8 + 9 * 16) / 2))
    w1 = block.conv1.layer.weight
    assert w1.abs().max().item() <= limit1 and w1.abs().max().item() > 0.9 * limit1
    assert all(m.layer.bias.eq(0).all() for m in block.modules() if isinstance(m, SpectralNorm))
    # at init the residual branch is ~0: the block is its shortcut (an SN conv here, identity when widths match)
    same = DRLResBlock(8, 8, 32)
    x, temb = torch.randn(2, 8, 4, 4), torch.randn(2, 32)
    assert torch.allclose(same(x, temb), x, atol=1e-4)


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        DRL_DIGITS.ch = 64  # type: ignore[misc]
    assert DRLNetConfig(ch=8, ch_mult=(1,), num_res_blocks=1, in_ch=1, image_size=4).spec_norm
