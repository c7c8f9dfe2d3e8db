"""``python -m engine.study digits``: every learner on the quickstart digits, at one training budget.

The DAMC paper's headline (Table 1): the EBM prior trained with DAMC samples, sampled either with the amortizer
("Ours-DAMC") or with short-run Langevin from N(0, I) ("Ours-LEBM"), generates better than the EBM trained with
short-run Langevin ("LEBM"), and reconstructs at least as well; CoopVAEBM's (MCMC teaching): the EBM's Langevin
revision x̃ of the VAE's draw generates better than the draw x̂ itself. This study measures such claims where a
CPU can: the quickstart digits (1,797 real 8×8 digits), several seeds, every method of ``--methods`` (default: every
registered learner, :data:`engine.learners.METHODS`) trained for the same number of iterations by the engine's own
training loop (:func:`engine.run.train.train`, one run directory each), each from its config:
``configs/<method>_quickstart.yaml`` when that file exists, else ``configs/quickstart.yaml`` (``--config``) with
``method=<method>``; the positional overrides apply to every method. Every run is measured through the learner
protocol alone (:class:`engine.learners.Learner`), so a new method needs no code here:

* samples of every kind the learner draws (``learner.sample_kinds()``), clamped to [−1, 1]; n = 1,497 each (the
  size of the training split they are compared with);
* reconstructions of the 300 held-out test digits (``learner.reconstruct`` with ``eval.recon_steps``,
  ``eval.recon_step_size`` and ``langevin.likelihood_sigma``), with their per-pixel MSE;
* KID and FID in the features of a digit classifier trained once on the training split
  (:mod:`engine.eval.digits_features` says why), against the training split; the real test split gives the floor.

Outputs in ``--out`` (default ``results/digits``): ``summary.json`` (``per_seed[seed][method]`` = ``{"iteration",
"<kind>_prior": metrics, "recon": metrics}``), ``table.md`` (mean ± standard deviation over seeds, one row per
(method, kind) and one reconstruction row per method, the paired comparisons whose rows exist),
``grids/seed<s>_<method>_run_<kind>_prior.png`` and ``..._recon.png``, and the classifier. A (seed, method)
measured earlier with the same settings (iterations, samples, overrides, classifier, and that method's config) is
kept, so adding a method trains and measures only that method. Run directories go to ``--runs`` (default
``runs/study-digits``); a rerun reuses finished runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import learners
from engine.config import ConfigError, load_config
from engine.data.digits import DIGITS_SHAPE, load_digits_split
from engine.data.pixels import u8_to_float
from engine.eval.digits_features import DigitFeatures, FeatureSet, fid, kid, load_or_train_classifier
from engine.eval.toy.study import parse_seeds
from engine.files import atomic_write
from engine.learners import Learner
from engine.learners.base import paired_rows
from engine.run import checkpoint
from engine.run.checkpoint import CheckpointError
from engine.run.images import save_grid
from engine.run.train import TrainingStopped, train
from engine.runtime import system
from engine.schema import load_yaml

__all__ = ["COMPARISONS", "LABELS", "check_configs", "config_for", "describe_run", "evaluate_run", "main",
           "parse_methods", "study_digits", "write_table"]

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"
RECON = "recon"  # the kind of a reconstruction row

# The table's names of known rows, (method, kind) -> (label, the paper's name); kind RECON: the test split's
# reconstructions. Presentation only, from each learner's Method: a row not named is labelled by its method, kind
# and how it was drawn.
LABELS: dict[tuple[str, str], tuple[str, str]] = {
    (m.name, kind): label for m in learners.METHODS.values() for kind, label in m.study_labels.items()}

# Paired by seed, difference = first row − second row. "A < B": a claim (a difference < 0 agrees with the paper);
# "A vs B": no claim. Only those whose two rows are in the table are reported.
COMPARISONS: tuple[tuple[str, str, tuple[str, str], tuple[str, str]], ...] = tuple(
    c for m in learners.METHODS.values() for c in m.study_comparisons)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_methods(text: str | None) -> list[str]:
    """'damc,lebm' -> the methods in that order (None: every registered one); ValueError naming the unknown."""
    if text is None:
        return list(learners.METHODS)
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in learners.METHODS]
    if not names or unknown:
        what = f"unknown method {', '.join(map(repr, unknown))}" if unknown else "no method named"
        raise ValueError(f"--methods {text!r}: {what}; the engine has {', '.join(learners.METHODS)}")
    return names


def config_for(method: str, base: Path = QUICKSTART, configs: Path = CONFIGS) -> tuple[Path, list[str]]:
    """A method's config and the overrides that make it its: ``configs/<method>_quickstart.yaml`` when it exists,
    else ``base`` with ``method=<method>``."""
    own = configs / f"{method}_quickstart.yaml"
    return (own, []) if own.is_file() else (base, [f"method={method}"])


def _name(path: Path) -> str:
    """A config's name in the summary: relative to the repository (or to the configs/ folder it sits in)."""
    p = Path(path).resolve()
    if p.is_relative_to(REPO):
        return str(p.relative_to(REPO))
    return f"configs/{p.name}" if p.parent.name == "configs" else str(p)


