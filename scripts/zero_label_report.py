"""The zero-label study's table: pseudo-queries made, training on them, and test figures.

Reads each kind's `counts-KIND.json` (copied from its prepared folder), its training's
`metrics.json` and the test study (`scripts/depth_study.py`'s study.json), and writes
report.md and report.json beside them:

    python scripts/zero_label_report.py --study results/nfcorpus/zero_label \
        --kinds title generate both
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def kind_row(study: Path, kind: str, test: dict) -> dict:
    counts = json.loads((study / f"counts-{kind}.json").read_text())
    pseudo = counts["pseudo_queries"]
    row: dict = {
        "kind": kind,
        "documents": pseudo["documents_sampled"],
        "drafted": pseudo["drafted"],
        "kept": pseudo["kept"],
        "kept_by_split": pseudo["kept_by_split"],
        "skipped": {k: v for k, v in pseudo["skipped"].items() if v},
        "filter_recall": pseudo["filter_recall"],
        "generation": pseudo.get("generation"),
    }
    metrics_path = study / "train" / kind / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        history = metrics["history"]
        kept = next(h for h in history if h["epoch"] == metrics["best_epoch"])
        row["training"] = {
            "train_queries": metrics["train_queries"],
            "steps": metrics["steps"],
            "wall_seconds": metrics["wall_seconds"],
            "dev_split": metrics.get("dev_split"),
            "dev_ndcg10_by_check": [round(h["dev_ndcg10"], 4) for h in history],
            "kept_epoch": metrics["best_epoch"],
            "fusion_weight": kept["fusion_weight"],
        }
    row["test"] = {
        r["system"]: r for r in test.get("table", []) if r["system"] in (kind, f"{kind}_fused")
    }
    return row


def markdown(rows: list[dict], test: dict) -> str:
    lines = [
        "| kind | documents | drafted | kept (train / dev) | dropped | filter recall | "
        "generation | training queries, steps, s | pseudo-dev NDCG@10 by check | kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        split = r["kept_by_split"]
        generation = r["generation"]
        cost = (
            f"{generation['documents_per_second']} docs/s, "
            f"{generation['new_tokens_per_second']} tokens/s, peak {generation['peak_rss_mb']} MB"
            if generation
            else ""
        )
        training = r.get("training")
        trained = (
            f"{training['train_queries']}, {training['steps']}, {training['wall_seconds']:.0f}"
            if training
            else "not trained"
        )
        checks = " -> ".join(str(v) for v in training["dev_ndcg10_by_check"]) if training else ""
        kept = (
            (
                "untrained start"
                if training["kept_epoch"] == 0
                else f"epoch {training['kept_epoch']}"
            )
            if training
            else ""
        )
        dropped = ", ".join(f"{k} {v}" for k, v in r["skipped"].items())
        lines.append(
            f"| {r['kind']} | {r['documents']} | {r['drafted']} | {r['kept']} "
            f"({split['pseudo_train']} / {split['pseudo_dev']}) | {dropped} | "
            f"{r['filter_recall']} | {cost} | {trained} | {checks} | {kept} |"
        )
    if test:
        lines += [
            "",
            f"Test: {test['queries']} judged queries; p: paired t-test on NDCG@10.",
            "",
            "| system | NDCG@10 | p vs first stage | p vs zero-shot | p vs supervised | weight |",
            "|---|---|---|---|---|---|",
        ]
        for t in test["table"]:
            fused = t["system"].endswith("_fused")
            weight = test["weights"].get(f"{t['system'].removesuffix('_fused')}@{t['depth']}")
            lines.append(
                f"| {t['system']} | {t['ndcg@10']:.4f} | {_p(t.get('p_vs_first_stage'))} | "
                f"{_p(t.get('p_vs_zero_shot'))} | {_p(t.get('p_vs_supervised'))} | "
                f"{weight if fused else ''} |"
            )
    return "\n".join(lines) + "\n"


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.2g}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True, help="the study's folder")
    parser.add_argument("--kinds", nargs="+", required=True)
    args = parser.parse_args(argv)
    study = Path(args.study)
    test_path = study / "test" / "study.json"
    test = json.loads(test_path.read_text()) if test_path.exists() else {}
    rows = [kind_row(study, kind, test) for kind in args.kinds]
    report = {"kinds": rows, "test": test}
    (study / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (study / "report.md").write_text(markdown(rows, test))
    print(markdown(rows, test))
    return report


if __name__ == "__main__":
    main()
