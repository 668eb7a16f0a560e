"""Listwise objective: softmax cross-entropy of the positive against its whole group."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from qpeft.training.losses.groups import LossScale

if TYPE_CHECKING:  # config validates loss.kind against this package's registry
    from qpeft.config import LossConfig


def listwise_softmax(
    nll: torch.Tensor, valid: torch.Tensor, config: LossConfig, scale: LossScale
) -> torch.Tensor:
    """Cross-entropy of the positive (column 0) over -NLL logits, summed over queries and
    divided by the batch's queries (`scale.queries`)."""
    logits = (-nll).masked_fill(~valid, float("-inf"))
    target = torch.zeros(nll.shape[0], dtype=torch.long, device=nll.device)
    return F.cross_entropy(logits, target, reduction="sum") / scale.queries
