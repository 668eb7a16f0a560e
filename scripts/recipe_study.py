"""The recipe study's report: each finished `qpeft train` run against the study's base run.

Every run folder under `--runs` with a `metrics.json` is one row. What a run changed is read
from its own config, as the dotted keys whose values differ from the base run's (paths and
the run's name left out), with the authors' value of each key beside it, read from the
paper recipe's config (`--paper`). Each row gives the dev check at step 0 and at the kept
adapter, the fused dev figure, the dev loss, steps, wall time, training pairs/s, and what
the dev checks measured of the adapter (tanh(g), E' delta against E, hint norm against word
norm), and the paired t-test of its kept adapter's per-query dev NDCG@10 against the base
run's, where both recorded them. A run whose dev check differs from the base run's (other
prepared data, depth or number of dev queries) is not comparable on it and is left out, by
name. Writes study.md, study.json and study.png into `--out`.

    python scripts/recipe_study.py --runs results/nfcorpus/recipe/train \\
        --paper results/nfcorpus/recipe/paper.yaml --out results/nfcorpus/recipe
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.train import TrainRunConfig
from qpeft.config import load_config, to_dict
from qpeft.metrics import paired_t_test

# Where a run lives and what it is called: not part of the recipe.
NOT_RECIPE = ("run.", "data.", "ray.", "model.cache_dir", "train.engine")
DIAGNOSTICS = ("gate_tanh_mean", "embed_delta_rel_mean", "hint_to_word_norm")
# What decides the dev check's figure: runs that differ here are not compared.
DEV_CHECK = ("data.prepared_dir", "train.dev_depth", "train.dev_max_queries")


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe(config: dict) -> dict:
    return {k: v for k, v in flatten(config).items() if not k.startswith(NOT_RECIPE)}


def changes(config: dict, base: dict) -> dict:
    """The recipe keys whose values differ from the base run's."""
    ours, theirs = recipe(config), recipe(base)
    return {k: ours[k] for k in sorted(ours) if ours[k] != theirs.get(k)}


def run_row(metrics: dict, base: dict, paper: dict) -> dict:
    """`paper` holds the authors' values where they differ from the base recipe's: other
    keys a run changed (its data size, say) are the study's own, with no paper's value."""
    history = metrics["history"]
    start = history[0]
    kept = kept_check(metrics)
    trained = [h for h in history if h["step"] > 0]
    last = history[-1]
    changed = changes(metrics["config"], base)
    return {
        "method": metrics["config"]["adapter"]["method"],
        "train_queries": metrics.get("train_queries"),
        "dev_queries": start.get("dev_queries"),
        "changes": changed,
        "paper_values": {k: paper[k] for k in changed if k in paper},
        "step0_dev_ndcg10": start["dev_ndcg10"],
        "best_dev_ndcg10": metrics["best_dev_ndcg10"],
        "last_dev_ndcg10": last["dev_ndcg10"],
        "best_dev_ndcg10_fused": kept["dev_ndcg10_fused"],
        "best_epoch": metrics["best_epoch"],
        "dev_loss": [round(h["dev_loss"], 4) for h in history],
        "steps": metrics["steps"],
        "epochs_run": metrics["epochs_run"],
        "wall_seconds": metrics["wall_seconds"],
        "train_pairs_per_s": (
            sum(h["train_pairs_per_s"] for h in trained) / len(trained) if trained else None
        ),
        "diverged_at_step": metrics.get("diverged_at_step"),
        **{name: last.get(name) for name in DIAGNOSTICS},
    }


def kept_check(metrics: dict) -> dict:
    """The dev check of the adapter the run kept."""
    history = metrics["history"]
    return next((h for h in history if h["epoch"] == metrics["best_epoch"]), history[0])


def p_against(metrics: dict, base: dict) -> float | None:
    """Paired t-test of the kept adapters' per-query dev NDCG@10 (runs that recorded it)."""
    ours = kept_check(metrics).get("dev_ndcg10_by_query")
    theirs = kept_check(base).get("dev_ndcg10_by_query")
    if not ours or not theirs or metrics is base:
        return None
    queries = sorted(set(ours) & set(theirs))
    return paired_t_test([ours[q] for q in queries], [theirs[q] for q in queries])


def dev_check(config: dict) -> dict:
    flat = flatten(config)
    return {key: flat.get(key) for key in DEV_CHECK}


def study_rows(runs: Path, base_name: str, paper: dict) -> tuple[list[dict], list[str]]:
    """One row per finished run with the base run's dev check, the base run first, the rest
    by best dev NDCG@10; and the names of the runs left out for another dev check."""
    found = {p.parent.name: json.loads(p.read_text()) for p in sorted(runs.glob("*/metrics.json"))}
    if base_name not in found:
        raise SystemExit(f"{runs}/{base_name}/metrics.json: the base run is not finished")
    base = found[base_name]
    check = dev_check(base["config"])
    left_out = [name for name, m in found.items() if dev_check(m["config"]) != check]
    theirs = recipe(base["config"])
    authors = {k: v for k, v in paper.items() if k in theirs and v != theirs[k]}
    rows = [
        {"run": name, **run_row(m, base["config"], authors), "p_vs_base": p_against(m, base)}
        for name, m in found.items()
        if name not in left_out
    ]
    rows.sort(key=lambda r: (r["run"] != base_name, -r["best_dev_ndcg10"]))
    return rows, left_out


