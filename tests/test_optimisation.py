"""Optimiser settings: two learning rates, warmup then decay, negatives drawn per epoch."""

import pytest

from qpeft.config import ConfigError
from qpeft.training.loop import TrainSettings, groups_from_rows, make_optimizer
from tests.conftest import build_model

ROWS = [
    {
        "query_id": f"q{i}",
        "query": "what is flow",
        "positive_id": "p",
        "positive_text": "wing flow",
        "negative_ids": [f"n{j}" for j in range(8)],
        "negative_texts": [f"text {j}" for j in range(8)],
    }
    for i in range(3)
]


def negatives(epoch):
    groups = groups_from_rows(ROWS, max_negatives=2, epoch=epoch, seed=13)
    return [[doc for doc, _ in g.negatives] for g in groups]


def test_each_epoch_draws_its_own_negatives_reproducibly():
    assert negatives(0) == negatives(0)  # a resumed epoch sees the same ones
    assert negatives(0) != negatives(1)
    assert all(len(n) == 2 and len(set(n)) == 2 for n in negatives(1))
    fixed = groups_from_rows(ROWS, max_negatives=2)  # dev: always the first ones
    assert [[d for d, _ in g.negatives] for g in fixed] == [["n0", "n1"]] * 3


def test_embedding_rows_and_the_module_get_their_own_rates(tiny):
    model = build_model(tiny, "qpeft_a")
    settings = TrainSettings(lr=1e-3, embedding_lr=1e-4, warmup_ratio=0.2, decay="linear")
    optimizer, scheduler = make_optimizer(model.adapter, settings, total_steps=10)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["embedding"]["params"] == [model.adapter.embed.delta]
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == sum(
        p.numel() for p in model.adapter.parameters() if p.requires_grad
    )
    rates = []
    for _ in range(10):
        rates.append((groups["module"]["lr"], groups["embedding"]["lr"]))
        optimizer.step()
        scheduler.step()
    module = [m for m, _ in rates]
    assert module[0] < module[1] < module[2]  # warmup over ceil(0.2 * 10) = 2 steps
    assert module[2] == pytest.approx(1e-3) and module[-1] < module[2]  # then linear decay
    assert all(e == pytest.approx(m / 10) for m, e in rates)


def test_soft_prompt_has_one_group_and_bad_rates_are_refused(tiny):
    optimizer, _ = make_optimizer(build_model(tiny, "soft_prompt").adapter, TrainSettings(), 5)
    assert [g["name"] for g in optimizer.param_groups] == ["module"]
    with pytest.raises(ConfigError, match=r"train\.embedding_lr"):
        TrainSettings(embedding_lr=0.0).validate()
    with pytest.raises(ConfigError, match=r"train\.warmup_ratio"):
        TrainSettings(warmup_ratio=1.0).validate()
