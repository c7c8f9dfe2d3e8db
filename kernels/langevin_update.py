"""Fused Langevin update for both chains (paper eq. 3 / 16; ``engine.sampling.langevin``):

    z ← z − ½s²·(g + z) + s·ε,      g = ∇V(z) (the non-Gaussian part), ½‖z‖²'s gradient z folded in.

Eager torch runs this as 5-6 kernels (cast, add, mul, sub, mul, add) plus a ``randn``; here it is one pass:
read z (fp32) and g (fp32 or bf16/fp16, upcast on load), write z' (fp32), and for the ε either nothing (the
noise-free variant, test-time reconstruction), a read of ε (exact parity with the engine's draws), or
in-kernel Philox noise (:mod:`kernels.philox_noise`) keyed by device tensors, so a CUDA-graph replay draws
fresh noise with no Python scalar changing. Arithmetic is fp32 whatever g's dtype.

Ops (each with a plain-torch ``_ref`` of the same signature, the spec of the kernel):
    langevin_update(z, grad, step_size, noise)                        noise (B, nz) fp32 or None
    langevin_update_philox(z, grad, step_size, seed_offset, step)     ε = philox_noise(z, seed_offset, step)
``step_size`` is a constant of the chain config (a Python float baked into a graph is fine).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels.backend import as_rows, launch_strides, quiet_triton_op_registration, use_triton
from kernels.philox_noise import check_philox_args, counters_per_step, launch_config, philox_noise_ref

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the reference path only
    triton = tl = None

NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX = 0, 1, 2
_GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def langevin_update_ref(z: Tensor, grad: Tensor, step_size: float, noise: Tensor | None) -> Tensor:
    """z (B, nz), grad (B, nz) any float dtype, noise (B, nz) or None -> z' (B, nz) in z's dtype.

    Identical, operation for operation, to ``engine.sampling.langevin.langevin_update``.
    """
    out = z - (0.5 * step_size * step_size) * (grad.to(z.dtype) + z)
    if noise is not None:
        out = out + step_size * noise
    return out


def langevin_update_philox_ref(z: Tensor, grad: Tensor, step_size: float, seed_offset: Tensor,
                               step: Tensor) -> Tensor:
    """The update with ε = ``philox_noise_ref(z, seed_offset, step)``: seed_offset (2,) int64, step () int64."""
    noise = philox_noise_ref(z, seed_offset, step).to(z.dtype)
    return langevin_update_ref(z, grad, step_size, noise)


if triton is not None:

    @triton.jit
    def _langevin_update_kernel(
        z_ptr, grad_ptr, noise_ptr, seed_offset_ptr, step_ptr, out_ptr,
        n_elements, n_ctr, n_cols,  # N, counters per step (a multiple of 16), nz (row length of the (B, nz) view)
        z_s0, z_s1, g_s0, g_s1, e_s0, e_s1,  # element strides; used only when STRIDED
        half_s2, step_size,  # ½s² and s, fp32
        NOISE: tl.constexpr, STRIDED: tl.constexpr, QUARTER: tl.constexpr,
    ):
        # One program owns QUARTER counters c and the four runs of elements e = lane·n_ctr + c (lane 0..3),
        # the noise layout of kernels.philox_noise; each run is contiguous in the output, so stores coalesce.
        c = tl.program_id(0) * QUARTER + tl.arange(0, QUARTER)  # (QUARTER,) int32
        if NOISE == 2:
            counter = tl.load(seed_offset_ptr + 1) + tl.load(step_ptr) * n_ctr + c  # int64, step from memory
            r0, r1, r2, r3 = tl.randn4x(tl.load(seed_offset_ptr), counter)
        for lane in tl.static_range(4):
            e = lane * n_ctr + c
            live = (c < n_ctr) & (e < n_elements)
            if STRIDED:
                row = e // n_cols
                col = e - row * n_cols
                z_off = row * z_s0 + col * z_s1
                g_off = row * g_s0 + col * g_s1
                e_off = row * e_s0 + col * e_s1
            else:
                z_off = e
                g_off = e
                e_off = e
            z = tl.load(z_ptr + z_off, mask=live)
            g = tl.load(grad_ptr + g_off, mask=live).to(tl.float32)  # bf16 g: exact upcast, fp32 maths
            out = z - half_s2 * (g + z)
            if NOISE == 1:
                out = out + step_size * tl.load(noise_ptr + e_off, mask=live)
            if NOISE == 2:
                if lane == 0:
                    eps = r0
                elif lane == 1:
                    eps = r1
                elif lane == 2:
                    eps = r2
                else:
                    eps = r3
                out = out + step_size * eps
            tl.store(out_ptr + e, out, mask=live)

else:
    _langevin_update_kernel = None


def _langevin_update_triton(z: Tensor, grad: Tensor, step_size: float, noise: Tensor | None,
                            seed_offset: Tensor | None = None, step: Tensor | None = None,
                            config: tuple[int, int] | None = None) -> Tensor:
    """Launch the kernel; ``noise`` xor (``seed_offset``, ``step``) picks the ε source, neither = noise-off."""
    out = torch.empty(z.shape, dtype=torch.float32, device=z.device)  # contiguous (B, nz)
    n = z.numel()
    if n == 0:
        return out
    mode = NOISE_PHILOX if seed_offset is not None else NOISE_NONE if noise is None else NOISE_TENSOR
    z2, g2 = as_rows(z), as_rows(grad)
    e2 = as_rows(noise) if noise is not None else z2
    strided, strides = launch_strides(z2, g2, e2)
    n_ctr = counters_per_step(n)
    q, warps = config or launch_config(n_ctr)
    args: dict[str, Any] = dict(
        z_ptr=z2, grad_ptr=g2, noise_ptr=e2,
        seed_offset_ptr=seed_offset if seed_offset is not None else z2, step_ptr=step if step is not None else z2,
        out_ptr=out, n_elements=n, n_ctr=n_ctr, n_cols=z2.shape[1],
        z_s0=strides[0], z_s1=strides[1], g_s0=strides[2], g_s1=strides[3], e_s0=strides[4], e_s1=strides[5],
        half_s2=0.5 * step_size * step_size, step_size=step_size,
        NOISE=mode, STRIDED=strided, QUARTER=q, num_warps=warps,
    )
    wrap_triton(_langevin_update_kernel)[((n_ctr + q - 1) // q,)](**args)
    return out


def _check(z: Tensor, grad: Tensor, noise: Tensor | None) -> str | None:
    """Raise on mismatched shapes; return why the kernel cannot take these dtypes (None: it can)."""
    for name, t in (("grad", grad), ("noise", noise)):
        if t is not None and t.shape != z.shape:
            raise ValueError(f"langevin_update: {name} has shape {tuple(t.shape)}; z has {tuple(z.shape)}")
        if t is not None and t.device != z.device:
            raise ValueError(f"langevin_update: {name} is on {t.device}; z is on {z.device}")
    if z.dtype != torch.float32:
        return f"langevin_update keeps the chain state in float32; z is {z.dtype}"
    if grad.dtype not in _GRAD_DTYPES:
        return f"langevin_update: grad dtype {grad.dtype} is not float32/bfloat16/float16"
    if noise is not None and noise.dtype != torch.float32:
        return f"langevin_update: noise dtype {noise.dtype} is not float32"
    return None


with quiet_triton_op_registration():

    @triton_op("damc::langevin_update", mutates_args=())
    def langevin_update(z: Tensor, grad: Tensor, step_size: float, noise: Tensor | None) -> Tensor:
        """Public op: z − ½s²(grad + z) + s·noise (noise None: noise-free); kernel or reference per backend."""
        if use_triton(z, _check(z, grad, noise)):
            return _langevin_update_triton(z, grad, step_size, noise)
        return langevin_update_ref(z, grad, step_size, noise)

    @triton_op("damc::langevin_update_philox", mutates_args=())
    def langevin_update_philox(z: Tensor, grad: Tensor, step_size: float, seed_offset: Tensor,
                               step: Tensor) -> Tensor:
        """Public op: the update with in-kernel Philox ε (seed_offset (2,) and step () int64, on device)."""
        unsupported = _check(z, grad, None)
        check_philox_args(z, seed_offset, step)
        if use_triton(z, unsupported):
            return _langevin_update_triton(z, grad, step_size, None, seed_offset, step)
        return langevin_update_philox_ref(z, grad, step_size, seed_offset, step)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.step_size = inputs[2]
    ctx.grad_dtype = inputs[1].dtype
    ctx.has_noise = isinstance(inputs[3], Tensor) and inputs[3].is_floating_point()


def _backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None, Tensor | None]:
    """The update is linear: ∂z'/∂z = 1 − ½s², ∂z'/∂g = −½s², ∂z'/∂ε = s."""
    half_s2 = 0.5 * ctx.step_size * ctx.step_size
    d_noise = ctx.step_size * grad_out if ctx.has_noise else None
    return (1.0 - half_s2) * grad_out, (-half_s2 * grad_out).to(ctx.grad_dtype), None, d_noise


def _backward_philox(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
    dz, dgrad, _, _ = _backward(ctx, grad_out)
    return dz, dgrad, None, None, None


langevin_update.register_autograd(_backward, setup_context=_setup_context)
langevin_update_philox.register_autograd(_backward_philox, setup_context=_setup_context)
