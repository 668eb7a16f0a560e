"""Reranking with Ray Data: exactly-once bookkeeping, resume, and scores equal to the
in-process scorer for every method."""

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import torch

from pipelines.rerank import RerankConfig, rerank
from pipelines.rerank_shards import (
    ExactlyOnceError,
    ShardCollector,
    ShardPlan,
    assemble_run,
    shard_path,
    verify,
    write_shard,
)
from qpeft.config import AdapterConfig, ConfigError, ModelConfig, TemplateConfig, from_dict
from qpeft.data.readers import read_trec_run
from qpeft.data.runs import read_run
from qpeft.lm.backbone import load_backbone
from qpeft.loading.checkpoint import load_adapter, save_adapter
from qpeft.scoring.fusion import fuse
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_pairs
from tests.conftest import TINY_TEMPLATE
from tests.synthetic import save_tiny_model, write_prepared


def keys(pairs):
    return pa.table({"query_id": [q for q, _ in pairs], "doc_id": [d for _, d in pairs]})


def scored(query_id, doc_id, score=0.0, first_stage_rank=1):
    return {
        "query_id": query_id,
        "doc_id": doc_id,
        "score": score,
        "first_stage_rank": first_stage_rank,
        "first_stage_score": 0.0,
    }


def test_shard_plan_groups_whole_documents_in_id_order():
    plan = ShardPlan.build(
        keys([("b", "2"), ("a", "1"), ("c", "3"), ("a", "2"), ("c", "1")]), 2, "here"
    )
    assert plan.expected == [{("a", "1"), ("c", "1"), ("b", "2"), ("a", "2")}, {("c", "3")}]
    assert plan.docs_of([1]) == ["3"] and plan.pairs == 5 and plan.queries == ["a", "b", "c"]
    with pytest.raises(Exception, match=r"here: 1 .* more than once, e.g. query a document 1"):
        ShardPlan.build(keys([("a", "1"), ("a", "1")]), 2, "here")


def test_collector_completes_shards_and_rejects_double_or_stray_scores():
    plan = ShardPlan.build(keys([("a", "1"), ("b", "1"), ("a", "2")]), 1, "here")
    collector = ShardCollector(plan)
    assert collector.add([scored("a", "1"), scored("a", "2")]) == [(1, [scored("a", "2")])]
    assert collector.pending_pairs == 1
    with pytest.raises(ExactlyOnceError, match="pair scored twice: query a document 1"):
        collector.add([scored("a", "1")])
    with pytest.raises(ExactlyOnceError, match="not asked for"):
        collector.add([scored("z", "9")])


def test_document_shards_are_verified_then_ranked_per_query(tmp_path):
    plan = ShardPlan.build(keys([("a", "1"), ("a", "2"), ("b", "1")]), 1, "here")
    shards = tmp_path / "run.partial"
    shards.mkdir()
    write_shard(shards, 0, [scored("a", "1", -2.0, 1), scored("b", "1", -3.0, 1)])
    with pytest.raises(ExactlyOnceError, match="'missing': 1"):
        verify(shards, plan)
    write_shard(shards, 1, [scored("a", "2", -1.0, 2), scored("a", "1")])  # a/1 again
    with pytest.raises(ExactlyOnceError, match="'duplicated': 1"):
        verify(shards, plan)
    write_shard(shards, 1, [scored("a", "2", -1.0, 2)])
    assert verify(shards, plan)["pairs_written"] == 3
    (tmp_path / "run").mkdir()  # left by an invocation killed before publishing: replaced
    assemble_run(shards, tmp_path / "run")
    ranks = pads.dataset(str(tmp_path / "run")).to_table().to_pylist()
    assert [(r["query_id"], r["doc_id"], r["rank"]) for r in ranks] == [
        ("a", "2", 1),
        ("a", "1", 2),
        ("b", "1", 1),
    ]


