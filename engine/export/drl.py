"""DRL's T-level sampler (``method: drl``, docs/methods/drl.md §7) as an exported graph, every random number an input.

What is exported is the sampler of ``engine.sample``: x_T ~ N(0, I), then at every level t = T−1..0 the K Langevin
steps of the EMA network's conditional EBM from y⁰ = x̃ = x_{t+1}, and x_t = y/a_t. One graph, ``step``, is one
Langevin step at a level given as input:

    step(t (1,) int64, y, x̃, ξ (B, C, H, W)) -> y + ½s_t²·∇_y log p(y | x̃, t) + n·s_t·ξ,
    log p = f(y, t)/s_t² − r_t·‖y − x̃‖²/(2σ_{t+1}²)

with the schedule (s_t², 1/s_t², r_t/(2σ²)) and the levels' time features as constant tables, n the run's
``eval_noise_scale`` and ∇_y f written out (:func:`engine.models.drl.score_and_input_grad`: exporters take no
autograd in a graph). The driver loop (``sampler.json``'s ``driver``, :func:`drive`) runs T·K steps; the
unrolled T·K-step graph (180 network gradients at T6) takes too long to export to be the default.

Noise: the stream of ``engine.sample`` (one ``randn`` per sample, engine/sampling/noise.py), per sample
[x_T | ξ_{T−1,0} … ξ_{T−1,K−1} | … | ξ_{0,K−1}] (the learner's ``split_noise``). Verification: the artifact, loaded
as a user loads it, against the engine's eager fp32 sampler on a fresh draw of that stream.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

import engine
from engine.config import Config
from engine.export.artifact import (
    SIDECAR,
    ExportError,
    GraphIO,
    TensorSpec,
    atomic_directory,
    config_hash,
    weights_hash,
)
from engine.export.graphs import PRECISIONS
from engine.export.runner import FORMAT_MODULES
from engine.files import atomic_write
from engine.models.drl import DRLEnergyNet, frozen_u, score_and_input_grad
from engine.sampling.given import precision_autocast
from engine.sampling.noise import NoiseStream

__all__ = ["DRLSidecar", "StepGraph", "drive", "export_drl", "load_step", "verify"]

VERIFY_SEED = 1
DRIVER = ("x = x_T; for j, t in enumerate(T-1 .. 0): x_tilde = x; y = x_tilde; for k in 0..K-1: y = step(t=[t] int64, "
          "y, x_tilde, xi[j, k]); x = y / scale[t]  # images x in [-1, 1] (clip), (B, C, H, W)")


class Sampler(Protocol):
    """What the export reads from a DRL learner (engine.learners.drl.DRLLearner)."""

    cfg: Config
    net_ema: DRLEnergyNet
    iteration: int

    @property
    def device(self) -> torch.device: ...

    @property
    def tables(self) -> Any: ...

    def image_noise(self) -> int: ...

    def noise_width(self, kind: str, steps: int | None = None) -> int: ...

    def split_noise(self, flat: Tensor) -> tuple[Tensor, Tensor]: ...

    def sample_from(self, kind: str, noise: NoiseStream, b: int, *, steps: int | None = None,
                    step_size: float | None = None) -> Tensor: ...


class StepGraph(nn.Module):
    """One Langevin step at level t of the EMA net's conditional EBM (module docstring); fp32 in and out."""

    temb: Tensor  # (T, 4ch) time features of every level
    coef: Tensor  # (T, 4): s_t², 1/s_t², r_t/(2σ²), n·s_t

    def __init__(self, net: DRLEnergyNet, tables: Any, noise_scale: float, precision: str = "fp32") -> None:
        super().__init__()
        self.net = net
        levels = int(tables.step.shape[0])
        with torch.no_grad(), frozen_u(net):
            temb = net.time_features(torch.arange(levels, device=tables.step.device))
        self.register_buffer("temb", temb, persistent=False)
        coef = torch.stack([tables.step**2, tables.inv_s2, tables.pull, noise_scale * tables.step], dim=1)
        self.register_buffer("coef", coef.float(), persistent=False)
        self.dtype = PRECISIONS[precision]

    def forward(self, t: Tensor, y: Tensor, x_tilde: Tensor, xi: Tensor) -> Tensor:
        c = self.coef[t]  # (1, 4)
        with frozen_u(self.net), precision_autocast(y.device.type, self.dtype):
            _, g = score_and_input_grad(self.net, y, self.temb[t].expand(y.shape[0], -1))
        grad = g.float() * c[:, 1] - 2.0 * c[:, 2] * (y - x_tilde)
        return y + 0.5 * c[:, 0] * grad + c[:, 3] * xi


