"""Fused GPU kernels (Triton) for the DAMC hot loops.

Each op lives in its own module with, in order: a plain-PyTorch reference ``<op>_ref`` (the spec of the
kernel), the ``@triton.jit`` kernel ``_<op>_kernel``, its launcher ``_<op>_triton``, and the public op
``<op>`` registered with ``torch.library.triton_op`` so that ``torch.compile`` traces through it (no graph
break). The engine calls only the public ops; :mod:`kernels.backend` decides, per call, between the kernel
and the reference ("auto": the kernel on CUDA when Triton imports, the reference on CPU or without Triton).

    kernels.langevin_update   langevin_update, langevin_update_philox      (engine.sampling.langevin.langevin_update)
    kernels.ddpm_step         ddpm_step, ddpm_step_philox, pack_sampler_table   (engine.sampling.diffusion.ddpm_step)
    kernels.philox_noise      philox_noise, philox_seed_offset: the in-kernel ε as a tensor, its seeds

Triton is an optional dependency (``pip install 'damc-engine[gpu]'``). Importing this package does not import
it; importing an op module does when it is installed (≈0.2 s), and falls back to the references when not.
See ``kernels/README.md`` for what each kernel fuses, its bytes per element, tests and benches.
"""

from __future__ import annotations

from kernels.backend import BACKENDS, Backend, get_backend, set_backend, triton_available, use_backend

__all__ = ["BACKENDS", "Backend", "get_backend", "set_backend", "triton_available", "use_backend"]
