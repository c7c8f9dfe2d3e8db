"""Issue 14 item 1: the amortizer updates as a pure function of pre-drawn noise, fused capturable AdamW with a device
learning rate, checkpoints that move between the reference and the fast optimizers, warm-up state restore."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from engine.config import Config, load_config
from engine.learners import build_learner
from engine.learners.damc import DamcLearner as Learner
from engine.learners.damc import set_learning_rates
from engine.runtime import system
from engine.runtime.fast import FastChains
from engine.runtime.graphs import GeneratorProxy
from engine.runtime.perf import PerfPlan
from engine.runtime.updates import (
    StateSnapshot,
    amortizer_updates_given,
    draw_update_noise,
    empty_update_noise,
    fill_update_noise_,
    make_capturable,
    optimizer_step,
    q_loss_given,
    set_lr,
)

TINY = ["model.nz=4", "model.ngf=4", "model.nif=4", "model.nemb=8", "model.unet_nf=1", "model.ntemb=8",
        "train.batch_size=6", "diffusion.n_steps=6", "langevin.posterior.n_steps=3", "langevin.prior.n_steps=4",
        "diffusion.updates_per_iter=3"]


def make(*extra: str, seed: int = 0) -> Learner:
    cfg: Config = load_config("configs/quickstart.yaml", [*TINY, *extra])
    system.seed_init(seed)
    return build_learner(cfg, torch.device("cpu"), system.make_generator(torch.device("cpu"), seed))


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(6, 1, 8, 8, generator=g) * 2 - 1, torch.randn(6, 4, generator=g),
            (torch.rand(6, generator=g) >= 0.3).float())


def params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def test_the_authors_draw_order_is_per_update_xi_u_eps() -> None:
    rng = torch.Generator().manual_seed(3)
    noise = draw_update_noise(rng, 2, 2, 5, 4, torch.device("cpu"))
    assert noise.xi.shape == (2, 2, 5, 4) and noise.u.shape == (2, 2, 5) and noise.eps.shape == (2, 2, 5, 4)
    again = torch.Generator().manual_seed(3)
    for m in range(2):
        for loss in range(2):
            assert torch.equal(noise.xi[m, loss], torch.randn(5, 4, generator=again))
            assert torch.equal(noise.u[m, loss], torch.rand(5, generator=again))
            assert torch.equal(noise.eps[m, loss], torch.randn(5, 4, generator=again))


def test_fast_updates_are_the_pure_function_of_their_batched_noise() -> None:
    """FastChains with nothing enabled draws all M updates' noise at once from the run's generator and then runs
    exactly amortizer_updates_given: the same draws through the pure function give the same bits."""
    a, b = make(seed=2), make(seed=2)
    x, z, keep = inputs()
    fast = FastChains(a, PerfPlan())
    got = fast.amortizer_updates(x, z, keep)
    d = b.cfg.diffusion
    noise = fill_update_noise_(empty_update_noise(d.updates_per_iter, 1, 6, 4, torch.device("cpu")), b.rng)
    net = b.nets.amortizer

    def loss_fn(zz: torch.Tensor, xx: torch.Tensor, kk: torch.Tensor, xi: torch.Tensor, u: torch.Tensor,
                eps: torch.Tensor) -> torch.Tensor:
        return q_loss_given(net, zz, xx, kk, xi, u, eps, d)

    want = amortizer_updates_given(loss_fn, b.opt_q, net, z, x, keep, noise, b.cfg.optim.grad_clip)
    assert all(torch.equal(u, v) for u, v in zip(got, want, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(params(a.nets.amortizer), params(b.nets.amortizer), strict=True))
    assert torch.equal(a.rng.get_state(), b.rng.get_state())


def _adamw(model: nn.Module, **kw: object) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.5, 0.999), weight_decay=1e-4, **kw)  # type: ignore[arg-type]


def test_fused_capturable_adamw_with_a_device_lr_tracks_foreach_over_100_steps() -> None:
    """torch's fused AdamW (CPU kernel here; the CUDA one on a GPU) against the foreach implementation the reference
    uses on CUDA: 100 steps, an LR change half-way (in place on the device tensor), gradient clipping on."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8))
    fused = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8))
    fused.load_state_dict(ref.state_dict())
    o_ref = _adamw(ref, foreach=True)
    o_fused = make_capturable(_adamw(fused), torch.device("cpu"))
    assert o_fused.param_groups[0]["fused"] and o_fused.param_groups[0]["capturable"]
    lr_tensor = o_fused.param_groups[0]["lr"]
    assert isinstance(lr_tensor, torch.Tensor) and lr_tensor.dtype == torch.float32
    g = torch.Generator().manual_seed(1)
    for step in range(100):
        if step == 50:
            set_lr(o_ref, 1e-4)
            set_lr(o_fused, 1e-4)
            assert o_fused.param_groups[0]["lr"] is lr_tensor  # written in place: a captured graph sees it
        xb, yb = torch.randn(64, 16, generator=g), torch.randn(64, 8, generator=g)
        for model, opt in ((ref, o_ref), (fused, o_fused)):
            optimizer_step(opt, model, (model(xb) - yb).pow(2).mean(), 1.0)
    for p, q in zip(ref.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)
    assert max((p - q).abs().max().item() for p, q in zip(ref.parameters(), fused.parameters(), strict=True)) > 0


