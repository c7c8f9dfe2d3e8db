"""Root test configuration.

Without a GPU, Triton kernels can only run through Triton's CPU interpreter, and ``TRITON_INTERPRET=1`` must be
in the environment before ``triton`` is first imported anywhere in the session; the root conftest is the one
file pytest always imports first, so the kernel tests never depend on collection order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Single-threaded torch for the test, restored after it. Small tensors on a loaded 2-core runner: OpenMP
    threads spin-waiting cost 10-100× more than they save (measured: 76 s → 6 s for tests/runtime/test_sampler.py).
    tests/runtime and tests/kernels use it for every test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
