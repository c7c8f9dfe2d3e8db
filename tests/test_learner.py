"""Algorithm 1 on tiny shapes: one iteration changes every network, and runs are bitwise reproducible."""

from __future__ import annotations

import pytest
import torch

from engine.config import Config, load_config
from engine.learners import build_learner
from engine.learners.damc import (
    DamcLearner as Learner,
)
from engine.learners.damc import (
    _lr_at,
    amortizer_updates,
    damc_prior_images,
    damc_prior_latents,
    ema_update,
    lebm_prior_latents,
    reconstruct,
    train_step,
)
from engine.runtime import system

TINY = [
    "model.nz=4", "model.ngf=4", "model.nif=4", "model.nemb=8", "model.unet_nf=1", "model.ntemb=8",
    "train.batch_size=4", "diffusion.n_steps=5", "langevin.posterior.n_steps=3", "langevin.prior.n_steps=3",
    "diffusion.updates_per_iter=2", "diffusion.ema_every=1",
]


E_OUT_BIAS = "E.net.4.bias"


def tiny_config(*extra: str) -> Config:
    return load_config("configs/quickstart.yaml", [*TINY, *extra])


def make(cfg: Config, seed: int = 0) -> Learner:
    system.seed_init(seed)
    return build_learner(cfg, torch.device("cpu"), system.make_generator(torch.device("cpu"), seed))


def batch(seed: int = 0) -> torch.Tensor:
    return torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def snapshot(learner: Learner) -> dict[str, torch.Tensor]:
    mods = {"G": learner.nets.generator, "E": learner.nets.energy}
    if learner.nets.amortizer is not None:
        mods |= {"Q": learner.nets.amortizer, "Qema": learner.amortizer_ema}
    return {f"{m}.{k}": v.detach().clone() for m, mod in mods.items() for k, v in mod.state_dict().items()}


@pytest.mark.parametrize("uncond", ["mask", "both"])
def test_one_iteration_changes_every_network(uncond: str) -> None:
    learner = make(tiny_config(f"diffusion.uncond_loss={uncond}", "diffusion.p_uncond=0.5"))
    before = snapshot(learner)
    out = train_step(learner, batch())
    after = snapshot(learner)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    # E's output bias cancels in mean E(z⁺) − mean E(z⁻): its gradient is exactly zero, so Adam leaves it.
    assert unchanged == [E_OUT_BIAS], f"parameters not updated: {unchanged}"
    assert torch.equal(learner.nets.energy.net[4].bias.grad, torch.zeros(1))
    assert learner.iteration == 1
    assert {"loss_g", "loss_e", "loss_q", "energy_pos", "energy_neg"} <= set(out)
    assert all(v.device.type == "cpu" and v.ndim == 0 and torch.isfinite(v) for v in out.values())


def test_null_token_gets_gradient_only_from_unconditional_rows() -> None:
    """With p_uncond = 0 the null-token MLP sees zero gradient (AdamW then only decays it)."""
    learner = make(tiny_config("diffusion.p_uncond=0.0", "optim.q_weight_decay=0", "diffusion.updates_per_iter=1"))
    before = {k: v.clone() for k, v in learner.nets.amortizer.null_token.state_dict().items()}
    train_step(learner, batch())
    after = learner.nets.amortizer.null_token.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_is_bitwise_reproducible_from_the_seed() -> None:
    runs = []
    for _ in range(2):
        learner = make(tiny_config(), seed=3)
        for i in range(3):
            train_step(learner, batch(i))
        runs.append(snapshot(learner))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = make(tiny_config(), seed=4)
    for i in range(3):
        train_step(other, batch(i))
    assert any(not torch.equal(runs[0][k], v) for k, v in snapshot(other).items())


def test_lebm_baseline_has_no_amortizer_and_trains_g_and_e() -> None:
    learner = make(tiny_config("method=lebm"))
    assert learner.nets.amortizer is None and learner.opt_q is None and learner.amortizer_ema is None
    before = snapshot(learner)
    out = train_step(learner, batch())
    assert "loss_q" not in out
    after = snapshot(learner)
    assert [k for k in before if torch.equal(before[k], after[k])] == [E_OUT_BIAS]


def test_prior_chain_count_follows_prior_init() -> None:
    """2B prior chains (draws + noise) for the image runs, B for the MNIST variant: check E's input."""
    seen: list[int] = []
    for init in ("posterior_and_noise", "posterior"):
        learner = make(tiny_config(f"langevin.prior_init={init}"))
        handle = learner.nets.energy.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
        train_step(learner, batch())
        handle.remove()
        seen.append(-1)
    first, second = seen[: seen.index(-1)], seen[seen.index(-1) + 1 : -1]
    assert 8 in first and 8 not in second and 4 in second


def test_learning_rate_schedule_and_floor() -> None:
    assert _lr_at(2e-4, 999, 0.99, 1000, 1e-5) == 2e-4
    assert _lr_at(2e-4, 1000, 0.99, 1000, 1e-5) == pytest.approx(2e-4 * 0.99)
    assert _lr_at(2e-4, 200_000, 0.99, 1000, 1e-5) == pytest.approx(2e-4 * 0.99**200, rel=1e-12)
    assert _lr_at(2e-4, 200_000, 0.99, 1000, 1e-5) == pytest.approx(2.7e-5, rel=0.02)  # spec: ≈ 2.7e-5
    assert _lr_at(1e-4, 400_000, 0.99, 1000, 1e-5) == 1e-5  # floored
    learner = make(tiny_config("optim.lr_decay_every=2"))
    for i in range(2):
        train_step(learner, batch(i))
    assert learner.opt_g.param_groups[0]["lr"] == pytest.approx(learner.cfg.optim.g_lr * 0.99)
    assert learner.opt_q.param_groups[0]["lr"] == pytest.approx(learner.cfg.optim.q_lr * 0.99)