def test_capturable_optimizer_checkpoints_are_reference_shaped_and_reload_in_place() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    calls: list[int] = []
    opt = make_capturable(_adamw(model), torch.device("cpu"), on_load=lambda: calls.append(1))
    optimizer_step(opt, model, model(torch.randn(5, 4)).pow(2).sum(), 10.0)
    sd = opt.state_dict()
    group = sd["param_groups"][0]
    assert isinstance(group["lr"], float) and group["fused"] is None and group["capturable"] is False
    assert "_device_lr" not in group
    assert all(st["step"].device.type == "cpu" and st["step"].dtype == torch.float32 for st in sd["state"].values())
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)  # the live optimizer is untouched
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    plain = _adamw(model)
    plain.load_state_dict(loaded)  # a reference run resuming a fast run's checkpoint
    assert plain.param_groups[0]["lr"] == pytest.approx(2e-4) and not plain.param_groups[0]["capturable"]
    # and back: loading re-installs the device LR and tells the owner its graphs are stale
    opt.load_state_dict(plain.state_dict())
    assert calls == [1]
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) and opt.param_groups[0]["fused"]
    assert opt.param_groups[0]["lr"].item() == pytest.approx(2e-4)


def test_a_fast_run_resumes_bitwise_through_a_checkpoint() -> None:
    """Straight run vs save → load into a fresh fused optimizer → continue: same weights, bit for bit."""
    def run(split: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        opt = make_capturable(_adamw(model), torch.device("cpu"))
        g = torch.Generator().manual_seed(5)
        for i in range(6):
            if split and i == 3:
                state = {"m": model.state_dict(), "o": opt.state_dict()}
                buf = io.BytesIO()
                torch.save(state, buf)
                buf.seek(0)
                state = torch.load(buf, weights_only=True)
                torch.manual_seed(1)
                model = nn.Linear(4, 3)
                model.load_state_dict(state["m"])
                opt = _adamw(model)
                opt.load_state_dict(state["o"])
                opt = make_capturable(opt, torch.device("cpu"))
            optimizer_step(opt, model, model(torch.randn(5, 4, generator=g)).pow(2).sum(), 10.0)
        return params(model)

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True), strict=True))


def test_set_learning_rates_writes_device_lrs_in_place() -> None:
    learner = make("optim.lr_decay_every=1")
    FastChains(learner, PerfPlan(fused_optim=True))
    assert isinstance(learner.opt_g.param_groups[0]["lr"], float)  # the training log writes it into JSON as it is
    lrs = [o.param_groups[0]["lr"] for o in (learner.opt_e, learner.opt_q)]
    assert all(isinstance(t, torch.Tensor) for t in lrs)
    assert all(o.param_groups[0]["fused"] and o.param_groups[0]["capturable"]
               for o in (learner.opt_g, learner.opt_e, learner.opt_q))
    learner.iteration = 1
    set_learning_rates(learner)
    assert [o.param_groups[0]["lr"] for o in (learner.opt_e, learner.opt_q)] == lrs  # the same objects
    o = learner.cfg.optim
    assert [t.item() for t in lrs] == pytest.approx([o.e_lr * 0.99, o.q_lr * 0.99], rel=1e-6)
    assert learner.opt_g.param_groups[0]["lr"] == pytest.approx(o.g_lr * 0.99)


