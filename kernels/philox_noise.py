"""Graph-safe Gaussian noise: Triton's Philox4x32-10 + Box-Muller, keyed by tensors in device memory.

The fused ops (:mod:`kernels.langevin_update`, :mod:`kernels.ddpm_step`) draw their ε in-kernel with exactly
the stream defined here, and :func:`philox_noise` materialises the same ε as a tensor (tests, debugging,
CPU runs that want the GPU's noise). Nothing that changes between CUDA-graph replays is a Python scalar:

    seed_offset  (2,) int64 on the device: [Philox key, counter base]; draw it once per chain, from the run's
                 generator inside the captured region, e.g. ``philox_seed_offset(rng, device)``.
    step         () int64 on the device: the chain's step index (a view ``steps[t]`` of ``arange(T)``).

Noise layout for a tensor of N elements (row-major logical index e, whatever its strides): with
n_ctr = 16·⌈N/64⌉ counters per step (:func:`counters_per_step`), element e uses counter
``offset + step·n_ctr + (e mod n_ctr)`` and lane ``e // n_ctr`` of ``tl.randn4x`` (lanes: r·cos θ₁, r·sin θ₁,
r'·cos θ₂, r'·sin θ₂). Each step therefore owns a disjoint counter range, every element its own
(counter, lane), and the block size of a launch never changes the numbers. One Philox call feeds four
elements, which keeps the fused kernels memory-bound; n_ctr is a multiple of 16 so that each lane's run of
elements starts 64-byte aligned and Triton vectorises the loads (128-bit ``ld.global.v4`` in the sm_90 PTX).

The plain-torch reference reimplements Triton's ``philox`` / ``uint_to_uniform_float`` /
``pair_uniform_to_normal`` (triton/language/random.py, 3.x): the integers are bit-exact, the floats agree to
the libm (≈1e-6: GPU ``log``/``cos`` approximations, numpy under the interpreter, SLEEF on CPU torch).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from kernels.backend import interpreting, quiet_triton_op_registration, use_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the reference path only
    triton = tl = None

PHILOX_ROUNDS = 10
_M32 = 0xFFFFFFFF
# Philox4x32 constants (Salmon et al. 2011; triton/language/random.py).
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
# Triton's uint_to_uniform_float scale and Box-Muller constants, rounded to fp32 as the kernel does.
_UNIFORM_SCALE = 4.6566127342e-10
_TWO_PI = 6.283185307179586
_U_MIN = 1.0e-7


def _mul_hi_lo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit halves of a·b for a uint32 constant and b uint32 held in int64 (no int64 overflow)."""
    s = a * (b >> 16)  # < 2^48
    t = a * (b & 0xFFFF)  # < 2^48
    hi = (s + (t >> 16)) >> 16  # ⌊(s·2^16 + t) / 2^32⌋: the low 16 bits of t cannot carry into bit 32
    lo = (((s & 0xFFFF) << 16) + t) & _M32
    return hi, lo


