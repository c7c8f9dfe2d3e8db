"""``--setup authors``: the authors' toy_example.py reproduced (engine.eval.toy.authors), pinned against their code.

The golden numbers below were printed by the authors' own code (yuPeiyu98/Diffusion-Amortized-MCMC,
workspace/toy_example: ``sample_z``, ``_netQ_U_toy`` and ``G`` built after ``torch.manual_seed(seed)`` exactly as
``main`` does, and their training loop body run on a CPU); ``python -m engine.eval.toy.authors_parity`` reprints them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.eval.toy import experiment
from engine.eval.toy.authors import authors_config, authors_init, authors_pinwheel


def test_pinwheel_is_their_sample_z() -> None:
    z = authors_pinwheel(500, 1)
    assert z.shape == (500, 2) and z.dtype == torch.float32
    assert z[0].tolist() == pytest.approx([-1.2407197952270508, 0.5915339589118958], abs=1e-7)
    assert float(z.double().sum()) == pytest.approx(-3.462415434420109, abs=1e-9)
    assert float(z.double().abs().sum()) == pytest.approx(1401.8280480131507, abs=1e-9)
    assert torch.equal(authors_pinwheel(500, 1), z)  # the same 500 latents every call (toy:184)


def test_g_and_q_are_drawn_exactly_as_their_script_draws_them() -> None:
    """Seed 1 (their default), nf 4: G's weights and Q's initial weights equal theirs bit for bit."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    init = authors_init(authors_config())
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global RNG is untouched
    g = [m for m in init.g if isinstance(m, nn.Linear)]
    assert float(g[0].weight[0, 0]) == -0.1959555298089981  # theirs printed -0.19595553
    assert float(g[3].bias[1]) == pytest.approx(-0.02445962, abs=5e-9)
    assert float(sum(p.double().sum() for p in init.g.parameters())) == pytest.approx(45.43481401, abs=1e-7)
    q_sum = float(sum(p.detach().double().sum() for p in init.model.parameters()))
    assert q_sum == pytest.approx(-17.22166703934576, abs=1e-9)
    # Every parameter is written by the replay: the result does not depend on the scratch init's seed.
    torch.manual_seed(7)
    again = authors_init(authors_config())
    for a, b in zip(init.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert isinstance(init.model.x_embed[6], nn.Linear) and init.model.x_embed[6].in_features == 128


def test_training_follows_their_loop() -> None:
    """Seed 3, nf 1, 5 sampler steps, 2 iterations: their loop on a CPU ends with Σθ = −17.6170634557 (xemb
    excluded). Ours agrees to float rounding (same draws in the same order; the sampler's float64 table is the one
    rounding difference)."""
    state = experiment.train(authors_config(seed=3, iterations=2, unet_nf=1, n_steps=5, log_every=10))
    total = float(sum(p.detach().double().sum() for p in state.model.parameters()))
    assert total == pytest.approx(-17.6170634557, abs=2e-5)


def test_ema_moves_the_target_toward_the_online_net_by_075() -> None:
    """toy:230-232: every 10 iterations target ← 0.75·online + 0.25·target."""
    cfg = authors_config(seed=2, iterations=10, unet_nf=1, n_steps=3, log_every=100)
    start = copy.deepcopy(authors_init(cfg).model)
    state = experiment.train(cfg)
    for t, o, s in zip(state.ema.parameters(), state.model.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * o.detach() + 0.25 * s, rtol=0, atol=1e-6)


def test_kde_is_scipys_gaussian_kde() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np

    from engine.eval.plots import gaussian_kde_grid

    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 0.3])
    xs, ys = np.mgrid[-4:4:100j, -4:4:100j]
    want = scipy_stats.gaussian_kde(x.double().numpy().T, bw_method=0.15)(np.vstack([xs.ravel(), ys.ravel()]))
    np.testing.assert_allclose(gaussian_kde_grid(x), want.reshape(100, 100), rtol=1e-9, atol=1e-12)
