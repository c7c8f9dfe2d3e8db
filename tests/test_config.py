"""Typed configs: every shipped config loads; bad input is one clear line naming field, value, allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Config, ConfigError, dump_config, from_dict, load_config, parse_override, to_dict

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_all_shipped_configs_are_present() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "cifar10", "svhn", "celeba64", "celebahq256", "mnist_anomaly"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_loads_and_round_trips(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    again = from_dict(__import__("yaml").safe_load(dump_config(cfg)))
    assert to_dict(again) == to_dict(cfg)


def test_cifar10_config_holds_the_authors_values() -> None:
    c = load_config(CONFIGS[0].parent / "cifar10.yaml")
    assert (c.model.nz, c.model.ngf, c.train.batch_size) == (128, 128, 128)
    assert (c.langevin.posterior.n_steps, c.langevin.posterior.step_size, c.langevin.likelihood_sigma) == (30, 0.1, 0.1)
    assert (c.langevin.prior.n_steps, c.langevin.prior.step_size) == (60, 0.4)
    assert c.langevin.prior_init == "posterior_and_noise" and c.diffusion.init_from == "ema"
    assert (c.diffusion.n_steps, c.diffusion.p_uncond, c.diffusion.updates_per_iter) == (100, 0.2, 6)
    assert (c.diffusion.ema_decay, c.diffusion.ema_every) == (0.995, 10)
    assert (c.optim.g_lr, c.optim.e_lr, c.optim.q_lr, c.optim.q_weight_decay) == (2e-4, 1e-4, 2e-4, 1e-4)
    assert (c.optim.grad_clip, c.optim.lr_decay, c.optim.lr_decay_every, c.optim.lr_min) == (100.0, 0.99, 1000, 1e-5)


def test_overrides_apply_and_coerce() -> None:
    c = load_config(CONFIGS[0].parent / "quickstart.yaml",
                    ["train.iterations=7", "optim.g_lr=1e-3", "langevin.prior.noise=false", "method=lebm"])
    assert c.train.iterations == 7 and c.optim.g_lr == 1e-3 and c.langevin.prior.noise is False
    assert c.method == "lebm"
    assert isinstance(load_config(CONFIGS[0].parent / "quickstart.yaml", ["optim.g_lr=1"]).optim.g_lr, float)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.nzz=3", "model.nzz: unknown key; allowed keys here are arch, nz"),
        ("bogus=1", "bogus: unknown key"),
        ("train.batch_size=1.5", "train.batch_size = 1.5: expected an integer"),
        ("train.batch_size=true", "train.batch_size = True: expected an integer"),
        ("optim.g_lr=fast", "optim.g_lr = 'fast': expected a number"),
        ("langevin.prior.step_size=0", "langevin.prior.step_size = 0.0: must be >= 1e-06 and <= 10.0"),
        ("diffusion.p_uncond=1.5", "diffusion.p_uncond = 1.5: must be >= 0.0 and <= 1.0"),
        ("method=vae", "method = 'vae': allowed values are 'damc', 'lebm'"),
        ("model.arch=imagenet", "model.arch = 'imagenet': allowed values are 'cifar10'"),
        ("langevin.posterior=3", "langevin.posterior = 3: expected a section"),
        ("diffusion.logsnr_min=10", "diffusion.logsnr_min = 10.0: must be < diffusion.logsnr_max"),
        ("model.ntemb=130", None),  # even: fine
        ("model.ntemb=129", "model.ntemb = 129: must be even"),
        ("model.arch=cifar10", "model.arch = 'cifar10': data.source 'digits'"),
    ],
)
def test_bad_values_are_rejected_with_one_line(override: str, fragment: str | None) -> None:
    path = CONFIGS[0].parent / "quickstart.yaml"
    if fragment is None:
        load_config(path, [override])
        return
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_malformed_override_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.iterations")
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such/config.yaml")
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
