"""Shared constants and helpers of the kernel tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import torch

from kernels.backend import interpreter_problem, interpreting, triton_available

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
EPS32 = torch.finfo(torch.float32).eps
# ε from the kernel vs the plain-torch Philox: the same integers, different libm for log/sqrt/cos/sin (numpy
# under the interpreter, CUDA intrinsics on GPU, SLEEF in torch). A few ulp each at |ε| ≤ 6 is ≈ 6·8·EPS32
# ≈ 6e-6; measured max 4.8e-7 under the interpreter.
NOISE_ATOL = 2e-5
# The sizes: batch rows × latent width (nz 100 is SVHN/CelebA, 128 CIFAR-10; 2 and 8 are odd tails).
ROWS = (1, 7, 129, 1000)
NZ = (2, 8, 100, 128)


def fp32_atol(*terms: torch.Tensor) -> float:
    """Absolute tolerance of an fp32 elementwise formula: 4 ulp of its largest term.

    The GPU kernel may contract a·b + c into one FMA (one rounding where torch rounds twice); the
    interpreter rounds exactly like torch, and there the tests also assert bitwise equality.
    """
    scale = max((float(t.detach().abs().max()) for t in terms if t.numel()), default=1.0)
    return 4 * EPS32 * max(scale, 1.0)


def assert_matches(got: torch.Tensor, want: torch.Tensor, *terms: torch.Tensor, atol: float = 0.0) -> None:
    """A kernel's output against its reference: bitwise where expected, else within :func:`fp32_atol` of the
    formula's largest ``terms`` (plus ``atol``, e.g. for in-kernel noise)."""
    assert got.shape == want.shape and got.dtype == torch.float32
    if exact_expected() and atol == 0.0:
        assert torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=0, atol=fp32_atol(*terms) + atol)


def exact_expected() -> bool:
    """Bitwise parity with the reference is expected (interpreter: numpy rounds each op like torch)."""
    return DEVICE.type == "cpu"


def triton_skip_reason() -> str | None:
    """Why the Triton kernels cannot run in this process (None: they can)."""
    if not triton_available():
        return "triton is not installed"
    if DEVICE.type == "cpu":
        if not interpreting():
            return "no GPU and TRITON_INTERPRET is not 1"
        return interpreter_problem()
    return None