def test_state_snapshot_undoes_warmup_updates_exactly() -> None:
    """A warm-up run is a real update: restoring the snapshot (zeroing state created meanwhile) must make the next
    update bitwise the first one of a learner that never warmed up."""
    warmed, fresh = make(seed=4), make(seed=4)
    x, z, keep = inputs()
    for learner in (warmed, fresh):
        FastChains(learner, PerfPlan(fused_optim=True))
    snap = StateSnapshot([warmed.nets.amortizer], [warmed.opt_q], [warmed.rng])
    assert not warmed.opt_q.state  # Adam creates its state on the first step: during the warm-up
    for _ in range(2):
        FastChains(warmed, PerfPlan(fused_optim=True)).amortizer_updates(x, z, keep)
    snap.restore()
    a = FastChains(warmed, PerfPlan(fused_optim=True)).amortizer_updates(x, z, keep)
    b = FastChains(fresh, PerfPlan(fused_optim=True)).amortizer_updates(x, z, keep)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(params(warmed.nets.amortizer), params(fresh.nets.amortizer),
                                                 strict=True))


def test_compiled_amortizer_loss_and_gradients_match_eager() -> None:
    """The compiled loss (its backward through AOTAutograd) against eager: loss and every parameter gradient.
    (Weights after AdamW are not a fair comparison: Adam turns float noise in a near-zero gradient into a ±lr step.)"""
    learner = make(seed=6)
    x, z, keep = inputs()
    noise = fill_update_noise_(empty_update_noise(1, 1, 6, 4, torch.device("cpu")), torch.Generator().manual_seed(0))
    net = learner.nets.amortizer
    results = []
    for plan in (PerfPlan(), PerfPlan(compile=True)):
        net.zero_grad(set_to_none=True)
        loss = FastChains(learner, plan)._q_loss(z, x, keep, noise.xi[0], noise.u[0], noise.eps[0])
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    for u, v in zip(g0, g1, strict=True):
        torch.testing.assert_close(v, u, rtol=1e-4, atol=1e-5)


def test_merged_unet_updates_give_the_modules_losses() -> None:
    """perf.merge_unet: the same updates (same seed, so the same noise) with the U-Net's GEMMs merged give the losses
    and gradient norms of the module's forward (fp32, 1e-5), over two calls of M = 3 updates; the noise stream is
    untouched."""
    a, b = make(seed=2), make(seed=2)
    x, z, keep = inputs()
    plain, merged = FastChains(a, PerfPlan()), FastChains(b, PerfPlan(merge_unet=True))
    for _ in range(2):
        want, got = plain.amortizer_updates(x, z, keep), merged.amortizer_updates(x, z, keep)
        for u, v in zip(want, got, strict=True):
            torch.testing.assert_close(v, u, rtol=0, atol=1e-5)
    assert torch.equal(a.rng.get_state(), b.rng.get_state())
    for p, q in zip(params(a.nets.amortizer), params(b.nets.amortizer), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=6 * 2e-4)  # AdamW: at most ~lr per step apart (see above)


def test_generator_proxy_moves_only_the_callers_stream() -> None:
    proxy = GeneratorProxy(torch.device("cpu"))
    caller, other = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    twin = torch.Generator().manual_seed(1)
    other_before = other.get_state()
    with proxy.bound(caller) as gen:
        a = torch.randn(3, generator=gen)
    assert torch.equal(a, torch.randn(3, generator=twin))  # the caller's numbers...
    assert torch.equal(caller.get_state(), twin.get_state())  # ...and the caller's position afterwards
    assert torch.equal(other.get_state(), other_before)