def test_rerank_config_errors():
    with pytest.raises(ConfigError, match=r"rerank\.adapter_dir: method qpeft_a needs"):
        from_dict(RerankConfig, {"rerank": {"method": "qpeft_a"}})
    with pytest.raises(ConfigError, match="method zero_shot takes no adapter"):
        from_dict(RerankConfig, {"rerank": {"adapter_dir": "x"}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("rerank")
    model = save_tiny_model(base / "tiny")
    data = write_prepared(base / "prepared", n_train=4, n_dev=2, n_test=7, n_candidates=5)
    rows = [
        r
        for r in pads.dataset(str(data / "candidates")).to_table().to_pylist()
        if r["split"] == "test"
    ]
    return {"model": model, "data": data, "rows": rows, "base": base}


def config(setup, tmp_path, **rerank_section):
    return from_dict(
        RerankConfig,
        {
            "model": {"name": setup["model"]},
            "template": TINY_TEMPLATE,
            "rerank": {
                "prepared_dir": str(setup["data"]),
                "output_dir": str(tmp_path),
                "docs_per_shard": 10,
                "rows_per_batch": 4,
                **rerank_section,
            },
            "ray": {"num_cpus": 2},
        },
    )


def in_process(model, rows):
    scores = score_pairs(model, [r["query"] for r in rows], [r["text"] for r in rows])
    return {(r["query_id"], r["doc_id"]): s for r, s in zip(rows, scores, strict=True)}


def run_scores(directory):
    run = read_run(directory)
    return {(q, d): s for q, docs in run.items() for d, s in docs.items()}


@pytest.mark.slow
def test_interrupted_rerank_resumes_without_rescoring(ray_session, setup, tmp_path):
    first = rerank(config(setup, tmp_path, max_new_shards=1))
    out = tmp_path / "zero_shot"
    assert not first["complete"] and first["shards_left"] >= 1
    assert 0 < first["scored_this_run"] < 35
    assert not (out / "_SUCCESS").exists() and not (out / "run").exists()
    assert not (out / "run.trec").exists()
    with pytest.raises(Exception, match="incomplete"):
        read_run(out)
    assert shard_path(out / "run.partial", 0).exists()

    counts = rerank(config(setup, tmp_path))
    assert counts["complete"] and counts["pairs_expected"] == counts["pairs_written"] == 35
    assert counts["scored_this_run"] == 35 - first["scored_this_run"]
    assert counts["reused_from_earlier_runs"] == first["scored_this_run"]
    assert counts["duplicated"] == counts["missing"] == counts["unexpected"] == 0
    assert not (out / "run.partial").exists()  # assembled into run/, then removed

    backbone = load_backbone(ModelConfig(name=setup["model"]))
    zero = QPeftModel.build(
        backbone, TemplateConfig(**TINY_TEMPLATE), AdapterConfig(method="zero_shot")
    )
    expected = in_process(zero, setup["rows"])
    got = run_scores(out)
    assert got.keys() == expected.keys()
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-5
    # The TREC file holds the same ranking and scores as the parquet run.
    trec = {(q, d): s for q, d, _, s in read_trec_run(out / "run.trec")}
    assert trec == got
    assert rerank(config(setup, tmp_path)) == counts  # complete: nothing to do

    with pytest.raises(ConfigError, match="another configuration"):
        rerank(config(setup, tmp_path, depth=3))


@pytest.mark.slow
def test_several_systems_in_one_job_on_two_actors_resume_and_match_alone(
    ray_session, setup, tmp_path
):
    """An adapter, zero-shot and the first stage in one job: each writes its own run folder,
    scores as it does alone, and an interrupted job resumes every system."""
    backbone = load_backbone(ModelConfig(name=setup["model"]))
    model = QPeftModel.build(
        backbone, TemplateConfig(**TINY_TEMPLATE), AdapterConfig(method="qpeft_r", k=3)
    )
    adapter = save_adapter(model, setup["base"] / "adapter")
    job = dict(
        method="qpeft_r",
        adapter_dir=str(adapter),
        also=[{"method": "zero_shot"}, {"method": "first_stage", "name": "bm25"}],
        num_actors=2,
        cpus_per_actor=0.5,
    )
    first = rerank(config(setup, tmp_path, max_new_shards=1, **job))
    assert not first["complete"] and first["scored_this_run"] > 0
    assert all((tmp_path / name / "run.partial").is_dir() for name in ("zero_shot", "bm25"))
    counts = rerank(config(setup, tmp_path, **job))
    assert counts["pairs_written"] == 35 and counts["reused_from_earlier_runs"] > 0
    expected = in_process(load_adapter(adapter, backbone), setup["rows"])
    got = run_scores(tmp_path / "qpeft_r")
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-5
    zero = QPeftModel.build(
        backbone, TemplateConfig(**TINY_TEMPLATE), AdapterConfig(method="zero_shot")
    )
    plain = in_process(zero, setup["rows"])
    got = run_scores(tmp_path / "zero_shot")
    assert got.keys() == plain.keys() and max(abs(got[k] - plain[k]) for k in got) < 1e-5
    zero_counts = json.loads((tmp_path / "zero_shot" / "counts.json").read_text())
    assert zero_counts["pairs_written"] == 35 and zero_counts["duplicated"] == 0
    ranks = pads.dataset(str(tmp_path / "bm25" / "run")).to_table().to_pylist()
    assert len(ranks) == 35 and all(r["rank"] == r["first_stage_rank"] for r in ranks)
    assert all(r["score"] == pytest.approx(r["first_stage_score"]) for r in ranks)

    with pytest.raises(ConfigError, match="holds a qpeft_r adapter, not qpeft_a"):
        rerank(config(setup, tmp_path, method="qpeft_a", adapter_dir=str(adapter)))


@pytest.mark.slow
def test_a_job_that_dies_halfway_resumes_every_pair_exactly_once(
    ray_session, setup, tmp_path, monkeypatch
):
    """The driver dies after two shards are on disk, one more half-written (its .partial
    left behind, as a kill mid-write leaves it); the rerun scores only what is missing and
    every pair of every system is written exactly once."""
    import pipelines.rerank

    written = []
    real_write = pipelines.rerank.write_shard

    def dying_write(directory, shard, rows):
        if len(written) == 2:
            (directory / f"shard-{shard:05d}.parquet.partial").write_bytes(b"half a file")
            raise KeyboardInterrupt("killed")
        real_write(directory, shard, rows)
        written.append((directory.parent.name, shard))

    job = dict(also=[{"method": "first_stage", "name": "bm25"}], docs_per_shard=4)
    monkeypatch.setattr(pipelines.rerank, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        rerank(config(setup, tmp_path, **job))
    monkeypatch.setattr(pipelines.rerank, "write_shard", real_write)
    counts = rerank(config(setup, tmp_path, **job))
    assert counts["pairs_written"] == counts["pairs_expected"] == 35
    assert counts["duplicated"] == counts["missing"] == counts["unexpected"] == 0
    done_before = sum(1 for name, _ in written if name == "zero_shot")
    assert counts["reused_from_earlier_runs"] > 0 or done_before == 0
    bm25 = json.loads((tmp_path / "bm25" / "counts.json").read_text())
    assert bm25["pairs_written"] == 35 and bm25["duplicated"] == 0
    assert not (tmp_path / "zero_shot" / "run.partial").exists()


def test_a_job_of_several_systems_is_checked_system_by_system(setup, tmp_path):
    with pytest.raises(ConfigError, match=r"rerank\.also\[0\]\.adapter_dir: method qpeft_a"):
        config(setup, tmp_path, also=[{"method": "qpeft_a"}])
    with pytest.raises(ConfigError, match=r"rerank\.also\[1\]\.name: 'zero_shot' is another"):
        config(setup, tmp_path, also=[{"method": "first_stage"}, {"method": "zero_shot"}])
    with pytest.raises(ConfigError, match="LoRA adapter puts weights into the LM"):
        config(setup, tmp_path, also=[{"method": "lora", "adapter_dir": "x"}])


@pytest.mark.slow
def test_a_lora_adapter_reranks_on_an_actor_as_in_process(ray_session, setup, tmp_path):
    """LoRA changes the LM itself: each actor loads its own backbone and the folder's
    weights, and scores as the in-process model does."""
    model = QPeftModel.build(
        load_backbone(ModelConfig(name=setup["model"])),
        TemplateConfig(**TINY_TEMPLATE),
        AdapterConfig(method="lora", lora_rank=4),
    )
    with torch.no_grad():  # B starts at zero: move it so that LoRA changes the scores
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    adapter = save_adapter(model, tmp_path / "lora_adapter")
    rerank(config(setup, tmp_path, method="lora", adapter_dir=str(adapter)))
    expected = in_process(model, setup["rows"])
    got = run_scores(tmp_path / "lora")
    assert got.keys() == expected.keys()
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-5
    zero_shot = QPeftModel.build(
        load_backbone(ModelConfig(name=setup["model"])),
        TemplateConfig(**TINY_TEMPLATE),
        AdapterConfig(method="zero_shot"),
    )
    plain = in_process(zero_shot, setup["rows"])
    assert max(abs(got[k] - plain[k]) for k in got) > 1e-3


@pytest.mark.slow
def test_fused_runs_use_a_weight_chosen_on_dev(ray_session, setup, tmp_path):
    """`fusion: choose` on dev writes fusion.json; a test rerank reads that weight (choosing
    on test is refused); an adapter brings the weight training chose."""
    with pytest.raises(ConfigError, match="choose it on dev"):
        config(setup, tmp_path, fusion="choose")
    with pytest.raises(ConfigError, match="choose it on dev"):
        config(setup, tmp_path, fusion="choose", split=None)
    with pytest.raises(ConfigError, match=r"a weight must be in \[0, 1\]"):
        config(setup, tmp_path, fusion=2)
    dev = rerank(config(setup, tmp_path, split="dev", name="zs_dev", fusion="choose"))
    chosen = json.loads((tmp_path / "zs_dev" / "fusion.json").read_text())
    assert dev["fusion"]["weight"] == chosen["weight"] and chosen["chosen_on"] == "dev"
    assert (
        max(chosen["ndcg10_by_weight"].values())
        == chosen["ndcg10_by_weight"][str(chosen["weight"])]
    )
    fusion_file = str(tmp_path / "zs_dev" / "fusion.json")
    test = rerank(config(setup, tmp_path, name="zs_test", fusion=fusion_file))
    assert test["fusion"]["weight"] == chosen["weight"]
    out = tmp_path / "zs_test"
    rows = pads.dataset(str(out / "run")).to_table().to_pylist()
    lm, bm25 = {}, {}
    for r in rows:
        lm.setdefault(r["query_id"], {})[r["doc_id"]] = r["score"]
        bm25.setdefault(r["query_id"], {})[r["doc_id"]] = r["first_stage_score"]
    expected = fuse(lm, bm25, chosen["weight"])
    fused = {}
    for q, d, _, score in read_trec_run(out / "run_fused.trec"):
        fused.setdefault(q, {})[d] = score
    assert fused.keys() == expected.keys()
    assert all(fused[q][d] == pytest.approx(expected[q][d]) for q in fused for d in fused[q])
    assert (out / "run_fused.trec").read_text().split()[5] == "zs_test_fused"
    # A finished run asked for another weight rewrites only its fused run.
    again = rerank(config(setup, tmp_path, name="zs_test", fusion=1))
    assert again["fusion"]["weight"] == 1.0 and again["scored_this_run"] == test["scored_this_run"]
    top = {}
    for q, d, rank, _ in read_trec_run(out / "run_fused.trec"):
        if rank == 1:
            top[q] = d
    assert top == {q: max(docs, key=docs.get) for q, docs in lm.items()}
    with pytest.raises(ConfigError, match="no fusion weight there"):
        rerank(config(setup, tmp_path, name="zs_bad", fusion=str(tmp_path / "missing.json")))
    assert not (tmp_path / "zs_bad" / "run").exists()  # refused before any scoring

    backbone = load_backbone(ModelConfig(name=setup["model"]))
    model = QPeftModel.build(
        backbone, TemplateConfig(**TINY_TEMPLATE), AdapterConfig(method="qpeft_r", k=3)
    )
    adapter = save_adapter(model, tmp_path / "adapter", extra={"fusion": {"weight": 0.35}})
    counts = rerank(config(setup, tmp_path, method="qpeft_r", adapter_dir=str(adapter)))
    assert counts["fusion"]["weight"] == 0.35
    assert (tmp_path / "qpeft_r" / "run_fused.trec").exists()


HOLDER = """
import sys, time
from pathlib import Path
from qpeft.artifacts import RerankRun
with RerankRun(sys.argv[1]).exclusive():
    Path(sys.argv[2]).write_text("held")
    while not Path(sys.argv[3]).exists():
        time.sleep(0.05)
"""


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused(ray_session, setup, tmp_path):
    """While another process writes a run's folder, a rerank into it stops at once (exit 2)
    and writes nothing; once that process is done, the run completes exactly once."""
    import subprocess
    import sys
    import time

    from pipelines.cli import main

    held, release = tmp_path / "held", tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "bm25"), str(held), str(release)]
    )
    try:
        while not held.exists():
            assert holder.poll() is None
            time.sleep(0.05)
        args = [
            "--set",
            f"rerank.prepared_dir={setup['data']}",
            "--set",
            f"rerank.output_dir={tmp_path}",
        ]
        args += ["--set", "rerank.method=first_stage", "--set", "rerank.name=bm25"]
        assert main(["rerank", *args]) == 2
        assert not (tmp_path / "bm25").exists()
    finally:
        release.write_text("")
        holder.wait(timeout=60)
    assert main(["rerank", *args]) == 0
    counts = json.loads((tmp_path / "bm25" / "counts.json").read_text())
    assert counts["pairs_written"] == counts["pairs_expected"] == len(setup["rows"])
    assert counts["missing"] == counts["duplicated"] == 0
