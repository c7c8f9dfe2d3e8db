"""Runtime tests run single-threaded (the root conftest's ``one_thread``): their tensors are small."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    pass
