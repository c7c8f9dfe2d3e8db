"""DCGAN-style generators G(z) (spec §1.2, Table S2).

Every layer is a ConvTranspose2d with bias; LeakyReLU(0.2) between layers, Tanh at the end (images
live in [-1, 1], spec §0). No normalisation, no spectral norm, default PyTorch init. The latent
z (B, nz) is reshaped to (B, nz, 1, 1) and grown to the image resolution.

"digits" (8×8 grayscale, scikit-learn digits for the quickstart) is not in the paper; it follows
the same style with a 3-layer stack.
"""

from __future__ import annotations

from torch import Tensor, nn

from .stacks import IMAGE_SHAPES, LayerSpec, check_arch, conv_stack

__all__ = ["IMAGE_SHAPES", "GENERATOR_LAYERS", "Generator"]

# Per arch: (out-channel multiplier of ngf, kernel, stride, padding) for every ConvT except the last;
# the last layer maps to the image channels with the (k, s, p) in _LAST. Spatial sizes in comments.
GENERATOR_LAYERS: dict[str, list[LayerSpec]] = {
    # 1 -> 8 -> 16 -> 32 ; with ngf=128: 1024, 512, 256
    "cifar10": [(8, 8, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1)],
    # 1 -> 4 -> 8 -> 16 (-> 32 in the last layer) ; with ngf=64: 512, 256, 128
    "svhn": [(8, 4, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1)],
    # 1 -> 4 -> 8 -> 16 -> 32 (-> 64) ; with ngf=128: 1024, 512, 256, 128
    "celeba64": [(8, 4, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1), (1, 4, 2, 1)],
    # 1 -> 4 -> 8 -> 16 -> 32 -> 64 -> 128 (-> 256) ; with ngf=128: 2048, 1024, 512, 512, 256, 128
    "celebahq256": [(16, 4, 1, 0), (8, 4, 2, 1), (4, 4, 2, 1), (4, 4, 2, 1), (2, 4, 2, 1), (1, 4, 2, 1)],
    # 1 -> 7 -> 14 -> 28 ; with ngf=128: 1024, 512, 256
    "mnist": [(8, 7, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1)],
    # 1 -> 4 -> 8 ; ngf*4, ngf*2 (quickstart arch, not in the paper)
    "digits": [(4, 4, 1, 0), (2, 4, 2, 1)],
}

# (kernel, stride, padding) of the final ConvT to the image channels (followed by Tanh).
_LAST: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 1, 1),  # 32 -> 32
    "svhn": (4, 2, 1),  # 16 -> 32
    "celeba64": (4, 2, 1),  # 32 -> 64
    "celebahq256": (4, 2, 1),  # 128 -> 256
    "mnist": (3, 1, 1),  # 28 -> 28
    "digits": (3, 1, 1),  # 8 -> 8
}


class Generator(nn.Module):
    """G: (B, nz) -> (B, C, H, W) in [-1, 1].

    Parameter counts (spec §1.2): cifar10 18,883,075; svhn 3,447,683; celeba64 12,656,515;
    celebahq256 52,963,715; mnist 10,891,265.
    """

    def __init__(self, arch: str, nz: int, ngf: int) -> None:
        super().__init__()
        check_arch(arch)
        self.arch = arch
        self.nz = nz
        self.ngf = ngf
        self.image_shape = IMAGE_SHAPES[arch]

        def block(c_in: int, c_out: int, k: int, s: int, p: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(c_in, c_out, k, s, p), nn.LeakyReLU(0.2)]

        layers, c_in = conv_stack(nz, ngf, GENERATOR_LAYERS[arch], block)
        k, s, p = _LAST[arch]
        layers += [nn.ConvTranspose2d(c_in, self.image_shape[0], k, s, p), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        # (B, nz) -> (B, nz, 1, 1) -> (B, C, H, W)
        return self.net(z.reshape(z.shape[0], self.nz, 1, 1))
