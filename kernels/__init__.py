"""Fused GPU kernels (Triton) for the DAMC hot loops.

Each op will live in its own module with, in order: a plain-PyTorch reference ``<op>_ref`` (the spec of
the kernel), the ``@triton.jit`` kernel, its launcher, and the public op registered with ``torch.library``
so that ``torch.compile`` traces through it. The engine calls only the public op and gets the reference
on CPU or when Triton is missing. The references the first kernels will fuse already exist in the engine:
``engine.langevin.langevin_update`` and ``engine.diffusion.ddpm_step``.

Triton is an optional dependency (``pip install 'damc-engine[gpu]'``); nothing here imports it eagerly.
"""

from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is never imported here)."""
    return importlib.util.find_spec("triton") is not None

