"""The paper's pairwise objective: a hinge between the positive and each negative."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from qpeft.training.losses.groups import LossScale

if TYPE_CHECKING:  # config validates loss.kind against this package's registry
    from qpeft.config import LossConfig


def pairwise_hinge(
    nll: torch.Tensor, valid: torch.Tensor, config: LossConfig, scale: LossScale
) -> torch.Tensor:
    """Sum over (pos, neg) pairs of relu(L_pos - L_neg + margin), over the batch's pairs
    (`scale.pairs`, so a micro-batch's value is its exact share of the batch mean)."""
    hinge = F.relu(nll[:, :1] - nll[:, 1:] + config.hinge_margin)
    return (hinge * valid[:, 1:]).sum() / scale.pairs
