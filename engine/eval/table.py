"""The evaluation report as the table ``python -m engine.eval`` prints: metric, ours, the paper's figure, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["format_table"]


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "—"
    if metric.startswith("fid"):
        return f"{v:.2f}"
    return f"{v:.4f}" if metric == "auprc" else f"{v:.5f}"

_LABELS = {"mse": "MSE (test)", "auprc": "AUPRC", "chains": "chains"}  # fid_<kind>: "FID <KIND>"


def format_table(report: dict[str, Any]) -> str:
    """The printed table: metric, ours, the paper's figure, and the settings used."""
    paper_head = f"paper ({report['paper_dataset']})" if report["paper_dataset"] else "paper"
    rows = [("metric", "ours", paper_head, "settings")]
    for name, m in report["metrics"].items():
        label = _LABELS.get(name, f"FID {name[4:].upper()}" if name.startswith("fid_") else name)
        label += f" (digit {m['digit']})" if name == "auprc" else ""
        ours = "PNG" if name == "chains" else _fmt(m.get("value"), name)
        paper = "—" if m.get("paper") is None else f"{m['paper']:g}"  # as printed in the paper
        rows.append((label, ours, paper, m.get("settings", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"run {report['run_dir']} ({Path(report['checkpoint']).name}, iteration {report['iteration']}, "
             f"{report['method'].upper()}, arch {report['arch']})",
             f"data: {report['dataset']}" + ("" if report["paper_dataset"] else "; the paper has no figure for it")]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    if report.get("notes"):
        lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
