"""Algorithm 1 on tiny shapes: one iteration changes every network, and runs are bitwise reproducible."""

from __future__ import annotations

import pytest
import torch

from engine.config import Config, load_config
from engine.learner import Learner, _lr_at, build_learner, ema_update, train_step
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
