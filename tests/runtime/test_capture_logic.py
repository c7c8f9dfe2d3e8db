"""The bookkeeping of CUDA-graph capture, checked on a CPU with a stand-in graph (issue 14 item 3).

A real capture records kernels without running them and a replay runs them again; the stand-in runs the Python
body instead (warm-ups for real, the capture run undone, each replay a fresh run). What it checks is everything
around the kernels: the warm-up runs leave no trace (weights, AdamW state created during them, generators), the
loops run inline inside the iteration region, static buffers and the proxy generator carry inputs, outputs and
the caller's RNG stream, a captured region is keyed and dropped correctly (LR keys, ``load_state_dict``). With
all of that right, the captured paths give the eager fast path's numbers bit for bit. The kernels themselves are
checked on a GPU (tests/runtime/test_fast_gpu.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from engine.config import load_config
from engine.learners import build_learner
from engine.learners.damc import DamcLearner as Learner
from engine.learners.damc import damc_prior_images, reconstruct, train_step
from engine.runtime import system
from engine.runtime.fast import FastChains
from engine.runtime.graphs import Restorable, frozen
from engine.runtime.perf import PerfPlan

TINY = ["model.nz=4", "model.ngf=4", "model.nif=4", "model.nemb=8", "model.unet_nf=1", "model.ntemb=8",
        "train.batch_size=6", "diffusion.n_steps=6", "langevin.posterior.n_steps=3", "langevin.prior.n_steps=4",
        "diffusion.updates_per_iter=2", "diffusion.ema_every=2", "optim.lr_decay_every=2"]


class FakeGraph:
    """CapturedGraph's contract, run on the host: see the module docstring."""

    captures = 0

    def __init__(self, body: Callable[[], None], device: torch.device, freeze: tuple[nn.Module, ...],
                 warmup: int = 2, generators: Sequence[torch.Generator] = (),
                 state: Callable[[], Restorable] | None = None) -> None:
        gen_states = [g.get_state() for g in generators]
        saved = state() if state is not None else None
        with frozen(*freeze):
            for _ in range(warmup):
                body()
        if saved is not None:
            saved.restore()
        undo = state() if state is not None else None  # a capture records; it does not run
        with frozen(*freeze):
            body()
        if undo is not None:
            undo.restore()
        for g, s in zip(generators, gen_states, strict=True):
            g.set_state(s)
        self._body, self._freeze = body, freeze
        FakeGraph.captures += 1

    def replay(self) -> None:
        with frozen(*self._freeze):
            self._body()


@pytest.fixture(autouse=True)
def fake_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.runtime.fast.CapturedGraph", FakeGraph)
    monkeypatch.setattr("engine.runtime.iteration.CapturedGraph", FakeGraph)
    FakeGraph.captures = 0


def make(plan: PerfPlan, seed: int = 0, *extra: str) -> Learner:
    cfg = load_config("configs/quickstart.yaml", [*TINY, *extra])
    system.seed_init(seed)
    learner = build_learner(cfg, torch.device("cpu"), system.make_generator(torch.device("cpu"), seed))
    learner.chains = FastChains(learner, plan)
    return learner


def batch(i: int) -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(i)) * 2 - 1


def state(learner: Learner) -> list[torch.Tensor]:
    mods = [learner.nets.generator, learner.nets.energy, learner.nets.amortizer, learner.amortizer_ema]
    out = [p.detach().clone() for m in mods if m is not None for p in m.parameters()]
    for o in (learner.opt_g, learner.opt_e, learner.opt_q):
        assert o is not None
        out += [v.detach().clone() for st in o.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return [*out, learner.rng.get_state()]


def assert_bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


EAGER = PerfPlan(fused_optim=True, hoist_sampler=True)


@pytest.mark.parametrize("plan", [PerfPlan(graphs=True, fused_optim=True, hoist_sampler=True),
                                  PerfPlan(graphs=True, iteration_graph=True, fused_optim=True, hoist_sampler=True)],
                         ids=["per-loop graphs", "iteration graph"])
def test_captured_paths_equal_the_eager_fast_path_bitwise(plan: PerfPlan) -> None:
    captured, eager = make(plan), make(EAGER)
    outs: list[dict[str, torch.Tensor]] = [{}, {}]
    for i in range(5):  # LR decays at 2 and 4, EMA at 2 and 4
        outs[0] = train_step(captured, batch(i))
        outs[1] = train_step(eager, batch(i))
        assert outs[0].keys() == outs[1].keys()
        assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0]), i
    assert_bitwise(state(captured), state(eager))
    # per loop: draw, 2 chains, Q updates; the iteration: once per value of G's float LR (decays after 2 and 4)
    assert FakeGraph.captures == (3 if plan.iteration_graph else 4)


