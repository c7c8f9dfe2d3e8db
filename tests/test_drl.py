"""Diffusion recovery likelihood (``method: drl``): the iteration against an independent transcription of the
authors' code, the schedule and step sizes, the recovery likelihood's gradients against finite differences, the
chain at every level fast vs reference, exact resume, the method check of checkpoints, sampling and evaluation of a
run."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.config import DRL_ARCHS, load_config
from engine.learners import build_learner
from engine.learners.drl import DRLLearner, level_tables, warmup_lr
from engine.models.drl import DRL_NETS, DRLNetConfig, DRLResBlock, SpectralNorm, build_drl_energy, frozen_u
from engine.run import checkpoint
from engine.run.train import main as train_main
from engine.runtime import system
from engine.runtime.image_chains import FastImageChains
from engine.runtime.perf import PerfPlan
from engine.sampling.drl_schedule import drl_schedule
from engine.sampling.noise import NoiseStream
from tests.run.test_resume import assert_bitwise_equal

REPO = Path(__file__).resolve().parents[1]
DRL = str(REPO / "configs" / "drl_quickstart.yaml")
TINY = ["drl.langevin_steps=3", "train.batch_size=8", "eval.n_samples=8", "log.sample_every=1000", "log.log_every=1",
        "log.progress=false", "drl.warmup=4"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small convolutions on a shared CPU: one thread (tests/conftest.py)."""


def _learner(*overrides: str) -> DRLLearner:
    cfg = load_config(DRL, [*TINY, *overrides])
    system.seed_init(cfg.train.seed)
    learner = build_learner(cfg, CPU, system.make_generator(CPU, 0))
    assert isinstance(learner, DRLLearner)
    return learner