def _config_record(path: Path, pre: list[str]) -> dict[str, Any]:
    """Which config a method's numbers come from: its name, the study's overrides for it, a hash of its content."""
    content = json.dumps(load_yaml(path.read_text(encoding="utf-8")), sort_keys=True, default=str)
    return {"path": _name(path), "overrides": pre, "sha256": hashlib.sha256(content.encode()).hexdigest()}


def _same_config(old: dict[str, Any], new: dict[str, Any]) -> bool:
    # A summary written before configs were recorded per method names the one base config of all (no hash).
    return old.get("path") == new["path"] and old.get("overrides") == new["overrides"] and \
        old.get("sha256", new["sha256"]) == new["sha256"]


def _metrics(fs: FeatureSet, features: DigitFeatures) -> dict[str, Any]:
    counts = np.bincount(fs.labels, minlength=10)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return {"kid": kid(fs.feats, features.train.feats), "fid": fid(fs.feats, features.train.feats), "n": len(fs.labels),
            "class_counts": counts.tolist(), "class_entropy": entropy}


def describe_run(learner: Learner) -> dict[str, str]:
    """How each row of a run is drawn (a label for rows :data:`LABELS` does not name)."""
    ev, sigma = learner.cfg.eval, learner.cfg.langevin.likelihood_sigma
    out = {k.name: k.settings() for k in learner.sample_kinds()}
    out[RECON] = learner.describe_reconstruct(ev.recon_steps, ev.recon_step_size, sigma)[1]
    return out


def evaluate_run(learner: Learner, features: DigitFeatures, n: int, seed: int, grids: Path | None,
                 tag: str) -> dict[str, Any]:
    """Samples of every kind and reconstructions of one trained run, measured; grids of the first 64 when asked.
    Draws come from one generator seeded by ``seed``, in ``sample_kinds()`` order, then the reconstructions."""
    cfg = learner.cfg
    rng = system.make_generator(learner.device, 10_000 + seed)
    out: dict[str, Any] = {"iteration": learner.iteration}
    sets = {f"{k.name}_prior": learner.sample(k.name, n, rng).clamp(-1, 1) for k in learner.sample_kinds()}
    x_test = u8_to_float(load_digits_split(DIGITS_SHAPE, "test")).to(learner.device)
    recon = learner.reconstruct(x_test, rng, steps=cfg.eval.recon_steps, step_size=cfg.eval.recon_step_size,
                                sigma=cfg.langevin.likelihood_sigma).clamp(-1, 1)
    for key, images in sets.items():
        out[key] = _metrics(features.of(images.cpu()), features)
    out[RECON] = _metrics(features.of(recon.cpu()), features)
    out[RECON]["mse"] = float((recon - x_test).pow(2).mean())  # per pixel, [−1, 1] units (spec §4)
    if grids is not None:
        style = {"scale": 4, "pad_value": 128}
        for key, images in sets.items():
            save_grid(images[:64].cpu(), grids / f"{tag}_{key}.png", nrow=8, **style)
        save_grid(paired_rows(x_test[:32], recon[:32]).cpu(), grids / f"{tag}_recon.png", nrow=8, **style)
    return out


