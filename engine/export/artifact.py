"""An exported sampler on disk: a directory holding the graph files and ``sampler.json``, written atomically.

Layout (``--out DIR``)::

    DIR/sampler.json                      the sidecar (below)
    DIR/sampler.<ext>                     --whole: one graph
    DIR/null_embedding.<ext>, step.<ext>, generator.<ext>     --per-step: three graphs

The sidecar says what the artifact is and how to feed it: engine and torch versions, the run, checkpoint,
iteration, config hash and a hash of the exported weights; format, structure, batch, precision, device;
every graph's file, input and output names, shapes and dtypes; the noise recipe; the driver loop of the
per-step structure; and the largest difference to the engine measured right after the export.

The directory is assembled under a temporary name beside ``DIR``, every file fsynced, then renamed into
place: a crash or a full disk leaves no half-written artifact under the final name (``--force`` replaces an
old artifact only after the new one is complete).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.config import Config, to_dict
from engine.files import atomic_write

__all__ = [
    "FORMATS",
    "MAX_BATCH",
    "SIDECAR",
    "STRUCTURES",
    "ExportError",
    "GraphIO",
    "Sidecar",
    "TensorSpec",
    "atomic_directory",
    "check_files",
    "prior_weights_hash",
    "config_hash",
    "read_raw_sidecar",
    "read_sidecar",
    "weights_hash",
    "write_sidecar",
]

SIDECAR = "sampler.json"
MAX_BATCH = 65536  # the static batch of an export (engine.export --batch) and of a sidecar read back
SIDECAR_VERSION = 1
FORMATS = ("onnx", "pt2", "aoti", "tensorrt")
STRUCTURES = ("per-step", "whole")
PER_STEP_GRAPHS = ("null_embedding", "step", "generator")


class ExportError(RuntimeError):
    """A bad export or sampling request, or an unusable artifact; the message names the fix (one line)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str  # "float32", "int64"


@dataclass(frozen=True)
class GraphIO:
    """One graph file and its interface."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass
class Sidecar:
    """``sampler.json``; see the module docstring. Plain JSON types only."""

    format: str
    structure: str
    batch: int
    precision: str
    device: str
    n_steps: int
    nz: int
    nemb: int
    image_shape: list[int]
    sampler_noise: bool
    graphs: dict[str, GraphIO]
    run: dict[str, Any]  # run_dir, checkpoint, iteration, method, arch, config_hash, weights_sha256
    engine_version: str
    torch_version: str
    amortizer: str = "online"
    noise: dict[str, str] = field(default_factory=dict)
    driver: str = ""
    verification: dict[str, Any] = field(default_factory=dict)
    export_seconds: float = 0.0
    files: dict[str, int] = field(default_factory=dict)  # file -> bytes
    sidecar_version: int = SIDECAR_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def config_hash(cfg: Config) -> str:
    """sha256 (first 16 hex digits) of the resolved config as canonical JSON."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(*state_dicts: Mapping[str, torch.Tensor]) -> str:
    """sha256 (first 16 hex digits) over state dicts (names, dtypes, shapes and bytes): which weights an artifact
    was exported from, so ``engine.sample --from-export`` can refuse a mismatched run before any work."""
    h = hashlib.sha256()
    for i, sd in enumerate(state_dicts):
        for name, t in sorted(sd.items()):
            h.update(f"{i}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def prior_weights_hash(amortizer: Mapping[str, torch.Tensor], generator: Mapping[str, torch.Tensor]) -> str:
    """:func:`weights_hash` of what the prior sampler runs (null token, U-Net, G), from the state dicts of the
    amortizer and G as a checkpoint stores them (the image encoder is not part of it)."""

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in amortizer.items() if k.startswith(prefix)}

    return weights_hash(part("null_token."), part("unet."), generator)


def write_sidecar(directory: Path, sidecar: Sidecar) -> None:
    atomic_write(directory / SIDECAR, lambda f: f.write(sidecar.to_json().encode()))


def _spec_list(raw: Any, where: str) -> list[TensorSpec]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected a list")
    return [TensorSpec(str(d["name"]), [int(s) for s in d["shape"]], str(d["dtype"])) for d in raw]


