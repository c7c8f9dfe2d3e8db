"""Image encoders x -> xemb for the amortizer's conditional branch (spec §1.3, Table S4).

Every conv has a bias. After each conv except the last: InstanceNorm2d(affine=True,
track_running_stats=False) → LeakyReLU(0.2). The last conv is plain (bias, no norm, no activation):
this is the **[code]** variant. The paper's Table S4 writes "Conv(nemb) Norm, LReLU" for the last
layer (**[paper]**); we follow the code, which produced the paper's numbers (spec §5 item 5).

Without running stats InstanceNorm behaves identically in train() and eval() (spec §5 item 13).
The first conv is 3×3 s1 p1 at full resolution, then 4×4 s2 p1 halvings, then a final conv with
padding 0 that collapses the remaining spatial extent to 1×1.
"""

from __future__ import annotations

from torch import Tensor, nn

from .stacks import IMAGE_SHAPES, LayerSpec, check_arch, conv_stack

__all__ = ["ENCODER_LAYERS", "Encoder"]

# Per arch: (out-channel multiplier of nif, kernel, stride, padding) for the normed convs; the last
# (plain) conv to nemb uses _LAST. Spatial sizes after each conv are in the comments.
ENCODER_LAYERS: dict[str, list[LayerSpec]] = {
    # 64@32, 128@16, 256@8, 512@4 (-> 1024@1)
    "cifar10": [(1, 3, 1, 1), (2, 4, 2, 1), (4, 4, 2, 1), (8, 4, 2, 1)],
    "svhn": [(1, 3, 1, 1), (2, 4, 2, 1), (4, 4, 2, 1), (8, 4, 2, 1)],
    # 64@64, 128@32, 256@16, 512@8, 512@4 (-> 1024@1)
    "celeba64": [(1, 3, 1, 1), (2, 4, 2, 1), (4, 4, 2, 1), (8, 4, 2, 1), (8, 4, 2, 1)],
    # 64@256, 128@128, 256@64, 256@32, 512@16, 512@8, 512@4 (-> 1024@1)
    "celebahq256": [
        (1, 3, 1, 1),
        (2, 4, 2, 1),
        (4, 4, 2, 1),
        (4, 4, 2, 1),
        (8, 4, 2, 1),
        (8, 4, 2, 1),
        (8, 4, 2, 1),
    ],
    # nif=128: 128@28, 256@14, 512@7, 1024@3 (-> 1024@1 via conv3×3 p0)
    "mnist": [(1, 3, 1, 1), (2, 4, 2, 1), (4, 4, 2, 1), (8, 4, 2, 1)],
    # nif@8, 2nif@4 (-> nemb@1); quickstart arch, not in the paper
    "digits": [(1, 3, 1, 1), (2, 4, 2, 1)],
}

# (kernel, stride, padding) of the final plain conv to nemb channels at 1×1.
_LAST: dict[str, tuple[int, int, int]] = {
    "cifar10": (4, 1, 0),
    "svhn": (4, 1, 0),
    "celeba64": (4, 1, 0),
    "celebahq256": (4, 1, 0),
    "mnist": (3, 1, 0),  # 3 -> 1
    "digits": (4, 1, 0),
}


class Encoder(nn.Module):
    """(B, C, H, W) -> (B, nemb).

    Parameter counts (spec §1.3, nemb=1024): cifar10/svhn (nif 64) 11,146,752; celeba64 15,342,592;
    celebahq256 20,587,776; mnist (nif 128) 20,455,168.
    """

    def __init__(self, arch: str, nif: int = 64, nemb: int = 1024) -> None:
        super().__init__()
        check_arch(arch)
        self.arch = arch
        self.nif = nif
        self.nemb = nemb
        self.image_shape = IMAGE_SHAPES[arch]

        def block(c_in: int, c_out: int, k: int, s: int, p: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, k, s, p),
                    nn.InstanceNorm2d(c_out, affine=True, track_running_stats=False),
                    nn.LeakyReLU(0.2)]

        layers, c_in = conv_stack(self.image_shape[0], nif, ENCODER_LAYERS[arch], block)
        k, s, p = _LAST[arch]
        layers.append(nn.Conv2d(c_in, nemb, k, s, p))  # [code]: plain, no norm / activation
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, nemb, 1, 1) -> (B, nemb)
        return self.net(x).flatten(1)
