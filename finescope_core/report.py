"""Evaluation report: several models (base, pruned, recovered, ...) as JSON, Markdown and a plot, with paired stats.

``results`` maps a model label to :func:`finescope_core.evaluate.evaluate_model`'s output (per-unit scores
included). Models scored on the same items and documents are compared paired (``stats``): each model against the
one labelled "pruned" and the one labelled "base", as a difference with its 95% CI, and the share of the pruning
loss in bits per byte that it wins back (gap closed). Parameter counts are shown as a percentage of "base" (else
the first model). The first domain is the target; the others show what specialisation costs off the domain.
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from finescope_core import storage
from finescope_core.stats import gap_closed, paired_bpb_difference, paired_difference

Results = dict[str, dict[str, Any]]
MISSING = "n/a"
BASE, PRUNED = "base", "pruned"
MARKERS = "osD^vP*Xhp"
RESAMPLES, SEED = 1000, 0


def write_report(results: Results, out_uri: str, title: str = "FineScope evaluation",
                 speed: dict[str, float] | None = None, details: dict[str, dict] | None = None,
                 domains: list[str] | None = None) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and ``report.png`` under ``out_uri``, each atomically; return their URIs.

    ``speed`` holds each model's tokens/s, timed alternately in one process; ``details`` other stages' figures to
    show (for example the self-distillation's acceptance per rejection reason); ``domains`` the order of the
    domains, target first (default: as the results hold them).
    """
    _check_results(results)
    results = in_order(results, domains) if domains else results
    uris = {kind: storage.join(out_uri, f"report.{ext}") for kind, ext in
            (("json", "json"), ("markdown", "md"), ("png", "png"))}
    paired = comparisons(results)
    summary = {label: {k: v for k, v in result.items() if k != "units"} for label, result in results.items()}
    storage.write_json(uris["json"], {"models": summary, "paired": paired, "speed": speed or {},
                                      "details": details or {}})
    storage.write_text(uris["markdown"], markdown_report(results, paired, title, speed or {}, details or {}))
    storage.write_bytes(uris["png"], plot_png(results, title))
    return uris


def _check_results(results: Results) -> None:
    if not results:
        raise ValueError("no results to report: give at least one model's evaluate_model output")
    for label, result in results.items():
        missing = [k for k in ("params", "domains") if k not in result]
        if missing:
            raise ValueError(f"results[{label!r}] lacks {missing}: pass evaluate_model's output unchanged")


def in_order(results: Results, domains: list[str]) -> Results:
    """The results with each model's domains (and their units) in the order of ``domains``."""
    def rank(domain: str) -> int:
        return domains.index(domain) if domain in domains else len(domains)

    out = {}
    for label, result in results.items():
        out[label] = {**result, **{key: dict(sorted(result[key].items(), key=lambda item: rank(item[0])))
                                   for key in ("domains", "units") if key in result}}
    return out


def domains_of(results: Results) -> list[str]:
    """Every domain evaluated for any model, in first-seen order."""
    seen: dict[str, None] = {}
    for result in results.values():
        seen.update(dict.fromkeys(result["domains"]))
    return list(seen)


# ------------------------------------------------------------------------------------------------------- paired


def aligned_units(a: dict, b: dict, kind: str, key: str) -> dict[str, tuple[list, list]]:
    """Per-unit columns of two models restricted to the units both scored, in the same order."""
    position = {unit: i for i, unit in enumerate(b[kind][key])}
    rows = [(i, position[unit]) for i, unit in enumerate(a[kind][key]) if unit in position]
    columns = [c for c in a[kind] if c not in (key, "source")]
    return {c: ([a[kind][c][i] for i, _ in rows], [b[kind][c][j] for _, j in rows]) for c in columns}


def compare(model: dict, other: dict) -> dict[str, list[float]]:
    """``model`` minus ``other`` on one domain's shared units: bits per byte, accuracy and gold-choice margin."""
    docs = aligned_units(model, other, "docs", "doc_id")
    items = aligned_units(model, other, "items", "item_id")
    out = {}
    if docs["nll"][0]:
        out["bpb"] = paired_bpb_difference(*docs["nll"], docs["bytes"][0], RESAMPLES, SEED)
    if items["correct"][0]:
        out["acc"] = paired_difference(*items["correct"], RESAMPLES, SEED)
        out["margin"] = paired_difference(*items["margin"], RESAMPLES, SEED)
    return out


def recovered_share(base: dict, pruned: dict, model: dict) -> list[float] | None:
    """Gap closed on one domain's documents that all three models scored."""
    shared = set(base["docs"]["doc_id"]) & set(pruned["docs"]["doc_id"]) & set(model["docs"]["doc_id"])
    if not shared:
        return None
    order = sorted(shared)

    def column(units: dict, name: str) -> list[float]:
        index = {doc: i for i, doc in enumerate(units["docs"]["doc_id"])}
        return [units["docs"][name][index[doc]] for doc in order]

    return gap_closed(column(base, "nll"), column(pruned, "nll"), column(model, "nll"), column(base, "bytes"),
                      RESAMPLES, SEED)


