"""Evaluation report: the metrics of several models (base, pruned, recovered, ...) as JSON, a Markdown table and a plot.

``results`` maps a model label to :func:`finescope_core.evaluate.evaluate_model`'s output. Parameter counts are also
shown as a percentage of the reference model: the one labelled "base", else the first. (Label order is not kept by
``report.json``, whose keys are sorted, so the reference is named rather than positional where possible.)
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from finescope_core import storage

Results = dict[str, dict[str, Any]]
MISSING = "n/a"
REFERENCE_LABEL = "base"


def write_report(results: Results, out_uri: str, title: str = "FineScope evaluation") -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and ``report.png`` under ``out_uri``, each atomically; return their URIs."""
    _check_results(results)
    uris = {
        "json": storage.join(out_uri, "report.json"),
        "markdown": storage.join(out_uri, "report.md"),
        "png": storage.join(out_uri, "report.png"),
    }
    storage.write_json(uris["json"], results)
    storage.write_text(uris["markdown"], markdown_report(results, title))
    storage.write_bytes(uris["png"], plot_png(results, title))
    return uris


def _check_results(results: Results) -> None:
    if not results:
        raise ValueError("no results to report: give at least one model's evaluate_model output")
    for label, result in results.items():
        missing = [k for k in ("params", "tokens_per_s", "domains") if k not in result]
        if missing:
            raise ValueError(f"results[{label!r}] lacks {missing}: pass evaluate_model's output unchanged")


def domains_of(results: Results) -> list[str]:
    """Every domain evaluated for any model, in first-seen order."""
    seen: dict[str, None] = {}
    for result in results.values():
        seen.update(dict.fromkeys(result["domains"]))
    return list(seen)


# ----------------------------------------------------------------------------------------------------- markdown


def markdown_report(results: Results, title: str) -> str:
    """A short header (models, sizes, sample sizes) followed by :func:`markdown_table`."""
    labels = ", ".join(f"`{label}`" for label in results)
    header = [
        f"# {title}",
        "",
        (
            f"Models: {labels}. Perplexity and bits per byte are token-weighted over held-out documents; accuracy is "
            "cloze multiple choice scored by log-likelihood per character of the choice. Brackets hold 95% bootstrap "
            "confidence intervals; tokens/s is forward throughput on one fixed batch, equal for every model."
        ),
        "",
    ]
    return "\n".join(header) + "\n" + markdown_table(results)


def markdown_table(results: Results) -> str:
    """One Markdown table per domain: model, params (and % of the reference), ppl [CI], bpb, acc [CI], tokens/s."""
    reference = results.get(REFERENCE_LABEL, next(iter(results.values())))["params"]
    sections = []
    for domain in domains_of(results):
        rows = [
            "| model | params | ppl [95% CI] | bpb | acc [95% CI] | tokens/s | MC items / docs |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        rows += [_row(label, result, domain, reference) for label, result in results.items()]
        sections.append(f"## {domain}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(sections)


def _row(label: str, result: dict[str, Any], domain: str, reference: int) -> str:
    params = f"{result['params'] / 1e6:.2f}M ({100 * result['params'] / reference:.0f}%)"
    speed = f"{result['tokens_per_s']:.0f}"
    metrics = result["domains"].get(domain)
    if metrics is None:
        cells = [label, params, MISSING, MISSING, MISSING, speed, MISSING]
    else:
        (ppl_lo, ppl_hi), (acc_lo, acc_hi) = metrics["ppl_ci"], metrics["acc_ci"]
        cells = [
            label,
            params,
            f"{_num(metrics['ppl'])} [{_num(ppl_lo)}, {_num(ppl_hi)}]",
            f"{metrics['bpb']:.3f}",
            f"{metrics['acc']:.3f} [{acc_lo:.3f}, {acc_hi:.3f}]",
            speed,
            f"{metrics['n_mc']} / {metrics['n_docs']}",
        ]
    return "| " + " | ".join(cells) + " |"


def _num(value: float) -> str:
    """Perplexities span 5 to millions: two decimals while small, whole numbers (no separators) beyond 1000."""
    return f"{value:.2f}" if value < 1000 else f"{value:.0f}"


# --------------------------------------------------------------------------------------------------------- plot


def plot_png(results: Results, title: str) -> bytes:
    """Per domain: accuracy (95% CI) against parameter count, and perplexity bars (95% CI).

    Each model keeps one colour in every panel, named in a single legend. Drawn on a bare Agg canvas rather than
    through pyplot, which keeps global state and is not thread-safe.
    """
    domains = domains_of(results)
    colours = {label: f"C{i % 10}" for i, label in enumerate(results)}
    figure = Figure(figsize=(4.5 * len(domains) + 1.5, 8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(domains), squeeze=False)
    for column, domain in enumerate(domains):
        present = {label: r for label, r in results.items() if domain in r["domains"]}
        _plot_accuracy(axes[0][column], present, domain, colours)
        _plot_perplexity(axes[1][column], present, domain, colours)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=label) for label, c in colours.items()]
    figure.legend(handles=handles, loc="outside right upper", title="model")
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _plot_accuracy(ax: Axes, results: Results, domain: str, colours: dict[str, str]) -> None:
    for label, result in results.items():
        metrics = result["domains"][domain]
        acc, (lo, hi) = metrics["acc"], metrics["acc_ci"]
        ax.errorbar([result["params"] / 1e6], [acc], yerr=[[acc - lo], [hi - acc]], fmt="o", capsize=4,
                    color=colours[label])
    ax.set_title(f"{domain}: cloze accuracy")
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_ylim(0, 1)
    ax.margins(x=0.2)
    ax.grid(alpha=0.3)


def _plot_perplexity(ax: Axes, results: Results, domain: str, colours: dict[str, str]) -> None:
    """Bars with CI whiskers; a log scale only when perplexities differ by more than 10x (pruning can explode them)."""
    labels = list(results)
    values = [results[label]["domains"][domain]["ppl"] for label in labels]
    cis = [results[label]["domains"][domain]["ppl_ci"] for label in labels]
    errors = [[v - lo for v, (lo, _) in zip(values, cis)], [hi - v for v, (_, hi) in zip(values, cis)]]
    ax.bar(labels, values, yerr=errors, capsize=4, color=[colours[label] for label in labels])
    log = max(hi for _, hi in cis) > 10 * min(values)
    if log:
        ax.set_yscale("log")
    ax.set_title(f"{domain}: perplexity")
    ax.set_ylabel("perplexity (95% CI" + (", log scale)" if log else ")"))
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(alpha=0.3, axis="y")


def ablation_png(table: dict[str, dict[str, Any]], title: str) -> bytes:
    """Ablation bars per domain: each variant's accuracy; a [mean, lo, hi] value gets CI whiskers."""
    domains = list(table)
    figure = Figure(figsize=(4.5 * len(domains) + 0.5, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    for ax, domain in zip(figure.subplots(1, len(domains), squeeze=False)[0], domains):
        labels = list(table[domain])
        values = [table[domain][label] for label in labels]
        means = [v[0] if isinstance(v, list) else v for v in values]
        errors = [[m - v[1] if isinstance(v, list) else 0 for m, v in zip(means, values)],
                  [v[2] - m if isinstance(v, list) else 0 for m, v in zip(means, values)]]
        ax.bar(labels, means, yerr=errors, capsize=4, color=[f"C{i}" for i in range(len(labels))])
        ax.set_title(f"{domain}: cloze accuracy")
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(alpha=0.3, axis="y")
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