def _train_or_reuse(config: Path, pre: list[str], method: str, seed: int, iterations: int, runs: Path,
                    overrides: list[str]) -> Path:
    run_dir = runs / f"{method}-seed{seed}"
    cfg = load_config(config, [*pre, f"train.seed={seed}", f"train.iterations={iterations}",
                               f"log.run_dir={run_dir}", "log.progress=false", f"log.sample_every={iterations}",
                               f"log.checkpoint_every={max(1, iterations // 4)}", *overrides])
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is not None and int(checkpoint.load(latest)["iteration"]) >= iterations:
        _say(f"{run_dir}: finished earlier, reused")
        return run_dir
    _say(f"training {method}, seed {seed}, {iterations} iterations -> {run_dir}")
    train(cfg)
    return run_dir


def _write_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=2, ensure_ascii=False).encode()
    atomic_write(path, lambda fh: fh.write(data))


def _row(per: dict[str, Any], seed: int, method: str, kind: str) -> dict[str, Any] | None:
    run = per.get(str(seed), {}).get(method)
    return None if run is None else run.get(kind if kind == RECON else f"{kind}_prior")


def _kinds(per: dict[str, Any], method: str) -> list[str]:
    """The sample kinds measured for ``method`` on any seed, in their measured order."""
    keys = [k for run in per.values() if method in run for k in run[method]]
    return [k[:-len("_prior")] for k in dict.fromkeys(keys) if k.endswith("_prior")]


def _ms(values: list[float]) -> str:
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.4g} ± {a.std(ddof=1) if a.size > 1 else 0.0:.2g}"


def _label(summary: dict[str, Any], method: str, kind: str) -> tuple[str, str]:
    if (method, kind) in LABELS:
        return LABELS[method, kind]
    how = summary.get("describe", {}).get(method, {}).get(kind)
    text = f"reconstructions of the test split, {method} run" if kind == RECON else f"{kind} samples ({method} run)"
    return (f"{text}: {how}" if how else text), ""


def _measured(summary: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(m for run in summary["per_seed"].values() for m in run))


