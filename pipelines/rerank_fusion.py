"""The fused run a rerank writes beside its LM run (`rerank.fusion`).

Where the weight comes from: the adapter's own (chosen on dev during training), a number,
a `fusion.json` written by an earlier dev rerank, or `choose`: pick it on this rerank's own
queries and write that `fusion.json`; refused on a test split, so a weight is never fitted
to the queries it is reported on.
"""

from __future__ import annotations

import json
from pathlib import Path

from qpeft import storage
from qpeft.artifacts import PreparedData, RerankRun
from qpeft.config import ConfigError
from qpeft.data.runs import write_trec_run
from qpeft.loading.checkpoint import read_adapter_config
from qpeft.metrics import Run, ranked
from qpeft.scoring.fusion import choose_weight, fuse

CHOOSE = "choose"


def is_weight(fusion: object) -> bool:
    return isinstance(fusion, (int, float)) and not isinstance(fusion, bool)


def check_fusion_value(fusion: object, key: str) -> None:
    """A weight must lie in [0, 1]; strings are `choose` or a path, checked when read."""
    if is_weight(fusion) and not 0.0 <= fusion <= 1.0:
        raise ConfigError(f"{key}: a weight must be in [0, 1]")


def fusion_weight(fusion: float | str | None, adapter_dir: str | None) -> float | str | None:
    """The weight to fuse with, `choose`, or None (no fused run)."""
    if fusion is None:
        if adapter_dir is None:
            return None
        saved = read_adapter_config(adapter_dir).get("fusion")
        return float(saved["weight"]) if saved else None
    if is_weight(fusion):
        return float(fusion)
    if fusion == CHOOSE:
        return fusion
    where = storage.local_copy(fusion) if "://" in fusion else Path(fusion)
    try:
        return float(json.loads(where.read_text())["weight"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"rerank.fusion: {fusion}: no fusion weight there ({err})") from None


def write_fused_run(
    out: Path, prepared: PreparedData, run_name: str, split: str | None, fusion: float | str
) -> dict:
    """Write `run_fused.trec` (tag `<run_name>_fused`) from the finished run in `out`;
    with `choose`, first pick the weight on this split's qrels into `fusion.json`."""
    rows = storage.read_parquet(
        out / RerankRun.RUN, ["query_id", "doc_id", "score", "first_stage_score"]
    ).to_pylist()
    lm: Run = {}
    first_stage: Run = {}
    for r in rows:
        lm.setdefault(r["query_id"], {})[r["doc_id"]] = r["score"]
        first_stage.setdefault(r["query_id"], {})[r["doc_id"]] = r["first_stage_score"]
    record: dict = {"normalisation": "minmax per query"}
    if fusion == CHOOSE:
        qrels = prepared.qrels(sorted(lm))
        weight, curve = choose_weight(lm, first_stage, qrels)
        record.update(weight=weight, chosen_on=split, queries=len(qrels), ndcg10_by_weight=curve)
        (out / RerankRun.FUSION).write_text(json.dumps(record, indent=2) + "\n")
    else:
        weight = float(fusion)
        record["weight"] = weight
    fused = fuse(lm, first_stage, weight)
    ranked_rows = [
        {"query_id": q, "doc_id": d, "rank": i + 1, "score": docs[d]}
        for q, docs in fused.items()
        for i, d in enumerate(ranked(docs))
    ]
    write_trec_run(out / RerankRun.FUSED_TREC, ranked_rows, f"{run_name}_fused")
    return record
