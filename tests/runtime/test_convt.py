"""Issue 14 item 4: the generator's first / last layer rewrites against nn.ConvTranspose2d in fp64 (forward, input
gradient and weight gradients), for every arch shape family and both memory formats."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.models import Generator
from engine.runtime.convt import convt_first_as_gemm, convt_last, generator_forward

CASES = [(arch, gemm, last) for arch in ("cifar10", "svhn", "mnist", "digits") for gemm in (False, True)
         for last in ("convt", "convt_pad", "conv_pad") if not (last == "conv_pad" and arch == "svhn")]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("arch", "gemm_first", "last"), CASES)
def test_rewritten_generator_equals_the_module_in_fp64(arch: str, gemm_first: bool, last: str,
                                                       channels_last: bool) -> None:
    torch.manual_seed(0)
    g = Generator(arch, 8, 4).double()
    if channels_last:
        g = g.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    z = torch.randn(3, 8, dtype=torch.float64)
    outs = []
    for rewrite in (False, True):
        zz = z.clone().requires_grad_(True)
        g.zero_grad(set_to_none=True)
        y = generator_forward(g, zz, gemm_first, last) if rewrite else g(zz)  # type: ignore[arg-type]
        w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)  # a generic upstream gradient
        (y * w).sum().backward()
        outs.append((y.detach(), zz.grad, [p.grad.clone() for p in g.parameters()]))
    (y0, gz0, gw0), (y1, gz1, gw1) = outs
    assert y1.shape == y0.shape
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    torch.testing.assert_close(gz1, gz0, rtol=0, atol=1e-12)
    for a, b in zip(gw0, gw1, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-11)
    if channels_last and gemm_first and arch in ("cifar10", "svhn"):
        # the GEMM writes NHWC directly: no layout copy before the next (channels_last) layer
        h = convt_first_as_gemm(z, g.net[0])
        assert h.is_contiguous(memory_format=torch.channels_last)


def test_first_layer_gemm_handles_padding_and_refuses_strides() -> None:
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(5, 3, 4, 1, 1).double()
    z = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(convt_first_as_gemm(z, layer), layer(z[:, :, None, None]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="stride 1"):
        convt_first_as_gemm(z, nn.ConvTranspose2d(5, 3, 4, 2, 1).double())
    with pytest.raises(ValueError, match="stride-1"):
        convt_last(torch.randn(1, 5, 4, 4, dtype=torch.float64), nn.ConvTranspose2d(5, 3, 4, 2, 1).double(),
                   "conv_pad")
    with pytest.raises(ValueError, match="mode"):
        convt_last(torch.randn(1, 5, 4, 4), nn.ConvTranspose2d(5, 3, 3, 1, 1), "bogus")  # type: ignore[arg-type]