def test_the_iteration_graph_is_captured_once_and_dropped_by_load_state_dict() -> None:
    plan = PerfPlan(graphs=True, iteration_graph=True, fused_optim=True)
    learner, eager = make(plan, 0, "optim.lr_decay_every=1000"), make(PerfPlan(fused_optim=True), 0,
                                                                     "optim.lr_decay_every=1000")
    for i in range(3):
        train_step(learner, batch(i))
        train_step(eager, batch(i))
    assert FakeGraph.captures == 1
    # A divergence rollback: load an earlier state into the live learner (and the same into the eager twin).
    saved = {"q": learner.opt_q.state_dict(), "g": learner.opt_g.state_dict(), "e": learner.opt_e.state_dict()}
    twin = {"q": eager.opt_q.state_dict(), "g": eager.opt_g.state_dict(), "e": eager.opt_e.state_dict()}
    train_step(learner, batch(3))
    train_step(eager, batch(3))
    for lr, sd in ((learner, saved), (eager, twin)):
        lr.opt_q.load_state_dict(sd["q"])
        lr.opt_g.load_state_dict(sd["g"])
        lr.opt_e.load_state_dict(sd["e"])
    assert FakeGraph.captures == 1 and not learner.chains._iteration._entries  # dropped, not yet re-captured
    for i in range(4, 6):
        a, b = train_step(learner, batch(i)), train_step(eager, batch(i))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert FakeGraph.captures == 2
    assert_bitwise(state(learner), state(eager))


def test_only_a_float_learning_rate_is_part_of_the_capture_key() -> None:
    """E's and Q's LRs are device tensors written in place: no re-capture. G's is a float (the training log reads
    it), baked into the graph: a decay captures again, and only one graph is kept."""
    learner = make(PerfPlan(graphs=True, iteration_graph=True, fused_optim=True))
    lrs = [learner.opt_e.param_groups[0]["lr"], learner.opt_q.param_groups[0]["lr"]]
    train_step(learner, batch(0))
    train_step(learner, batch(1))  # completes iteration 2: the LRs decay after it
    assert FakeGraph.captures == 1
    train_step(learner, batch(2))
    assert FakeGraph.captures == 2 and len(learner.chains._iteration._entries) == 1
    assert [learner.opt_e.param_groups[0]["lr"], learner.opt_q.param_groups[0]["lr"]] == lrs
    learner = make(PerfPlan(graphs=True, iteration_graph=True))  # no fused optimizers: every LR a float
    for i in range(3):
        train_step(learner, batch(i))
    assert FakeGraph.captures == 4


def test_captured_evaluation_draws_use_only_the_callers_generator() -> None:
    captured, eager = make(PerfPlan(graphs=True, fused_optim=True, hoist_sampler=True)), make(EAGER)
    train_step(captured, batch(0))
    train_step(eager, batch(0))
    before = captured.rng.get_state()
    for _ in range(2):
        r1, r2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        a, b = damc_prior_images(captured, 6, r1), damc_prior_images(eager, 6, r2)
        assert torch.equal(a, b) and torch.equal(r1.get_state(), r2.get_state())
        a, b = reconstruct(captured, batch(7), 2, 0.1, r1), reconstruct(eager, batch(7), 2, 0.1, r2)
        assert torch.equal(a, b) and torch.equal(r1.get_state(), r2.get_state())
    assert torch.equal(captured.rng.get_state(), before)


def test_outputs_outlive_the_next_replay() -> None:
    """The diagnostics handed back are copies: the next replay must not change what the caller holds."""
    learner = make(PerfPlan(graphs=True, iteration_graph=True, fused_optim=True))
    first = train_step(learner, batch(0))
    kept = {k: v.clone() for k, v in first.items()}
    train_step(learner, batch(1))
    assert all(torch.equal(first[k], kept[k]) for k in kept)
