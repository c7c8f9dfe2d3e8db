"""Tests for engine.models (spec §1): parameter counts, shapes, U-Net wiring and time input."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from engine.models import (
    IMAGE_SHAPES,
    Amortizer,
    Encoder,
    EnergyMLP,
    Generator,
    LatentUNet,
    Networks,
    NullToken,
    build_networks,
    count_params,
    logsnr_to_time,
    sinusoidal_embedding,
)

# Per-dataset configs used in the paper's experiments (spec §1.1-§1.4).
CONFIGS: dict[str, dict[str, int]] = {
    "cifar10": dict(nz=128, ngf=128, nif=64),
    "svhn": dict(nz=100, ngf=64, nif=64),
    "celeba64": dict(nz=100, ngf=128, nif=64),
    "celebahq256": dict(nz=128, ngf=128, nif=64),
    "mnist": dict(nz=8, ngf=128, nif=128),
}

G_PARAMS = {
    "cifar10": 18_883_075,
    "svhn": 3_447_683,
    "celeba64": 12_656_515,
    "celebahq256": 52_963_715,
    "mnist": 10_891_265,
}
ENC_PARAMS = {
    "cifar10": 11_146_752,
    "svhn": 11_146_752,
    "celeba64": 15_342_592,
    "celebahq256": 20_587_776,
    "mnist": 20_455_168,
}
E_PARAMS = {128: 66_201, 100: 60_601, 8: 42_201}
UNET_PARAMS = {128: 3_143_424, 100: 3_066_424, 8: 2_841_024}


def model_cfg(arch: str, **over: int) -> SimpleNamespace:
    base = dict(ndf=200, nemb=1024, unet_nf=4, ntemb=128, **CONFIGS.get(arch, dict(nz=16, ngf=16, nif=16)))
    base.update(over)
    return SimpleNamespace(arch=arch, **base)


# ---------------------------------------------------------------------------------------------------
# Parameter counts (built on the meta device: no memory, no init cost)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_param_counts_per_arch(arch: str) -> None:
    c = CONFIGS[arch]
    with torch.device("meta"):
        assert count_params(Generator(arch, c["nz"], c["ngf"])) == G_PARAMS[arch]
        assert count_params(Encoder(arch, c["nif"], 1024)) == ENC_PARAMS[arch]
        assert count_params(EnergyMLP(c["nz"], 200)) == E_PARAMS[c["nz"]]
        assert count_params(LatentUNet(c["nz"], 1024, 128, 4)) == UNET_PARAMS[c["nz"]]
        q = Amortizer(arch, c["nz"], c["nif"], 1024, 128, 4)
    expected_q = ENC_PARAMS[arch] + UNET_PARAMS[c["nz"]] + count_params(q.null_token)
    assert count_params(q) == expected_q


def test_unet_block_counts_nz128() -> None:
    with torch.device("meta"):
        u = LatentUNet(128, 1024, 128, 4)
    blocks = [*u.enc, u.mid, *u.dec]
    per_block = [246_272, 492_544, 558_080, 558_080, 689_152, 311_808, 246_272]  # enc ×3, mid, dec ×3
    assert [count_params(b) for b in blocks] == per_block
    assert count_params(u.time_mlp) == 33_024
    assert u.fourier_B.shape == (128, 64) and u.fourier_B.numel() == 8_192
    assert [(b.dim_in, b.dim_out) for b in blocks] == [
        (256, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (512, 256),
        (512, 128),
        (256, 128),
    ]


def test_null_token_and_q_total_cifar10() -> None:
    with torch.device("meta"):
        assert count_params(NullToken(128, 1024)) == 148_608
        q = Amortizer("cifar10", 128, 64, 1024, 128, 4)
    # spec total 14,439,808 includes the authors' unused (1, 1024) `xemb` parameter, omitted here.
    assert count_params(q) == 14_439_808 - 1024


def test_unet_odd_nz_input_dim() -> None:
    u = LatentUNet(7, nemb=16, ntemb=8, nf=1)
    assert u.fourier_B.shape == (7, 3)
    assert u.enc[0].dim_in == 2 * 3 + 7
    out = u(torch.randn(2, 7), torch.zeros(2), torch.randn(2, 16))
    assert out.shape == (2, 7)


# ---------------------------------------------------------------------------------------------------
# Shapes (reduced widths: spatial wiring does not depend on them; counts are covered above)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(IMAGE_SHAPES))
def test_generator_encoder_shapes(arch: str) -> None:
    torch.manual_seed(0)
    nz = CONFIGS.get(arch, {"nz": 16})["nz"]
    b = 1 if arch == "celebahq256" else 2
    g = Generator(arch, nz, 8)
    x = g(torch.randn(b, nz) * 10.0)  # large z to push the Tanh towards saturation
    assert x.shape == (b, *IMAGE_SHAPES[arch])
    assert x.min() >= -1.0 and x.max() <= 1.0
    enc = Encoder(arch, 8, 32)
    assert enc(x).shape == (b, 32)


def test_digits_layers() -> None:
    g = Generator("digits", 16, 4)
    convs = [m for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in convs] == [
        (16, 4, 1, 0),
        (8, 4, 2, 1),
        (1, 3, 1, 1),
    ]
    e = Encoder("digits", 4, 32)
    convs = [m for m in e.net if isinstance(m, torch.nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in convs] == [
        (4, 3, 1, 1),
        (8, 4, 2, 1),
        (32, 4, 1, 0),
    ]
    assert isinstance(e.net[-1], torch.nn.Conv2d)  # last conv plain


def test_encoder_last_layer_plain_and_norms() -> None:
    e = Encoder("cifar10", 8, 32)
    norms = [m for m in e.net if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 4
    assert all(n.affine and not n.track_running_stats for n in norms)
    assert isinstance(e.net[-1], torch.nn.Conv2d) and e.net[-1].bias is not None
    # no running stats: train() and eval() agree
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(e.train()(x), e.eval()(x))


def test_energy_shapes() -> None:
    e = EnergyMLP(128, 200)
    assert e(torch.randn(2, 128)).shape == (2,)
    assert e(torch.randn(1, 128)).shape == (1,)


def test_unknown_arch() -> None:
    with pytest.raises(ValueError):
        Generator("imagenet", 128, 64)
    with pytest.raises(ValueError):
        Encoder("imagenet", 64, 1024)


def test_build_networks_cifar10_full_size() -> None:
    torch.manual_seed(0)
    nets = build_networks(model_cfg("cifar10"), with_amortizer=True)
    assert isinstance(nets, Networks) and nets.amortizer is not None
    z = torch.randn(2, 128)
    x = nets.generator(z)
    assert x.shape == (2, 3, 32, 32)
    assert nets.energy(z).shape == (2,)
    q = nets.amortizer
    xemb = q.cond_embedding(x)
    assert xemb.shape == (2, 1024)
    nemb = q.null_embedding(torch.randn(2, 128))
    assert nemb.shape == (2, 1024)
    eps = q(z, torch.tensor([-5.1, 9.8]), xemb)
    assert eps.shape == (2, 128)
    # scalar log-SNR broadcasts over the batch
    assert torch.allclose(q(z, torch.tensor(1.0), nemb), q(z, torch.full((2,), 1.0), nemb))
    assert count_params(nets.generator) == G_PARAMS["cifar10"]


def test_build_networks_without_amortizer() -> None:
    nets = build_networks(model_cfg("digits"), with_amortizer=False)
    assert nets.amortizer is None
    assert nets.generator(torch.randn(2, 16)).shape == (2, 1, 8, 8)


def test_fourier_B_init_standard_normal() -> None:
    torch.manual_seed(0)
    b = LatentUNet(128).fourier_B.detach()
    assert abs(b.mean().item()) < 0.05 and abs(b.std().item() - 1.0) < 0.05


# ---------------------------------------------------------------------------------------------------
# U-Net behaviour
# ---------------------------------------------------------------------------------------------------


def _small_unet(residual: bool = True) -> LatentUNet:
    return LatentUNet(nz=16, nemb=32, ntemb=16, nf=1, residual=residual)


def test_unet_residual_identity_when_blocks_zeroed() -> None:
    torch.manual_seed(0)
    u = _small_unet()
    with torch.no_grad():
        for block in [*u.enc, u.mid, *u.dec]:
            for p in block.parameters():
                p.zero_()
    z = torch.randn(3, 16)
    out = u(z, torch.tensor([-5.0, 0.0, 9.0]), torch.randn(3, 32))
    assert torch.equal(out, z)
    u.residual = False
    assert torch.equal(u(z, torch.zeros(3), torch.randn(3, 32)), torch.zeros(3, 16))


def test_all_q_params_receive_gradient() -> None:
    torch.manual_seed(0)
    q = Amortizer("digits", 16, 4, 32, 16, 1)
    x = torch.randn(2, 1, 8, 8)
    z = torch.randn(2, 16)
    lam = torch.tensor([0.5, -2.0])
    loss = q(z, lam, q.cond_embedding(x)).square().sum() + q(z, lam, q.null_embedding(z)).square().sum()
    loss.backward()
    missing = [n for n, p in q.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_time_input_matches_spec_formula() -> None:
    lams = [-50.0, -20.0, -5.1, -1.0, 0.0, 0.3, 2.0, 9.8, 20.0, 35.0]
    got = logsnr_to_time(torch.tensor(lams, dtype=torch.float32))
    ref = [math.atan(math.exp(-0.5 * min(max(lam, -20.0), 20.0))) / (math.pi / 2) for lam in lams]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float32), rtol=1e-6, atol=1e-7)
    assert float(logsnr_to_time(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(0.5, abs=1e-15)

    # sinusoid: arg = 1000·t_in·f_k, f_k = exp(-k·ln(10000)/63), emb = [sin, cos]
    t64 = logsnr_to_time(torch.tensor(lams, dtype=torch.float64))
    emb = sinusoidal_embedding(t64, 128)
    assert emb.shape == (len(lams), 128)
    for i, t in enumerate(t64.tolist()):
        args = [1000.0 * t * math.exp(-k * math.log(10000.0) / 63) for k in range(64)]
        ref_row = torch.tensor([math.sin(a) for a in args] + [math.cos(a) for a in args], dtype=torch.float64)
        torch.testing.assert_close(emb[i], ref_row, rtol=0, atol=1e-9)

    # the module's time path is time_mlp(sinusoid(t_in(λ)))
    u = _small_unet().double()
    lam_t = torch.tensor(lams[:4], dtype=torch.float64)
    torch.testing.assert_close(
        u.time_embedding(lam_t), u.time_mlp(sinusoidal_embedding(logsnr_to_time(lam_t), 16))
    )


def test_logsnr_input_not_modified() -> None:
    u = _small_unet()
    lam = torch.tensor([-30.0, 25.0])
    lam_copy = lam.clone()
    u(torch.randn(2, 16), lam, torch.randn(2, 32))
    assert torch.equal(lam, lam_copy)


def test_unet_context_order_temb_first() -> None:
    # Changing xemb must only act through ctx columns [ntemb:]; zero those columns of every block's
    # ctx projection and the output must no longer depend on xemb.
    torch.manual_seed(0)
    u = _small_unet()
    with torch.no_grad():
        for block in [*u.enc, u.mid, *u.dec]:
            block.ctx_proj.weight[:, u.ntemb :] = 0
    z, lam = torch.randn(2, 16), torch.zeros(2)
    torch.testing.assert_close(u(z, lam, torch.randn(2, 32)), u(z, lam, torch.randn(2, 32)))


# ---------------------------------------------------------------------------------------------------
# State: parameters only
# ---------------------------------------------------------------------------------------------------


def test_state_dict_has_only_parameters() -> None:
    nets = build_networks(model_cfg("digits"), with_amortizer=True)
    for module in (nets.generator, nets.energy, nets.amortizer):
        assert module is not None
        assert list(module.buffers()) == []
        assert set(module.state_dict()) == {n for n, _ in module.named_parameters()}
