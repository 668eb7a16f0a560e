"""Training objectives over query groups, one module each, chosen by `loss.kind`.

Every loss takes the (Q, G) matrix of mean NLLs (positive in column 0), its validity mask,
the loss config and the batch-wide denominators (`LossScale`), and returns its share of the
batch loss. Adding a loss is its module plus one line in `LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from qpeft.training.losses.groups import GroupedPairs, LossScale, TrainingGroup, group_pairs
from qpeft.training.losses.listwise import listwise_softmax
from qpeft.training.losses.pairwise import pairwise_hinge

if TYPE_CHECKING:  # config validates loss.kind against LOSSES
    from qpeft.config import LossConfig

RankingLoss = Callable[[torch.Tensor, torch.Tensor, "LossConfig", LossScale], torch.Tensor]

LOSSES: dict[str, RankingLoss] = {
    "pairwise": pairwise_hinge,
    "listwise": listwise_softmax,
}


def ranking_loss(
    nll: torch.Tensor, valid: torch.Tensor, config: LossConfig, scale: LossScale | None = None
) -> torch.Tensor:
    """The paper's objective: weight * mean(L_pos) + the ranking loss `config.kind`, over
    the (Q, G) matrix of mean NLLs; with `scale`, the share of these Q groups in the loss of
    a larger batch."""
    scale = scale or LossScale.of(valid)
    pointwise = nll[:, 0].sum() / scale.queries
    return config.pointwise_weight * pointwise + LOSSES[config.kind](nll, valid, config, scale)


__all__ = [
    "LOSSES",
    "GroupedPairs",
    "LossScale",
    "TrainingGroup",
    "group_pairs",
    "ranking_loss",
]
