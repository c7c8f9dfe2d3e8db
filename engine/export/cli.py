"""``python -m engine.export RUN_DIR --format onnx|pt2|aoti|tensorrt --batch B [--precision fp32|bf16|fp16]
[--whole | --per-step] --out DIR``: export a trained run's DAMC prior sampler.

The artifact is a directory (``--out``) with the graph file(s) and ``sampler.json`` (see
:mod:`engine.export.artifact`). A method with its own sampler graphs (:attr:`engine.learners.base.Method.export_graphs`;
DRL's T-level sampler) is exported by :mod:`engine.export.own`. Every bad request (unknown format, batch <= 0, a
run without an amortizer, a missing package, a missing or corrupt checkpoint, an existing ``--out``) is one line naming
the fix and exit code 2, before any work; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

from engine import learners
from engine.config import SystemConfig
from engine.export.artifact import FORMATS, MAX_BATCH, SIDECAR, ExportError, Sidecar, check_writable
from engine.export.build import ExportSpec, export_sampler
from engine.export.graphs import PRECISIONS
from engine.export.own import OwnSidecar, export_own
from engine.export.runner import FORMAT_MODULES
from engine.learners.base import article
from engine.learners.damc import DamcLearner
from engine.run import checkpoint
from engine.run.checkpoint import CheckpointError
from engine.runtime import system

__all__ = ["MAX_BATCH", "OneLineParser", "main", "one_line", "resolve_checkpoint"]



class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: ...`` line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def one_line(exc: BaseException) -> str:
    """An error as one line: ``checkpoint.load`` passes torch's multi-line unpickling message through."""
    text = str(exc)
    prefix = "could not read checkpoint "
    if isinstance(exc, CheckpointError) and text.startswith(prefix) and ": " in text[len(prefix):]:
        path = text[len(prefix):].split(": ", 1)[0]
        return f"{prefix}{path}: not a readable checkpoint (truncated, corrupt or not written by this engine)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:400]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_checkpoint(run_dir: Path, given: str | None) -> Path:
    """The checkpoint to use: ``--checkpoint`` or the run's latest; one-line errors otherwise."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    if given:
        path = Path(given)
        if not path.is_file():
            raise ExportError(f"--checkpoint {given}: no such file")
        return path
    found = checkpoint.latest_checkpoint(run_dir)
    if found is None:
        raise ExportError(f"{run_dir}: no checkpoint (ckpt-*.pt); train first with python -m engine.train")
    return found


def resolve_device(name: str) -> torch.device:
    try:
        return system.resolve_device(SystemConfig(device=name))  # type: ignore[arg-type]
    except (RuntimeError, ValueError) as exc:  # engine.schema.ConfigError (a ValueError) since issue 13
        raise ExportError(str(exc).replace("system.device", "--device")) from None


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m engine.export", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory written by python -m engine.train (method damc)")
    p.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--batch", type=int, required=True, help="the static batch of the exported graphs")
    p.add_argument("--precision", default="fp32", help="fp32 (default), bf16 or fp16: the networks' dtype; the "
                   "sampler arithmetic stays fp32")
    structure = p.add_mutually_exclusive_group()
    structure.add_argument("--per-step", dest="structure", action="store_const", const="per-step",
                           help="three graphs (null embedding, one sampler step, G); the default")
    structure.add_argument("--whole", dest="structure", action="store_const", const="whole",
                           help="the unrolled T-step loop and G as one static graph")
    p.add_argument("--out", required=True, help="the artifact directory to create")
    p.add_argument("--checkpoint", help="a checkpoint file (default: the run's latest)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda: where the graphs are "
                   "traced and compiled (aoti and tensorrt artifacts run only there)")
    p.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    p.set_defaults(structure="per-step")
    return p


@dataclass
class _Plan:
    spec: ExportSpec
    run_dir: Path
    ckpt: Path
    out: Path


def _plan(args: argparse.Namespace) -> _Plan:
    if args.format not in FORMATS:
        raise ExportError(f"--format {args.format!r}: choose one of {', '.join(FORMATS)}")
    if args.precision not in PRECISIONS:
        raise ExportError(f"--precision {args.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if not 1 <= args.batch <= MAX_BATCH:
        raise ExportError(f"--batch {args.batch}: must be between 1 and {MAX_BATCH}")
    run_dir = Path(args.run_dir)
    ckpt = resolve_checkpoint(run_dir, args.checkpoint)
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ExportError(f"--out {out}: exists and is not a directory; choose a new path")
        if not args.force:
            raise ExportError(f"--out {out}: already exists; choose a new path or pass --force to replace an export")
        if not (out / SIDECAR).is_file():
            raise ExportError(f"--out {out}: --force replaces only an earlier export (a directory with {SIDECAR})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"--out {out}: cannot create {out.parent} ({exc.strerror})") from None
    device = resolve_device(args.device)
    FORMAT_MODULES[args.format].require(device)
    # The graphs carry G and the amortizer's null token + U-Net weights once per graph file (about the
    # checkpoint's fp32 weights); twice that, for the old and new artifact during --force, must fit.
    check_writable(out.parent, "--out", need_bytes=2 * ckpt.stat().st_size // 3)
    return _Plan(ExportSpec(args.format, args.structure, args.batch, args.precision, device), run_dir, ckpt, out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        plan = _plan(args)
        learner = checkpoint.load_run(plan.run_dir, plan.spec.device, plan.ckpt)
        method = learners.get(learner.cfg.method)
        if not method.exportable or (method.export_graphs is None and not isinstance(learner, DamcLearner)):
            ms = [m for m in learners.METHODS.values() if m.exportable]
            prior = ", ".join(m.name.upper() for m in ms if m.export_graphs is None)
            own = ", ".join(m.name.upper() for m in ms if m.export_graphs is not None)
            also = f" (and the sampler of a {own} run)" if own else ""
            raise ExportError(f"{plan.run_dir} is {article(method.name)} {method.name.upper()} run: only the prior "
                              f"sampler of a {prior} run can be exported{also}; sample it with python -m "
                              f"engine.sample --method {method.kinds[0]}")
        run_info = {"run_dir": str(plan.run_dir), "checkpoint": plan.ckpt.name, "iteration": learner.iteration,
                    "method": learner.cfg.method, "arch": learner.cfg.model.arch}
        s = plan.spec
        what = f"{s.format}, {s.structure}, batch {s.batch}, {s.precision}, {s.device.type}"
        sidecar: Sidecar | OwnSidecar
        if method.export_graphs is not None:  # the method's own graphs (engine.learners.base.Method.export_graphs)
            _say(f"exporting the {method.name.upper()} sampler of {plan.run_dir} ({plan.ckpt.name}, iteration "
                 f"{learner.iteration}): {what}")
            sidecar = export_own(method, learner, s, plan.out, run_info=run_info, force=args.force, log=_say)
        else:
            assert isinstance(learner, DamcLearner)
            _say(f"exporting the DAMC prior sampler of {plan.run_dir} ({plan.ckpt.name}, iteration "
                 f"{learner.iteration}): {what}, {learner.table.n_steps} steps")
            sidecar = export_sampler(learner, s, plan.out, run_info=run_info, force=args.force, log=_say)
    except (ExportError, CheckpointError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; nothing was written at {args.out} (an artifact appears only complete)",
              file=sys.stderr)
        return 130
    total = sum(sidecar.files.values())
    files = ", ".join(f"{n} {b / 2**20:.2f} MiB" for n, b in sidecar.files.items())
    v = sidecar.verification
    check = (f"max |artifact - engine| = {v['max_abs_diff']:.3g} on a fresh noise draw" if "max_abs_diff" in v
             else f"not run here ({v.get('skipped')})")
    _say(f"wrote {plan.out} in {sidecar.export_seconds:.1f} s: {files} (total {total / 2**20:.2f} MiB)")
    _say(f"verification: {check}")
    print(plan.out)
    return 0
