"""Kernel tests: on a GPU the Triton kernels run compiled; on CPU they run through Triton's interpreter.

``TRITON_INTERPRET=1`` must be in the environment before ``triton`` is first imported (Triton decorates its own
``tl.randn4x`` helpers at import), so it is set here, at conftest import time, which pytest reaches before it
imports the root test modules (``kernels/`` sorts before ``test_*.py``). If triton was imported earlier without
it (e.g. ``pytest tests/test_x.py tests/kernels``), the kernel tests skip with that reason instead of failing;
exporting ``TRITON_INTERPRET=1`` in CI removes the question. Tests of the references alone need no Triton.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernel_support import DEVICE, triton_skip_reason  # noqa: E402

from kernels.backend import use_backend  # noqa: E402


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture
def triton_backend() -> Iterator[None]:
    """Run the ops' Triton kernels (compiled on GPU, interpreted on CPU); skip when that is impossible."""
    reason = triton_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with use_backend("triton"):
        yield


@pytest.fixture
def torch_backend() -> Iterator[None]:
    """Run the ops' plain-torch references."""
    with use_backend("torch"):
        yield


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Single-threaded torch (the root conftest's ``one_thread``): the kernel tests' tensors are elementwise-sized."""
