"""Typed run configuration: dataclasses loaded from YAML, with ``a.b=value`` overrides.

Every default is the authors' code value (spec ``damc.md`` §3, marked [code]); where the paper differs,
the paper's value is reachable through an option named in the field's comment. Validation happens
before anything runs: an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError`
with one line naming the field, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config value is unknown, mistyped or out of range. The message is one line."""


def _num(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None) -> Any:
    """A numeric field with an allowed range, checked by :func:`validate`."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt})


# ---------------------------------------------------------------------------------------------------------
# Sections


@dataclass
class ModelConfig:
    """Network sizes (spec §1). Layer stacks are fixed per ``arch``; widths are parameters."""

    arch: Literal["cifar10", "svhn", "celeba64", "celebahq256", "mnist", "digits"] = "cifar10"
    nz: int = _num(128, ge=1)  # latent dimension: cifar10 128, svhn 100, celeba64 100, celebahq 128, mnist 8
    ngf: int = _num(128, ge=1)  # generator base width (svhn 64)
    ndf: int = _num(200, ge=1)  # energy MLP hidden width
    nif: int = _num(64, ge=1)  # encoder base width ([code] MNIST uses 128; [paper] 64)
    nemb: int = _num(1024, ge=1)  # image embedding (context) width
    unet_nf: int = _num(4, ge=1)  # U-Net width factor f (blocks 32·f and 64·f wide); Table S6 ablates it
    ntemb: int = _num(128, ge=4)  # sinusoidal time-embedding width (even: sin and cos halves)


@dataclass
class DataConfig:
    """Where the training images come from, in the datasets' distributed formats (spec §3, §4)."""

    # cifar10: cifar-10-batches-py (or the .tar.gz) under root; svhn: train_32x32.mat / test_32x32.mat;
    # mnist: the four IDX files (anomaly split, spec §4); folder: images under root/<split subdir>;
    # digits: the 8x8 set inside scikit-learn (quickstart).
    source: Literal["digits", "folder", "mnist", "cifar10", "svhn"] = "folder"
    root: str = ""  # directory holding the dataset files
    download: bool = True  # cifar10 / svhn / mnist: fetch the official files when absent (checksums verified)
    # Batch loader (engine/data/loaders.py). auto: GPU-resident when the decoded set fits 1/4 of the GPU, DALI for
    # larger folders (if installed), else the CPU loader; all give the same sample order and resumable state.
    loader: Literal["auto", "dali", "gpu", "torch"] = "auto"
    train_subdir: str = "train"
    test_subdir: str = "test"
    flip: bool = True  # RandomHorizontalFlip(0.5); off for MNIST / digits
    limit: int = _num(0, ge=0)  # 0 = all images; >0 caps the number of files read (smoke runs)
    heldout_digit: int = _num(1, ge=0, le=9)  # mnist: the anomalous class (spec §4)


@dataclass
class DiffusionConfig:
    """The latent diffusion amortizer Q (spec §2) and how it is trained (spec §3 step 5, §2 EMA)."""

    n_steps: int = _num(100, ge=2)  # ancestral sampling steps (n_interval); the paper ablates 10 / 50
    logsnr_min: float = -5.1
    logsnr_max: float = 9.8
    p_uncond: float = _num(0.2, ge=0.0, le=1.0)  # probability that a training row uses the random null token
    # "mask": each row is conditional or unconditional with p_uncond (image runs);
    # "both": each update sums the conditional and unconditional losses (MNIST anomaly script).
    uncond_loss: Literal["mask", "both"] = "mask"
    updates_per_iter: int = _num(6, ge=0)  # M amortizer updates per iteration
    sampler_noise: bool = True  # Q_with_noise
    ema_decay: float = _num(0.995, ge=0.0, le=1.0)
    ema_every: int = _num(10, ge=1)
    # [code] the EMA copy initialises both training chains; [paper] Listing 2 uses the online Q.
    init_from: Literal["ema", "online"] = "ema"


@dataclass
class ChainConfig:
    """One Langevin chain: z ← z − ½s²∇U(z) + s·ε (paper eq. 3 / 16)."""

    n_steps: int = _num(30, ge=0)
    step_size: float = _num(0.1, gt=0.0)
    noise: bool = True


