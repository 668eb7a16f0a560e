"""How far training has moved a hint adapter: the numbers a recipe study reads at each dev
check to tell "the hints were not read" (a shut gate), "E' did not move" and "the hints
are not word-like vectors" (norms far from the LM's word embeddings) apart."""

from __future__ import annotations

import torch

from qpeft.lm.template import Segment
from qpeft.scoring.model import QPeftModel


@torch.no_grad()
def adapter_diagnostics(qpeft: QPeftModel, queries: list[str], docs: list[str]) -> dict:
    """For Q-PEFT-R/-A: the gate's tanh(g) (mean and max of |.| over layers and heads),
    E's trained delta per row against E's row (||delta|| / ||E||, mean and max), and the
    mean norm of the hint vectors the LM reads for these pairs against that of the pairs'
    document word embeddings. Other methods: an empty dict."""
    adapter = qpeft.adapter
    embed = getattr(adapter, "embed", None)
    if embed is None:
        return {}
    out: dict[str, float] = {}
    gate = getattr(adapter, "gate", None)
    if gate is not None:
        values = gate().abs().float()
        out.update(gate_tanh_mean=values.mean().item(), gate_tanh_max=values.max().item())
    if embed.delta.numel():
        base = embed.base(embed.ids).float().norm(dim=-1).clamp_min(1e-12)
        ratio = embed.delta.float().norm(dim=-1) / base
        out.update(embed_delta_rel_mean=ratio.mean().item(), embed_delta_rel_max=ratio.max().item())
    if queries:
        was_training = adapter.training
        adapter.train()  # builds the block even while a gate is shut, as training does
        try:
            device = qpeft.backbone.device
            batch = qpeft.template.collate(qpeft.encode(queries, docs)).to(device)
            frozen = qpeft.backbone.input_embeddings(batch.input_ids)
            block = adapter.hints(batch, frozen)
        finally:
            adapter.train(was_training)
        words = frozen[batch.segments == Segment.DOC].float().norm(dim=-1).mean()
        hints = block.vectors[block.present].float().norm(dim=-1).mean()
        out.update(hint_norm=hints.item(), word_norm=words.item())
        out["hint_to_word_norm"] = out["hint_norm"] / max(out["word_norm"], 1e-12)
    return out
