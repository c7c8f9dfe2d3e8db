"""The maths of drawing z: pure functions, networks as arguments, randomness passed in.

* :mod:`~engine.sampling.diffusion`: the log-SNR schedule, the ε-loss and the ancestral sampler (spec §2);
* :mod:`~engine.sampling.langevin`: prior and posterior Langevin chains (paper eq. 3 / 16);
* :mod:`~engine.sampling.draws`: the amortizer draws, chains and loss bound to the engine's networks.

How these loops *run* (eager fp32, or bf16 + compile + CUDA graphs + fused kernels) is :mod:`engine.runtime`.
"""
