"""Size/quality sweep: models pruned at several ratios and recovered, against the base, and which one to ship.

Each model's domain score is compared with the base model's as a share: base bpb / model bpb for bits per byte
(lower is better, so the share falls as quality does), model accuracy / base accuracy for cloze accuracy. The
chosen model is the smallest whose share is at least ``keep``; the Pareto front holds the models that no other
model beats on both size and score. Written as ``sweep.json``, ``sweep.md`` and ``sweep.png``.
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from finescope_core import storage
from finescope_core.report import format_ci, with_ci


def share_of_base(metric: str, base: float, value: float) -> float:
    """How much of the base model's score a model keeps (1: all of it)."""
    return base / value if metric == "bpb" else value / base


def sweep_rows(results: dict[str, dict], ratios: dict[str, float], domain: str, metric: str) -> list[dict]:
    """One row per model (the base first, then by size): ratio, parameters, bpb and accuracy with CIs, share."""
    base = results["base"]["domains"][domain]
    if base[metric] is None:
        raise ValueError(f"sweep.metric={metric!r}: the eval sets of {domain!r} have no "
                         f"{'held-out documents' if metric == 'bpb' else 'multiple-choice items'}; choose the other "
                         "metric or add the set")
    rows = []
    for label, result in results.items():
        metrics = result["domains"][domain]
        rows.append({"model": label, "ratio": ratios.get(label, 0.0), "params": result["params"],
                     "bpb": with_ci(metrics, "bpb"), "acc": with_ci(metrics, "acc"),
                     "share": share_of_base(metric, base[metric], metrics[metric])})
    return sorted(rows, key=lambda row: (row["model"] != "base", row["params"]))


def pareto_front(rows: list[dict]) -> list[str]:
    """Models that no other model matches or beats on both fewer parameters and a higher share."""
    def beaten(row: dict) -> bool:
        return any(o is not row and o["params"] <= row["params"] and o["share"] >= row["share"]
                   and (o["params"], o["share"]) != (row["params"], row["share"]) for o in rows)

    return [row["model"] for row in rows if not beaten(row)]


def choose(rows: list[dict], keep: float) -> dict | None:
    """The smallest model that keeps at least ``keep`` of the base's score (None if none does)."""
    kept = [row for row in rows if row["share"] >= keep]
    return min(kept, key=lambda row: row["params"]) if kept else None


def write_sweep_report(results: dict[str, dict], ratios: dict[str, float], domain: str, metric: str, keep: float,
                       out_uri: str) -> dict[str, Any]:
    """Write the sweep's table (JSON, Markdown) and Pareto plot; return their URIs and the chosen model."""
    rows = sweep_rows(results, ratios, domain, metric)
    front, chosen = pareto_front(rows), choose(rows, keep)
    uris = {kind: storage.join(out_uri, f"sweep.{ext}") for kind, ext in
            (("json", "json"), ("markdown", "md"), ("png", "png"))}
    summary = {"domain": domain, "metric": metric, "keep": keep, "rows": rows, "pareto": front,
               "chosen": chosen["model"] if chosen else None}
    storage.write_json(uris["json"], summary)
    storage.write_text(uris["markdown"], sweep_markdown(summary))
    storage.write_bytes(uris["png"], sweep_png(summary))
    return {**uris, "chosen": summary["chosen"]}


def sweep_markdown(summary: dict) -> str:
    """The sweep as a table, with the Pareto front marked and the choice stated."""
    domain, metric, keep = summary["domain"], summary["metric"], summary["keep"]
    lines = [f"# Size/quality sweep: {domain}", "",
             f"Each pruned model is recovered with the run's recovery settings. Share: the base model's {metric} "
             f"kept ({'base bpb / model bpb' if metric == 'bpb' else 'model accuracy / base accuracy'}). "
             "Brackets hold 95% bootstrap CIs; * marks the Pareto front (no model smaller and better).", "",
             "| model | pruned | params | bpb [95% CI] | acc [95% CI] | share |", "|---|---:|---:|---:|---:|---:|"]
    for row in summary["rows"]:
        star = " *" if row["model"] in summary["pareto"] else ""
        lines.append(f"| {row['model']}{star} | {100 * row['ratio']:g}% | {row['params'] / 1e6:.2f}M | "
                     f"{format_ci(row['bpb'])} | {format_ci(row['acc'])} | {row['share']:.1%} |")
    chosen = summary["chosen"]
    lines += ["", f"Chosen: `{chosen}`, the smallest model that keeps at least {keep:.0%} of the base's {metric}."
              if chosen else f"Chosen: none; no model keeps {keep:.0%} of the base's {metric}."]
    return "\n".join(lines) + "\n"


def sweep_png(summary: dict) -> bytes:
    """Bits per byte and accuracy against parameters, the Pareto front joined by a line, the choice circled."""
    rows = summary["rows"]
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    for ax, key, label in zip(figure.subplots(1, 2), ("bpb", "acc"), ("bits per byte (lower is better)",
                                                                       "cloze accuracy")):
        if rows[0][key] is None:  # the domain has no eval set for this metric
            ax.set_axis_off()
            ax.set_title(f"{label}: no eval set")
            continue
        for row in rows:
            value, lo, hi = row[key]
            ax.errorbar([row["params"] / 1e6], [value], yerr=[[value - lo], [hi - value]], fmt="o", capsize=4,
                        color="C1" if row["model"] == "base" else "C0")
            ax.annotate(row["model"], (row["params"] / 1e6, value), textcoords="offset points", xytext=(6, 6),
                        fontsize=8)
        front = sorted((r for r in rows if r["model"] in summary["pareto"]), key=lambda r: r["params"])
        ax.plot([r["params"] / 1e6 for r in front], [r[key][0] for r in front], color="C2", alpha=0.6,
                label="Pareto front")
        chosen = next((r for r in rows if r["model"] == summary["chosen"]), None)
        if chosen:
            ax.scatter([chosen["params"] / 1e6], [chosen[key][0]], s=250, facecolors="none", edgecolors="C3",
                       label="chosen")
        ax.set_xlabel("parameters (millions)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    figure.suptitle(f"Size/quality sweep: {summary['domain']}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