@dataclass
class LangevinConfig:
    """Training-time chains (spec §3 steps 3-4)."""

    posterior: ChainConfig = field(default_factory=lambda: ChainConfig(n_steps=30, step_size=0.1))
    # [code] 0.4 (the LEBM default); [paper] says 0.1 for both chains.
    prior: ChainConfig = field(default_factory=lambda: ChainConfig(n_steps=60, step_size=0.4))
    likelihood_sigma: float = _num(0.1, gt=0.0)  # σ of N(G(z), σ²I): 0.1 image runs, 1.0 MNIST
    # Prior-chain start for DAMC: the amortizer's draws plus as many N(0, I) chains (2B, image runs),
    # or the draws alone (B, MNIST anomaly script). LEBM always starts B chains from N(0, I).
    prior_init: Literal["posterior_and_noise", "posterior"] = "posterior_and_noise"


@dataclass
class OptimConfig:
    """Optimizers (spec §3 table) and the step-wise learning-rate decay."""

    g_lr: float = _num(2e-4, gt=0.0)
    e_lr: float = _num(1e-4, gt=0.0)
    q_lr: float = _num(2e-4, gt=0.0)
    beta1: float = _num(0.5, ge=0.0, lt=1.0)
    beta2: float = _num(0.999, ge=0.0, lt=1.0)
    q_weight_decay: float = _num(1e-4, ge=0.0)  # AdamW for Q; 0 in the MNIST script
    grad_clip: float = _num(100.0, gt=0.0)  # total-norm clip for every network
    lr_decay: float = _num(0.99, gt=0.0, le=1.0)
    lr_decay_every: int = _num(1000, ge=1)
    lr_min: float = _num(1e-5, ge=0.0)


@dataclass
class TrainConfig:
    batch_size: int = _num(128, ge=1)
    iterations: int = _num(200_000, ge=1)  # the paper: "converges within 200K"
    seed: int = _num(0, ge=0)
    # Non-finite losses, energies or latents: "stop" keeps the last good checkpoint and exits;
    # "rollback" reloads it and continues with a different seed (at most max_rollbacks times).
    on_divergence: Literal["stop", "rollback"] = "stop"
    max_rollbacks: int = _num(3, ge=0)


@dataclass
class EvalConfig:
    """Sample grids written during training (spec §4 protocols, small counts)."""

    n_samples: int = _num(64, ge=1)  # images per grid
    lebm_steps: int = _num(100, ge=0)  # Langevin prior sampling from N(0, I) for the "LEBM" grid
    lebm_step_size: float = _num(0.4, gt=0.0)
    recon_steps: int = _num(10, ge=0)  # noise-free posterior steps after the conditional draw
    recon_step_size: float = _num(0.1, gt=0.0)


@dataclass
class LogConfig:
    run_dir: str = "runs/default"
    log_every: int = _num(50, ge=1)  # metrics line + divergence check (the only host reads of losses)
    sample_every: int = _num(1000, ge=1)  # PNG grids
    checkpoint_every: int = _num(5000, ge=1)  # plus one at the end and on SIGINT/SIGTERM
    keep_checkpoints: int = _num(3, ge=1)  # the newest K are kept
    progress: bool = True  # tqdm progress bar; false (or --quiet) for batch jobs
    tensorboard: bool = False  # event files beside metrics.jsonl (needs the tensorboard package)


@dataclass
class SystemConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present, else CPU
    threads: int = _num(0, ge=0)  # CPU intra-op threads; 0 = torch default


Switch = Literal["auto", "on", "off"]


@dataclass
class PerfConfig:
    """Speed switches (``engine/runtime/perf.py`` decides what they mean on the device at hand).

    ``reference`` is the faithful eager fp32 path; ``fast`` turns on every switch left at ``auto`` that the
    device supports (CUDA graphs, bf16 autocast, torch.compile, Triton kernels, channels_last, TF32, cudnn
    autotuning). A switch set to ``on`` or ``off`` overrides the preset. A missing capability falls back
    with one log line.
    """

    preset: Literal["reference", "fast"] = "reference"
    graphs: Switch = "auto"  # the 30/60-step chains and the 100-step sampler as CUDA graphs
    compile: Switch = "auto"  # torch.compile of the per-step functions
    amp: Switch = "auto"  # bf16 autocast for G, encoder and U-Net (z, updates, energies stay fp32)
    kernels: Switch = "auto"  # fused Triton Langevin / ancestral-step kernels
    channels_last: Switch = "auto"
    tf32: Switch = "auto"  # TF32 for the remaining fp32 matmuls / convolutions
    cudnn_benchmark: Switch = "auto"
    # Issue 14 (engine/runtime/{updates,sampler,convt}.py; the GPU benchmark decides the defaults):
    iteration_graph: Switch = "auto"  # the whole iteration as one CUDA graph (needs graphs and fused_optim)
    fused_optim: Switch = "auto"  # fused, capturable Adam/AdamW with the LR as a device tensor
    hoist_sampler: Switch = "auto"  # the U-Net's z-independent context for all 100 steps at once, merged GEMMs
    amp_unet: Switch = "auto"  # with amp: the U-Net in bf16 too (off: fp32, TF32 if on); the encoder follows amp
    side_streams: Switch = "off"  # in the iteration graph: prior chain beside the posterior, Q beside G and E
    g_gemm_first: Switch = "off"  # G's first ConvTranspose2d (1×1 input) as one GEMM
    g_last: Literal["convt", "convt_pad", "conv_pad"] = "convt"  # G's 3-channel last layer, channels padded to 8
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    cudnn_benchmark_limit: int = _num(10, ge=0)  # algorithms cudnn autotuning tries per conv (0: all)