def comparisons(results: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """Per domain and model: paired differences against "pruned" and "base", and the gap closed."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for domain in domains_of(results):
        units = {label: r["units"][domain] for label, r in results.items() if domain in r.get("units", {})}
        table: dict[str, dict[str, Any]] = {}
        for label, unit in units.items():
            row = {}
            for reference in (PRUNED, BASE):
                if reference in units and reference != label:
                    row[f"vs_{reference}"] = compare(unit, units[reference])
            if BASE in units and PRUNED in units and label not in (BASE, PRUNED):
                row["gap_closed"] = recovered_share(units[BASE], units[PRUNED], unit)
            table[label] = row
        out[domain] = table
    return out


# ----------------------------------------------------------------------------------------------------- markdown


def with_ci(metrics: dict, key: str) -> list[float] | None:
    """``[value, lo, hi]`` of one metric, None where the domain has no set to measure it on."""
    return None if metrics[key] is None else [metrics[key], *metrics[f"{key}_ci"]]


def format_ci(value: list[float] | None, digits: int = 3, signed: bool = False, percent: bool = False) -> str:
    if not value:
        return MISSING
    scale, unit = (100, "%") if percent else (1, "")
    form = f"{{:{'+' if signed else ''}.{0 if percent else digits}f}}"
    mean, lo, hi = (form.format(v * scale) + unit for v in value)
    return f"{mean} [{lo}, {hi}]"


def markdown_report(results: Results, paired: dict, title: str, speed: dict[str, float],
                    details: dict[str, dict]) -> str:
    """Header, the recovery summary, one table per domain, per-source breakdowns and the other stages' figures."""
    labels = ", ".join(f"`{label}`" for label in results)
    lines = [
        f"# {title}", "",
        f"Models: {labels}. Bits per byte (bpb, lower is better) and perplexity are token-weighted over held-out "
        "documents; accuracy is cloze multiple choice scored by log-likelihood per character of the choice, and the "
        "margin is the gold choice's lead over the best other choice (nats per character). Brackets hold 95% "
        "bootstrap CIs; differences (Δ) are paired: both models on the same items or documents. Gap closed is "
        "(bpb pruned - bpb model) / (bpb pruned - bpb base). Tokens/s: forward throughput on one fixed batch, every "
        "model timed alternately in one process.", "",
    ]
    lines += [*summary_lines(paired), ""]
    lines.append(markdown_table(results, paired, speed))
    lines.append(source_tables(results))
    for stage, figures in details.items():
        lines += [f"## {stage}", ""] + [f"- {key}: {value}" for key, value in figures.items()] + [""]
    return "\n".join(lines)


def summary_lines(paired: dict) -> list[str]:
    """What recovery did on the target domain and what it cost on the others, for each recovered model."""
    domains = list(paired)
    if not domains:
        return []
    lines = ["## Summary", ""]
    for label, row in paired[domains[0]].items():
        if "gap_closed" not in row:
            continue
        vs = row.get("vs_pruned", {})
        lines.append(f"- `{label}` on {domains[0]}: bpb {format_ci(vs.get('bpb'), signed=True)} against the pruned "
                     f"model (gap closed {format_ci(row['gap_closed'], percent=True)}); accuracy "
                     f"{format_ci(vs.get('acc'), signed=True)}.")
        for domain in domains[1:]:
            off = paired[domain].get(label, {})
            lines.append(f"- `{label}` off the domain, on {domain}: bpb "
                         f"{format_ci(off.get('vs_pruned', {}).get('bpb'), signed=True)} against the pruned model, "
                         f"{format_ci(off.get('vs_base', {}).get('bpb'), signed=True)} against the base.")
    return lines if len(lines) > 2 else []


def markdown_table(results: Results, paired: dict | None = None, speed: dict[str, float] | None = None) -> str:
    """One Markdown table per domain: size, bpb, paired Δbpb and gap closed, accuracy, paired Δacc, margin, ppl."""
    paired, speed = paired or {}, speed or {}
    reference = results.get(BASE, next(iter(results.values())))["params"]
    sections = []
    for domain in domains_of(results):
        rows = [
            "| model | params | bpb [95% CI] | Δbpb vs pruned | gap closed | acc [95% CI] | Δacc vs pruned | margin "
            "| ppl | tokens/s | items / docs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, result in results.items():
            rows.append(_row(label, result, domain, reference, paired.get(domain, {}).get(label, {}),
                             speed.get(label)))
        sections.append(f"## {domain}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(sections)


def _row(label: str, result: dict, domain: str, reference: int, paired: dict, speed: float | None) -> str:
    params = f"{result['params'] / 1e6:.2f}M ({100 * result['params'] / reference:.0f}%)"
    metrics = result["domains"].get(domain)
    tokens_per_s = f"{speed:.0f}" if speed else MISSING
    if metrics is None:
        return "| " + " | ".join([label, params, *[MISSING] * 8, tokens_per_s, MISSING]) + " |"
    vs = paired.get("vs_pruned", {})
    cells = [
        label, params,
        format_ci(with_ci(metrics, "bpb")),
        format_ci(vs.get("bpb"), signed=True),
        format_ci(paired.get("gap_closed"), percent=True),
        format_ci(with_ci(metrics, "acc")),
        format_ci(vs.get("acc"), signed=True),
        MISSING if metrics["margin"] is None else f"{metrics['margin']:+.4f}",
        MISSING if metrics["ppl"] is None else _num(metrics["ppl"]),
        tokens_per_s,
        f"{metrics['n_mc']} / {metrics['n_docs']}",
    ]
    return "| " + " | ".join(cells) + " |"


def source_tables(results: Results) -> str:
    """Per domain, each source's accuracy (items) or bits per byte (documents), one column per model."""
    sections = []
    for domain in domains_of(results):
        present = {label: r["domains"][domain]["by_source"] for label, r in results.items()
                   if domain in r["domains"] and "by_source" in r["domains"][domain]}
        sources = list(dict.fromkeys(s for by in present.values() for s in by))
        if not sources:
            continue
        rows = ["| source | metric | " + " | ".join(present) + " |", "|---|---|" + "---:|" * len(present)]
        for source in sources:
            for metric, count in (("acc", "n_mc"), ("bpb", "n_docs")):
                cells = [f"{by[source][metric]:.3f}" if metric in by.get(source, {}) else MISSING
                         for by in present.values()]
                if any(c != MISSING for c in cells):
                    n = next(by[source][count] for by in present.values() if count in by.get(source, {}))
                    rows.append(f"| {source} ({n}) | {metric} | " + " | ".join(cells) + " |")
        sections.append(f"### {domain}, by source\n\n" + "\n".join(rows) + "\n")
    return "\n".join(sections)


def _num(value: float) -> str:
    """Perplexities span 5 to millions: two decimals while small, whole numbers (no separators) beyond 1000."""
    return f"{value:.2f}" if value < 1000 else f"{value:.0f}"


# --------------------------------------------------------------------------------------------------------- plot


def dodged(params: dict[str, float], spread: float = 0.04) -> dict[str, float]:
    """x positions (millions of parameters) that keep models of (nearly) equal size apart: each group of sizes
    within 1% of each other is fanned out by ``spread`` of its size, so no marker hides another."""
    groups: list[list[str]] = []
    for label in sorted(params, key=params.get):
        if groups and params[label] <= params[groups[-1][0]] * 1.01:
            groups[-1].append(label)
        else:
            groups.append([label])
    out = {}
    for group in groups:
        centre = params[group[0]] / 1e6
        for k, label in enumerate(group):
            out[label] = centre * (1 + spread * (k - (len(group) - 1) / 2))
    return out


def plot_png(results: Results, title: str) -> bytes:
    """Per domain: bits per byte and accuracy (95% CIs) against parameter count, one marker shape and colour per
    model. Drawn on a bare Agg canvas rather than through pyplot, which keeps global state and is not thread-safe."""
    domains = domains_of(results)
    style = {label: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, label in enumerate(results)}
    x = dodged({label: r["params"] for label, r in results.items()})
    figure = Figure(figsize=(4.5 * len(domains) + 1.5, 8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(domains), squeeze=False)
    for column, domain in enumerate(domains):
        present = {label: r["domains"][domain] for label, r in results.items() if domain in r["domains"]}
        _points(axes[0][column], present, x, style, "bpb", f"{domain}: bits per byte (lower is better)")
        _points(axes[1][column], present, x, style, "acc", f"{domain}: cloze accuracy")
    handles = [Line2D([], [], color=c, marker=m, linestyle="", label=label) for label, (c, m) in style.items()]
    figure.legend(handles=handles, loc="outside right upper", title="model")
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _points(ax: Axes, metrics: dict[str, dict], x: dict[str, float], style: dict, key: str, title: str) -> None:
    for label, m in metrics.items():
        if m[key] is None:  # the domain has no set for this metric
            continue
        value, (lo, hi) = m[key], m[f"{key}_ci"]
        colour, marker = style[label]
        ax.errorbar([x[label]], [value], yerr=[[value - lo], [hi - value]], fmt=marker, capsize=4, color=colour,
                    markersize=7)
    ax.set_title(title)
    ax.set_xlabel("parameters (millions; equal sizes drawn apart)")
    ax.set_ylabel(f"{key} (95% CI)")
    ax.margins(x=0.15, y=0.15)
    ax.grid(alpha=0.3)