def drive(step: Callable[..., Tensor], x_top: Tensor, xi: Tensor, scale: list[float]) -> Tensor:
    """The sampler from x_T (B, C, H, W) with ξ (T, K, B, C, H, W) (level T−1 first) through a step graph."""
    levels, k = xi.shape[0], xi.shape[1]
    x = x_top
    for j, level in enumerate(range(levels - 1, -1, -1)):
        t = torch.full((1,), level, dtype=torch.int64, device=x.device)
        x_tilde, y = x, x
        for i in range(k):
            y = step(t, y, x_tilde, xi[j, i])
        x = y / scale[level]
    return x


@dataclass
class DRLSidecar:
    """``sampler.json`` of a DRL artifact (plain JSON types)."""

    format: str
    structure: str
    batch: int
    precision: str
    device: str
    levels: int
    langevin_steps: int
    image_shape: list[int]
    noise_scale: float
    scale: list[float]  # a_t per level: x_t = y / scale[t]
    graphs: dict[str, GraphIO]
    run: dict[str, Any]
    engine_version: str
    torch_version: str
    sampler: str = "drl"
    noise: dict[str, str] = field(default_factory=dict)
    driver: str = DRIVER
    verification: dict[str, Any] = field(default_factory=dict)
    export_seconds: float = 0.0
    files: dict[str, int] = field(default_factory=dict)
    sidecar_version: int = 1

    def write(self, directory: Path) -> None:
        text = json.dumps(asdict(self), indent=2) + "\n"
        atomic_write(directory / SIDECAR, lambda f: f.write(text.encode()))


def _spec(name: str, t: Tensor) -> TensorSpec:
    return TensorSpec(name, [int(s) for s in t.shape], str(t.dtype).removeprefix("torch."))


def _noise(learner: Sampler, seed: int, batch: int) -> tuple[Tensor, Tensor]:
    stream = NoiseStream(seed, learner.cfg.model.nz, learner.noise_width("drl"))
    return learner.split_noise(stream.take(batch).flatten(1))


def load_step(directory: Path, sidecar: DRLSidecar, device: torch.device) -> Callable[..., Tensor]:
    """The step graph of an artifact directory, as a torch callable (onnxruntime or torch.export's loader)."""
    fmt = FORMAT_MODULES[sidecar.format]
    return fmt.load(directory / sidecar.graphs["step"].file, sidecar.device, device)  # type: ignore[no-any-return]