def write_table(summary: dict[str, Any], out: Path, seeds: list[int] | None = None,
                methods: list[str] | None = None) -> str:
    """table.md over ``seeds`` and ``methods`` (default: all measured): mean ± standard deviation over the seeds each
    row has (ddof 1), the floor, and the paired comparisons of :data:`COMPARISONS` whose two rows exist."""
    per = summary["per_seed"]
    seeds = sorted(seeds if seeds is not None else summary["seeds"])
    methods = [m for m in (methods if methods is not None else _measured(summary))
               if any(m in per.get(str(s), {}) for s in seeds)]
    configs = summary.get("configs", {})

    def origin(m: str) -> str:
        rec = configs.get(m, {})
        return f"{m} ({' '.join([rec.get('path', summary.get('config', '?')), *rec.get('overrides', [])])})"

    lines = [f"# All learners on the quickstart digits: {summary['iterations']} iterations, seeds {seeds}",
             "", f"Methods, each from its config: {', '.join(origin(m) for m in methods)}"
             + (f"; overrides for all: {' '.join(summary['overrides'])}" if summary["overrides"] else "") + ".", "",
             f"KID and FID in standardised features of a digit classifier (test accuracy "
             f"{summary['classifier']['test_accuracy']:.3f}, sha256 {summary['classifier']['sha256'][:12]}…), "
             f"against the 1,497 training digits; mean ± std over {len(seeds)} seeds, or over the seeds a row names "
             "(lower is better).", "",
             "| method | kind | samples | paper's name | KID | FID | MSE | KID per seed |",
             "|---|---|---|---|---|---|---|---|"]
    present: dict[tuple[str, str], list[int]] = {}  # row -> the seeds it has
    rows = [(m, k) for m in methods for k in _kinds(per, m)] + [(m, RECON) for m in methods]
    for method, kind in rows:
        have = [s for s in seeds if _row(per, s, method, kind) is not None]
        if not have:
            continue
        present[method, kind] = have
        got = [r for s in have if (r := _row(per, s, method, kind)) is not None]
        kids, fids = [r["kid"] for r in got], [r["fid"] for r in got]
        mse = _ms([r["mse"] for r in got]) if kind == RECON else ""
        label, paper = _label(summary, method, kind)
        only = f"; seeds {have} only" if have != seeds else ""
        lines.append(f"| {method} | {kind} | {label} (n {got[0]['n']}{only}) | {paper} | {_ms(kids)} | {_ms(fids)} | "
                     f"{mse} | {', '.join(f'{k:.3g}' for k in kids)} |")
    f = summary["floor"]
    lines.append(f"| | | real test split (n 300): the floor | | {f['kid']:.3g} | {f['fid']:.3g} | | |")
    lines += ["", "Paired by seed, difference = first − second (\"A < B\": a paper's claim, agreed with where the "
              "difference < 0; \"A vs B\": no claim):", "",
              "| comparison | metric | difference, mean ± std | seeds with difference < 0 |", "|---|---|---|---|"]
    for name, metric, a, b in COMPARISONS:
        if a not in present or b not in present:
            continue
        both = [s for s in present[a] if s in present[b]]
        if not both:
            continue
        d = [_row(per, s, *a)[metric] - _row(per, s, *b)[metric] for s in both]  # type: ignore[index]
        only = f" (seeds {both} only)" if both != seeds else ""
        lines.append(f"| {name} | {metric.upper()} | {_ms(d)} | {sum(v < 0 for v in d)} of {len(d)}{only} |")
    text = "\n".join(lines) + "\n"
    atomic_write(out / "table.md", lambda fh: fh.write(text.encode()))
    return text


