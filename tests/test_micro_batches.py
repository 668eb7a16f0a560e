"""Token-budget micro-batches give the same update as one pass over the whole batch."""

from __future__ import annotations

import time

import pytest
import torch

from qpeft.config import LossConfig
from qpeft.training.engines import TorchEngine
from qpeft.training.loop import (
    TrainSettings,
    backward_step,
    batch_loss,
    plan_micro_batches,
    token_micro_batches,
)
from qpeft.training.losses import TrainingGroup, group_pairs, ranking_loss
from tests.conftest import WORDS, build_model

CONTENT = WORDS[13:]


def groups(n: int = 4) -> list[TrainingGroup]:
    def text(i: int, length: int) -> str:
        return " ".join(CONTENT[(i + j) % len(CONTENT)] for j in range(length))

    return [
        TrainingGroup(
            query_id=f"q{i}",
            query=text(i, 2 + i % 3),
            positive=(f"p{i}", text(3 * i, 4 + i)),
            negatives=[(f"n{i}{j}", text(5 * i + j, 3 + 2 * j)) for j in range(2)],
        )
        for i in range(n)
    ]


def gradients_after(method: str, tiny, budget: int, loss: LossConfig, **adapter) -> dict:
    model = build_model(tiny, method, seed=3, **adapter)
    model.adapter.train()
    engine = TorchEngine(model, TrainSettings(grad_clip=0.0), 10, distributed=False)
    torch.manual_seed(11)
    result = backward_step(engine, model, groups(), loss, budget)
    grads = {n: p.grad.clone() for n, p in model.adapter.named_parameters() if p.grad is not None}
    return {"loss": result.loss, "micro_batches": result.micro_batches, "grads": grads}


@pytest.mark.parametrize("method", ["qpeft_a", "qpeft_r", "soft_prompt"])
@pytest.mark.parametrize("kind", ["pairwise", "listwise"])
# Budgets in units of the longest pair's back-propagated tokens (the whole pair for the
# soft prompt, the part after the document for Q-PEFT): every pair alone; some groups
# split; packed.
@pytest.mark.parametrize("pairs_worth", [1, 3, 6])
def test_micro_batched_gradient_equals_one_pass(tiny, method, kind, pairs_worth):
    loss = LossConfig(kind=kind, in_batch_negatives=1)
    adapter = {"dropout": 0.0} if method == "qpeft_a" else {}
    model = build_model(tiny, method, seed=3, **adapter)
    pairs = group_pairs(groups(), 1)
    longest = max(model.backprop_tokens(x) for x in model.encode(pairs.queries, pairs.docs))
    budget = pairs_worth * longest
    whole = gradients_after(method, tiny, 10**6, loss, **adapter)
    split = gradients_after(method, tiny, budget, loss, **adapter)
    assert whole["micro_batches"] == 1 and split["micro_batches"] >= 2
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert whole["grads"].keys() == split["grads"].keys() and whole["grads"]
    for name, grad in whole["grads"].items():
        assert torch.allclose(split["grads"][name], grad, atol=1e-5, rtol=1e-4), name


def test_dropout_is_replayed_in_the_second_pass(tiny):
    """With dropout on, the micro-batched gradient is the exact gradient of the loss under
    the masks each pair drew: a reference that runs the same micro-batches once, with
    autograd and the same random stream, gets the same numbers."""
    loss = LossConfig(in_batch_negatives=1)
    model = build_model(tiny, "qpeft_a", seed=3, dropout=0.3)
    pairs = group_pairs(groups(), 1)
    layouts = model.encode(pairs.queries, pairs.docs)
    budget = 3 * max(model.backprop_tokens(x) for x in layouts)
    split = gradients_after("qpeft_a", tiny, budget, loss, dropout=0.3)

    model.adapter.train()
    torch.manual_seed(11)
    layouts = model.encode(pairs.queries, pairs.docs)
    plan = plan_micro_batches(layouts, pairs, budget, True, model.backprop_tokens)
    assert {len(micro.chunks) > 1 for micro in plan} == {True, False}
    nll = torch.zeros(len(layouts))
    for chunk in (chunk for micro in plan for chunk in micro.chunks):
        values = -model(model.template.collate([layouts[i] for i in chunk]))
        nll = nll.index_put((torch.tensor(chunk),), values)
    reference = ranking_loss(nll[pairs.index], pairs.valid, loss)
    reference.backward()
    assert split["loss"] == pytest.approx(reference.item(), abs=1e-6)
    for name, param in model.adapter.named_parameters():
        if param.grad is not None:
            assert torch.allclose(split["grads"][name], param.grad, atol=1e-5, rtol=1e-4), name


