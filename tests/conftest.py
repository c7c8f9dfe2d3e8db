"""Root test configuration.

Without a GPU, Triton kernels can only run through Triton's CPU interpreter, and ``TRITON_INTERPRET=1`` must be
in the environment before ``triton`` is first imported anywhere in the session; the root conftest is the one
file pytest always imports first, so the kernel tests never depend on collection order.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
