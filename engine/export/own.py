"""Export a method's own sampler graphs (:attr:`engine.learners.base.Method.export_graphs`; DRL's T-level sampler):
``torch.export`` every graph, check it holds only ATen ops, save it in the requested format, load it back as a
user would and drive it on a fresh noise draw against the engine's eager fp32 sampler; all in a temporary
directory renamed into place (:func:`engine.export.artifact.atomic_directory`).

The artifact: the graph files and ``sampler.json`` (:class:`OwnSidecar`: the method, the graphs' interfaces, the
driver loop and noise recipe in words, the constants a driver needs, the run and its weights' hash, the
verification). ``engine.sample RUN --from-export DIR`` drives it with the method's own loop
(:meth:`SamplerGraphs.drive <engine.learners.base.SamplerGraphs>`; a deployment follows the sidecar's words), after
:func:`open_artifact` has checked that it was exported from that run's weights.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import engine
from engine.export.artifact import (
    MAX_BATCH,
    SIDECAR,
    ExportError,
    GraphIO,
    TensorSpec,
    atomic_directory,
    check_files,
    config_hash,
    read_raw_sidecar,
    weights_hash,
)
from engine.export.build import ExportSpec, non_aten_ops
from engine.export.graphs import PRECISIONS
from engine.export.runner import FORMAT_MODULES
from engine.files import atomic_write
from engine.learners import Learner, Method
from engine.learners.base import SamplerGraphs
from engine.sampling.noise import NoiseStream

__all__ = ["FORMATS", "OwnArtifact", "OwnSidecar", "export_own", "load_graphs", "open_artifact", "read_own_artifact",
           "read_own_sidecar"]

FORMATS = ("onnx", "pt2")  # the portable formats, loaded back here without a compiler
VERIFY_SEED = 1  # the noise of the verification draw (the example inputs use seed 0)


@dataclass
class OwnSidecar:
    """``sampler.json`` of a method's own sampler (plain JSON types)."""

    sampler: str  # the method
    format: str
    batch: int
    precision: str
    device: str
    graphs: dict[str, GraphIO]
    driver: str
    noise: dict[str, str]
    info: dict[str, Any]
    run: dict[str, Any]
    engine_version: str
    torch_version: str
    structure: str = "per-step"
    verification: dict[str, Any] = field(default_factory=dict)
    export_seconds: float = 0.0
    files: dict[str, int] = field(default_factory=dict)
    sidecar_version: int = 1

    def write(self, directory: Path) -> None:
        text = json.dumps(asdict(self), indent=2) + "\n"
        atomic_write(directory / SIDECAR, lambda f: f.write(text.encode()))


def _parse(raw: dict[str, Any]) -> OwnSidecar:
    graphs = {k: GraphIO(g["file"], [TensorSpec(**s) for s in g["inputs"]], [TensorSpec(**s) for s in g["outputs"]])
              for k, g in raw["graphs"].items()}
    return OwnSidecar(**{**raw, "graphs": graphs})


def read_own_sidecar(directory: Path) -> OwnSidecar:
    return _parse(json.loads((directory / SIDECAR).read_text()))


