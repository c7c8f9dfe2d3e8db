"""What the two fused elementwise kernels share: program layout, strided addressing, the lane's noise, the launch.

Both :mod:`kernels.langevin_update` and :mod:`kernels.ddpm_step` compute ``z' = f(z, a) + scale·ε`` over a (B, nz)
fp32 state ``z`` and one operand ``a`` (∇V for the Langevin update, ε̂ for the ancestral step), with ε read from
a tensor, drawn in-kernel from Philox (:mod:`kernels.philox_noise`), or absent. They share:

* the program layout of :mod:`kernels.philox_noise`: a program owns ``QUARTER`` counters c and the four runs of
  elements ``e = lane·n_ctr + c`` (lane 0..3, one per ``tl.randn4x`` output), each run contiguous in the output
  so stores coalesce;
* :func:`element_offset`: the memory offset of logical element e in a (rows, cols) view with arbitrary strides
  (contiguous tensors use e itself);
* :func:`lane_noise`: the ``randn4x`` output that belongs to a lane;
* :func:`launch_elementwise`: the output allocation, noise mode, (rows, cols) views, int32 offset check, grid and
  the arguments common to both kernels. Each kernel names these parameters identically (``z_ptr``, ``a_ptr``,
  ``noise_ptr``, ``seed_offset_ptr``, ``out_ptr``, ``n_elements``, ``n_ctr``, ``n_cols``, the ``*_s0 / *_s1``
  strides, ``NOISE``, ``STRIDED``, ``QUARTER``) and adds its own (coefficients, the step pointer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.library import wrap_triton

from kernels.backend import as_rows, launch_strides
from kernels.philox_noise import counters_per_step, launch_config

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the reference path only
    triton = tl = None

__all__ = [
    "NOISE_NONE",
    "NOISE_PHILOX",
    "NOISE_TENSOR",
    "check_operands",
    "element_offset",
    "lane_noise",
    "launch_elementwise",
]

NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX = 0, 1, 2  # the kernels' NOISE constexpr: no ε, ε from memory, in-kernel ε

if triton is not None:

    @triton.jit
    def element_offset(e, n_cols, s0, s1, STRIDED: tl.constexpr):
        """Offset of row-major logical element e in a (rows, n_cols) view with strides (s0, s1); e if contiguous."""
        off = e
        if STRIDED:
            row = e // n_cols
            off = row * s0 + (e - row * n_cols) * s1
        return off

    @triton.jit
    def lane_noise(r0, r1, r2, r3, LANE: tl.constexpr):
        """The ``tl.randn4x`` output of ``LANE`` (a compile-time 0..3): element run ``LANE`` uses it."""
        if LANE == 0:
            eps = r0
        elif LANE == 1:
            eps = r1
        elif LANE == 2:
            eps = r2
        else:
            eps = r3
        return eps

else:
    element_offset = lane_noise = None


_OPERAND_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_operands(op: str, z: Tensor, operand_name: str, operand: Tensor, noise: Tensor | None) -> str | None:
    """Raise on an operand or noise whose shape or device differs from z's; return why the kernel cannot take
    these dtypes (fp32 state and noise, an fp32/bf16/fp16 operand), or None when it can."""
    for name, t in ((operand_name, operand), ("noise", noise)):
        if t is not None and t.shape != z.shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}; z has {tuple(z.shape)}")
        if t is not None and t.device != z.device:
            raise ValueError(f"{op}: {name} is on {t.device}; z is on {z.device}")
    if z.dtype != torch.float32:
        return f"{op} keeps the state in float32; z is {z.dtype}"
    if operand.dtype not in _OPERAND_DTYPES:
        return f"{op}: {operand_name} dtype {operand.dtype} is not float32/bfloat16/float16"
    if noise is not None and noise.dtype != torch.float32:
        return f"{op}: noise dtype {noise.dtype} is not float32"
    return None


def launch_elementwise(kernel: Any, z: Tensor, operand: Tensor, noise: Tensor | None, seed_offset: Tensor | None,
                       config: tuple[int, int] | None, **op_args: Any) -> Tensor:
    """Launch ``kernel`` on z (B, nz) fp32 and ``operand`` (B, nz); returns a new contiguous fp32 (B, nz) tensor.

    ``noise`` xor ``seed_offset`` picks the ε source (neither: no noise); ``config`` = (QUARTER, num_warps)
    overrides :func:`kernels.philox_noise.launch_config` (benchmark sweeps; never changes the numbers);
    ``op_args`` are the kernel's own arguments. ``wrap_triton`` keeps the launch traceable by ``torch.compile``.
    """
    out = torch.empty(z.shape, dtype=torch.float32, device=z.device)
    n = z.numel()
    if n == 0:
        return out
    mode = NOISE_PHILOX if seed_offset is not None else NOISE_NONE if noise is None else NOISE_TENSOR
    z2, a2 = as_rows(z), as_rows(operand)
    e2 = as_rows(noise) if noise is not None else z2  # unread unless NOISE == NOISE_TENSOR
    strided, strides = launch_strides(z2, a2, e2)
    n_ctr = counters_per_step(n)
    q, warps = config or launch_config(n_ctr)
    wrap_triton(kernel)[((n_ctr + q - 1) // q,)](
        z_ptr=z2, a_ptr=a2, noise_ptr=e2, seed_offset_ptr=seed_offset if seed_offset is not None else z2,
        out_ptr=out, n_elements=n, n_ctr=n_ctr, n_cols=z2.shape[1],
        z_s0=strides[0], z_s1=strides[1], a_s0=strides[2], a_s1=strides[3], e_s0=strides[4], e_s1=strides[5],
        NOISE=mode, STRIDED=strided, QUARTER=q, num_warps=warps, **op_args,
    )
    return out
