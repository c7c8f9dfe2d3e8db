"""Which implementation a public kernel op runs: the Triton kernel or its plain-torch reference.

One process-wide switch, decided once (``engine/runtime/system.py`` maps the config onto it) before anything is
compiled or captured:

* ``"auto"`` (default): the Triton kernel when the tensor is on CUDA, Triton imports and the dtypes are the
  kernel's (fp32 state); the reference otherwise (CPU, no Triton).
* ``"triton"``: always the kernel. CPU tensors are accepted only under Triton's interpreter
  (``TRITON_INTERPRET=1``, how the CPU tests run the kernels); anything unsupported is an error, not a
  silent fallback.
* ``"torch"``: always the reference (debugging, bit-faithful comparisons with the engine's own maths).

``torch.compile`` traces the op's body once, so the choice is baked into the compiled graph: set the
backend before compiling, or call ``torch._dynamo.reset()`` after changing it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
from collections.abc import Iterator
from typing import Literal

from torch import Tensor

Backend = Literal["auto", "triton", "torch"]
BACKENDS: tuple[Backend, ...] = ("auto", "triton", "torch")

_backend: Backend = "auto"


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is never imported here; asked once)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked install
        return False


def set_backend(name: Backend) -> None:
    """Select the implementation of every op in :mod:`kernels` (see the module docstring)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"kernel backend = {name!r}: must be one of {', '.join(BACKENDS)}")
    _backend = name


def get_backend() -> Backend:
    return _backend


@contextlib.contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Temporarily select a backend (tests, benches); restores the previous one on exit."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    if not triton_available():
        return False
    from triton import knobs  # triton >= 3.4; reads the environment on every access

    return bool(knobs.runtime.interpret)


def use_triton(z: Tensor, unsupported: str | None) -> bool:
    """Whether an op called on state ``z`` runs its Triton kernel.

    ``unsupported`` is the op's reason why the kernel cannot take these inputs (a dtype), or None. Under
    the interpreter a fake tensor (``torch.compile`` / ``opcheck`` tracing) gets the reference, which has
    the same output shapes: interpreted kernels read real memory and cannot be traced.
    """
    if _backend == "torch":
        return False
    if _backend == "auto":
        return z.device.type == "cuda" and unsupported is None and triton_available()
    if not triton_available():
        raise RuntimeError("kernel backend 'triton' but the triton package is not installed")
    if unsupported is not None:
        raise TypeError(f"kernel backend 'triton': {unsupported}")
    if z.device.type == "cuda":
        return True
    if z.device.type == "cpu" and interpreting():
        problem = interpreter_problem()
        if problem is not None:
            raise RuntimeError(f"kernel backend 'triton' on CPU tensors: {problem}")
        from torch._subclasses.fake_tensor import is_fake

        return not is_fake(z)
    raise RuntimeError(f"kernel backend 'triton' needs CUDA tensors (got {z.device}); "
                       "CPU tensors run only under TRITON_INTERPRET=1")


def interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run this package's kernels in this process (None: it can).

    Two ways it cannot, each seen here:

    * ``TRITON_INTERPRET=1`` was set after ``triton`` was first imported. Triton decorates its own ``@jit`` helpers
      (``tl.randn4x``) at that import, so they were built for the GPU and the interpreter fails on the first
      nested helper call.
    * torch's ``wrap_triton`` (which every op here launches through) rejects the ``InterpretedFunction`` that
      ``triton.jit`` builds under the interpreter: torch 2.11.0 + triton 3.6.0 raise "wrap_triton only works
      on functions annotated with triton.jit"; torch 2.13.0 + triton 3.7.1 (what CI installs) launch it.
    """
    from triton.language import random
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(random.randn4x, InterpretedFunction):
        return ("TRITON_INTERPRET=1 was set after triton was imported; set it before the first import "
                "(tests/kernels/conftest.py, or the environment)")
    if not _wrap_triton_takes_interpreted_kernels():
        import torch
        import triton

        return (f"torch {torch.__version__}'s torch.library.wrap_triton rejects the interpreter's kernels "
                f"(triton {triton.__version__}); torch 2.13.0 with triton 3.7.1 runs them")
    return None


@functools.cache
def _wrap_triton_takes_interpreted_kernels() -> bool:
    from torch.library import wrap_triton
    from triton.language import random

    try:
        wrap_triton(random.randn4x)  # an InterpretedFunction (checked by the caller); launches nothing
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def quiet_triton_op_registration() -> Iterator[None]:
    """``torch.library.triton_op`` logs a warning when Triton is missing; on CPU installs that is expected."""
    log = logging.getLogger("torch._library.triton")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def as_rows(t: Tensor) -> Tensor:
    """``t`` seen as (rows, last dim) for the kernels' (row, column) strides: a view when possible."""
    if t.dim() == 2:
        return t
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.reshape(-1, t.shape[-1])


def launch_strides(*tensors: Tensor) -> tuple[bool, list[int]]:
    """(strided, [s0, s1] per tensor) for same-shaped (rows, cols) tensors; contiguous ones use flat offsets.

    The kernels index with int32, so the furthest element of each tensor must sit below 2^31.
    """
    strides: list[int] = []
    for t in tensors:
        if t.numel() and (t.shape[0] - 1) * abs(t.stride(0)) + (t.shape[1] - 1) * abs(t.stride(1)) >= 2**31:
            raise ValueError(f"tensor of shape {tuple(t.shape)} and strides {t.stride()}: offsets exceed int32")
        strides += [t.stride(0), t.stride(1)]
    return not all(t.is_contiguous() for t in tensors), strides