def export_drl(learner: Sampler, spec: Any, out: Path, *, run_info: dict[str, Any], force: bool = False,
               log: Callable[[str], None] = lambda s: None) -> DRLSidecar:
    """Export, verify and write the artifact directory ``out`` (``spec``: engine.export.build.ExportSpec)."""
    if spec.structure != "per-step":
        raise ExportError("a DRL run exports one Langevin-step graph and its driver loop (--per-step); the unrolled "
                          "T*K-step graph (--whole) is not supported")
    if spec.format not in ("onnx", "pt2"):
        raise ExportError(f"--format {spec.format}: a DRL run's sampler exports to onnx or pt2")
    fmt = FORMAT_MODULES[spec.format]
    fmt.require(spec.device)
    c, net = learner.cfg.drl, learner.net_ema
    net.eval().requires_grad_(False)
    t0 = time.perf_counter()
    graph = StepGraph(net, learner.tables, c.eval_noise_scale, spec.precision).eval()
    x_top, xi = (v.to(spec.device) for v in _noise(learner, 0, spec.batch))
    # x̃ must be its own tensor: an input passed twice is traced as one (the graph would ignore x̃).
    example = (torch.full((1,), c.levels - 1, dtype=torch.int64, device=spec.device), x_top, x_top.clone(),
               xi[0, 0])
    with torch.no_grad():
        y = graph(*example)
    io = GraphIO(f"step{fmt.EXT}", [_spec(n, v) for n, v in zip(("t", "y", "x_tilde", "xi"), example, strict=True)],
                 [_spec("y_next", y)])
    scale = [float(v) for v in learner.tables.scale.tolist()]
    sidecar = DRLSidecar(
        format=spec.format, structure="per-step", batch=spec.batch, precision=spec.precision,
        device=spec.device.type, levels=c.levels, langevin_steps=c.langevin_steps, image_shape=list(x_top.shape[1:]),
        noise_scale=c.eval_noise_scale, scale=scale, graphs={"step": io},
        run={**run_info, "config_hash": config_hash(learner.cfg), "weights_sha256": weights_hash(net.state_dict())},
        engine_version=engine.__version__, torch_version=torch.__version__,
        noise={"x_T": "N(0, I), (B, C, H, W): the sampler's start",
               "xi": "N(0, I), (T, K, B, C, H, W): xi[j, k] is the noise of step k at level T-1-j",
               "stream": "python -m engine.sample draws them per sample from torch.Generator(cpu).manual_seed(seed): "
                         "one randn(width * nz) per sample = [x_T | xi_(T-1,0) .. xi_(T-1,K-1) | .. | xi_(0,K-1)]"})
    with atomic_directory(out, force=force) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        log("torch.export step (4 inputs) ...")
        ep = torch.export.export(graph, example, strict=False)
        log(f"{spec.format}: writing {io.file} ...")
        fmt.save(ep, tmp / io.file, io, example)
        sidecar.export_seconds = round(time.perf_counter() - t0, 2)
        sidecar.files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.name != SIDECAR}
        sidecar.write(tmp)
        sidecar.verification = verify(learner, tmp, sidecar, spec.device)
        sidecar.write(tmp)
    return sidecar


def verify(learner: Sampler, directory: Path, sidecar: DRLSidecar, device: torch.device) -> dict[str, Any]:
    """The artifact on a fresh draw (seed VERIFY_SEED) against the engine's eager fp32 sampler on the same noise."""
    stream = NoiseStream(VERIFY_SEED, learner.cfg.model.nz, learner.noise_width("drl"))
    with torch.no_grad():
        want = learner.sample_from("drl", stream, sidecar.batch)
    x_top, xi = _noise(learner, VERIFY_SEED, sidecar.batch)
    entry: dict[str, Any] = {"noise_seed": VERIFY_SEED, "reference": "engine eager fp32 T-level sampler, same noise"}
    try:
        step = load_step(directory, sidecar, device)
        with torch.no_grad():
            got = drive(step, x_top.to(device), xi.to(device), sidecar.scale)
    except Exception as exc:  # noqa: BLE001 - e.g. a runtime without a kernel for this precision
        entry["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return entry
    diff = (got.float() - want.to(got.device)).abs()
    entry.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
                 finite=bool(torch.isfinite(got).all()))
    if sidecar.precision == "fp32" and not entry["max_abs_diff"] <= 1e-3:
        raise ExportError(f"the {sidecar.format} artifact differs from the engine by {entry['max_abs_diff']:.3g} "
                          "(fp32; expected <= 1e-3): not written")
    return entry
