"""CoopVAEBM (``method: coopvae``): the iteration against an independent transcription of the authors' code, the
schedule, exact resume, the method check of checkpoints, and sampling / evaluation of a run."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.config import COOPVAE_ARCHS, load_config
from engine.learners import build_learner
from engine.learners.coopvae import CoopVAELearner, set_learning_rates
from engine.models.coopvae import COOPVAE_ARCHS as MODEL_ARCHS
from engine.run import checkpoint
from engine.run.train import main as train_main
from engine.runtime import system
from tests.run.test_resume import assert_bitwise_equal

REPO = Path(__file__).resolve().parents[1]
COOP = str(REPO / "configs" / "coopvae_quickstart.yaml")
TINY = ["coopvae.n_chains=6", "train.batch_size=8", "coopvae.langevin.n_steps=3", "coopvae.epoch_iterations=2",
        "coopvae.lr_decay_epochs=1", "eval.n_samples=8", "log.sample_every=1000", "log.log_every=1",
        "log.progress=false"]


def _learner(*overrides: str) -> CoopVAELearner:
    cfg = load_config(COOP, [*TINY, *overrides])
    system.seed_init(cfg.train.seed)
    learner = build_learner(cfg, torch.device("cpu"), system.make_generator(torch.device("cpu"), 0))
    assert isinstance(learner, CoopVAELearner)
    return learner


def test_the_config_and_the_networks_name_the_same_archs() -> None:
    assert COOPVAE_ARCHS == MODEL_ARCHS


def test_one_iteration_is_the_authors_iteration() -> None:
    """An independent transcription of model.py's train step (z, g, 15 noise-free Langevin steps on
    x - ½δ²(x/σ² - ∂f/∂x), the descriptor's Adam step on mean f(x~) - mean f(obs), the VAE's Adam step on x~)
    gives the same weights, bitwise, from the same draws."""
    a, b = _learner(), _learner()
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    a.train_step(x)

    c = b.cfg.coopvae
    z = torch.randn(c.n_chains, b.cfg.model.nz, generator=b.rng)
    with torch.no_grad():
        syn = b.generator(z)
    for _ in range(c.langevin.n_steps):
        s = syn.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(b.descriptor(s).sum(), s)
        syn = syn - 0.5 * c.langevin.step_size ** 2 * (syn / c.ref_sigma ** 2 - grad)
    des_loss = b.descriptor(syn).mean() - b.descriptor(x).mean()
    b.opt_ebm.zero_grad()
    des_loss.backward()
    b.opt_ebm.step()
    mn, sd = b.encoder(syn)
    eps = torch.randn(c.n_chains, b.cfg.model.nz, generator=b.rng)
    rec = b.generator(mn + eps * torch.exp(sd))
    recon = (rec - syn).flatten(1).pow(2).sum(1)
    latent = -0.5 * (1.0 + 2.0 * sd - mn.pow(2) - torch.exp(2.0 * sd)).sum(1)
    vae_loss = (recon + c.latent_weight * latent).mean()
    b.opt_vae.zero_grad()
    vae_loss.backward()
    b.opt_vae.step()

    for name, net in a.networks().items():
        for (k, p), q in zip(net.state_dict().items(), b.networks()[name].state_dict().values(), strict=True):
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), f"{name}.{k}"
    assert torch.equal(a.rng.get_state(), b.rng.get_state())  # the same draws, in the same order


def test_an_iteration_changes_every_network_and_only_reads_its_own_generator() -> None:
    learner = _learner()
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in learner.networks().items()}
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    cpu = torch.get_rng_state()
    out = learner.train_step(x)
    assert torch.equal(torch.get_rng_state(), cpu)  # the global generator is never drawn from
    assert all(torch.isfinite(v).all() for v in out.values())
    for k, m in learner.networks().items():
        same = [n for (n, p), q in zip(m.named_parameters(), before[k], strict=True) if torch.equal(p, q)]
        # The descriptor's output bias cancels in mean f(x~) - mean f(x): its gradient is exactly 0 (as E's in DAMC).
        assert same == ([list(dict(m.named_parameters()))[-1]] if k == "descriptor" else []), (k, same)


def test_learning_rates_decay_per_epoch_as_the_code() -> None:
    """lr0 · 0.98^(epoch/20): constant within an epoch, continuous exponent (not staircase)."""
    learner = _learner("coopvae.lr_decay_epochs=20", "coopvae.epoch_iterations=3")
    c = learner.cfg.coopvae
    for it in range(0, 130, 7):
        learner.iteration = it
        set_learning_rates(learner)
        want = c.ebm_lr * 0.98 ** ((it // 3) / 20)
        assert learner.opt_ebm.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
        assert learner.opt_vae.param_groups[0]["lr"] == pytest.approx(c.vae_lr * 0.98 ** ((it // 3) / 20))


def test_stop_and_resume_is_bitwise_identical(tmp_path: Path) -> None:
    n = 6
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_main([COOP, *TINY, f"log.run_dir={straight}", f"train.iterations={n}"]) == 0
    assert train_main([COOP, *TINY, f"log.run_dir={split}", f"train.iterations={n // 2}"]) == 0
    assert train_main(["--resume", str(split), f"train.iterations={n}"]) == 0
    a = torch.load(straight / f"ckpt-{n:07d}.pt", weights_only=True)
    b = torch.load(split / f"ckpt-{n:07d}.pt", weights_only=True)
    a.pop("config"), b.pop("config")
    assert sorted(a) == sorted(["format", "iteration", "descriptor", "encoder", "generator", "opt_ebm", "opt_vae",
                                "rng", "cpu_rng", "data"])
    assert_bitwise_equal(a, b)  # weights, Adam moments, the decayed LRs, RNGs, data position
    lines = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == list(range(1, n + 1))
    assert {"loss_e", "loss_vae", "lr_ebm", "lr_vae", "revision_mse"} <= set(lines[-1])
    assert sorted(p.name for p in straight.glob("*.png")) == [f"recon_{n:07d}.png", f"samples_vae_ebm_{n:07d}.png"]


def test_a_checkpoint_of_another_method_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "coop"
    assert train_main([COOP, *TINY, f"log.run_dir={run}", "train.iterations=1"]) == 0
    state = checkpoint.load(checkpoint.latest_checkpoint(run))  # type: ignore[arg-type]
    damc = load_config(str(REPO / "configs" / "quickstart.yaml"), ["model.ngf=8", "model.nz=8"])
    learner = build_learner(damc, torch.device("cpu"), system.make_generator(torch.device("cpu"), 0))
    with pytest.raises(checkpoint.CheckpointError, match="was written by a coopvae run; this run's method is damc"):
        checkpoint.restore(learner, None, state)  # type: ignore[arg-type]


def test_sample_and_eval_of_a_coopvae_run(tmp_path: Path, small_eval: Callable[[Path], dict[str, Any]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from engine.eval import cli as ev
    from engine.export.sample import main as sample_main

    run = tmp_path / "coop"
    assert train_main([COOP, *TINY, f"log.run_dir={run}", "train.iterations=2"]) == 0
    for kind in ("ebm", "vae"):
        out = tmp_path / kind
        assert sample_main([str(run), "--n", "5", "--batch", "4", "--out", str(out), "--method", kind,
                            "--format", "npz", "--quiet"]) == 0
        manifest = json.loads((out / f"{kind}_s0.json").read_text())
        assert manifest["method"] == kind and "batch_dependent" in manifest
        assert manifest["n"] == 5
    assert sample_main([str(run), "--n", "2", "--out", str(tmp_path / "x"), "--method", "damc"]) == 2
    assert "is a COOPVAE run, which draws ebm, vae" in capsys.readouterr().err

    m = small_eval(run)
    assert {"fid_ebm", "fid_vae", "mse", "chains"} <= set(m)
    assert m["fid_ebm"]["steps"] == 3 and "revised by the EBM" in m["fid_ebm"]["sampler"]
    assert math.isfinite(m["mse"]["value"]) and m["mse"]["init"] == "VAE encoder mean"
    assert (run / "chains_4steps_0000002.png").is_file()
    table = capsys.readouterr().out
    assert "FID EBM" in table and "FID VAE" in table
    assert ev.main([str(run), "--metrics", "fid_damc", "--quiet"]) == 2
    assert "this COOPVAE run draws ebm, vae samples; use fid_ebm or fid_vae" in capsys.readouterr().err
    assert ev.main([str(run), "--metrics", "auprc", "--quiet"]) == 2
    assert "not defined for a COOPVAE run" in capsys.readouterr().err


@pytest.mark.parametrize(("config", "kinds"), [("coopvae_quickstart", "ebm, vae"), ("dualmcmc_quickstart", "ebm, gen"),
                                               ("drl_quickstart", "drl")])
def test_an_image_learner_refuses_a_kind_it_does_not_draw(config: str, kinds: str) -> None:
    """The image learners' shared kind check (engine.learners.image): the kinds come from the learner itself."""
    cfg = load_config(str(REPO / "configs" / f"{config}.yaml"))
    cpu = torch.device("cpu")
    learner = build_learner(cfg, cpu, system.make_generator(cpu, 0))
    assert ", ".join(k.name for k in learner.sample_kinds()) == kinds
    with pytest.raises(ValueError, match=f"sample kind 'damc': a {cfg.method} run draws {kinds}$"):
        learner.sample("damc", 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="sample kind 'lebm'"):
        learner.noise_width("lebm")
