"""Runtime tests run single-threaded: their tensors are small, and on a loaded 2-core runner OpenMP threads
spin-waiting cost 10-100× more than they save (measured: 76 s → 6 s for test_sampler.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
