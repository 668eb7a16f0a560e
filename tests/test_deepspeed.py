"""The DeepSpeed ZeRO engine on CPUs (gloo), as CI can run it: the same update as DDP, and
`qpeft train` under Ray Train with ZeRO-2 and ZeRO-3 through unequal micro-batches,
unequal dev slices, a killed worker and a resume; nothing is JIT-compiled."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from pipelines.train import TrainRunConfig, resolve_engine, train
from qpeft.config import ConfigError, from_dict, override
from tests import engine_parity
from tests.synthetic import save_tiny_model, write_prepared

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def extensions_dir() -> Path:
    """Where torch's JIT builds (DeepSpeed's ops) would land."""
    default = Path.home() / ".cache" / "torch_extensions"
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR", default))


def built_extensions() -> set[str]:
    root = extensions_dir()
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.is_dir() else set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_zero_stage_takes_the_same_step_as_ddp(tmp_path):
    """One optimiser step from the same seed and data: ZeRO stages 0-3 give DDP's adapter
    (1e-5, fp32) for Q-PEFT-A, Q-PEFT-R and the soft prompt, with ranks running unequal
    numbers of micro-batches; the exported ZeRO-3 adapter scores as the in-memory one."""
    before = built_extensions()
    model = save_tiny_model(tmp_path / "tiny")
    mp.spawn(engine_parity.run, args=(2, free_port(), model, str(tmp_path)), nprocs=2, join=True)
    for method in engine_parity.METHODS:
        ddp = load_file(str(tmp_path / f"{method}-ddp0.safetensors"))
        for stage in (0, 1, 2, 3):
            zero = load_file(str(tmp_path / f"{method}-deepspeed{stage}.safetensors"))
            assert zero.keys() == ddp.keys()
            for key in ddp:
                assert torch.allclose(zero[key], ddp[key], atol=1e-5), (method, stage, key)
        scores = json.loads((tmp_path / f"{method}-zero3-scores.json").read_text())
        assert scores["exported"] == pytest.approx(scores["in_memory"], abs=1e-6)
    counts = json.loads((tmp_path / "micro_batches.json").read_text())
    assert counts["qpeft_a-deepspeed2-rank0"] > 1  # the budget split the batch
    # ZeRO pads the lighter rank to the busier one's micro-steps; DDP does not need to.
    assert counts["qpeft_a-deepspeed3-rank0"] == counts["qpeft_a-deepspeed3-rank1"]
    assert counts["qpeft_a-ddp0-rank0"] != counts["qpeft_a-ddp0-rank1"]
    assert built_extensions() == before, "DeepSpeed JIT-compiled an op"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("deepspeed")
    # 25 training groups: shards of 13 and 12 unless split equally (Ray Train's
    # streaming_split(equal=True) drops one, so both ranks take the same number of steps);
    # 7 dev queries: the two workers score 4 and 3 of them.
    data = write_prepared(base / "prepared", n_train=25, n_dev=7)
    return {"model": save_tiny_model(base / "tiny"), "data": data}


def config(setup, tmp_path, stage: int, **train) -> TrainRunConfig:
    return from_dict(
        TrainRunConfig,
        {
            "model": {"name": setup["model"]},
            "template": {
                "prompt": "given the hints please generate a question for the input passage",
                "passage_prefix": "Passage:",
                "passage_suffix": "",
                "hint_prefix": "hints:",
                "hint_suffix": "",
                "question": "Question:",
            },
            "adapter": {"method": "qpeft_a", "hint_gate": False, "dropout": 0.0},
            "loss": {"in_batch_negatives": 1},
            "train": {
                "engine": "deepspeed",
                "zero_stage": stage,
                "epochs": 2,
                "queries_per_batch": 3,
                "lr": 0.01,
                "embedding_lr": None,
                "checkpoint_every": 2,
                "dev_depth": 5,
                "micro_batch_tokens": 48,  # several micro-batches, unequal across ranks
                **train,
            },
            "data": {"prepared_dir": str(setup["data"])},
            "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
            "run": {"name": f"zero{stage}", "storage_path": str(tmp_path / "runs")},
            "ray": {"num_cpus": 2},
        },
    )


# ZeRO-3, the stage that partitions the adapter and gathers it to save: the same DeepSpeed
# checkpoint calls as ZeRO-2, whose training runs in the stamp test below and whose step
# equals DDP's in the parity test (one killed-worker run is ~50 s of the suite's budget).
@pytest.mark.parametrize("stage", [3])
def test_qpeft_train_with_zero_survives_a_killed_worker(ray_session, setup, tmp_path, stage):
    """`qpeft train` with DeepSpeed on 2 CPU workers: a worker dies at step 5, the group
    restarts from the last checkpoint the controller registered (step 4, the end of epoch 1,
    or step 2; DeepSpeed's own shards) and finishes both epochs;
    dev evaluation with 4 and 3 queries per rank does not hang; the exported adapter loads."""
    before = built_extensions()
    summary = train(config(setup, tmp_path, stage, fail_at_step=5))
    (resumed,) = summary["resumed_at"]
    assert resumed in (2, 4)
    assert summary["steps"] == 2 * (25 // (3 * 2))
    assert [h["dev_queries"] for h in summary["history"]] == [7, 7, 7]
    assert (Path(summary["adapter"]) / "adapter_model.safetensors").is_file()
    assert summary["config"]["train"]["engine"] == "deepspeed"
    assert built_extensions() == before, "DeepSpeed JIT-compiled an op"


def test_engine_choice_and_its_refusals(setup, tmp_path, capsys, monkeypatch):
    auto = from_dict(TrainRunConfig, {"train": {"engine": "auto"}})
    assert resolve_engine(auto).train.engine == "ddp"
    assert "[train] engine: ddp (DistributedDataParallel; CPUs, gloo" in capsys.readouterr().out
    gpu = from_dict(TrainRunConfig, {"scaling": {"use_gpu": True}})
    assert resolve_engine(gpu).train.engine == "deepspeed"
    with pytest.raises(ConfigError, match=r"train.zero_stage: 4 is not a ZeRO stage \(0-3\)"):
        from_dict(TrainRunConfig, {"train": {"zero_stage": 4}})
    fp16 = from_dict(
        TrainRunConfig, {"model": {"dtype": "float16"}, "train": {"engine": "deepspeed"}}
    )
    with pytest.raises(ConfigError, match="float16 on CPUs is refused by DeepSpeed"):
        resolve_engine(fp16)
    lora = from_dict(
        TrainRunConfig,
        {"adapter": {"method": "lora"}, "train": {"engine": "deepspeed", "zero_stage": 3}},
    )
    with pytest.raises(ConfigError, match=r"train\.zero_stage: 3 partitions modules inside"):
        resolve_engine(lora)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"the `gpu` extra: pip install 'qpeft-ray\[gpu\]'"):
        resolve_engine(from_dict(TrainRunConfig, {"train": {"engine": "deepspeed"}}))


def test_a_deepspeed_run_is_not_resumed_by_ddp_or_another_world_size(ray_session, setup, tmp_path):
    """The resolved engine and the worker count are part of the run's stamp: resuming a
    ZeRO run's folder with DDP, or with another number of workers, is refused by name
    (run.overwrite starts afresh, on purpose), never restarted silently."""
    cfg = config(setup, tmp_path, 2, max_steps=1, epochs=1)
    train(cfg)
    for change in ({"train.engine": "ddp"}, {"scaling.num_workers": 1}):
        with pytest.raises(ConfigError, match="holds outputs made with another configuration"):
            train(override(cfg, change))
