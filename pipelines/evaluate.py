"""Evaluate runs the way IR papers do: `qpeft evaluate --config FILE`.

Reads any number of runs (TREC files or `qpeft rerank` outputs) and the judgments of a
prepared directory (or a TREC qrels file), computes pytrec_eval measures per query, the
answer-based hit rate and recall for QA data, and a paired t-test of every run against the
baseline run; writes report.json, report.md, per_query.tsv and report.png.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.cli import run_as_module, step_config
from pipelines.report import write_report
from pipelines.step import claimed
from qpeft import storage
from qpeft.answers import DEFAULT_KS, answer_metrics
from qpeft.artifacts import PreparedData, Report, RerankRun, without
from qpeft.config import ConfigError, to_dict
from qpeft.data.readers import DataError, read_trec_qrels
from qpeft.data.runs import Run, read_run
from qpeft.data.sources import full_text
from qpeft.loading.model_card import CONFIG_NAME, record_evaluation
from qpeft.metrics import (
    DEFAULT_MEASURES,
    Qrels,
    mean,
    paired_t_test,
    parse_measure,
    ranked,
)
from qpeft.metrics import evaluate as measure_run


@dataclass
class EvaluateSection:
    runs: dict[str, str] = field(default_factory=dict)  # name -> TREC file or rerank output
    baseline: str | None = None  # a name in `runs`; default: the first
    # More runs to test every run against (paired t-test), e.g. zero-shot beside BM25.
    also_against: list[str] = field(default_factory=list)
    prepared_dir: str | None = "runs/prepare/cranfield"  # qrels, splits, answers, texts
    qrels: str | None = None  # a TREC qrels file instead of the prepared qrels
    split: str | None = "test"  # needs prepared_dir; null: every judged query
    queries: Literal["ranked", "judged"] = "ranked"  # ranked: judged queries some run ranks
    measures: list[str] = field(default_factory=lambda: list(DEFAULT_MEASURES))
    answers: Literal["auto", "on", "off"] = "auto"  # auto: when the queries carry answers
    answer_ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    alpha: float = 0.05
    output_dir: str = "runs/evaluate"
    # Record each trained adapter's figures in its folder's model card (runs made by
    # `qpeft rerank` from a local adapter folder).
    model_cards: bool = False
    overwrite: bool = False  # replace a folder that `qpeft evaluate` did not write

    def validate(self) -> None:
        if not self.runs:
            raise ConfigError("evaluate.runs: give at least one run as name: path")
        for name, path in self.runs.items():
            if not isinstance(path, str):
                raise ConfigError(f"evaluate.runs.{name}: expected a path, got {path!r}")
        if self.baseline is not None and self.baseline not in self.runs:
            raise ConfigError(
                f"evaluate.baseline: {self.baseline!r} is not one of the runs {list(self.runs)}"
            )
        for i, name in enumerate(self.also_against):
            if name not in self.runs:
                raise ConfigError(
                    f"evaluate.also_against[{i}]: {name!r} is not one of the runs {list(self.runs)}"
                )
        for i, name in enumerate(self.measures):
            try:
                parse_measure(name)
            except ValueError as err:
                raise ConfigError(f"evaluate.measures[{i}]: {err}") from None
        if not self.prepared_dir and not self.qrels:
            raise ConfigError("evaluate: give evaluate.prepared_dir or evaluate.qrels")
        if self.split and not self.prepared_dir:
            raise ConfigError("evaluate.split: needs evaluate.prepared_dir (it holds the splits)")
        if self.answers == "on" and not self.prepared_dir:
            raise ConfigError("evaluate.answers: needs evaluate.prepared_dir (it holds answers)")

    @property
    def baseline_name(self) -> str:
        return self.baseline or next(iter(self.runs))

    @property
    def prepared(self) -> PreparedData:
        return PreparedData(self.prepared_dir)


@dataclass
class EvaluateConfig:
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)


def load_qrels(section: EvaluateSection) -> Qrels:
    if not section.qrels:
        return section.prepared.qrels()
    qrels: Qrels = {}
    for query_id, doc_id, relevance in read_trec_qrels(storage.local_copy(section.qrels)):
        qrels.setdefault(query_id, {})[doc_id] = relevance
    return qrels


def load_answers(section: EvaluateSection) -> dict[str, list[str]] | None:
    """Gold answers per query, or None when answer metrics are off or there are none."""
    if section.answers == "off" or not section.prepared_dir:
        return None
    table = section.prepared.table(PreparedData.QUERIES, ["query_id", "answers"])
    answers = {r["query_id"]: r["answers"] for r in table.to_pylist()}
    if not any(answers.values()):
        if section.answers == "on":
            raise DataError(f"{section.prepared_dir}: evaluate.answers=on but no query has answers")
        return None
    return answers


def evaluation_queries(section: EvaluateSection, qrels: Qrels, runs: dict[str, Run]) -> list[str]:
    queries = set(qrels)
    if section.split:
        queries &= set(section.prepared.query_ids(section.split))
    if section.queries == "ranked":
        queries &= {q for run in runs.values() for q in run}
    if not queries:
        raise DataError(
            f"no judged queries to evaluate (split {section.split!r}, queries={section.queries})"
        )
    return sorted(queries)


def document_texts(section: EvaluateSection, runs: dict[str, Run]) -> dict[str, str]:
    """Texts of the documents the runs rank (answer matching reads them)."""
    needed = {d for run in runs.values() for docs in run.values() for d in docs}
    corpus = section.prepared.table(
        PreparedData.CORPUS,
        filter=pc.field("doc_id").isin(pa.array(sorted(needed), pa.string())),
    )
    return {r["doc_id"]: full_text(r["title"], r["text"]) for r in corpus.to_pylist()}


def run_answer_metrics(
    run: Run, queries: list[str], answers: dict[str, list[str]], texts: dict, ks: list[int]
) -> dict[str, dict[str, float]]:
    """hit@k and answer recall@k per query, over each query's whole ranked list."""
    return {
        q: answer_metrics([texts.get(d, "") for d in ranked(run.get(q, {}))], answers[q], ks)
        for q in queries
    }


