"""scripts/depth_study.py: shallower reranks read off a deep one, fusion weights chosen on
dev and reused on test, the depth chosen by its rule."""

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.synthetic import write_prepared

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("depth_study", ROOT / "scripts/depth_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_rerank(prepared: Path, out: Path, split: str, perfect_below: int) -> Path:
    """A finished rerank over every candidate of `split` whose LM ranks the relevant
    document first only where the first stage put it at rank <= `perfect_below`."""
    rows = pads.dataset(str(prepared / "candidates")).to_table().to_pylist()
    scored = [
        {
            "query_id": r["query_id"],
            "doc_id": r["doc_id"],
            "rank": 0,
            "score": 1.0 if r["relevance"] and r["rank"] <= perfect_below else -float(r["rank"]),
            "first_stage_rank": r["rank"],
            "first_stage_score": r["first_stage_score"],
        }
        for r in rows
        if r["split"] == split
    ]
    (out / "run").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(scored), out / "run" / "shard-00000.parquet")
    queries = len({r["query_id"] for r in scored})
    (out / "counts.json").write_text(
        json.dumps({"queries": queries, "invocations": [{"seconds": 2.0 * queries}]})
    )
    (out / "rerank_config.json").write_text(json.dumps({"config": {"depth": 5}}))
    return out


def test_depths_are_read_off_one_deep_rerank_and_test_reuses_dev_weights(tmp_path):
    script = load_script()
    prepared = write_prepared(tmp_path / "prepared", n_dev=6, n_test=6, n_candidates=5)
    dev = write_rerank(prepared, tmp_path / "dev", "dev", perfect_below=5)
    common = ["--prepared", str(prepared), "--depths", "2", "5"]
    runs = ["--runs", f"first_stage={dev}", f"lm={dev}"]
    study = script.main([*common, "--split", "dev", *runs, "--out", str(tmp_path / "dev_study")])
    by = {(r["system"], r["depth"]): r for r in study["table"]}
    # The LM ranks every relevant document first once it is among the reranked ones.
    assert by[("lm", 5)]["ndcg@10"] == pytest.approx(1.0)
    assert by[("lm", 2)]["ndcg@10"] < 1.0 and by[("first_stage", 2)]["ndcg@10"] < 1.0
    assert by[("lm", 5)]["p_vs_first_stage"] <= 1.0
    assert study["chosen_depth"] == {"lm": 5}
    assert study["systems"]["lm"] == {"seconds_per_query": 2.0, "depth": 5}
    assert (tmp_path / "dev_study" / "study.md").read_text().count("| lm") == 4

    test = write_rerank(prepared, tmp_path / "test", "test", perfect_below=2)
    with pytest.raises(SystemExit, match="fusion-from"):
        script.main([*common, "--split", "test", "--runs", f"lm={test}", "--out", "x"])
    dev_study = str(tmp_path / "dev_study" / "study.json")
    out = ["--out", str(tmp_path / "t"), "--fusion-from", dev_study]
    tested = script.main([*common, "--split", "test", "--runs", f"lm={test}", *out])
    assert tested["weights"] == study["weights"] and "chosen_depth" not in tested


def test_against_adds_a_paired_test_against_another_system(tmp_path):
    script = load_script()
    prepared = write_prepared(tmp_path / "prepared", n_dev=6, n_test=6, n_candidates=5)
    strong = write_rerank(prepared, tmp_path / "strong", "dev", perfect_below=5)
    weak = write_rerank(prepared, tmp_path / "weak", "dev", perfect_below=1)
    runs = ["--runs", f"first_stage={strong}", f"strong={strong}", f"weak={weak}"]
    out = ["--against", "weak", "--out", str(tmp_path / "study")]
    study = script.main(
        ["--prepared", str(prepared), "--depths", "5", "--split", "dev", *runs, *out]
    )
    by = {r["system"]: r for r in study["table"]}
    assert "p_vs_weak" in by["strong"] and "p_vs_weak" not in by["weak"]
    assert by["strong"]["ndcg@10"] > by["weak"]["ndcg@10"]
    header = (tmp_path / "study" / "study.md").read_text().splitlines()[2]
    assert header.endswith("| p vs first stage | p vs zero-shot | p vs weak | weight |")