def test_ema_update_formula() -> None:
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ref = [0.995 * pa.detach() + 0.005 * pb.detach() for pa, pb in zip(a.parameters(), b.parameters(), strict=True)]
    ema_update(a, b, 0.995)
    for p, r in zip(a.parameters(), ref, strict=True):
        torch.testing.assert_close(p.detach(), r)


# --- Issue 14: the amortizer updates as a function of pre-drawn noise ------------------------------------------


def _legacy_amortizer_updates(learner: Learner, x: torch.Tensor, z_pos: torch.Tensor,
                              keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """engine.learners.damc.amortizer_updates as it was at c18185d (draws interleaved with the updates), verbatim."""
    from engine.sampling.draws import amortizer_loss

    nets, d, o = learner.nets, learner.cfg.diffusion, learner.cfg.optim
    losses, norm = [], torch.zeros((), device=x.device)
    for _ in range(d.updates_per_iter):
        if d.uncond_loss == "mask":
            loss = amortizer_loss(nets.amortizer, z_pos, x, keep, learner.rng, d.logsnr_min, d.logsnr_max)
        else:
            ones = torch.ones_like(keep)
            loss = (amortizer_loss(nets.amortizer, z_pos, x, ones, learner.rng, d.logsnr_min, d.logsnr_max)
                    + amortizer_loss(nets.amortizer, z_pos, x, 1 - ones, learner.rng, d.logsnr_min, d.logsnr_max))
        learner.opt_q.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(nets.amortizer.parameters(), o.grad_clip)
        learner.opt_q.step()
        losses.append(loss.detach())
    return torch.stack(losses).mean(), norm


@pytest.mark.parametrize("uncond", ["mask", "both"])
def test_restructured_amortizer_updates_equal_the_old_loop_bitwise(uncond: str) -> None:
    """The updates as a pure function of pre-drawn (ξ, u, ε), drawn in the authors' order, reproduce the old
    interleaved loop bit for bit in fp32: losses, norms, weights, AdamW state and the generator's position."""
    cfg = tiny_config(f"diffusion.uncond_loss={uncond}", "diffusion.p_uncond=0.5", "diffusion.updates_per_iter=3")
    old, new = make(cfg, seed=5), make(cfg, seed=5)
    g = torch.Generator().manual_seed(9)
    x, z_pos = batch(2), torch.randn(4, cfg.model.nz, generator=g)
    keep = (torch.rand(4, generator=g) >= 0.5).float()
    for _ in range(2):  # twice: the second call starts from non-trivial AdamW state
        a = _legacy_amortizer_updates(old, x, z_pos, keep)
        b = amortizer_updates(new, x, z_pos, keep)
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(old.nets.amortizer.parameters(), new.nets.amortizer.parameters(),
                                                 strict=True))
    sa, sb = old.opt_q.state_dict(), new.opt_q.state_dict()
    assert all(torch.equal(sa["state"][i][k], sb["state"][i][k]) for i in sa["state"] for k in sa["state"][i])
    assert torch.equal(old.rng.get_state(), new.rng.get_state())


def _training_rng_untouched_by_evaluation_draws(learner: Learner) -> None:
    before = learner.rng.get_state()
    eval_rng = torch.Generator().manual_seed(123)
    x = batch(3)
    damc_prior_latents(learner, 4, eval_rng)
    damc_prior_images(learner, 4, eval_rng)
    lebm_prior_latents(learner, 4, 3, 0.4, eval_rng)
    reconstruct(learner, x, 2, 0.1, eval_rng)
    assert torch.equal(learner.rng.get_state(), before)
    # ... and the evaluation stream itself moved, reproducibly from its seed.
    a = damc_prior_images(learner, 4, torch.Generator().manual_seed(7))
    b = damc_prior_images(learner, 4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, damc_prior_images(learner, 4, eval_rng))


def test_evaluation_draws_never_touch_the_training_stream() -> None:
    _training_rng_untouched_by_evaluation_draws(make(tiny_config()))


def test_evaluation_draws_never_touch_the_training_stream_on_the_fast_path() -> None:
    """The fast path (eager here; the captured graphs on a GPU: tests/runtime/test_fast_gpu.py) draws from the
    generator it is given, never the run's."""
    from engine.runtime.fast import FastChains
    from engine.runtime.perf import PerfPlan

    learner = make(tiny_config())
    learner.chains = FastChains(learner, PerfPlan(hoist_sampler=True, g_gemm_first=True))
    _training_rng_untouched_by_evaluation_draws(learner)


def test_damc_prior_images_are_g_of_the_prior_draw() -> None:
    learner = make(tiny_config())
    imgs = damc_prior_images(learner, 4, torch.Generator().manual_seed(1))
    z = damc_prior_latents(learner, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(imgs, learner.nets.generator(z))
