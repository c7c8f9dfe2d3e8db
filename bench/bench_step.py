"""Reference (eager fp32) training iteration and its two hot phases, timed with pytest-benchmark.

Run: ``pytest bench/ --benchmark-only``. GPU: CIFAR-10 sizes (batch 128); CPU: tiny smoke sizes.
"""

from __future__ import annotations

import torch

from bench.conftest import make_learner, synced
from engine.learner import amortizer_sample, posterior_chain, train_step
from engine.models import IMAGE_SHAPES


def _batch(cfg, device):  # type: ignore[no-untyped-def]
    shape = IMAGE_SHAPES[cfg.model.arch]
    g = torch.Generator().manual_seed(0)
    return (torch.rand(cfg.train.batch_size, *shape, generator=g) * 2 - 1).to(device)


def test_train_iteration_reference(benchmark, bench_config, device) -> None:  # type: ignore[no-untyped-def]
    learner = make_learner(bench_config, device)
    x = _batch(bench_config, device)
    benchmark.extra_info.update(device=str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
                                torch=torch.__version__, batch=bench_config.train.batch_size)
    benchmark.pedantic(synced(lambda: train_step(learner, x), device), rounds=3, iterations=1, warmup_rounds=1)
    assert learner.iteration >= 4


def test_posterior_chain_reference(benchmark, bench_config, device) -> None:  # type: ignore[no-untyped-def]
    learner = make_learner(bench_config, device)
    x = _batch(bench_config, device)
    z = torch.randn(x.shape[0], bench_config.model.nz, device=device)
    lv = bench_config.langevin
    run = lambda: posterior_chain(learner.nets, x, z, lv.likelihood_sigma, lv.posterior.n_steps,  # noqa: E731
                                  lv.posterior.step_size, True, learner.rng)
    benchmark.pedantic(synced(run, device), rounds=3, iterations=1, warmup_rounds=1)


def test_amortizer_draw_reference(benchmark, bench_config, device) -> None:  # type: ignore[no-untyped-def]
    learner = make_learner(bench_config, device)
    x = _batch(bench_config, device)
    run = lambda: amortizer_sample(learner.amortizer_ema, learner.table, learner.rng, x=x,  # noqa: E731
                                   nz=bench_config.model.nz)
    benchmark.pedantic(synced(run, device), rounds=3, iterations=1, warmup_rounds=1)
