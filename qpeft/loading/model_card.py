"""The `README.md` model card of an adapter folder, from its `adapter_config.json`.

Hugging Face shows a folder's README as its card, and its YAML header feeds the Hub's
search (base model, library, license, tags); the body says what the adapter is, what it
was trained on and how well it did on dev, so a folder that travels alone explains itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from qpeft import storage
from qpeft.methods import METHODS

# Beside adapter_config.json: figures `qpeft evaluate --set evaluate.model_cards=true` measured
# for this adapter (test splits are never part of training). A new adapter saved to the
# folder replaces the whole folder, so figures never outlive the weights they describe.
EVALUATIONS_NAME = "evaluations.json"
CARD_NAME = "README.md"
CONFIG_NAME = "adapter_config.json"
# Report measures named the way the Hub's model-index names metrics.
HUB_METRICS = {
    "ndcg@10": "ndcg_at_10",
    "mrr@10": "mrr_at_10",
    "map": "map",
    "recall@20": "recall_at_20",
}

# Hub license identifiers for the packaged bases' terms.
HUB_LICENSES = {"Apache-2.0": "apache-2.0", "Gemma Terms of Use": "gemma"}


def hub_license(terms: str) -> str:
    for prefix, identifier in HUB_LICENSES.items():
        if terms.startswith(prefix):
            return identifier
    return "other"


def model_card(config: dict, evaluations: Sequence[dict] = ()) -> str:
    """Markdown with a YAML header, from the adapter's saved config and the evaluations
    recorded for it since."""
    method = config["method"]
    base = config["base_model_name_or_path"]
    header = {
        "base_model": base,
        "library_name": "peft" if method == "lora" else "qpeft-ray",
        "license": hub_license(config["base_model_license"]),
        "pipeline_tag": "text-ranking",
        "tags": ["reranking", "query-likelihood", "q-peft", method],
    }
    if evaluations:
        header["model-index"] = model_index(method, base, evaluations)
    rows = [
        ("method", METHODS[method].description if method in METHODS else method),
        ("hyperparameters", ", ".join(f"{k} {v}" for k, v in config["hyperparameters"].items())),
        ("base model", f"`{base}` ({config['base_model_license']})"),
        ("trainable parameters", f"{config['trainable_parameters']:,}"),
        ("prompt", repr(config["template"]["prompt"])),
    ]
    training = config.get("training")
    if training:
        rows.append(("training data", f"`{training['data']}`, split `{training['split']}`"))
        rows.append(("training", ", ".join(f"{k} {v}" for k, v in training["settings"].items())))
    if "dev_ndcg10" in config:
        rows.append(("dev NDCG@10", f"{config['dev_ndcg10']:.4f} (epoch {config['epoch']})"))
    fusion = config.get("fusion")
    if fusion:
        how = [fusion.get("normalisation", "minmax per query")]
        if "dev_ndcg10" in fusion:
            how.append(f"dev NDCG@10 {fusion['dev_ndcg10']:.4f}")
        rows.append(
            ("fusion with the first stage", f"weight {fusion['weight']} ({'; '.join(how)})")
        )
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {method} reranker adapter for {base}",
        "",
        "Scores a document by the mean log-likelihood of the query given the document "
        "(Q-PEFT, Peng et al., arXiv 2404.04522), with the frozen base model and this "
        "adapter. Made by qpeft-ray.",
        "",
        "| | |",
        "|---|---|",
        table,
        "",
        *evaluation_section(method, evaluations),
    ]
    if method == "lora":
        lines += [
            "`peft/` is the LoRA in peft's own format:",
            "",
            "    from peft import PeftModel",
            '    model = PeftModel.from_pretrained(base_model, "THIS_FOLDER/peft")',
            "",
        ]
    return "\n".join(lines)


def evaluation_section(method: str, evaluations: Sequence[dict]) -> list[str]:
    """The card's lines on held-out figures: a table of those recorded, and how to add more."""
    how = [
        "Rerank and evaluate a split with this adapter, and record the figures here, with",
        "",
        f"    qpeft rerank --config CONFIG --set rerank.method={method} "
        f"--set rerank.adapter_dir=THIS_FOLDER",
        "    qpeft evaluate --config CONFIG --set evaluate.model_cards=true",
        "",
    ]
    if not evaluations:
        return ["Test figures are not part of training.", "", *how]
    measures = list(dict.fromkeys(m for e in evaluations for m in e["mean"]))
    lines = [
        "## Evaluation",
        "",
        "| data | split | queries | run | " + " | ".join(measures) + " |",
        "|---" * (4 + len(measures)) + "|",
    ]
    for e in evaluations:
        values = [f"{e['mean'][m]:.4f}" if m in e["mean"] else "" for m in measures]
        run = f"{e['run']} (fused)" if e["fused"] and "fused" not in e["run"] else e["run"]
        cells = [f"`{e['data']}`", str(e["split"]), str(e["queries"]), run, *values]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", "Each row's report: `report` in `evaluations.json`.", "", *how]


def model_index(method: str, base: str, evaluations: Sequence[dict]) -> list[dict]:
    """The Hub's `model-index` metadata: one result per recorded evaluation."""
    results = []
    for e in evaluations:
        metrics = [
            {"type": HUB_METRICS[m], "value": round(v, 4), "name": m}
            for m, v in e["mean"].items()
            if m in HUB_METRICS
        ]
        name = str(e["data"]).rstrip("/").rsplit("/", 1)[-1]
        source = {"name": "qpeft evaluate"}
        if "://" in str(e["report"]):  # the Hub wants a URL here, not a local path
            source["url"] = str(e["report"])
        results.append(
            {
                "task": {"type": "text-ranking"},
                "dataset": {"name": name, "type": name, "split": e["split"] or "all"},
                "metrics": metrics,
                "source": source,
            }
        )
    return [{"name": f"{method} reranker adapter for {base}", "results": results}]


def record_evaluation(adapter_dir: str | Path, entry: dict) -> None:
    """Add (or replace, for the same data, split, run and fusion) one evaluation of the
    adapter in `adapter_dir`, and rewrite its card."""
    directory = Path(adapter_dir)
    config = json.loads((directory / CONFIG_NAME).read_text())
    path = directory / EVALUATIONS_NAME
    evaluations = json.loads(path.read_text()) if path.exists() else []
    key = ("data", "split", "run", "fused")
    evaluations = [e for e in evaluations if any(e[k] != entry[k] for k in key)] + [entry]
    storage.write_text(path, json.dumps(evaluations, indent=2) + "\n")
    storage.write_text(directory / CARD_NAME, model_card(config, evaluations))