def _philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor, k1: Tensor,
                n_rounds: int = PHILOX_ROUNDS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32 on uint32 values stored in int64 tensors (counters (n,), keys () or (n,))."""
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _uniform(x: Tensor) -> Tensor:
    """Triton's uint_to_uniform_float for uint32 in int64: fold the int32 reinterpretation onto [0, 2^31).

    Python-float scalars meet fp32 tensors as fp32 (torch's opmath for float), like Triton's constants; no
    ``torch.tensor`` constants, which would be host-to-device copies inside a captured graph.
    """
    x = torch.where(x >= 2**31, x - 2**32, x)  # bitcast to int32
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * _UNIFORM_SCALE


def _box_muller(u1: Tensor, u2: Tensor) -> tuple[Tensor, Tensor]:
    """Triton's pair_uniform_to_normal in fp32."""
    r = torch.sqrt(-2.0 * torch.log(torch.clamp_min(u1, _U_MIN)))
    theta = _TWO_PI * u2
    return r * torch.cos(theta), r * torch.sin(theta)


def philox_randn4x_ref(seed: Tensor, counter: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``tl.randn4x(seed, counter)`` in plain torch: seed () int64, counter (n,) int64 -> four (n,) fp32."""
    k0, k1 = seed & _M32, (seed >> 32) & _M32  # the uint64 seed's halves (mask undoes the sign extension)
    zero = torch.zeros_like(counter)
    i = _philox4x32(counter & _M32, (counter >> 32) & _M32, zero, zero, k0, k1)
    n1, n2 = _box_muller(_uniform(i[0]), _uniform(i[1]))
    n3, n4 = _box_muller(_uniform(i[2]), _uniform(i[3]))
    return n1, n2, n3, n4


def philox_seed_offset(generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """A fresh (2,) int64 [key, counter base] from the run's generator, without a host sync (graph-safe).

    Both words are random: a chain's 62-bit counter base plus at most 2^31·steps stays below 2^63.
    """
    return torch.randint(0, 2**62, (2,), generator=generator, device=device, dtype=torch.int64)


def counters_per_step(n_elements: int) -> int:
    """Philox counters one step of an N-element tensor owns: ⌈N/4⌉ rounded up to a multiple of 16."""
    return 16 * ((n_elements + 63) // 64)


def philox_noise_ref(like: Tensor, seed_offset: Tensor, step: Tensor) -> Tensor:
    """The ε (like.shape, fp32) that the fused ops draw for a tensor shaped like ``like`` at ``step``.

    seed_offset (2,) int64, step () int64, both on like's device; ``like``'s values are not read.
    """
    n = like.numel()
    n_ctr = counters_per_step(n)
    base = seed_offset[1] + step.reshape(()) * n_ctr  # () int64
    counter = base + torch.arange(n_ctr, device=like.device, dtype=torch.int64)  # (n_ctr,)
    lanes = philox_randn4x_ref(seed_offset[0], counter)
    return torch.cat(lanes)[:n].reshape(like.shape)  # element e = lane e // n_ctr, counter e mod n_ctr


if triton is not None:

    @triton.jit
    def _philox_noise_kernel(seed_offset_ptr, step_ptr, out_ptr, n_elements, n_ctr, QUARTER: tl.constexpr):
        # One program: QUARTER counters -> four contiguous runs of QUARTER elements (one per randn4x lane).
        c = tl.program_id(0) * QUARTER + tl.arange(0, QUARTER)  # (QUARTER,) int32
        counter = tl.load(seed_offset_ptr + 1) + tl.load(step_ptr) * n_ctr + c  # int64
        n0, n1, n2, n3 = tl.randn4x(tl.load(seed_offset_ptr), counter)
        live = c < n_ctr  # n_ctr is padded to a multiple of 16: every lane, even lane 0, can pass N
        tl.store(out_ptr + c, n0, mask=live & (c < n_elements))
        tl.store(out_ptr + n_ctr + c, n1, mask=live & (n_ctr + c < n_elements))
        tl.store(out_ptr + 2 * n_ctr + c, n2, mask=live & (2 * n_ctr + c < n_elements))
        tl.store(out_ptr + 3 * n_ctr + c, n3, mask=live & (3 * n_ctr + c < n_elements))

else:
    _philox_noise_kernel = None


def launch_config(n_ctr: int) -> tuple[int, int]:
    """(QUARTER counters per program, num_warps) for the elementwise kernels; never changes the numbers.

    Each thread owns 4 consecutive elements of each lane run (one 128-bit access), so num_warps = QUARTER/128.
    QUARTER shrinks from 512 to 128 until the grid has ≥ 264 programs (2 per H100 SM) or cannot shrink:
    a first guess [est], not yet swept on hardware (``bench/bench_kernels.py`` has the sweep). The
    interpreter runs programs one after another, so it gets few big ones.
    """
    if interpreting():
        return 16384, 4
    q = 512
    while q > 128 and n_ctr < 264 * q:
        q //= 2
    return q, q // 128


def _philox_noise_triton(like: Tensor, seed_offset: Tensor, step: Tensor,
                         config: tuple[int, int] | None = None) -> Tensor:
    out = torch.empty(like.shape, dtype=torch.float32, device=like.device)  # contiguous
    n = out.numel()
    if n == 0:
        return out
    n_ctr = counters_per_step(n)
    q, warps = config or launch_config(n_ctr)
    # wrap_triton makes the launch traceable by torch.compile; the interpreter's kernel passes through it.
    wrap_triton(_philox_noise_kernel)[((n_ctr + q - 1) // q,)](
        seed_offset, step, out, n, n_ctr, QUARTER=q, num_warps=warps)
    return out


def check_philox_args(like: Tensor, seed_offset: Tensor, step: Tensor) -> None:
    """Shapes, dtypes and devices of the (seed_offset, step) pair shared by every in-kernel-noise op."""
    if seed_offset.shape != (2,) or seed_offset.dtype != torch.int64:
        raise ValueError(f"seed_offset must be a (2,) int64 tensor; got {tuple(seed_offset.shape)} {seed_offset.dtype}")
    if step.numel() != 1 or step.dtype != torch.int64:
        raise ValueError(f"step must be a one-element int64 tensor; got {tuple(step.shape)} {step.dtype}")
    if seed_offset.device != like.device or step.device != like.device:
        raise ValueError(f"seed_offset ({seed_offset.device}) and step ({step.device}) must be on {like.device}")
    if like.numel() >= 2**31:
        raise ValueError(f"{like.numel()} elements: the kernels index with int32")


with quiet_triton_op_registration():

    @triton_op("damc::philox_noise", mutates_args=())
    def philox_noise(like: Tensor, seed_offset: Tensor, step: Tensor) -> Tensor:
        """Public op: :func:`philox_noise_ref`'s ε, from the kernel or the reference (:mod:`kernels.backend`)."""
        check_philox_args(like, seed_offset, step)
        if use_triton(like, None):
            return _philox_noise_triton(like, seed_offset, step)
        return philox_noise_ref(like, seed_offset, step)
