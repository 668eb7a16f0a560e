"""The Ray Data UDF of `qpeft rerank`: every system of a job scores a batch of candidates.

One actor holds one frozen LM and every system's adapter on it. A batch's pairs are
scored for all systems in one mixed pass (`qpeft.scoring.mixed`): each document's prefix is
computed once for every system that reads it alike (zero-shot, Q-PEFT-R, Q-PEFT-A), so a
job of several systems costs little more than one. A lone LoRA system scores on its own
LM; the first stage passes its own scores through.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

FIRST_STAGE = "first_stage"  # the pass-through system: the first stage's own ranking
SCORE_COLUMNS = ["query_id", "query", "doc_id", "rank", "first_stage_score", "text"]


@dataclass(frozen=True)
class SystemSpec:
    """What an actor needs of one system: its method, adapter and the queries its
    template's long-query policy leaves out (never scored for it)."""

    method: str
    adapter_dir: str | None
    skipped: frozenset[str] = frozenset()


def score_column(index: int) -> str:
    return f"score_{index}"


def system_scores(batch: pa.Table, index: int) -> pa.Table:
    """System `index`'s rows of a scored batch (those it scored), in the run's columns."""
    scores = batch.column(score_column(index))
    keep = pc.invert(pc.is_nan(scores))
    return pa.table(
        {
            "query_id": batch.column("query_id"),
            "doc_id": batch.column("doc_id"),
            "score": scores,
            "first_stage_rank": batch.column("first_stage_rank"),
            "first_stage_score": batch.column("first_stage_score"),
        }
    ).filter(keep)


def first_stage_only(systems: list[SystemSpec]):
    """A plain function for jobs of first-stage systems only: no model, no actor."""

    def scores(batch: pa.Table) -> pa.Table:
        first = pc.cast(batch.column("first_stage_score"), pa.float64())
        return scored_batch(batch, {i: first.to_pylist() for i in range(len(systems))})

    return scores


def scored_batch(batch: pa.Table, scores: dict[int, list[float]]) -> pa.Table:
    """A batch's keys with one score column per system (NaN where a system skips a pair)."""
    columns = {
        "query_id": batch.column("query_id"),
        "doc_id": batch.column("doc_id"),
        "first_stage_rank": batch.column("rank"),
        "first_stage_score": batch.column("first_stage_score"),
    }
    for index, values in scores.items():
        columns[score_column(index)] = pa.array(values, pa.float64())
    return pa.table(columns)


class SystemsScorer:
    """Ray Data UDF: one LM per actor, every model system's adapter on it."""

    def __init__(self, config: dict, systems: list[SystemSpec], threads: int | None):
        import torch

        from pipelines.rerank import RerankConfig
        from qpeft.config import from_dict
        from qpeft.lm.backbone import load_backbone
        from qpeft.loading.checkpoint import load_reranker
        from qpeft.scoring.model import describe_prefix_budget

        cfg = from_dict(RerankConfig, config)
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // cfg.rerank.num_actors))
        model_cfg = replace(cfg.model, device="cuda") if cfg.rerank.use_gpu else cfg.model
        backbone = load_backbone(model_cfg)
        self.systems = systems
        self.models = {
            index: load_reranker(backbone, cfg.template, system.adapter_dir)
            for index, system in enumerate(systems)
            if system.method != FIRST_STAGE
        }
        self.scoring = cfg.scoring
        for model in self.models.values():  # each adapter's own template
            self.scoring.check_budget(model.template.config)
        print(describe_prefix_budget(backbone, cfg.scoring.prefix_token_budget), flush=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from qpeft.scoring.mixed import score_mixed
        from qpeft.scoring.scorer import score_with

        queries = batch.column("query").to_pylist()
        docs = batch.column("text").to_pylist()
        query_ids = batch.column("query_id").to_pylist()
        first = pc.cast(batch.column("first_stage_score"), pa.float64()).to_pylist()
        scores = {
            index: list(first) if system.method == FIRST_STAGE else [math.nan] * len(queries)
            for index, system in enumerate(self.systems)
        }
        # The driver checked every query against each template (check_rerank_queries);
        # a query a system's policy skips is never scored for it.
        wanted = [
            (row, index)
            for index in self.models
            for row in range(len(queries))
            if query_ids[row] not in self.systems[index].skipped
        ]
        if len(self.models) == 1:  # alone (LoRA may only be alone): its own LM pass
            (model,) = self.models.values()
            values = score_with(
                model, [queries[r] for r, _ in wanted], [docs[r] for r, _ in wanted], self.scoring
            )
        else:
            order = list(self.models)
            values = score_mixed(
                [self.models[i] for i in order],
                [queries[r] for r, _ in wanted],
                [docs[r] for r, _ in wanted],
                [order.index(i) for _, i in wanted],
                self.scoring.batch_size,
                self.scoring.share_prefix,
                self.scoring.prefix_token_budget,
            )
        for (row, index), value in zip(wanted, values, strict=True):
            scores[index][row] = value
        return scored_batch(batch, scores)
