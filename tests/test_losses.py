import math

import pytest
import torch

from qpeft.config import ConfigError, LossConfig, from_dict
from qpeft.training.losses import LOSSES, LossScale, TrainingGroup, group_pairs, ranking_loss
from qpeft.training.losses.listwise import listwise_softmax
from qpeft.training.losses.pairwise import pairwise_hinge


def test_pairwise_hinge_matches_hand_computation():
    nll = torch.tensor([[1.0, 3.0, 1.5], [2.0, 1.0, 0.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    # row 0: relu(1-3+1)=0, relu(1-1.5+1)=0.5 ; row 1: relu(2-1+1)=2 ; masked pair ignored
    config = LossConfig(kind="pairwise", margin=1.0)
    hinge = pairwise_hinge(nll, valid, config, LossScale.of(valid))
    assert hinge.item() == pytest.approx((0 + 0.5 + 2) / 3)
    loss = ranking_loss(nll, valid, LossConfig(kind="pairwise", margin=1.0))
    assert loss.item() == pytest.approx(1.5 + 2.5 / 3)


def test_listwise_matches_hand_computation():
    nll = torch.tensor([[1.0, 2.0, 9.0]])
    valid = torch.tensor([[True, True, False]])
    expected = -math.log(math.exp(-1) / (math.exp(-1) + math.exp(-2)))
    config = LossConfig(kind="listwise")
    assert listwise_softmax(nll, valid, config, LossScale.of(valid)).item() == pytest.approx(
        expected
    )


def test_loss_kind_is_any_registered_loss_and_nothing_else():
    for kind in LOSSES:
        assert from_dict(LossConfig, {"kind": kind}).kind == kind
    with pytest.raises(ConfigError, match=r"loss\.kind: 'hinge' is not one of"):
        from_dict(LossConfig, {"kind": "hinge"}, "loss")


def test_group_pairs_adds_in_batch_negatives_without_duplicates():
    groups = [
        TrainingGroup("q1", "Q1", ("d1", "D1"), [("n1", "N1")]),
        TrainingGroup("q2", "Q2", ("d2", "D2"), [("d1", "D1"), ("n2", "N2")]),
    ]
    pairs = group_pairs(groups, in_batch_negatives=2)
    rows = [
        [pairs.docs[i] for i, ok in zip(r, v, strict=True) if ok]
        for r, v in zip(pairs.index.tolist(), pairs.valid.tolist(), strict=True)
    ]
    assert rows[0] == ["D1", "N1", "D2", "N2"]  # other positives first, then their negatives
    assert rows[1] == ["D2", "D1", "N2", "N1"]  # d1 already a hard negative: not repeated
    assert all(pairs.queries[i] == "Q1" for i in pairs.index[0].tolist())
    assert group_pairs(groups, 0).index.shape == (2, 3)
