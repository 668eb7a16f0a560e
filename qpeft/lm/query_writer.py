"""The packaged LM writing queries for documents: the reranker's own template, read forwards.

A pair is scored as the likelihood of `<bos> q <eos>` after `<bos> P "Passage: " d " \\n"
"Question: \\n"`. Generation feeds that same prefix, up to the label, and lets the LM write q
until `<eos>` or a line break: the queries come from the distribution the zero-shot scorer
reads, with its prompt P ("please generate a question for the input passage"). The label's
own `<bos>` is left out of the prompt: after it Gemma 3 270M wrote HTML ("<strong>Question
1:</strong>") for most NFCorpus documents, without it questions. A leading list number
("1. ") is cut. Batches are left-padded; transformers' `generate` does the decoding.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from qpeft.config import ModelConfig, TemplateConfig
from qpeft.lm.backbone import load_backbone
from qpeft.lm.template import Segment, Template

LIST_NUMBER = re.compile(r"^\d+[.)]\s*")


@dataclass
class Written:
    """One batch's queries (per document, `per_doc` each) and what writing them cost."""

    queries: list[list[str]]
    prompt_tokens: int
    new_tokens: int
    seconds: float


class QueryWriter:
    def __init__(self, model: ModelConfig, template: TemplateConfig):
        self.backbone = load_backbone(model)
        tokenizer = self.backbone.tokenizer
        self.template = Template(template, tokenizer, "zero_shot", hint_gate=False)
        line_break = tokenizer("\n", add_special_tokens=False)["input_ids"]
        # A query ends at <eos> or at the line break that ends any line of the template.
        self.stops = [self.template.eos, *line_break[-1:]]

    def prompt_ids(self, document: str) -> list[int]:
        """The scoring layout of (document, empty query), cut where the label begins."""
        doc_ids = self.template.tokenize_docs([document])[0]
        layout = self.template.encode([], doc_ids, n_hint_slots=0)
        return layout.input_ids[: layout.segments.index(int(Segment.LABEL))]

    @torch.inference_mode()
    def write(
        self,
        documents: list[str],
        per_doc: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
    ) -> Written:
        """`per_doc` queries for each document; sampling seeded by `seed`, so a shard
        written again gives the same queries."""
        start = time.perf_counter()
        prompts = [self.prompt_ids(d) for d in documents]
        width = max(len(p) for p in prompts)
        pad = self.template.pad
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        sampling = temperature > 0
        torch.manual_seed(seed)
        out = self.backbone.model.generate(
            input_ids=input_ids.to(self.backbone.device),
            attention_mask=attention.to(self.backbone.device),
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            num_return_sequences=per_doc,
            eos_token_id=self.stops,
            # A query has at least one token: SmolLM2 ended most at once with a line break.
            begin_suppress_tokens=self.stops,
            pad_token_id=pad,
        )
        new = out[:, width:].tolist()
        texts, new_tokens = [], 0
        for ids in new:
            kept = []
            for token in ids:
                if token in self.stops:
                    break
                kept.append(token)
            new_tokens += len(kept)
            decoded = self.backbone.tokenizer.decode(kept, skip_special_tokens=True)
            texts.append(LIST_NUMBER.sub("", " ".join(decoded.split())))
        return Written(
            queries=[texts[i * per_doc : (i + 1) * per_doc] for i in range(len(documents))],
            prompt_tokens=sum(len(p) for p in prompts),
            new_tokens=new_tokens,
            seconds=time.perf_counter() - start,
        )