def cell(value, digits: int = 4) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def describe(changed: dict) -> str:
    return "; ".join(f"`{k}` {json.dumps(v)}" for k, v in changed.items()) or "(base recipe)"


def markdown(rows: list[dict], left_out: list[str]) -> str:
    base = rows[0]["best_dev_ndcg10"]
    lines = [
        "| run | method | training queries | change (ours) | paper's value | step 0 "
        "| best dev NDCG@10 | vs base | p | fused | dev loss (each check) | steps | wall s "
        "| train pairs/s | tanh(g) | E' delta / E | hint / word norm |",
        "|" + "---|" * 17,
    ]
    for r in rows:
        paper = "; ".join(f"`{k}` {json.dumps(v)}" for k, v in r["paper_values"].items())
        best = cell(r["best_dev_ndcg10"])
        if r["diverged_at_step"]:
            best += f" (NaN at step {r['diverged_at_step']})"
        cells = [
            r["run"],
            r["method"],
            cell(r["train_queries"]),
            describe(r["changes"]),
            paper,
            cell(r["step0_dev_ndcg10"]),
            best,
            f"{r['best_dev_ndcg10'] - base:+.4f}",
            cell(r["p_vs_base"], 3),
            cell(r["best_dev_ndcg10_fused"]),
            " -> ".join(f"{x:.3f}" for x in r["dev_loss"]),
            str(r["steps"]),
            f"{r['wall_seconds']:.0f}",
            cell(r["train_pairs_per_s"], 1),
            cell(r["gate_tanh_mean"], 3),
            cell(r["embed_delta_rel_mean"], 4),
            cell(r["hint_to_word_norm"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Dev NDCG@10 on the dev check's queries; p: paired t-test of the kept adapter's "
        "per-query dev NDCG@10 against the base run's (blank where a run did not record "
        "them). The dev loss is each run's own loss (listwise cross-entropy, or hinge plus "
        "likelihood): compare it between runs of one loss only. tanh(g), E' delta / E and "
        "hint / word norm are read at the last dev check. The paper's value is given for the "
        "keys where the authors' recipe differs from the base recipe.",
    ]
    if left_out:
        names = ", ".join(left_out)
        lines += ["", f"Left out, as their dev check differs from the base run's: {names}."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Best dev NDCG@10 per run as bars (full-scale runs in their own colour), each run's
    step 0 as a grey tick on its bar, the base run as a line; the figures in a column right
    of the axes, where no line crosses them; the axis around the data (no ticks outside)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = rows[::-1]
    base_queries = rows[-1]["train_queries"]
    y = range(len(rows))
    values = [r["best_dev_ndcg10"] for r in rows]
    starts = [r["step0_dev_ndcg10"] for r in rows]
    full = [r["train_queries"] != base_queries for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(rows) + 2.2))
    colours = ["tab:orange" if f else "tab:blue" for f in full]
    ax.barh(y, values, color=colours)
    ax.scatter(starts, y, marker="|", s=200, color="dimgrey", zorder=3, label="its step 0")
    ax.axvline(rows[-1]["best_dev_ndcg10"], color="black", linestyle="--", label="base run")
    ax.set_yticks(list(y), [r["run"] for r in rows])
    ax.set_xlim(min([*values, *starts]) - 0.005, max([*values, *starts]) + 0.005)
    beside = ax.get_yaxis_transform()  # x in axes units, y in data units
    for i, value in enumerate(values):
        ax.text(1.01, i, f"{value:.4f}", va="center", fontsize=8, transform=beside)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Patch(color="tab:blue", label=f"{base_queries} training queries"))
    if any(full):
        handles.append(Patch(color="tab:orange", label="all training queries"))
    queries = rows[-1].get("dev_queries")
    on = f"{queries} judged dev queries" if queries else "the dev check's queries"
    ax.set_xlabel(f"best dev NDCG@10 ({on})")
    # Below the axes, where it covers no bar.
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of `qpeft train` runs")
    parser.add_argument("--base", default="base", help="the run the others are compared to")
    parser.add_argument("--paper", type=Path, required=True, help="the authors' recipe (YAML)")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Through the train config, so keys the paper's file leaves out read as their defaults.
    paper = flatten(to_dict(load_config(TrainRunConfig, args.paper)))
    rows, left_out = study_rows(args.runs, args.base, paper)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, left_out)
    (args.out / "study.md").write_text(table)
    (args.out / "study.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "study.png")
    print(table)


if __name__ == "__main__":
    main()