def _load_measured(path: Path, iterations: int, n_samples: int, overrides: list[str],
                   sha256: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(per_seed, configs, describe) of an earlier summary measured with the same settings, else empty."""
    if not path.is_file():
        return {}, {}, {}
    old = json.loads(path.read_text())
    if not (old.get("iterations") == iterations and old.get("n_samples") == n_samples and
            old.get("overrides") == overrides and old.get("classifier", {}).get("sha256") == sha256):
        _say(f"{path}: measured with other settings; measuring again")
        return {}, {}, {}
    per_seed: dict[str, Any] = old.get("per_seed", {})
    configs: dict[str, Any] = old.get("configs") or {  # written before configs were recorded per method
        m: {"path": _name(Path(old.get("config", QUICKSTART))), "overrides": [f"method={m}"]}
        for run in per_seed.values() for m in run}
    return per_seed, configs, old.get("describe", {})


def study_digits(out: Path, runs: Path, seeds: list[int], iterations: int, n_samples: int,
                 config: Path = QUICKSTART, overrides: list[str] | None = None, methods: list[str] | None = None,
                 configs_dir: Path = CONFIGS) -> dict[str, Any]:
    """Train and measure every (seed, method) not measured earlier with these settings; write summary and table."""
    overrides = list(overrides or [])
    methods = list(methods) if methods is not None else list(learners.METHODS)
    net, meta = load_or_train_classifier(out, _say)
    features = DigitFeatures(net)
    floor = _metrics(features.test, features)
    summary_path = out / "summary.json"
    per_seed, configs, describe = _load_measured(summary_path, iterations, n_samples, overrides, str(meta["sha256"]))
    wanted = {m: config_for(m, config, configs_dir) for m in methods}
    for m, (path, pre) in wanted.items():
        rec = _config_record(path, pre)
        if m in configs and not _same_config(configs[m], rec):
            _say(f"{m}: measured with {configs[m].get('path')} {configs[m].get('overrides')}, now {rec['path']} "
                 f"{pre} (or its content changed): measuring {m} again")
            for run in per_seed.values():
                run.pop(m, None)
            describe.pop(m, None)
        configs[m] = rec

    def current() -> dict[str, Any]:
        done = sorted(int(s) for s, run in per_seed.items() if run)
        measured = _measured({"per_seed": per_seed})
        return {"config": _name(config), "configs": {m: configs[m] for m in measured if m in configs},
                "overrides": overrides, "iterations": iterations, "n_samples": n_samples, "methods": measured,
                "seeds": done, "classifier": meta, "floor": floor,
                "describe": {m: describe[m] for m in measured if m in describe},
                "per_seed": {str(s): per_seed[str(s)] for s in done},
                "comparisons": [[name, metric, ":".join(a), ":".join(b)] for name, metric, a, b in COMPARISONS
                                if a[0] in measured and b[0] in measured]}

    for s in seeds:
        for m in methods:
            if m in per_seed.get(str(s), {}):
                _say(f"seed {s}, {m}: measured earlier, kept")
                continue
            path, pre = wanted[m]
            run_dir = _train_or_reuse(path, pre, m, s, iterations, runs, overrides)
            learner = checkpoint.load_run(run_dir, torch.device("cpu"))
            result = evaluate_run(learner, features, n_samples, s, out / "grids", f"seed{s}_{m}_run")
            describe[m] = describe_run(learner)
            per_seed.setdefault(str(s), {})[m] = result
            _write_json(summary_path, current())  # after every run: nothing is lost
    summary = current()
    table_seeds = [s for s in summary["seeds"] if s in seeds] or summary["seeds"]
    write_table(summary, out, table_seeds, [m for m in methods if m in summary["methods"]] or None)
    return summary


def check_configs(methods: list[str], base: Path = QUICKSTART, overrides: list[str] | None = None,
                  configs: Path = CONFIGS) -> None:
    """Every method's config loads with the overrides, on the digits, as that method (before any training)."""
    for m in methods:
        path, pre = config_for(m, base, configs)
        cfg = load_config(path, [*pre, *(overrides or [])])
        if cfg.data.source != "digits":
            raise ValueError(f"{_name(path)} ({m}): the digits study needs data.source digits, not {cfg.data.source}")
        if cfg.method != m:
            raise ValueError(f"{_name(path)} with the overrides trains method {cfg.method}, not {m} (the study "
                             "sets each run's method)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.study", description=(__doc__ or "").splitlines()[0])
    p.add_argument("study", choices=("digits",), help="digits: the quickstart digits (8×8, CPU)")
    p.add_argument("overrides", nargs="*", help="config overrides for every method, e.g. train.batch_size=32")
    p.add_argument("--out", type=Path, default=Path("results/digits"), help="summary, table, grids, classifier")
    p.add_argument("--runs", type=Path, default=Path("runs/study-digits"), help="the training run directories")
    p.add_argument("--seeds", default="0-4", help="training seeds, e.g. 0-4 or 0,2 (default 0-4)")
    p.add_argument("--iterations", type=int, default=2000, help="training iterations of each run (default 2000)")
    p.add_argument("--samples", type=int, default=1497, help="prior samples per run and kind (default 1497)")
    p.add_argument("--methods", default=None, help="comma-separated learners, e.g. damc,lebm,coopvae (default: "
                   f"every registered one: {','.join(learners.METHODS)})")
    p.add_argument("--config", type=Path, default=QUICKSTART, help="base config of a method without "
                   "configs/<method>_quickstart.yaml, trained with method=<method> (default configs/quickstart.yaml)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may follow the options
    try:
        seeds = parse_seeds(args.seeds)
        if args.iterations < 1:
            raise ValueError(f"--iterations = {args.iterations}: must be >= 1")
        if not 10 <= args.samples <= 100_000:
            raise ValueError(f"--samples = {args.samples}: must be between 10 and 100000")
        methods = parse_methods(args.methods)
        check_configs(methods, args.config, args.overrides)  # bad overrides fail here, before any training
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        study_digits(args.out, args.runs, seeds, args.iterations, args.samples, args.config, args.overrides,
                     methods)
    except (ConfigError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print((args.out / "table.md").read_text(), end="")
    return 0
