"""Render an evaluation: markdown table, per-query TSV, PNG plot and JSON, written atomically
(report.json last, so its presence means the report is whole)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from qpeft.artifacts import Report

ANSWER_PREFIXES = ("hit@", "answer_recall@")


def _atomic_write(path: Path, write) -> None:
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def markdown_table(report: dict) -> str:
    """Means per run; `†` marks a significant difference from the baseline."""
    measures, alpha = report["measures"], report["alpha"]
    lines = [
        "| run | " + " | ".join(measures) + " |",
        "|---|" + "---|" * len(measures),
    ]
    for name, run in report["runs"].items():
        cells = []
        for m in measures:
            mark = "†" if run["p_value"].get(m, 1.0) < alpha else ""
            cells.append(f"{run['mean'][m]:.4f}{mark}")
        label = f"{name} (baseline)" if name == report["baseline"] else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        f"\n{report['queries']} queries (split: {report['split'] or 'all'}). † p < {alpha} "
        f"in a two-sided paired t-test against {report['baseline']}."
    )
    missing = {n: len(r["queries_missing"]) for n, r in report["runs"].items()}
    if any(missing.values()):
        lines.append(
            "Queries a run does not rank score 0: "
            + ", ".join(f"{n} misses {k}" for n, k in missing.items() if k)
            + "."
        )
    return "\n".join(lines)


def p_value_table(report: dict) -> str:
    """One table of p-values per baseline: the baseline, then each `also_against` run."""
    measures = report["measures"]
    tables = []
    for against in [report["baseline"], *report.get("also_against", [])]:
        lines = [
            f"| p vs {against} | " + " | ".join(measures) + " |",
            "|---|" + "---|" * len(measures),
        ]
        for name, run in report["runs"].items():
            values = (
                run["p_value"]
                if against == report["baseline"]
                else run.get("p_value_against", {}).get(against)
            )
            if values:
                lines.append(
                    f"| {name} | " + " | ".join(f"{values[m]:.3g}" for m in measures) + " |"
                )
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def per_query_tsv(report: dict) -> str:
    measures = report["measures"]
    lines = ["\t".join(["run", "query_id", *measures])]
    for name, values in report["per_query"].items():
        for query, row in sorted(values.items()):
            lines.append("\t".join([name, query, *(f"{row[m]:.6f}" for m in measures)]))
    return "\n".join(lines) + "\n"


def pyplot(png: str):
    """matplotlib.pyplot on the Agg backend, or None, with one line saying that `png` is
    skipped, when matplotlib (the `plots` extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        print(f"{png} skipped: no matplotlib; pip install 'qpeft-ray[plots]' gives it")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(report: dict, path: Path, plt) -> None:
    """Bars of the IR measures (95% confidence intervals over queries) and, for QA data,
    hit rate against k (`plt`: matplotlib.pyplot)."""

    ir = [m for m in report["measures"] if not m.startswith(ANSWER_PREFIXES)]
    hits = [m for m in report["measures"] if m.startswith("hit@")]
    names = list(report["runs"])
    figure, axes = plt.subplots(
        1, 2 if hits else 1, figsize=(12 if hits else 9, 4.5), squeeze=False
    )
    bars = axes[0][0]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = report["per_query"][name]
        means, errors = [], []
        for m in ir:
            series = [row[m] for row in values.values()]
            average = sum(series) / len(series)
            spread = math.sqrt(sum((v - average) ** 2 for v in series) / max(1, len(series) - 1))
            means.append(average)
            errors.append(1.96 * spread / math.sqrt(len(series)))
        positions = [j + (i - (len(names) - 1) / 2) * width for j in range(len(ir))]
        bars.bar(positions, means, width, yerr=errors, capsize=2, label=name)
    bars.set_xticks(range(len(ir)), ir, rotation=30, ha="right")
    bars.set_ylabel("mean over queries (95% CI)")
    bars.set_title(f"{report['queries']} queries, split {report['split'] or 'all'}")
    bars.legend(fontsize="small")
    if hits:
        curve = axes[0][1]
        ks = [int(m.split("@")[1]) for m in hits]
        for name in names:
            curve.plot(ks, [report["runs"][name]["mean"][m] for m in hits], marker="o", label=name)
        curve.set_xlabel("k")
        curve.set_ylabel("hit rate (answer in top k)")
        curve.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)


def write_report(report: dict, out: Path) -> str:
    """Write every file of the report; return the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(report)
    _atomic_write(
        out / Report.MARKDOWN,
        lambda p: p.write_text(f"{table}\n\n{p_value_table(report)}\n", encoding="utf-8"),
    )
    _atomic_write(out / Report.PER_QUERY, lambda p: p.write_text(per_query_tsv(report)))
    plt = pyplot(Report.PLOT)
    if plt is not None:  # without the `plots` extra: no report.png
        _atomic_write(out / Report.PLOT, lambda p: plot(report, p, plt))
    _atomic_write(out / Report.marker, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    return table


def plot_dev_curve(history: list[dict], title: str, path: Path) -> bool:
    """A training run's dev NDCG@10 (raw and fused) and dev loss per epoch, epoch 0 being
    the untrained adapter. False (nothing written) without matplotlib."""
    plt = pyplot("dev_curve.png")
    if plt is None:
        return False

    epochs = [h["epoch"] for h in history]
    figure, (ndcg, loss) = plt.subplots(1, 2, figsize=(10, 4))
    ndcg.plot(epochs, [h["dev_ndcg10"] for h in history], "o-", label="LM")
    fused = [h.get("dev_ndcg10_fused") for h in history]
    if all(v is not None for v in fused):
        ndcg.plot(epochs, fused, "s--", label="fused with first stage")
    ndcg.set_xlabel("epoch (0: before training)")
    ndcg.set_ylabel("dev NDCG@10")
    ndcg.legend(fontsize="small")
    loss.plot(epochs, [h["dev_loss"] for h in history], "o-", color="tab:red")
    loss.set_xlabel("epoch (0: before training)")
    loss.set_ylabel("dev loss")
    for axis in (ndcg, loss):
        axis.set_xticks(epochs)
    figure.suptitle(title)
    figure.tight_layout()
    _atomic_write(path, lambda p: figure.savefig(p, dpi=110, format="png"))
    plt.close(figure)
    return True