def _perturb(net: torch.nn.Module, seed: int = 1) -> None:
    """Give the zero-initialised second convs and the biases values, so every path of the network matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, DRLResBlock):
                w = m.conv2.layer.weight
                w.copy_(0.1 * torch.randn(w.shape, generator=g, dtype=w.dtype))
        for p in net.parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_the_config_and_the_networks_name_the_same_archs() -> None:
    assert tuple(DRL_NETS) == DRL_ARCHS


def test_schedule_step_sizes_and_weights_are_the_codes() -> None:
    """The learner's fp32 tables are drl_schedule's (docs/methods/drl.md §1-§4, T6 values)."""
    learner = _learner()
    tb, s = learner.tables, drl_schedule(6)
    assert torch.equal(tb.step, torch.sqrt(s.step_size_square).float())
    assert torch.allclose(tb.step.double() ** 2, torch.tensor([2.0954e-5, 1.7277e-3, 4.6861e-3, 7.9202e-3,
                                                                1.0742e-2, 1.9196e-2], dtype=torch.float64),
                          rtol=1e-4)
    assert torch.allclose(tb.weight.double(), torch.tensor([1, 0.6267, 0.5120, 0.4538, 0.4185, 0.3238],
                                                           dtype=torch.float64), atol=1e-4)
    assert torch.equal(tb.scale[-1], torch.tensor(1.0)) and tb.pull[-1] == 0  # the top level: no tether, y = x
    assert torch.allclose(tb.pull.double(), (s.is_recovery[1:] / (2 * s.sigmas[1:] ** 2)), rtol=1e-6)
    assert torch.allclose(tb.a_cum.double(), s.a_s_cum[:-1]) and torch.allclose(tb.sigma_next.double(), s.sigmas[1:])
    # warm-up: update k at lr·min(1, k/warmup), the first at 0 (train_utils.py:25-33)
    cfg = learner.cfg
    assert [warmup_lr(cfg, k) for k in (0, 1, 4, 9)] == [0.0, cfg.drl.lr / 4, cfg.drl.lr, cfg.drl.lr]


def _transcribed_iteration(b: DRLLearner, x: torch.Tensor) -> None:
    """model.py / train.py, transcribed in the authors' y coordinates and float32 (tf.gather of float32 tables),
    applied to learner b: draws t, ε′, ε, then ξ per step from b.rng, in that order."""
    c, rng = b.cfg.drl, b.rng
    s = drl_schedule(c.levels, c.b_square)
    f32 = {k: getattr(s, k).float() for k in ("sigmas", "a_s", "a_s_cum", "sigmas_cum", "a_s_prev", "is_recovery")}

    def ext(name: str, t: torch.Tensor) -> torch.Tensor:
        return f32[name][t].view(-1, 1, 1, 1)

    bsz = x.shape[0]
    t = torch.randint(c.levels, (bsz,), generator=rng)
    noise = torch.randn(x.shape, generator=rng)  # q_sample_pairs: the pair's noise first
    x_t = ext("a_s_cum", t) * x + ext("sigmas_cum", t) * torch.randn(x.shape, generator=rng)
    tilde_x = ext("a_s", t + 1) * x_t + ext("sigmas", t + 1) * noise
    sigma, sigma_cum = ext("sigmas", t + 1), ext("sigmas_cum", t)
    is_recovery, a_s = ext("is_recovery", t + 1), ext("a_s_prev", t + 1)
    step_size_square = sigma_cum / float(s.sigmas_cum[0]) * c.b_square * sigma**2

    def grad_f(y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return _grad_log_p(y)

    def _grad_log_p(y: torch.Tensor) -> torch.Tensor:
        y = y.detach().requires_grad_(True)
        log_p = b.net(y, t) / step_size_square.view(-1) - ((y - tilde_x) ** 2 / 2 / sigma**2 * is_recovery).sum(
            dim=(1, 2, 3))
        (g,) = torch.autograd.grad(log_p.sum(), y)
        return g

    y = tilde_x
    with torch.no_grad():
        for _ in range(c.langevin_steps):
            g = grad_f(y)
            y = y + 0.5 * step_size_square * g + torch.sqrt(step_size_square) * torch.randn(
                y.shape, generator=rng) * c.noise_scale
    x_neg = y / a_s
    pos_f, neg_f = b.net(a_s * x_t, t), b.net(a_s * x_neg, t)
    loss = (-(pos_f - neg_f) * (1.0 / (f32["sigmas"][t + 1] / float(s.sigmas[1])))).sum() / bsz
    for group in b.opt.param_groups:
        group["lr"] = c.lr * min(1.0, b.iteration / c.warmup)
    b.opt.zero_grad()
    loss.backward()
    b.opt.step()
    with torch.no_grad():
        ema_state, state = b.net_ema.state_dict(), b.net.state_dict()
        for k, v in ema_state.items():
            v.copy_(v - (v - state[k]) * (1.0 - c.ema_decay))


def test_one_iteration_is_the_authors_iteration() -> None:
    """Same draws, in the same order, the same weights, Adam moments and EMA (fp32 rounding of the chain's z units
    apart). Spectral-norm vectors held fixed on both sides: how often they advance is tested below."""
    a, b = _learner(), _learner()
    for m in (a, b):
        m.iteration = 2  # inside the warm-up: lr / 2
        _perturb(m.net)
        m.net_ema.load_state_dict(m.net.state_dict())
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with frozen_u(a.net, b.net):
        out = a.train_step(x)
        _transcribed_iteration(b, x)
    assert torch.equal(a.rng.get_state(), b.rng.get_state())  # the same draws, in the same order
    assert a.opt.param_groups[0]["lr"] == b.opt.param_groups[0]["lr"] == a.cfg.drl.lr / 2
    # The gradients (Adam's first moments (1 − β1)·g) agree to fp32 rounding. The weights agree to 1 % of the step:
    # Adam's first step is lr·g/(|g| + ε), which turns the rounding of a gradient near 0 into a visible part of lr.
    for (k, p), q in zip(a.net.named_parameters(), b.net.parameters(), strict=True):
        m_a, m_b = a.opt.state[p]["exp_avg"], b.opt.state[q]["exp_avg"]
        assert torch.allclose(m_a, m_b, rtol=1e-4, atol=1e-5 * float(m_b.abs().max())), k
    step = a.cfg.drl.lr / 2
    for name in ("net", "net_ema"):
        for (k, p), q in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().values(),
                             strict=True):
            assert torch.allclose(p, q, rtol=0, atol=1e-2 * step), f"{name}.{k}: {(p - q).abs().max():.3g}"
    assert all(torch.isfinite(v) for v in out.values())


def test_spectral_norm_vectors_advance_once_per_call_and_never_in_a_draw() -> None:
    """The trunk's u advance at every chain step and in both loss forwards (K + 2; the code: K + 3, its last chain
    gradient is unused); the time MLP's once per chain and in both loss forwards (3: its features are computed once per
    chain, they do not depend on y). The EMA net's u are the EMA of the online ones; no draw moves any of them."""
    learner = _learner()
    k = learner.cfg.drl.langevin_steps
    calls = {name: 0 for name, m in learner.net.named_modules() if isinstance(m, SpectralNorm)}
    for name, m in learner.net.named_modules():
        if isinstance(m, SpectralNorm):
            m.register_forward_pre_hook(lambda mod, args, n=name: calls.__setitem__(n, calls[n] + int(mod.update_u)))
    learner.train_step(torch.rand(8, 1, 8, 8) * 2 - 1)
    assert {n: c for n, c in calls.items() if n.startswith("temb_dense")} == {"temb_dense0": 3, "temb_dense1": 3}
    assert {c for n, c in calls.items() if not n.startswith("temb_dense")} == {k + 2}
    before = {n: v.clone() for n, v in learner.net_ema.state_dict().items()}
    online = {n: v.clone() for n, v in learner.net.state_dict().items()}
    rng = torch.Generator().manual_seed(0)
    learner.grids(torch.rand(4, 1, 8, 8) * 2 - 1, rng)
    learner.long_run(2, 3, [0, 3], None, rng)
    for n, v in learner.net_ema.state_dict().items():
        assert torch.equal(v, before[n]), n
    for n, v in learner.net.state_dict().items():
        assert torch.equal(v, online[n]), n


