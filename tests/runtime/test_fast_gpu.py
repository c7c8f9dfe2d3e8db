"""Issue 14 on a GPU (marker ``gpu``; every test skips without CUDA): the captured amortizer updates, the whole
iteration as one graph, side streams, exact resume and rollback on the fast path, evaluation draws on their own
generator, the hoisted bf16 sampler. ``bash bench/gpu_all.sh`` runs these first."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from engine.config import load_config
from engine.learners import build_learner
from engine.learners.damc import (
    DamcLearner as Learner,
)
from engine.learners.damc import (
    damc_prior_images,
    damc_prior_latents,
    lebm_prior_latents,
    reconstruct,
    train_step,
)
from engine.run import checkpoint
from engine.runtime import system
from engine.runtime.fast import FastChains, build_chains
from engine.runtime.perf import PerfPlan, resolve
from engine.sampling.diffusion import ancestral_sample

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Any:
    """Each FastChains compiles its own step functions; Dynamo's per-function recompile limit (8) would otherwise
    make later tests fall back to eager silently."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
# torch.compile off except where a test says so: Inductor's first compile of each step function costs tens of
# seconds, and gpu_all.sh has minutes for every GPU test and the whole benchmark.
BASE = ["train.batch_size=32", "diffusion.ema_every=2", "optim.lr_decay_every=3", 'perf.compile="off"']
COMPILE = 'perf.compile="on"'


def make(*extra: str, seed: int = 0, chains: bool = True) -> Learner:
    cfg = load_config("configs/quickstart.yaml", [*BASE, "perf.preset=fast", *extra])
    system.seed_init(seed)
    learner = build_learner(cfg, DEV, system.make_generator(DEV, seed))
    if chains:
        attach(learner)
    return learner


def attach(learner: Learner) -> None:
    plan, _ = resolve(learner.cfg.perf, DEV)
    system.apply_perf(plan, DEV)
    learner.chains = build_chains(learner, plan)


def batch(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(32, 1, 8, 8, generator=g) * 2 - 1).to(DEV)


def weights(learner: Learner) -> list[torch.Tensor]:
    mods = [learner.nets.generator, learner.nets.energy, learner.nets.amortizer, learner.amortizer_ema]
    return [p.detach().clone() for m in mods if m is not None for p in m.parameters()]


def run(learner: Learner, start: int, stop: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i in range(start, stop):
        out = train_step(learner, batch(i))
    return out


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 0.0) -> None:
    """Bitwise (atol 0) or close; a bitwise failure says how far apart the tensors are, which tells a nondeterministic
    kernel (cudnn/cuBLAS atomics: ~1e-7 relative) from a logic error (large)."""
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        if atol == 0.0:
            assert torch.equal(u, v), f"tensor {i} {tuple(u.shape)}: max |diff| {(u - v).abs().max().item():.3g}"
        else:
            torch.testing.assert_close(v, u, rtol=1e-4, atol=atol)


def test_captured_amortizer_updates_match_eager_and_warmup_leaves_no_trace() -> None:
    """One graph for the M updates (fused capturable AdamW, noise from the run's generator through the proxy) against
    the same updates eager: same noise (same Philox positions), same weights; the capture's warm-up runs undone."""
    a = make('perf.iteration_graph="off"')
    b = make('perf.iteration_graph="off"', 'perf.graphs="off"')
    g = torch.Generator().manual_seed(3)
    x = batch(0)
    z = torch.randn(32, a.cfg.model.nz, generator=g).to(DEV)
    keep = (torch.rand(32, generator=g) >= 0.2).float().to(DEV)
    for _ in range(3):
        la, na = a.chains.amortizer_updates(x, z, keep)
        lb, nb = b.chains.amortizer_updates(x, z, keep)
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.rng.get_state(), b.rng.get_state())
    assert_same(weights(a), weights(b), atol=1e-5)


def test_iteration_graph_matches_per_loop_graphs() -> None:
    a, b = make(), make('perf.iteration_graph="off"')
    assert isinstance(a.chains, FastChains) and a.chains.plan.iteration_graph
    oa, ob = run(a, 0, 4), run(b, 0, 4)
    assert oa.keys() == ob.keys()
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k], rtol=1e-4, atol=1e-5, msg=k)
    assert torch.equal(a.rng.get_state(), b.rng.get_state())
    assert_same(weights(a), weights(b), atol=1e-4)