def read_own_artifact(path: Path, method: str) -> tuple[Path, OwnSidecar]:
    """(directory, sidecar) of an artifact of a ``method`` run's own sampler; ExportError naming the fix otherwise
    (another method's artifact, a DAMC prior sampler's, an unreadable sidecar, a missing graph file)."""
    directory, raw = read_raw_sidecar(path)
    sampler = raw.get("sampler")
    if sampler != method:
        what = f"a {sampler.upper()} run's sampler" if isinstance(sampler, str) else "a DAMC prior sampler"
        raise ExportError(f"--from-export {path}: holds {what}, not a {method.upper()} run's; pass the run it was "
                          "exported from")
    try:
        sidecar = _parse(raw)
        if (sidecar.sidecar_version != 1 or sidecar.format not in FORMATS or sidecar.precision not in PRECISIONS
                or not 1 <= sidecar.batch <= MAX_BATCH or not sidecar.graphs or not isinstance(sidecar.run, dict)):
            raise ValueError(f"sidecar_version {sidecar.sidecar_version}, format {sidecar.format!r}, precision "
                             f"{sidecar.precision!r}, batch {sidecar.batch}, graphs {sorted(sidecar.graphs)}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExportError(f"--from-export {path}: unreadable {SIDECAR} ({exc}); export again") from None
    check_files(path, directory, sidecar.graphs)
    return directory, sidecar


@dataclass
class OwnArtifact:
    """An artifact of a method's own sampler, loaded and checked against the run: ``images(stream, rows)``."""

    sidecar: OwnSidecar
    graphs: SamplerGraphs  # the run's, for the driver loop (never traced or exported here)
    loaded: dict[str, Callable[..., Tensor]]  # the artifact's graphs as torch callables
    note: str | None = None  # nothing to report (ArtifactSampler's interface: driven eagerly, never captured)

    def draw(self, stream: NoiseStream, rows: int) -> Tensor:
        """The next ``rows`` (≤ the artifact's batch) images (rows, C, H, W) on ``stream``."""
        with torch.no_grad():
            return self.graphs.drive(self.loaded, stream, rows)


def open_artifact(method: Method, learner: Learner, path: Path, device: torch.device) -> OwnArtifact:
    """Load ``path`` for sampling ``learner``'s run: ExportError (one line, before any image) when the artifact was
    exported from other weights, its format's runtime is missing, or a graph file does not load."""
    assert method.export_graphs is not None
    directory, sidecar = read_own_artifact(path, method.name)
    FORMAT_MODULES[sidecar.format].require(device)
    graphs = method.export_graphs(learner, sidecar.batch, PRECISIONS[sidecar.precision], device)
    for name, g in graphs.graphs.items():  # the run's interface: what the driver will feed the loaded graphs
        io = sidecar.graphs.get(name)
        if io is None or [s.shape for s in io.inputs] != [list(t.shape) for t in g.example]:
            raise ExportError(f"--from-export {path}: its graph {name!r} does not take this run's inputs "
                              f"({[s.shape for s in io.inputs] if io else 'missing'}); export this run again")
    if weights_hash(graphs.weights) != sidecar.run.get("weights_sha256"):
        r = sidecar.run
        raise ExportError(f"--from-export {path} was exported from {r.get('run_dir')}/{r.get('checkpoint')} "
                          f"(iteration {r.get('iteration')}), not from this checkpoint; pass that --checkpoint or "
                          "export this one")
    try:
        loaded = load_graphs(directory, sidecar, device)
    except Exception as exc:  # noqa: BLE001 - a corrupt graph file surfaces as the loader's own exception
        raise ExportError(f"--from-export {path}: cannot load the {sidecar.format} graphs "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                          "export again") from None
    return OwnArtifact(sidecar, graphs, loaded)


def _spec(name: str, t: Tensor) -> TensorSpec:
    return TensorSpec(name, [int(s) for s in t.shape], str(t.dtype).removeprefix("torch."))


def load_graphs(directory: Path, sidecar: OwnSidecar, device: torch.device) -> dict[str, Callable[..., Tensor]]:
    """Every graph of an artifact as a torch callable (onnxruntime, or torch.export's loader for pt2)."""
    fmt = FORMAT_MODULES[sidecar.format]
    return {name: fmt.load(directory / g.file, sidecar.device, device) for name, g in sidecar.graphs.items()}


def export_own(method: Method, learner: Learner, spec: ExportSpec, out: Path, *, run_info: dict[str, Any],
               force: bool = False, log: Callable[[str], None] = lambda s: None) -> OwnSidecar:
    """Export, verify and write ``out`` for a method with :attr:`Method.export_graphs`."""
    assert method.export_graphs is not None
    name = method.name.upper()
    if spec.structure != "per-step":
        raise ExportError(f"a {name} run exports its sampler's step graph and the driver loop (--per-step); an "
                          "unrolled --whole graph is not offered")
    if spec.format not in FORMATS:
        raise ExportError(f"--format {spec.format}: a {name} run's sampler exports to {' or '.join(FORMATS)}")
    fmt = FORMAT_MODULES[spec.format]
    fmt.require(spec.device)
    t0 = time.perf_counter()
    graphs: SamplerGraphs = method.export_graphs(learner, spec.batch, PRECISIONS[spec.precision], spec.device)
    ios: dict[str, GraphIO] = {}
    for gname, g in graphs.graphs.items():
        with torch.no_grad():
            y = g.module(*g.example)
        ios[gname] = GraphIO(f"{gname}{fmt.EXT}", [_spec(n, v) for n, v in zip(g.inputs, g.example, strict=True)],
                             [_spec(g.output, y)])
    sidecar = OwnSidecar(
        sampler=method.name, format=spec.format, batch=spec.batch, precision=spec.precision, device=spec.device.type,
        graphs=ios, driver=graphs.driver, noise=graphs.noise, info=graphs.info,
        run={**run_info, "config_hash": config_hash(learner.cfg), "weights_sha256": weights_hash(graphs.weights)},
        engine_version=engine.__version__, torch_version=torch.__version__)
    with atomic_directory(out, force=force) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's pytree pickling, inside torch itself
        for gname, g in graphs.graphs.items():
            log(f"torch.export {gname} ({len(g.example)} inputs) ...")
            ep = torch.export.export(g.module, g.example, strict=False)
            bad = non_aten_ops(ep)
            if bad:
                raise ExportError(f"graph {gname} holds non-ATen ops after run_decompositions(): {', '.join(bad)}")
            log(f"{spec.format}: writing {ios[gname].file} ...")
            fmt.save(ep, tmp / ios[gname].file, ios[gname], g.example)
        sidecar.export_seconds = round(time.perf_counter() - t0, 2)
        sidecar.files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.name != SIDECAR}
        sidecar.write(tmp)
        sidecar.verification = verify(graphs, tmp, sidecar, spec.device)
        sidecar.write(tmp)
    return sidecar


def verify(graphs: SamplerGraphs, directory: Path, sidecar: OwnSidecar, device: torch.device) -> dict[str, Any]:
    """The artifact, loaded back, on a fresh draw (seed VERIFY_SEED) against the engine's eager fp32 sampler."""
    want = graphs.reference(graphs.stream(VERIFY_SEED), sidecar.batch)
    entry: dict[str, Any] = {"noise_seed": VERIFY_SEED, "reference": "engine eager fp32 sampler, same noise"}
    try:
        loaded = load_graphs(directory, read_own_sidecar(directory), device)
        with torch.no_grad():
            got = graphs.drive(loaded, graphs.stream(VERIFY_SEED), sidecar.batch)
    except Exception as exc:  # noqa: BLE001 - e.g. a runtime without a kernel for this precision
        entry["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return entry
    diff = (got.float() - want).abs()
    entry.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
                 finite=bool(torch.isfinite(got).all()))
    if sidecar.precision == "fp32" and not entry["max_abs_diff"] <= 1e-3:
        raise ExportError(f"the {sidecar.format} artifact differs from the engine by {entry['max_abs_diff']:.3g} "
                          "(fp32; expected <= 1e-3): not written")
    return entry