def test_whole_groups_are_packed_and_only_oversize_groups_split(tiny):
    model = build_model(tiny, "qpeft_a")
    pairs = group_pairs(groups(), 1)
    layouts = model.encode(pairs.queries, pairs.docs)
    packed = plan_micro_batches(layouts, pairs, 250, split_groups=True)
    assert sorted(q for micro in packed for q in micro.groups) == [0, 1, 2, 3]
    assert all(len(micro.chunks) == 1 for micro in packed) and len(packed) < 4
    alone = plan_micro_batches(layouts, pairs, 40, split_groups=False)  # DeepSpeed: no split
    assert [len(micro.chunks) for micro in alone] == [1, 1, 1, 1]


def test_micro_batches_respect_the_budget_and_keep_every_pair(tiny):
    model = build_model(tiny, "qpeft_a")
    pairs = group_pairs(groups(), 1)
    layouts = model.encode(pairs.queries, pairs.docs)
    batches = token_micro_batches(layouts, 60)
    assert sorted(i for b in batches for i in b) == list(range(len(layouts)))
    for rows in batches:
        width = max(len(layouts[i].input_ids) for i in rows)
        assert width * len(rows) <= 60 or len(rows) == 1


def ddp_rank(rank: int, world: int, out: str) -> None:
    """One DDP (gloo) rank: its own groups, a budget that makes the two ranks run
    different numbers of micro-batches; saves the synchronised gradients."""
    import faulthandler
    import os
    from datetime import timedelta

    import torch.distributed as dist

    from qpeft.lm.backbone import tiny_backbone

    faulthandler.dump_traceback_later(80)  # a hang shows where each rank stands
    if os.path.exists("/sys/class/net/lo"):  # loopback only: the host name may not route
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out}/rendezvous",  # no port to race for
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),  # a stuck collective fails instead of hanging
    )
    try:
        tiny = tiny_backbone(WORDS, hidden_size=32, num_layers=2, num_heads=4, seed=0)
        model = build_model(tiny, "qpeft_a", seed=3, dropout=0.0)
        model.adapter.train()
        engine = TorchEngine(model, TrainSettings(grad_clip=0.0), 10, distributed=True)
        mine = groups()[:3] if rank == 0 else groups()[3:]
        backward_step(engine, model, mine, LossConfig(in_batch_negatives=1), 120)
        grads = {n: p.grad for n, p in model.adapter.named_parameters() if p.grad is not None}
        torch.save(grads, f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Skip interpreter teardown: freeing a DDP model whose gloo group is gone can block
    # (seen 1 run in 7 on 2 cores), and the result is already on disk.
    os._exit(0)


def run_ranks(world: int, out: str, limit_s: float) -> list[int | None]:
    """Start the ranks as daemon processes and give up after `limit_s`: a hung rank is
    killed here, so it can never keep the test session from exiting."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ranks = [
        context.Process(target=ddp_rank, args=(rank, world, out), daemon=True)
        for rank in range(world)
    ]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + limit_s
    for process in ranks:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in ranks:
        if process.is_alive():
            process.kill()
            process.join()
    return [process.exitcode for process in ranks]


@pytest.mark.timeout(120)
def test_ddp_ranks_with_different_micro_batch_counts_sync_once(tiny, tmp_path):
    """Under DDP each rank accumulates its micro-batches locally and all-reduces once:
    the result is the mean of the ranks' one-pass gradients (and nothing hangs)."""
    assert run_ranks(2, str(tmp_path), limit_s=100) == [0, 0]
    synced = torch.load(tmp_path / "rank0.pt", weights_only=True)
    other = torch.load(tmp_path / "rank1.pt", weights_only=True)
    loss = LossConfig(in_batch_negatives=1)
    expected = {}
    for part in (groups()[:3], groups()[3:]):
        model = build_model(tiny, "qpeft_a", seed=3, dropout=0.0)
        model.adapter.train()
        batch_loss(model, model, part, loss).backward()
        for name, param in model.adapter.named_parameters():
            if param.grad is not None:
                expected[name] = expected.get(name, 0) + param.grad / 2
    for name, grad in expected.items():
        assert torch.allclose(synced[name], grad, atol=1e-5, rtol=1e-4), name
        assert torch.equal(synced[name], other[name]), name


def test_every_group_lands_in_exactly_one_micro_batch_with_ragged_groups(tiny):
    """Groups of different sizes: an over-budget group between packable ones is neither
    dropped nor merged with them, and no group is counted twice."""
    uneven = groups()
    uneven[1].negatives = uneven[1].negatives * 4  # a group with many more pairs
    model = build_model(tiny, "qpeft_a")
    pairs = group_pairs(uneven, 0)
    layouts = model.encode(pairs.queries, pairs.docs)
    for budget in (60, 120, 200, 250):
        for split in (True, False):
            plan = plan_micro_batches(layouts, pairs, budget, split_groups=split)
            assert sorted(q for micro in plan for q in micro.groups) == [0, 1, 2, 3]
            rows = sorted(r for micro in plan for chunk in micro.chunks for r in chunk)
            assert rows == list(range(len(layouts))), (budget, split)