def test_side_streams_match_one_stream() -> None:
    a, b = make('perf.side_streams="on"'), make('perf.side_streams="off"')
    oa, ob = run(a, 0, 3), run(b, 0, 3)
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k], rtol=1e-4, atol=1e-5, msg=k)
    assert_same(weights(a), weights(b), atol=1e-4)


class _Stream:
    """What checkpoint.capture / restore need from a data stream (the data order is not under test here)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def _save(learner: Learner) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(checkpoint.capture(learner, _Stream()), buf)  # type: ignore[arg-type]
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)  # as checkpoint.load reads it


def test_stop_and_resume_equals_the_straight_run_bitwise() -> None:
    """The fast path as it trains (compiled, whole-iteration graph): 6 iterations straight (LR decays at 3 and 6,
    EMA every 2) against 3, a checkpoint, a fresh learner restored from it, 3 more. Bit for bit."""
    straight = make(COMPILE)
    out_a = run(straight, 0, 6)
    first = make(COMPILE)
    run(first, 0, 3)
    state = _save(first)
    resumed = make(COMPILE, seed=99, chains=False)  # different init: everything must come from the checkpoint
    checkpoint.restore(resumed, _Stream(), state)  # type: ignore[arg-type]
    attach(resumed)  # as engine.run.train: chains after the restore
    out_b = run(resumed, 3, 6)
    assert_same(weights(straight), weights(resumed))
    assert all(torch.equal(out_a[k], out_b[k]) for k in out_a), {k: (out_a[k] - out_b[k]).item() for k in out_a}
    assert torch.equal(straight.rng.get_state(), resumed.rng.get_state())


def test_rollback_into_live_graphs_recaptures_and_stays_exact() -> None:
    """engine.run.train's divergence rollback restores a checkpoint into a learner whose graphs are captured: the
    optimizers' load hooks must drop them (their state tensors are new objects), and the run continues exactly."""
    straight = make()
    run(straight, 0, 6)
    live = make()
    run(live, 0, 3)
    state = _save(live)
    run(live, 3, 5)  # moves on (the "diverged" part), graphs captured and replayed
    assert isinstance(live.chains, FastChains)
    graph_before = dict(live.chains._iteration._entries)
    checkpoint.restore(live, _Stream(), state)  # type: ignore[arg-type]
    assert not live.chains._iteration._entries  # dropped by the load hooks
    run(live, 3, 6)
    assert live.chains._iteration._entries and graph_before
    assert_same(weights(straight), weights(live))


def test_lr_decay_recaptures_only_for_gs_float_lr() -> None:
    learner = make("optim.lr_decay_every=2")
    assert isinstance(learner.chains, FastChains)
    lrs = [learner.opt_e.param_groups[0]["lr"], learner.opt_q.param_groups[0]["lr"]]
    keys = []
    for i in range(5):  # LRs decay after iterations 2 and 4
        run(learner, i, i + 1)
        keys.append(next(iter(learner.chains._iteration._entries)))
    assert len(set(keys)) == 3 and len(learner.chains._iteration._entries) == 1  # one graph kept at a time
    assert [learner.opt_e.param_groups[0]["lr"], learner.opt_q.param_groups[0]["lr"]] == lrs  # written in place


