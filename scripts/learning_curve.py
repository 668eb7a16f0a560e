"""Dev NDCG@10 against the number of training queries, from finished `qpeft train` runs.

Each run folder under `--runs` whose `metrics.json` names `--method` is one point: its
training-set size (`train_queries`) and its best dev NDCG@10. Step 0 of the runs (the
untrained adapter, which ranks exactly as zero-shot with gated hints) is the point at 0.
Writes curve.json, curve.md and curve.png into `--out`; the runs' own training cost
(pairs/s, peak RSS per worker, wall time) goes into the table beside each point.

    python scripts/learning_curve.py --runs results/nfcorpus/train --out results/nfcorpus/curve

With `--methods-at N` it also compares every method's run capped at N training queries
(methods.json, methods.md), best first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_row(path: Path) -> dict | None:
    """A finished run's point: method, training-set size, best dev NDCG@10 and its cost;
    None for a run without a training-set size."""
    metrics = json.loads(path.read_text())
    config = metrics["config"]
    # Runs made before metrics.json counted them: the cap, when it was below the pool.
    size = metrics.get("train_queries") or config["train"]["max_train_queries"]
    if size is None:
        return None
    history = metrics["history"]
    trained = [h for h in history if h["step"] > 0]
    return {
        "run": path.parent.name,
        "method": config["adapter"]["method"],
        "train_queries": size,
        "max_train_queries": config["train"]["max_train_queries"],
        "epochs": config["train"].get("epochs"),
        "best_dev_ndcg10": metrics["best_dev_ndcg10"],
        "best_epoch": metrics["best_epoch"],
        "dev_ndcg10_by_epoch": [round(h["dev_ndcg10"], 4) for h in history],
        "steps": metrics["steps"],
        "train_pairs_per_s": trained[-1].get("train_pairs_per_s") if trained else None,
        "peak_rss_mib": trained[-1].get("peak_rss_mib") if trained else None,
        "wall_seconds": metrics.get("wall_seconds"),
        "resumed_at": metrics.get("resumed_at") or [],
        "dev_queries": history[0].get("dev_queries"),
        "step0_dev_ndcg10": history[0]["dev_ndcg10"],
    }


def finished_runs(runs: Path) -> list[dict]:
    rows = (run_row(path) for path in sorted(runs.glob("*/metrics.json")))
    return [row for row in rows if row is not None]


def step_zero(rows: list[dict]) -> dict:
    """Step 0 of the first run: the untrained adapter, which ranks as zero-shot with gated
    hints (each run's own step 0 opens its "per epoch" cell)."""
    return {
        "run": "step 0 (untrained)",
        "method": "zero_shot",
        "train_queries": 0,
        "best_dev_ndcg10": rows[0]["step0_dev_ndcg10"],
    }


def curve_points(runs: Path, method: str) -> list[dict]:
    """One point per finished run of `method`, by training-set size, plus step 0."""
    points = [row for row in finished_runs(runs) if row["method"] == method]
    if not points:
        raise SystemExit(f"{runs}: no finished {method} run")
    return [step_zero(points), *sorted(points, key=lambda p: p["train_queries"])]


def method_rows(runs: Path, size: int) -> list[dict]:
    """Every method's run capped at `size` training queries, best first, plus step 0."""
    rows = [row for row in finished_runs(runs) if row["max_train_queries"] == size]
    if not rows:
        raise SystemExit(f"{runs}: no finished run on {size} training queries")
    return [step_zero(rows), *sorted(rows, key=lambda r: -r["best_dev_ndcg10"])]


def wall_cell(point: dict) -> str:
    """A resumed run's wall time is its last invocation's: say so, with where it resumed."""
    wall = point.get("wall_seconds")
    if not wall:
        return ""
    resumed = point.get("resumed_at")
    return f"{wall} (last part: resumed at step {resumed[-1]})" if resumed else str(wall)


def markdown(points: list[dict], title: str) -> str:
    lines = [
        f"{title}: the runs' dev check "
        f"({points[-1].get('dev_queries')} dev queries, those of train.dev_max_queries with "
        "candidates, over their top train.dev_depth); each run's best epoch, which early "
        "stopping also reads.",
        "",
        "| method | training queries | epochs | dev NDCG@10 | best epoch | per epoch (step 0 "
        "first) | steps | pairs/s | peak RSS per worker (MiB) | wall (s) | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        rss, rate = p.get("peak_rss_mib"), p.get("train_pairs_per_s")
        cells = [
            p["method"],
            str(p["train_queries"]),
            str(p.get("epochs", "")),
            f"{p['best_dev_ndcg10']:.4f}",
            str(p.get("best_epoch", "")),
            " / ".join(f"{v:.4f}" for v in p.get("dev_ndcg10_by_epoch", [])),
            str(p.get("steps", "")),
            f"{rate:.2f}" if rate else "",
            ", ".join(f"{m:.0f}" for m in rss) if rss else "",
            wall_cell(p),
            p["run"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(points: list[dict], method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["train_queries"] for p in points]
    ax.plot(xs, [p["best_dev_ndcg10"] for p in points], marker="o", label=method)
    ax.axhline(points[0]["best_dev_ndcg10"], color="grey", linestyle="--", label="step 0")
    # Linear up to 100 queries, logarithmic beyond: the 0 point (step 0) fits on the axis.
    # The axis starts at 0 and its ticks are the sizes trained, so none is impossible
    # (matplotlib's own symlog ticks ran to -10^2 training queries).
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlim(left=0, right=max(xs) * 1.15)
    ax.set_xticks(sorted(set(xs)), [f"{x:,}" for x in sorted(set(xs))])
    ax.minorticks_off()
    ax.set_xlabel("training queries")
    ax.set_ylabel("dev NDCG@10")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of `qpeft train` runs")
    parser.add_argument("--method", default="qpeft_a")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--methods-at",
        type=int,
        help="also compare every method's run capped at this many training queries "
        "(methods.json, methods.md)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    points = curve_points(args.runs, args.method)
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"Dev NDCG@10 of {args.method} by training queries"
    (args.out / "curve.md").write_text(markdown(points, title))
    plot(points, args.method, args.out / "curve.png")
    (args.out / "curve.json").write_text(json.dumps(points, indent=2) + "\n")
    print(markdown(points, title))
    if args.methods_at:
        rows = method_rows(args.runs, args.methods_at)
        title = f"Dev NDCG@10 by method on {args.methods_at} training queries"
        (args.out / "methods.md").write_text(markdown(rows, title))
        (args.out / "methods.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(markdown(rows, title))


if __name__ == "__main__":
    main()
