"""Rerank depth against quality and cost, from finished `qpeft rerank` runs.

Each pair is scored alone, so reranking a query's top k is the depth-100 rerank's scores
of the first stage's top k: one run at the deepest depth gives every shallower one. For
each system (`name=RUN_FOLDER`; the name `first_stage` ranks by the folder's first-stage
scores) and depth, the script ranks the first stage's top k by the system's score, raw and
fused with the first stage (the weight chosen on this split when it is not test, else read
from `--fusion-from`, the dev study's json), and measures NDCG@10 and recall@20 on every
judged query of the split, with paired t-tests against the first stage and zero-shot at
the same depth. Seconds per query come from the runs' own `counts.json` (measured at the
depth they were reranked at). Writes study.json and study.md; on dev it names the depth
chosen for each system: the best fused NDCG@10, ties within 0.001 going to the shallower
(cheaper) depth.

    python scripts/depth_study.py --prepared runs/prepare/nfcorpus-hybrid --split dev \
        --runs first_stage=results/nfcorpus/depth/runs/dev-zero_shot \
        zero_shot=results/nfcorpus/depth/runs/dev-zero_shot --depths 20 50 100 \
        --out results/nfcorpus/depth/dev
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qpeft import storage
from qpeft.artifacts import PreparedData
from qpeft.metrics import Run, evaluate, mean, paired_t_test
from qpeft.scoring.fusion import choose_weight, fuse

FIRST_STAGE = "first_stage"
MEASURES = ("ndcg@10", "recall@20")
LABELS = {FIRST_STAGE: "first stage", "zero_shot": "zero-shot"}
TIE = 0.001  # dev NDCG@10 differences below this do not pay for a deeper rerank


def read_rows(folder: str) -> list[dict]:
    columns = ["query_id", "doc_id", "score", "first_stage_rank", "first_stage_score"]
    return storage.read_parquet(Path(folder) / "run", columns).to_pylist()


def runs_at(rows: list[dict], depth: int) -> tuple[Run, Run]:
    """The system's and the first stage's runs over each query's first-stage top `depth`."""
    system: Run = {}
    first: Run = {}
    for row in rows:
        if row["first_stage_rank"] <= depth:
            system.setdefault(row["query_id"], {})[row["doc_id"]] = row["score"]
            first.setdefault(row["query_id"], {})[row["doc_id"]] = row["first_stage_score"]
    return system, first


def seconds_per_query(folder: str) -> dict:
    """Wall seconds a query of the rerank job (start-up included), at its own depth."""
    counts = json.loads((Path(folder) / "counts.json").read_text())
    stamp = json.loads((Path(folder) / "rerank_config.json").read_text())
    seconds = sum(entry["seconds"] for entry in counts["invocations"])
    return {"seconds_per_query": seconds / counts["queries"], "depth": stamp["config"]["depth"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="name=rerank run folder")
    parser.add_argument("--depths", nargs="+", type=int, required=True)
    parser.add_argument("--fusion-from", help="the dev study.json whose weights test uses")
    parser.add_argument(
        "--weights",
        nargs="*",
        default=[],
        help="name=weight: fusion weights chosen elsewhere (a training's dev check), for "
        "every depth; they take precedence over --fusion-from",
    )
    parser.add_argument(
        "--against",
        nargs="*",
        default=[],
        help="more systems (raw runs' names) to test every other against, beside the "
        "first stage and zero-shot",
    )
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    given = {name: float(w) for name, w in (item.split("=", 1) for item in args.weights)}
    if args.split == "test" and not args.fusion_from and not given:
        raise SystemExit(
            "depth_study: on test the fusion weights come from dev: --fusion-from or --weights"
        )
    prepared = PreparedData(args.prepared)
    qrels = prepared.qrels(prepared.query_ids(args.split))
    qrels = {q: docs for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    dev_weights = {}
    if args.fusion_from:
        dev_weights = json.loads(Path(args.fusion_from).read_text())["weights"]
    systems = dict(item.split("=", 1) for item in args.runs)
    rows = {name: read_rows(folder) for name, folder in systems.items()}
    against = [FIRST_STAGE, "zero_shot", *args.against]
    study: dict = {
        "split": args.split,
        "queries": len(qrels),
        "against": against,
        "systems": {},
        "weights": {},
    }
    per_query: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    for name, folder in systems.items():
        for depth in args.depths:
            system, first = runs_at(rows[name], depth)
            if name == FIRST_STAGE:
                entries = {name: first}
            else:
                key = f"{name}@{depth}"
                if name in given:
                    weight = given[name]
                elif args.fusion_from:
                    weight = dev_weights[key]
                else:
                    weight, _ = choose_weight(system, first, qrels)
                study["weights"][key] = weight
                entries = {name: system, f"{name}_fused": fuse(system, first, weight)}
            for label, run in entries.items():
                per_query[(label, depth)] = evaluate(qrels, run, MEASURES)
        if name != FIRST_STAGE:
            study["systems"][name] = seconds_per_query(folder)
    table = []
    for (label, depth), values in per_query.items():
        row = {"system": label, "depth": depth}
        for measure in MEASURES:
            row[measure] = mean([v[measure] for v in values.values()])
        ndcg = [values[q]["ndcg@10"] for q in sorted(values)]
        for other in against:
            base = per_query.get((other, depth))
            if base is not None and label != other:
                baseline = [base[q]["ndcg@10"] for q in sorted(base)]
                row[f"p_vs_{other}"] = paired_t_test(ndcg, baseline)
        table.append(row)
    study["table"] = table
    if args.split != "test":
        study["chosen_depth"] = {}
        for name in systems:
            if name == FIRST_STAGE:
                continue
            fused = {r["depth"]: r["ndcg@10"] for r in table if r["system"] == f"{name}_fused"}
            best = max(fused.values())
            study["chosen_depth"][name] = min(d for d, v in fused.items() if v >= best - TIE)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    (out / "study.md").write_text(markdown(study))
    print(markdown(study))
    return study


def markdown(study: dict) -> str:
    against = study["against"]
    lines = [
        f"Rerank depth, split {study['split']}, {study['queries']} judged queries "
        "(p: paired t-test on NDCG@10 at the same depth)",
        "",
        "| system | depth | NDCG@10 | recall@20 | "
        + "".join(f"p vs {LABELS.get(name, name)} | " for name in against)
        + "weight |",
        "|---|---|---|---|" + "---|" * len(against) + "---|",
    ]
    for row in study["table"]:
        fused = row["system"].endswith("_fused")
        key = f"{row['system'].removesuffix('_fused')}@{row['depth']}"
        weight = study["weights"][key] if fused else ""
        lines.append(
            f"| {row['system']} | {row['depth']} | {row['ndcg@10']:.4f} | "
            f"{row['recall@20']:.4f} | "
            + "".join(f"{_p(row.get(f'p_vs_{name}'))} | " for name in against)
            + f"{weight} |"
        )
    lines.append("")
    for name, cost in study["systems"].items():
        lines.append(
            f"* {name}: {cost['seconds_per_query']:.2f} s a query reranked at depth "
            f"{cost['depth']} (the whole job, start-up included)"
        )
    if "chosen_depth" in study:
        lines.append("")
        for name, depth in study["chosen_depth"].items():
            lines.append(f"* chosen depth for {name}: {depth}")
    return "\n".join(lines) + "\n"


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.2g}"


if __name__ == "__main__":
    main()