@dataclass
class Config:
    method: Literal["damc", "lebm"] = "damc"  # lebm: short-run chains from N(0, I) (spec §8)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    langevin: LangevinConfig = field(default_factory=LangevinConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)


# ---------------------------------------------------------------------------------------------------------
# Building and validating


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} = {value!r}: expected a section (mapping of keys), got {type(value).__name__}")
        return _build(tp, value, path)
    if origin is Literal:
        if not any(type(value) is type(a) and value == a for a in typing.get_args(tp)):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{path} = {value!r}: allowed values are {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation for {path}: {tp}")  # keep the schema simple
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "2e-4" (no dot) as a string; accept it as the number it plainly is.
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported annotation for {path}: {tp}")
    if not ok:
        raise ConfigError(f"{path} = {value!r}: expected {_describe(tp)}")
    return float(value) if tp is float else value


def _check_range(path: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    bounds = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
    for key, _, ok in bounds:
        b = meta.get(key)
        if b is not None and not ok(value, b):
            allowed = " and ".join(f"{s} {meta[k]}" for k, s, _ in bounds if meta.get(k) is not None)
            raise ConfigError(f"{path} = {value!r}: must be {allowed}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key; allowed keys here are {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        path = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(path, value, hints[name])
        if isinstance(kwargs[name], (int, float)) and not isinstance(kwargs[name], bool):
            _check_range(path, kwargs[name], fields[name].metadata)
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    """Re-check a config built in code and the cross-field rules. Returns ``cfg``."""
    cfg = from_dict(to_dict(cfg))
    if cfg.diffusion.logsnr_min >= cfg.diffusion.logsnr_max:
        raise ConfigError(
            f"diffusion.logsnr_min = {cfg.diffusion.logsnr_min!r}: must be < diffusion.logsnr_max "
            f"({cfg.diffusion.logsnr_max!r})"
        )
    if cfg.model.ntemb % 2:
        raise ConfigError(f"model.ntemb = {cfg.model.ntemb!r}: must be even (sin and cos halves)")
    if cfg.data.source != "digits" and not cfg.data.root:
        raise ConfigError(f"data.root = '': the {cfg.data.source} source needs the directory that holds the data")
    if cfg.data.source == "mnist" and cfg.data.flip:
        raise ConfigError("data.flip = True: MNIST is never flipped (spec §3, anomaly script); set data.flip=false")
    if cfg.data.source == "digits" and cfg.model.arch != "digits":
        raise ConfigError(f"model.arch = {cfg.model.arch!r}: data.source 'digits' (8x8) needs model.arch 'digits'")
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    return _build(Config, data)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[: i + 1])}: is a value, not a section; cannot set {dotted}")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` → ``("a.b", value)``; the value is read as YAML (``1e-4``, ``true``, ``[1, 2]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{text!r}: an override must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read ``path`` (YAML; ``None`` = all defaults), apply ``a.b=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r}: not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r}: not valid YAML ({str(exc).splitlines()[0]})") from None
        data = loaded or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r}: expected a mapping at the top level")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    return validate(from_dict(data))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# Fields that may change when a run is resumed: they do not alter what the next iteration computes.
RESUMABLE_CHANGES = ("train.iterations", "train.on_divergence", "train.max_rollbacks", "log.", "eval.",
                     "system.", "perf.", "data.root", "data.download", "data.loader")


def resume_differences(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, except the ones a resume may change."""
    out = []
    for key in sorted(set(saved) | set(new)):
        path = f"{prefix}{key}"
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += resume_differences(a, b, path + ".")
        elif a != b and not any(path == r or (r.endswith(".") and path.startswith(r)) for r in RESUMABLE_CHANGES):
            out.append(f"{path} ({a!r} in the run, {b!r} now)")
    return out
