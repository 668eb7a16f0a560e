"""The `README.md` model card of an adapter folder, from its `adapter_config.json`.

Hugging Face shows a folder's README as its card, and its YAML header feeds the Hub's
search (base model, library, license, tags); the body says what the adapter is, what it
was trained on and how well it did on dev, so a folder that travels alone explains itself.
"""

from __future__ import annotations

import yaml

METHOD_NAMES = {
    "zero_shot": "zero-shot query likelihood (nothing trained)",
    "soft_prompt": "soft prompt (trainable prompt vectors)",
    "qpeft_r": "Q-PEFT-R (top-k document tokens chosen by the query as hints)",
    "qpeft_a": "Q-PEFT-A (attention from query tokens over document tokens as hints)",
    "lora": "LoRA (peft) inside the LM, no hints",
}

# Hub license identifiers for the packaged bases' terms.
HUB_LICENSES = {"Apache-2.0": "apache-2.0", "Gemma Terms of Use": "gemma"}


def hub_license(terms: str) -> str:
    for prefix, identifier in HUB_LICENSES.items():
        if terms.startswith(prefix):
            return identifier
    return "other"


def model_card(config: dict) -> str:
    """Markdown with a YAML header, from the adapter's saved config."""
    method = config["method"]
    base = config["base_model_name_or_path"]
    header = {
        "base_model": base,
        "library_name": "peft" if method == "lora" else "qpeft-ray",
        "license": hub_license(config["base_model_license"]),
        "pipeline_tag": "text-ranking",
        "tags": ["reranking", "query-likelihood", "q-peft", method],
    }
    rows = [
        ("method", METHOD_NAMES.get(method, method)),
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
        "Test figures are not part of training: rerank and evaluate a test split with",
        "",
        f"    qpeft rerank --config CONFIG --set rerank.method={method} "
        f"--set rerank.adapter_dir=THIS_FOLDER",
        "    qpeft evaluate --config CONFIG",
        "",
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