def test_evaluation_draws_leave_the_training_stream_alone_and_never_sync() -> None:
    learner = make()
    run(learner, 0, 2)
    before = learner.rng.get_state()
    x = batch(9)
    for _ in range(2):  # the second pass replays the captured draws
        damc_prior_images(learner, 16, system.make_generator(DEV, 5))
        damc_prior_latents(learner, 16, system.make_generator(DEV, 5))
        lebm_prior_latents(learner, 16, 20, 0.4, system.make_generator(DEV, 5))
        reconstruct(learner, x, 5, 0.1, system.make_generator(DEV, 5))
    assert torch.equal(learner.rng.get_state(), before)
    rng = system.make_generator(DEV, 5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        a = damc_prior_images(learner, 16, rng)
        b = damc_prior_images(learner, 16, rng)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not torch.equal(a, b)  # the evaluation stream moves between calls...
    again = damc_prior_images(learner, 16, system.make_generator(DEV, 5))
    assert torch.equal(again, a)  # ...reproducibly from its seed
    # The graph moved the caller's generator exactly as the eager draws do.
    eager = make('perf.graphs="off"', 'perf.iteration_graph="off"')
    eager.nets.amortizer.load_state_dict(learner.nets.amortizer.state_dict())
    eager.nets.generator.load_state_dict(learner.nets.generator.state_dict())
    r1, r2 = system.make_generator(DEV, 5), system.make_generator(DEV, 5)
    damc_prior_images(learner, 16, r1)
    damc_prior_images(eager, 16, r2)
    assert torch.equal(r1.get_state(), r2.get_state())


def assert_draw_within_bf16_of_the_reference(learner: Learner) -> None:
    """The fast path's conditional draw (captured, then replayed) within bf16 of the reference sampler, fixed noise."""
    net = learner.nets.amortizer
    g = torch.Generator().manual_seed(1)
    n, nz = 16, learner.cfg.model.nz
    x = batch(4)[:n]
    z_t, noise = torch.randn(n, nz, generator=g).to(DEV), torch.randn(99, n, nz, generator=g).to(DEV)
    with torch.no_grad():
        xemb = net.cond_embedding(x)
        want = ancestral_sample(lambda z, lam: net(z, lam, xemb), z_t, learner.table, noise=noise)
    assert isinstance(learner.chains, FastChains) and learner.chains.plan.hoist_sampler
    for _ in range(2):  # capture, then replay
        got = learner.chains.cond_draw(net, x, noise=noise, z_init=z_t)
        torch.testing.assert_close(got, want, rtol=0, atol=0.03)


def test_hoisted_bf16_sampler_in_a_graph_is_within_bf16_of_the_reference() -> None:
    assert_draw_within_bf16_of_the_reference(make())


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_unmeasured_switches_in_graphs_match_the_default_fast_path(compiled: bool) -> None:
    """The switches written without a GPU (sampler_kernel: Triton blocks in the captured draw; merge_unet: merged
    GEMMs in the captured Q updates; combo_kernels with compile): the bf16 draw within bf16 of the reference, and a
    few whole captured iterations finite and close to the same iterations without them."""
    extra = ('perf.sampler_kernel="on"', 'perf.merge_unet="on"') + (
        (COMPILE, 'perf.combo_kernels="on"') if compiled else ())
    learner = make(*extra)
    chains = learner.chains
    assert isinstance(chains, FastChains) and chains.plan.sampler_kernel and chains.plan.merge_unet
    assert_draw_within_bf16_of_the_reference(learner)
    base = make(*((COMPILE,) if compiled else ()))
    got, ref = run(learner, 0, 3), run(base, 0, 3)
    for k in ref:
        assert torch.isfinite(got[k]).all(), k
        # bf16 arithmetic in another order over 3 iterations: losses agree to a few percent
        torch.testing.assert_close(got[k], ref[k], rtol=0.05, atol=0.05, msg=k)


@pytest.mark.parametrize("last", ["convt", "convt_pad", "conv_pad"])
def test_generator_rewrites_under_bf16_and_channels_last(last: str) -> None:
    learner = make('perf.g_gemm_first="on"', f'perf.g_last="{last}"')
    chains = learner.chains
    assert isinstance(chains, FastChains) and chains.plan.channels_last
    z = torch.randn(32, learner.cfg.model.nz, device=DEV)
    with torch.no_grad(), chains.autocast():
        got, want = chains.generator(z).float(), learner.nets.generator(z).float()
    torch.testing.assert_close(got, want, rtol=0, atol=0.02)


def test_plan_is_what_the_fast_preset_promises_here() -> None:
    plan, _ = resolve(load_config("configs/quickstart.yaml", ["perf.preset=fast"]).perf, DEV)
    assert plan.graphs and plan.iteration_graph and plan.fused_optim and plan.hoist_sampler
    assert plan != PerfPlan()