def evaluate_runs(section: EvaluateSection) -> dict:
    """Everything the report shows: per-query values, means and tests against the baseline."""
    runs = {name: read_run(path) for name, path in section.runs.items()}
    qrels = load_qrels(section)
    queries = evaluation_queries(section, qrels, runs)
    judged = {q: qrels[q] for q in queries}
    answers = load_answers(section)
    texts = document_texts(section, runs) if answers else {}
    measures = list(section.measures)
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    for name, run in runs.items():
        values = measure_run(judged, run, tuple(measures))
        if answers:
            extra = run_answer_metrics(run, queries, answers, texts, section.answer_ks)
            for q in queries:
                values[q].update(extra[q])
        per_query[name] = values
    if answers:
        measures += [m for k in section.answer_ks for m in (f"hit@{k}", f"answer_recall@{k}")]
    baseline = section.baseline_name
    report_runs = {}
    for name, values in per_query.items():
        series = {m: [values[q][m] for q in queries] for m in measures}
        base = {m: [per_query[baseline][q][m] for q in queries] for m in measures}
        report_runs[name] = {
            "path": section.runs[name],
            "queries_ranked": sum(1 for q in queries if runs[name].get(q)),
            "queries_missing": [q for q in queries if not runs[name].get(q)],
            "mean": {m: mean(series[m]) for m in measures},
            "p_value": {}
            if name == baseline
            else {m: paired_t_test(series[m], base[m]) for m in measures},
            "p_value_against": {
                other: {
                    m: paired_t_test(series[m], [per_query[other][q][m] for q in queries])
                    for m in measures
                }
                for other in section.also_against
                if other != name
            },
        }
    return {
        "queries": len(queries),
        "split": section.split,
        "baseline": baseline,
        "also_against": list(section.also_against),
        "alpha": section.alpha,
        "measures": measures,
        "runs": report_runs,
        "per_query": per_query,
    }


def adapter_of(run_path: str) -> tuple[Path, bool] | None:
    """The local adapter folder a run was reranked with, and whether the run is the fused
    one; None for runs not made by `qpeft rerank` from a local adapter folder."""
    if storage.is_uri(run_path):
        return None
    path = Path(run_path)
    folder = path.parent if path.is_file() else path
    adapter = RerankRun(folder).adapter_dir()
    if not adapter or storage.is_uri(adapter) or not Path(adapter, CONFIG_NAME).is_file():
        return None
    return Path(adapter), path.name == RerankRun.FUSED_TREC


def record_in_model_cards(section: EvaluateSection, report: dict, out: str) -> list[Path]:
    """Write each adapter's figures into its model card; the folders it updated."""
    updated = []
    for name, path in section.runs.items():
        found = adapter_of(path)
        if found is None:
            continue
        adapter, fused = found
        entry = {
            "data": section.prepared_dir or section.qrels,
            "split": report["split"],
            "queries": report["queries"],
            "run": name,
            "fused": fused,
            "mean": report["runs"][name]["mean"],
            "report": out,
        }
        record_evaluation(adapter, entry)
        updated.append(adapter)
    return updated


def evaluate(cfg: EvaluateConfig) -> tuple[dict, str]:
    """Evaluate the runs and write the report; returns it and its markdown table."""
    section = cfg.evaluate
    report = evaluate_runs(section)
    out = Report(storage.absolute(section.output_dir))
    settings = without(to_dict(section), ("output_dir", "overwrite"))
    with claimed(out, settings, section.overwrite, replace=True, staged=True) as folder:
        table = write_report(report, Path(folder.root))
    if section.model_cards:
        updated = sorted(set(record_in_model_cards(section, report, out.root)))
        print(f"figures recorded in the model cards of {len(updated)} adapter folder(s)")
        for adapter in updated:
            print(f"  {adapter}")
    return report, table


def main(argv: list[str] | None = None) -> None:
    cfg = step_config(EvaluateConfig, __doc__.splitlines()[0], argv)
    _, table = evaluate(cfg)
    print(table)
    print(f"\nreport.json, report.md, per_query.tsv and report.png in {cfg.evaluate.output_dir}")


if __name__ == "__main__":
    sys.exit(run_as_module("pipelines.evaluate"))
