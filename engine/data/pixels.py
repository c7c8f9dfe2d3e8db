"""uint8 image tensors: shape checks and the bitwise-exact conversion to float32 in [-1, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["U8_TO_UNIT", "check_shape", "check_u8", "u8_to_float"]


def check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive entries, got {tuple(image_shape)!r}")
    if shape[0] not in (1, 3):
        raise ValueError(f"image_shape channels must be 1 (grayscale) or 3 (RGB), got C={shape[0]}")
    return shape[0], shape[1], shape[2]


# x / 127.5 - 1 for each byte value, computed once on the CPU with true division: bitwise equal to ToTensor() +
# Normalize(0.5, 0.5) for all 256 values in fp32. Batches are normalised by looking this table up, which gives the
# same floats on every device: CUDA's `tensor / scalar` multiplies by the reciprocal instead, 1 ulp off for some
# bytes (found on an H100 by tests/test_data.py::test_stream_cuda_matches_cpu).
U8_TO_UNIT = torch.arange(256, dtype=torch.uint8).float().div_(127.5).sub_(1.0)  # (256,) fp32
_U8_TO_UNIT_ON: dict[torch.device, torch.Tensor] = {}


def u8_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (any shape) -> fp32 in [-1, 1] on x's device, bitwise equal on CPU and GPU."""
    lut = _U8_TO_UNIT_ON.get(x.device)
    if lut is None:  # one small copy per device, not one per batch
        lut = _U8_TO_UNIT_ON.setdefault(x.device, U8_TO_UNIT.to(x.device))
    return lut[x.long()]


def check_u8(images_u8: torch.Tensor) -> None:
    if not isinstance(images_u8, torch.Tensor) or images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
        got = (
            f"{images_u8.dtype} {tuple(images_u8.shape)}"
            if isinstance(images_u8, torch.Tensor)
            else type(images_u8)
        )
        raise ValueError(f"expected a uint8 tensor of shape (N, C, H, W), got {got}")