def _tiny_net() -> torch.nn.Module:
    """A float64 DRL net (4×4 images, widths 4 and 8) whose spectral-norm vectors have converged: σ(W) = uᵀWv is then
    stationary in (u, v), so the gradient that treats u, v as constants (the code's and ours) is the derivative a
    finite difference sees."""
    torch.manual_seed(0)
    net = build_drl_energy(DRLNetConfig(ch=4, ch_mult=(1, 2), num_res_blocks=1, in_ch=1, image_size=4)).double()
    _perturb(net)
    with torch.no_grad():
        for _ in range(300):
            net(torch.zeros(1, 1, 4, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.int64))
    return net


def test_recovery_likelihood_gradients_match_finite_differences() -> None:
    """float64, a tiny net, frozen u. (1) The chain's drift: −∇_z V/α·n² is ∇_y log p(y | x̃, t) of the code's
    log p = f/s_t² − r‖y − x̃‖²/(2σ²), by central differences in y. (2) The update: ∂L/∂θ of the weighted loss by
    central differences in θ, at every level."""
    learner = _learner("drl.langevin_steps=1")
    learner.net, learner.net_ema = _tiny_net(), _tiny_net()  # type: ignore[assignment]
    sched = drl_schedule(6)
    tb = learner.tables = level_tables(sched, CPU)
    tb64 = {k: getattr(tb, k).double() for k in ("step", "inv_s2", "pull", "weight", "scale")}
    g = torch.Generator().manual_seed(5)
    t = torch.arange(6)
    x_tilde = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    n = 0.99
    with frozen_u(learner.net):
        def log_p(yy: torch.Tensor) -> torch.Tensor:
            f = learner.net(yy, t)
            return f * tb64["inv_s2"] - (tb64["pull"] * (yy - x_tilde).flatten(1).pow(2).sum(1))

        s = tb64["step"]
        coef = torch.stack([n * s, tb64["inv_s2"] / n**2, tb64["pull"] / n**2], dim=1)
        z = (y / (n * s).view(-1, 1, 1, 1)).requires_grad_(True)
        temb = learner.net.time_features(t, torch.float64)
        (gz,) = torch.autograd.grad(learner._energy(learner.net, z, x_tilde, temb, coef).sum(), z)
        drift = -gz * n**2 / (n * s).view(-1, 1, 1, 1)
        h = 1e-6
        fd = torch.zeros_like(y)
        for i in range(y[0].numel()):
            e = torch.zeros_like(y).flatten(1)
            e[:, i] = h
            e = e.view_as(y)
            fd.flatten(1)[:, i] = (log_p(y + e) - log_p(y - e)) / (2 * h)
        assert torch.allclose(drift.detach(), fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max().detach()))

        y_pos, y_neg = y, y + 0.1 * torch.randn(y.shape, generator=g, dtype=torch.float64)

        def loss() -> torch.Tensor:
            return (tb64["weight"] * (learner.net(y_neg, t) - learner.net(y_pos, t))).sum() / 6

        params = [p for p in learner.net.parameters()]
        grads = torch.autograd.grad(loss(), params)
        for p, gp in list(zip(params, grads, strict=True))[::3]:
            flat = p.data.view(-1)
            for j in range(0, flat.numel(), max(1, flat.numel() // 3)):
                old = float(flat[j])
                flat[j] = old + 1e-6
                up = float(loss().detach())
                flat[j] = old - 1e-6
                down = float(loss().detach())
                flat[j] = old
                assert (up - down) / 2e-6 == pytest.approx(float(gp.view(-1)[j]), rel=1e-5, abs=1e-9)


def test_explicit_input_gradient_is_autograds() -> None:
    from engine.models.drl import score_and_input_grad

    net = _tiny_net()
    t = torch.tensor([0, 2, 5])
    y = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    with frozen_u(net):
        f = net(y, t)
        (g,) = torch.autograd.grad(f.sum(), y)
        f2, g2 = score_and_input_grad(net, y.detach(), net.time_features(t, torch.float64))  # type: ignore[arg-type]
    assert torch.allclose(f, f2, rtol=1e-12) and torch.allclose(g, g2, rtol=1e-10, atol=1e-14)


def _chain_at_level(learner: DRLLearner, level: int, noise: torch.Tensor, x_tilde: torch.Tensor,
                    ema: bool) -> torch.Tensor:
    t = torch.full((x_tilde.shape[0],), level, dtype=torch.int64, device=x_tilde.device)
    return learner.recover(x_tilde, t, ema=ema, noise_scale=0.99 if ema else 1.0, rng=None, noise=noise)


@pytest.mark.parametrize("ema", [True, False], ids=["sampler-ema", "training-online"])
def test_a_chain_at_every_level_fast_with_nothing_enabled_is_the_reference_bitwise(ema: bool) -> None:
    ref, fast = _learner(), _learner()
    fast.chains = FastImageChains(PerfPlan(), CPU)
    g = torch.Generator().manual_seed(7)
    for level in range(6):
        x_tilde = torch.randn(5, 1, 8, 8, generator=g)
        noise = torch.randn(3, 5, 1, 8, 8, generator=g)
        a = _chain_at_level(ref, level, noise, x_tilde, ema)
        b = _chain_at_level(fast, level, noise, x_tilde, ema)
        assert torch.equal(a, b), level
    assert_bitwise_equal(ref.net.state_dict(), fast.net.state_dict())  # the same u updates on both paths


def test_the_fused_update_and_amp_at_every_level() -> None:
    ref, fused, amp = _learner(), _learner(), _learner()
    fused.chains, amp.chains = FastImageChains(PerfPlan(kernels=True), CPU), FastImageChains(PerfPlan(amp=True), CPU)
    g = torch.Generator().manual_seed(8)
    for level in range(6):
        x_tilde = torch.randn(4, 1, 8, 8, generator=g)
        noise = torch.randn(3, 4, 1, 8, 8, generator=g)
        want = _chain_at_level(ref, level, noise, x_tilde, True)
        assert torch.allclose(_chain_at_level(fused, level, noise, x_tilde, True), want, atol=1e-5, rtol=1e-5)
        got = _chain_at_level(amp, level, noise, x_tilde, True)
        assert (got - want).abs().max() < 0.05 * max(1.0, float(want.abs().max()))  # bf16 network


@pytest.mark.slow  # Inductor's cold CPU compile of the network's forward and backward
def test_a_chain_at_every_level_compiled_is_the_reference_within_1e5() -> None:
    torch._dynamo.reset()
    ref, comp = _learner(), _learner()
    comp.chains = FastImageChains(PerfPlan(compile=True), CPU)
    g = torch.Generator().manual_seed(9)
    for level in range(6):
        x_tilde = torch.randn(4, 1, 8, 8, generator=g)
        noise = torch.randn(3, 4, 1, 8, 8, generator=g)
        want = _chain_at_level(ref, level, noise, x_tilde, True)
        assert torch.allclose(_chain_at_level(comp, level, noise, x_tilde, True), want, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_sampler_chain_as_one_cuda_graph_at_every_level() -> None:
    """One captured graph serves all six levels (t and the coefficients are ``cond``), equal to eager for fixed noise;
    then a training step through the captured online chain stays finite."""
    dev = torch.device("cuda")
    cfg = load_config(DRL, TINY)
    system.seed_init(0)
    eager = build_learner(cfg, dev, system.make_generator(dev, 0))
    system.seed_init(0)
    graphed = build_learner(cfg, dev, system.make_generator(dev, 0))
    assert isinstance(eager, DRLLearner) and isinstance(graphed, DRLLearner)
    eager.chains, graphed.chains = FastImageChains(PerfPlan(), dev), FastImageChains(PerfPlan(graphs=True), dev)
    g = torch.Generator(device=dev).manual_seed(7)
    for level in range(6):
        x_tilde = torch.randn(5, 1, 8, 8, generator=g, device=dev)
        noise = torch.randn(3, 5, 1, 8, 8, generator=g, device=dev)
        torch.testing.assert_close(_chain_at_level(graphed, level, noise, x_tilde, True),
                                   _chain_at_level(eager, level, noise, x_tilde, True), rtol=1e-5, atol=1e-5)
    assert len(graphed.chains._graphs) == 1  # type: ignore[attr-defined]
    out = graphed.train_step(torch.rand(8, 1, 8, 8, device=dev) * 2 - 1)
    assert all(bool(torch.isfinite(v)) for v in out.values())


def test_seeded_draws_depend_on_the_sample_alone() -> None:
    """engine.sample's stream: image i is the same in any batch (no batch statistics, u never advanced)."""
    learner = _learner()
    kind = learner.sample_kinds()[0].name
    width = learner.noise_width(kind)
    assert width * learner.cfg.model.nz >= learner.image_noise() == 64 * (1 + 6 * 3)
    whole = learner.sample_from(kind, NoiseStream(4, learner.cfg.model.nz, width), 5)
    stream = NoiseStream(4, learner.cfg.model.nz, width)
    parts = torch.cat([learner.sample_from(kind, stream, 2), learner.sample_from(kind, stream, 3)])
    assert torch.allclose(whole, parts, atol=1e-6)
    assert torch.isfinite(whole).all() and whole.shape == (5, 1, 8, 8)


def test_stop_and_resume_is_bitwise_identical(tmp_path: Path) -> None:
    n = 6
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_main([DRL, *TINY, f"log.run_dir={straight}", f"train.iterations={n}"]) == 0
    assert train_main([DRL, *TINY, f"log.run_dir={split}", f"train.iterations={n // 2}"]) == 0
    assert train_main(["--resume", str(split), f"train.iterations={n}"]) == 0
    a = torch.load(straight / f"ckpt-{n:07d}.pt", weights_only=True)
    b = torch.load(split / f"ckpt-{n:07d}.pt", weights_only=True)
    a.pop("config"), b.pop("config")
    assert sorted(a) == sorted(["format", "iteration", "energy", "energy_ema", "opt", "rng", "cpu_rng", "data"])
    assert_bitwise_equal(a, b)  # weights, u vectors, EMA, Adam moments and LR, RNGs, data position
    lines = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == list(range(1, n + 1))
    assert {"loss", "f_pos", "f_neg", "lr", "disp", "grad_norm"} <= set(lines[-1])
    assert [x["lr"] for x in lines[:4]] == [warmup_lr(load_config(DRL, TINY), k) for k in range(1, 5)]
    assert sorted(p.name for p in straight.glob("*.png")) == [f"levels_drl_{n:07d}.png", f"recon_{n:07d}.png",
                                                              f"samples_drl_{n:07d}.png"]


def test_a_checkpoint_of_another_method_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "drl"
    assert train_main([DRL, *TINY, f"log.run_dir={run}", "train.iterations=1"]) == 0
    state = checkpoint.load(checkpoint.latest_checkpoint(run))  # type: ignore[arg-type]
    damc = load_config(str(REPO / "configs" / "quickstart.yaml"), ["model.ngf=8", "model.nz=8"])
    learner = build_learner(damc, CPU, system.make_generator(CPU, 0))
    with pytest.raises(checkpoint.CheckpointError, match="was written by a drl run; this run's method is damc"):
        checkpoint.restore(learner, None, state)  # type: ignore[arg-type]


def test_sample_and_eval_of_a_drl_run(tmp_path: Path, small_eval: Callable[[Path], dict[str, Any]],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from engine.eval import cli as ev
    from engine.export.sample import main as sample_main

    run = tmp_path / "drl"
    assert train_main([DRL, *TINY, f"log.run_dir={run}", "train.iterations=2"]) == 0
    out = tmp_path / "s"
    assert sample_main([str(run), "--n", "5", "--batch", "4", "--out", str(out), "--format", "npz", "--quiet"]) == 0
    manifest = json.loads((out / "drl_s0.json").read_text())
    assert manifest["method"] == "drl" and manifest["n"] == 5 and "batch_dependent" not in manifest
    again = tmp_path / "s2"
    assert sample_main([str(run), "--n", "5", "--batch", "2", "--out", str(again), "--format", "npz", "--quiet"]) == 0
    assert np.array_equal(np.load(out / "drl_s0.npz")["images"], np.load(again / "drl_s0.npz")["images"])
    assert sample_main([str(run), "--n", "2", "--out", str(tmp_path / "x"), "--method", "damc"]) == 2
    assert "is a DRL run, which draws drl" in capsys.readouterr().err

    m = small_eval(run)
    assert {"fid_drl", "mse", "chains"} <= set(m)
    assert math.isfinite(m["fid_drl"]["value"]) and "6-level sampler" in m["fid_drl"]["sampler"]
    assert math.isfinite(m["mse"]["value"]) and m["mse"]["init"] == "x diffused to level 1"
    assert m["chains"]["step_size"] == pytest.approx(float(drl_schedule(6).step_size()[0]), rel=1e-6)
    assert (run / "chains_4steps_0000002.png").is_file() and len(m["chains"]["energy_trace"]["4"]) == 5
    assert "FID DRL" in capsys.readouterr().out
    assert ev.main([str(run), "--metrics", "fid_ebm", "--quiet"]) == 2
    assert "this DRL run draws drl samples; use fid_drl" in capsys.readouterr().err
    assert ev.main([str(run), "--metrics", "auprc", "--quiet"]) == 2
    assert "not defined for a DRL run" in capsys.readouterr().err


def test_export_onnx_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``engine.export --format onnx``: one Langevin-step graph with every random number an input; driven T·K
    times on the engine.sample stream it gives the engine's own sampler (fp32)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from engine.export.cli import main as export_main
    from engine.export.own import load_graphs, read_own_sidecar
    from engine.export.sample import main as sample_main
    from engine.export.to_onnx import operator_types
    from engine.learners.drl import export_graphs

    run = tmp_path / "drl"
    assert train_main([DRL, *TINY, f"log.run_dir={run}", "train.iterations=2"]) == 0
    out = tmp_path / "art"
    assert export_main([str(run), "--format", "onnx", "--batch", "3", "--out", str(out), "--device", "cpu"]) == 0
    sidecar = read_own_sidecar(out)
    assert sidecar.sampler == "drl" and sidecar.info["levels"] == 6 and sidecar.info["langevin_steps"] == 3
    assert [i.name for i in sidecar.graphs["step"].inputs] == ["t", "y", "x_tilde", "xi"]
    assert sidecar.verification["max_abs_diff"] <= 1e-4
    ops = operator_types(out / "step.onnx")
    assert {d for d, _ in ops} <= {""} and not {op for _, op in ops if op.startswith("Random")}  # no random op
    learner = checkpoint.load_run(run, CPU)
    graphs = export_graphs(learner, 3, torch.float32, CPU)
    stream = NoiseStream(11, learner.cfg.model.nz, learner.noise_width("drl"))
    got = graphs.drive(load_graphs(out, sidecar, CPU), graphs.stream(11), 3)  # the artifact on seed 11's stream ...
    want = learner.sample_from("drl", stream, 3)
    assert torch.allclose(got, want, atol=1e-4)  # ... is the engine's sampler on it
    capsys.readouterr()
    assert export_main([str(run), "--format", "onnx", "--batch", "3", "--whole", "--out", str(tmp_path / "w")]) == 2
    assert "step graph and the driver loop" in capsys.readouterr().err

    # engine.sample --from-export: 5 images in batches of 3 and 2 (the last padded to the static batch) are the
    # run's own 5 on the same seed, image by image.
    for name, extra in (("own", []), ("exp", ["--from-export", str(out)])):
        assert sample_main([str(run), "--n", "5", "--seed", "4", "--format", "npz", "--out", str(tmp_path / name),
                            "--quiet", *extra]) == 0
    own = np.load(tmp_path / "own" / "drl_s4.npz")["images"].astype(np.int16)
    exp = np.load(tmp_path / "exp" / "export-onnx_s4.npz")["images"].astype(np.int16)
    assert own.shape == exp.shape == (5, 8, 8, 1) and np.abs(own - exp).max() <= 1  # uint8 rounding of 1e-4
    manifest = json.loads((tmp_path / "exp" / "export-onnx_s4.json").read_text())
    assert manifest["path"] == "export: onnx per-step, fp32" and manifest["batch"] == 3
    capsys.readouterr()
    assert sample_main([str(run), "--n", "2", "--batch", "4", "--out", str(tmp_path / "x"),
                        "--from-export", str(out)]) == 2
    assert "the artifact's static batch is 3" in capsys.readouterr().err
    # Refusals, one line each, before any image: other weights, another method's artifact, tampered fields (an
    # unknown precision, an absurd batch, a run that is not an object, other input shapes), a missing graph file.
    def shapes(raw: dict[str, Any]) -> None:
        raw["graphs"]["step"]["inputs"][1]["shape"] = [3, 1, 4, 4]

    edits: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
        ("run", lambda r: r.update(run={"weights_sha256": "0" * 16, "run_dir": "elsewhere"}),
         "exported from elsewhere"),
        ("damc", lambda r: r.update(sampler=None), "holds a DAMC prior sampler, not a DRL run's"),
        ("sampler", lambda r: r.update(sampler="coopvae"), "holds a COOPVAE run's sampler, not a DRL run's"),
        ("precision", lambda r: r.update(precision="fp64"), "unreadable sampler.json (sidecar_version 1, format"),
        ("batch", lambda r: r.update(batch=10**12), "batch 1000000000000, graphs"),
        ("run-list", lambda r: r.update(run=[]), "unreadable sampler.json"),
        ("shapes", shapes, "its graph 'step' does not take this run's inputs"),
    ]
    for name, edit, says in edits:
        bad = tmp_path / f"bad-{name}"
        shutil.copytree(out, bad)
        raw = json.loads((bad / "sampler.json").read_text())
        edit(raw)
        (bad / "sampler.json").write_text(json.dumps(raw))
        assert sample_main([str(run), "--n", "2", "--out", str(tmp_path / "y"), "--from-export", str(bad)]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1 and "Traceback" not in err
        assert not list((tmp_path / "y").glob("*"))
    (tmp_path / "bad-sampler" / "step.onnx").unlink()
    shutil.copy(out / "sampler.json", tmp_path / "bad-sampler" / "sampler.json")
    assert sample_main([str(run), "--n", "2", "--out", str(tmp_path / "y"), "--from-export",
                        str(tmp_path / "bad-sampler")]) == 2
    assert "step.onnx is missing; export again" in capsys.readouterr().err
