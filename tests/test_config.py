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


# ---------------------------------------------------------------------------------------------------------
# Every field, every kind of bad value (issue 13 items 1, 2, 7)

import dataclasses  # noqa: E402
import math  # noqa: E402
import typing  # noqa: E402

from engine.config import SEED_MAX, describe_fields  # noqa: E402
from engine.schema import num, require_bounds  # noqa: E402

QUICK = CONFIGS[0].parent / "quickstart.yaml"


def leaf_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, type, dataclasses.Field[typing.Any]]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += leaf_fields(tp, path)
        else:
            out.append((path, tp, f))
    return out


FLOATS = [p for p, tp, _ in leaf_fields() if tp is float]
INTS = [(p, f) for p, tp, f in leaf_fields() if tp is int]
STRINGS = [p for p, tp, _ in leaf_fields() if tp is str]


def refused(overrides: list[str], *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(QUICK, overrides)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, (overrides, msg)
    return msg


def test_every_numeric_field_has_both_bounds() -> None:
    assert len(FLOATS) >= 18 and len(INTS) >= 25
    for path, f in INTS:
        assert f.metadata.get("le") is not None or f.metadata.get("lt") is not None, path

    @dataclasses.dataclass
    class Bad:
        x: int = num(1, ge=0)

    with pytest.raises(TypeError, match="x needs a lower and an upper bound"):
        require_bounds(Bad)


NON_FINITE = ["inf", "-inf", ".inf", "-.inf", "nan", ".nan", "NaN", "1e400", "-1e400", "1.0e400", "1e-400000x"]


@pytest.mark.parametrize("field", FLOATS)
@pytest.mark.parametrize("value", NON_FINITE)
def test_every_float_field_refuses_non_finite_values(field: str, value: str) -> None:
    msg = refused([f"{field}={value}"], field)
    assert "finite" in msg or "expected a number" in msg


@pytest.mark.parametrize("field", FLOATS)
def test_every_float_field_refuses_absurd_magnitudes(field: str) -> None:
    for value in ("1e30", "-1e30", str(10**400)):
        refused([f"{field}={value}"], field, "must be")


@pytest.mark.parametrize(("field", "f"), INTS, ids=[p for p, _ in INTS])
def test_every_int_field_refuses_values_outside_its_documented_range(field: str, f: dataclasses.Field) -> None:  # type: ignore[type-arg]
    lo = f.metadata["ge"] if f.metadata.get("ge") is not None else f.metadata["gt"] + 1
    hi = f.metadata["le"] if f.metadata.get("le") is not None else f.metadata["lt"] - 1
    for value in (lo - 1, hi + 1, 10**24, 2**64 - 1, -(2**63), -1):
        if lo <= value <= hi:
            continue
        refused([f"{field}={value}"], f"{field} = ", "must be >=")
    for value in ("1.5", "true", "''", "1e3", "[1]", "{a: 1}", "1" * 5000):
        refused([f"{field}={value}"], field)
    assert f"{field} = " in "\n".join(describe_fields()) and f"<= {hi}" in "\n".join(describe_fields())


@pytest.mark.parametrize("field", STRINGS)
@pytest.mark.parametrize("value", ["bad\x00nul", "line\nbreak", "tab\there", "undecodable-\udcff", "x" * 5000])
def test_every_string_field_refuses_control_characters_and_non_utf8(field: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(QUICK, [f"{field}={value}"] if "\n" not in value else [])  # newline: set via a dict below
        from_dict({field.split(".")[0]: {field.split(".")[1]: value}})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["log.run_dir=", "log.run_dir='  '", "data.train_subdir=", "data.test_subdir="])
def test_empty_paths_are_refused(override: str) -> None:
    refused([override], override.split("=")[0])


def test_seed_is_bounded_so_every_derived_seed_fits() -> None:
    assert load_config(QUICK, [f"train.seed={SEED_MAX}"]).train.seed == SEED_MAX
    refused([f"train.seed={SEED_MAX + 1}"], "train.seed")
    refused(["train.seed=123456789012345678901234"], "train.seed", "<= 4294967295")
    assert SEED_MAX + 1 + 1_000_003 * 100 < 2**64  # grid seed and every rollback seed stay in range


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("train: {seed: 1}\ntrain: {seed: 2}\n", "key 'train' appears twice (lines 1 and 2)"),
        ("train:\n  seed: 1\n  seed: 2\n", "key 'seed' appears twice"),
        ("train: {seed: 010}\n", "010: a leading zero makes YAML 1.1 read this as octal (8)"),
        ("train: {iterations: 1:30}\n", "base-60"),
        ("train: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping of sections"),
        ("train: {seed: " + "9" * 5000 + "}\n", "config file"),
    ],
)
def test_yaml_surprises_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_leading_zero_override_and_string_with_leading_zero() -> None:
    refused(["train.seed=010"], "octal (8)", "write 10")
    refused(["train.seed=09"], "without the leading zero")


def test_config_file_problems_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("train: {seed: 1}  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty, ["data.source=digits", "model.arch=digits"]).method == "damc"


@pytest.mark.parametrize("text", [" =1", "=1", ".a=1", "a.=1", "a..b=1", "  .  =3"])
def test_empty_keys_are_named_as_such(text: str) -> None:
    with pytest.raises(ConfigError, match="section.key=value") as info:
        parse_override(text)
    assert "empty key" in str(info.value)


def test_yaml_on_off_reads_as_a_switch() -> None:
    c = load_config(QUICK, ["perf.graphs=on", "perf.amp=off"])
    assert (c.perf.graphs, c.perf.amp) == ("on", "off")


def test_show_config_lists_every_field_with_its_doc() -> None:
    lines = describe_fields()
    leaves = [p for p, _, _ in leaf_fields()]
    for path in leaves:
        assert any(line.strip().startswith(f"{path} = ") for line in lines), path
    prior = next(line for line in lines if line.strip().startswith("langevin.prior.step_size"))
    assert "= 0.4" in prior  # section defaults, not the ChainConfig class default
    assert all(len(line.split("  ")) >= 2 for line in lines)
    assert math.isfinite(load_config(QUICK).optim.grad_clip)
