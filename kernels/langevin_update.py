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

from torch import Tensor
from torch.library import triton_op

from kernels.backend import quiet_triton_op_registration, use_triton
from kernels.elementwise import check_operands, element_offset, lane_noise, launch_elementwise
from kernels.philox_noise import check_philox_args, philox_noise_ref

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the reference path only
    triton = tl = None



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
        z_ptr, a_ptr, noise_ptr, seed_offset_ptr, out_ptr, step_ptr,  # a = ∇V (B, nz), any float dtype
        n_elements, n_ctr, n_cols,  # N, counters per step (a multiple of 16), nz (row length of the (B, nz) view)
        z_s0, z_s1, a_s0, a_s1, e_s0, e_s1,  # element strides; used only when STRIDED
        half_s2, step_size,  # ½s² and s, fp32
        NOISE: tl.constexpr, STRIDED: tl.constexpr, QUARTER: tl.constexpr,
    ):
        # The layout of kernels.elementwise: QUARTER counters c, four contiguous element runs e = lane·n_ctr + c.
        c = tl.program_id(0) * QUARTER + tl.arange(0, QUARTER)  # (QUARTER,) int32
        if NOISE == 2:
            counter = tl.load(seed_offset_ptr + 1) + tl.load(step_ptr) * n_ctr + c  # int64, step from memory
            r0, r1, r2, r3 = tl.randn4x(tl.load(seed_offset_ptr), counter)
        for lane in tl.static_range(4):
            e = lane * n_ctr + c
            live = (c < n_ctr) & (e < n_elements)
            z = tl.load(z_ptr + element_offset(e, n_cols, z_s0, z_s1, STRIDED), mask=live)
            g = tl.load(a_ptr + element_offset(e, n_cols, a_s0, a_s1, STRIDED), mask=live).to(tl.float32)  # exact
            out = z - half_s2 * (g + z)
            if NOISE == 1:
                out = out + step_size * tl.load(noise_ptr + element_offset(e, n_cols, e_s0, e_s1, STRIDED), mask=live)
            if NOISE == 2:
                out = out + step_size * lane_noise(r0, r1, r2, r3, lane)
            tl.store(out_ptr + e, out, mask=live)

else:
    _langevin_update_kernel = None


def _langevin_update_triton(z: Tensor, grad: Tensor, step_size: float, noise: Tensor | None,
                            seed_offset: Tensor | None = None, step: Tensor | None = None,
                            config: tuple[int, int] | None = None) -> Tensor:
    """Launch the kernel; ``noise`` xor (``seed_offset``, ``step``) picks the ε source, neither = noise-off."""
    return launch_elementwise(_langevin_update_kernel, z, grad, noise, seed_offset, config,
                              step_ptr=step if step is not None else z, half_s2=0.5 * step_size * step_size,
                              step_size=step_size)


def _check(z: Tensor, grad: Tensor, noise: Tensor | None) -> str | None:
    """Raise on mismatched shapes; return why the kernel cannot take these dtypes (None: it can)."""
    return check_operands("langevin_update", z, "grad", grad, noise)


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