def read_raw_sidecar(path: Path) -> tuple[Path, dict[str, Any]]:
    """(artifact directory, ``sampler.json`` as parsed JSON) for an artifact directory or its ``sampler.json``;
    ExportError when there is none or it is not a JSON object."""
    directory = path if path.is_dir() else path.parent
    file = directory / SIDECAR
    if not path.exists():
        raise ExportError(f"--from-export {path}: no such file or directory")
    if not file.is_file():
        raise ExportError(f"--from-export {path}: no {SIDECAR} there; pass a directory written by "
                          "python -m engine.export")
    try:
        raw = json.loads(file.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"a JSON {type(raw).__name__}, not an object")
    except (OSError, ValueError) as exc:
        raise ExportError(f"--from-export {path}: unreadable {SIDECAR} ({exc}); export again") from None
    return directory, raw


def read_sidecar(path: Path) -> tuple[Path, Sidecar]:
    """(artifact directory, sidecar) of a DAMC prior sampler's artifact directory or its ``sampler.json``;
    ExportError otherwise."""
    directory, raw = read_raw_sidecar(path)
    if isinstance(raw.get("sampler"), str):  # engine.export.own's sidecar: a method's own sampler graphs
        raise ExportError(f"--from-export {path}: holds a {raw['sampler'].upper()} run's sampler, not a DAMC prior "
                          "sampler; pass the run it was exported from")
    try:
        if raw.get("sidecar_version") != SIDECAR_VERSION:
            raise ValueError(f"sidecar_version {raw.get('sidecar_version')!r}, this engine reads {SIDECAR_VERSION}")
        graphs = {name: GraphIO(str(g["file"]), _spec_list(g["inputs"], f"{name}.inputs"),
                                _spec_list(g["outputs"], f"{name}.outputs")) for name, g in raw["graphs"].items()}
        sidecar = Sidecar(**{**raw, "graphs": graphs})
        if sidecar.format not in FORMATS or sidecar.structure not in STRUCTURES:
            raise ValueError(f"format {sidecar.format!r} / structure {sidecar.structure!r}")
        expected = PER_STEP_GRAPHS if sidecar.structure == "per-step" else ("sampler",)
        if tuple(sorted(graphs)) != tuple(sorted(expected)):
            raise ValueError(f"graphs {sorted(graphs)}, expected {sorted(expected)}")
        if not 1 <= sidecar.batch <= MAX_BATCH or sidecar.n_steps < 2:
            raise ValueError(f"batch {sidecar.batch}, n_steps {sidecar.n_steps}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExportError(f"--from-export {path}: unreadable {SIDECAR} ({exc}); export again") from None
    check_files(path, directory, sidecar.graphs)
    return directory, sidecar


def check_files(path: Path, directory: Path, graphs: Mapping[str, GraphIO]) -> None:
    """ExportError naming the first graph file a sidecar lists that is not in ``directory``."""
    for g in graphs.values():
        if not (directory / g.file).is_file():
            raise ExportError(f"--from-export {path}: {g.file} is missing; export again")


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextmanager
def atomic_directory(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; on success it becomes ``out`` (rename), on any error it
    is removed and ``out`` is untouched. An existing ``out`` is replaced only with ``force`` (and only after the
    new directory is complete)."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            if not force:
                raise ExportError(f"--out {out} appeared while exporting; nothing was replaced")
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sizes(directory: Path, names: list[str]) -> dict[str, int]:
    """Bytes per file (graph files and the side files some formats write beside them, e.g. ONNX external data)."""
    return {n: (directory / n).stat().st_size for n in sorted(names)}


def check_writable(directory: Path, what: str, need_bytes: int = 0) -> None:
    """Fail before any work when ``directory`` cannot take a new file (and ``need_bytes`` of them)."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ExportError(f"{what} {directory}: not writable ({exc.strerror})") from None
    free = shutil.disk_usage(directory).free
    if need_bytes and free < need_bytes:
        raise ExportError(f"{what} {directory}: {free / 2**20:.0f} MiB free, about {need_bytes / 2**20:.0f} MiB "
                          "needed; free space or choose another place")


CallableGraph = Callable[..., torch.Tensor]
