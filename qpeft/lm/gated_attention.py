"""Zero-initialised gated attention over the hint block (LLaMA-Adapter's zero-init attention).

With `adapter.hint_gate` on, every token attends to the text before it with the LM's own
softmax, and to the hint slots through a separate softmax scaled by a learned per-layer,
per-head gate tanh(g), g starting at 0:

    out = softmax(S_text) V_text + tanh(g) * softmax(S_hints) V_hints

Hint slots take no position of their own (they share the position of the text token
before them), so with g = 0 every text and label token sees exactly what it sees
zero-shot: an untrained adapter ranks exactly as zero-shot does, and training opens the
gate as far as the hints help. The function is registered with transformers'
`AttentionInterface`; calls without hint arguments run plain SDPA.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from qpeft.config import ConfigError

GATED_ATTENTION = "qpeft_gated_sdpa"


def gated_hint_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    hint_keys: torch.Tensor | None = None,
    hint_gate: torch.Tensor | None = None,
    hint_masks: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA with the hint keys (`hint_keys`, (B, K) bool) behind `hint_gate`, the gate's
    values tanh(g) of shape (layers, heads), or (B, layers, heads) for a gate per row.
    `hint_masks`, a dict fresh for each decoder call, keeps the masks built for one layer
    for the next ones that get the same mask."""
    if hint_keys is None or hint_gate is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    masks = hint_masks if hint_masks is not None else {}
    index = (id(attention_mask), query.shape[-2], key.shape[-2])
    if index not in masks:
        masks[index] = _split_masks(attention_mask, hint_keys, query, key)
    text, to_hints, keep_hints = masks[index]
    kwargs.pop("is_causal", None)
    text_out, _ = sdpa_attention_forward(module, query, key, value, text, is_causal=False, **kwargs)
    hint_out, _ = sdpa_attention_forward(
        module, query, key, value, to_hints, is_causal=False, **kwargs
    )
    # sdpa_attention_forward returns (B, q, heads, head_dim); the gate becomes (1 or B, 1,
    # heads, 1): one gate for the batch, or one per row (rows of several adapters).
    if hint_gate.dim() == 2:
        gate = hint_gate[module.layer_idx].to(hint_out.dtype)[None, None, :, None]
    else:
        gate = hint_gate[:, module.layer_idx].to(hint_out.dtype)[:, None, :, None]
    return text_out + gate * hint_out * keep_hints.to(hint_out.dtype), None


def _split_masks(
    attention_mask: torch.Tensor | None,
    hint_keys: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The text softmax's mask, the hint softmax's mask, and which rows read hints at all
    ((B, q, 1, 1), to drop the others' hint output)."""
    allowed = _allowed(attention_mask, query, key)
    hints = hint_keys[:, None, None, :]
    text = allowed & ~hints
    to_hints = allowed & hints
    has_text = text.any(-1, keepdim=True)
    has_hints = to_hints.any(-1, keepdim=True)
    # A row with nothing to attend to would give NaN: let it attend to everything. Such rows
    # are padding (never read) or, for the hint softmax, rows before the hints (dropped).
    return text | ~has_text, to_hints | ~has_hints, has_hints.squeeze(1).unsqueeze(-1)


def _allowed(
    attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    """The (B or 1, 1, q, K) boolean mask SDPA would apply: transformers passes a boolean
    mask, a float one (0 where allowed), or None for plain causal attention."""
    if attention_mask is None:
        q, k = query.shape[-2], key.shape[-2]
        rows = torch.arange(q, device=query.device)[:, None] + (k - q)
        return (torch.arange(k, device=query.device)[None, :] <= rows)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask[..., : key.shape[-2]]
    return attention_mask[..., : key.shape[-2]] == 0


class HintGate(nn.Module):
    """The gate's parameters g, one per layer and head, starting at 0. A module of its own so
    that DeepSpeed ZeRO-3 gathers g when `forward` runs, as for any other weight."""

    def __init__(self, layers: int, heads: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(layers, heads))

    def forward(self) -> torch.Tensor:
        return torch.tanh(self.weight)


def use_gated_attention(decoder: nn.Module) -> None:
    """Make `decoder` call the gated function from now on. Calls without hint arguments
    (zero-shot, the shared prefix, other adapters on the same backbone) run plain SDPA, so
    the switch is made once and never undone: gradient checkpointing re-runs each layer in
    the backward pass, where a switch made for the forward pass only would be gone."""
    config = decoder.config
    if config._attn_implementation == GATED_ATTENTION:
        return
    if config._attn_implementation != "sdpa":
        raise ConfigError(
            f"adapter.hint_gate needs the LM's sdpa attention, and it runs "
            f"{config._attn_implementation!r}; set adapter.hint_gate=false for plain hints"
        )
    AttentionInterface.register(GATED_ATTENTION, gated_hint_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GATED_ATTENTION, sdpa_mask)
    config._attn_implementation = GATED_ATTENTION
