"""Ray Train fitting on a tiny model: 2-worker DDP beats zero-shot, failures resume, and the
exported adapter scores like the trained model."""

import json

import pyarrow.dataset as pads
import pytest
from safetensors.torch import load_file

from pipelines.train import TrainRunConfig, train
from qpeft.config import (
    AdapterConfig,
    ConfigError,
    ModelConfig,
    TemplateConfig,
    from_dict,
    to_dict,
)
from qpeft.lm.backbone import load_backbone
from qpeft.loading.checkpoint import WEIGHTS_NAME, load_adapter
from qpeft.metrics import mean_ndcg10
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_pairs
from tests.conftest import TINY_TEMPLATE
from tests.synthetic import save_tiny_model, write_prepared

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    return {"model": save_tiny_model(base / "tiny"), "data": write_prepared(base / "prepared")}


def run_config(setup, tmp_path, **train):
    return from_dict(
        TrainRunConfig,
        {
            "model": {"name": setup["model"]},
            "template": TINY_TEMPLATE,
            # The paper's plain hints: the tiny model learns them in a few steps, which these
            # tests of the training loop need (gated hints: tests/test_gated_hints.py).
            "adapter": {"method": "qpeft_r", "k": 3, "hint_gate": False},
            "loss": {"in_batch_negatives": 1, "margin": 1.0},
            "train": {
                "epochs": 4,
                "queries_per_batch": 4,
                "lr": 0.03,
                "embedding_lr": None,  # the tiny model learns its words fast at one rate
                "patience": 3,
                "checkpoint_every": 3,
                "dev_depth": 5,
                **train,
            },
            "data": {"prepared_dir": str(setup["data"])},
            "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
            "run": {"name": "tiny", "storage_path": str(tmp_path / "storage")},
            "ray": {"num_cpus": 2},
        },
    )


def test_ndcg(model, data_root, split="test"):
    rows = [
        r
        for r in pads.dataset(str(data_root / "candidates")).to_table().to_pylist()
        if r["split"] == split
    ]
    scores = score_pairs(model, [r["query"] for r in rows], [r["text"] for r in rows])
    run, qrels = {}, {}
    for r, s in zip(rows, scores, strict=True):
        run.setdefault(r["query_id"], {})[r["doc_id"]] = s
        qrels.setdefault(r["query_id"], {})[r["doc_id"]] = r["relevance"]
    return mean_ndcg10(qrels, run)


test_ndcg.__test__ = False  # a helper, not a test


def test_two_worker_ddp_survives_a_killed_worker_beats_zero_shot_and_exports(
    ray_session, setup, tmp_path
):
    summary = train(run_config(setup, tmp_path, fail_at_step=5))
    assert summary["steps"] == 4 * (32 // (4 * 2)) and summary["epochs_run"] == 4
    # Rank 1 died at step 5; the group restarted from the last checkpoint the controller
    # had registered (step 3, mid-epoch, or step 4, end of epoch 1) and finished.
    (resumed,) = summary["resumed_at"]
    assert resumed in (3, 4)
    backbone = load_backbone(ModelConfig(name=setup["model"]))
    trained = load_adapter(summary["adapter"], backbone)
    zero = QPeftModel.build(
        backbone, TemplateConfig(**TINY_TEMPLATE), AdapterConfig(method="zero_shot")
    )
    trained_ndcg, zero_ndcg = test_ndcg(trained, setup["data"]), test_ndcg(zero, setup["data"])
    assert trained_ndcg > zero_ndcg + 0.1, (trained_ndcg, zero_ndcg)
    # The exported adapter is the best epoch's: its dev NDCG is the recorded best.
    dev = test_ndcg(trained, setup["data"], split="dev")
    assert dev == pytest.approx(summary["best_dev_ndcg10"], abs=1e-6)
    metrics = json.loads((tmp_path / "storage" / "tiny" / "metrics.json").read_text())
    # Epoch 0 is the untrained adapter, evaluated before the first step.
    assert [h["epoch"] for h in metrics["history"]] == list(range(summary["epochs_run"] + 1))
    assert summary["best_dev_ndcg10"] >= metrics["history"][0]["dev_ndcg10"]
    assert (tmp_path / "storage" / "tiny" / "dev_curve.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(
        (tmp_path / "storage" / "tiny" / "adapter" / "adapter_config.json").read_text()
    )
    assert 0.0 <= saved["fusion"]["weight"] <= 1.0
    # DDP all-reduces every trainable parameter's fp32 gradient once per optimiser step.
    per_step = metrics["history"][1]["allreduce_mib_per_step"]
    assert per_step == pytest.approx(saved["trainable_parameters"] * 4 / 2**20, rel=1e-6)
    # Checkpoints hold the current adapter and AdamW's two moments, no copy of the best:
    # about 3x the adapter, plus a few KiB of file headers and state.
    run_dir = tmp_path / "storage" / "tiny"
    adapter_bytes = (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size
    checkpoints = list(run_dir.glob("checkpoint_*"))
    assert checkpoints
    for checkpoint in checkpoints:
        assert not (checkpoint / "best_adapter").exists()
        size = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
        assert size <= 4 * adapter_bytes + 64 * 1024, (checkpoint.name, size, adapter_bytes)
    # Running again with the same name and config finds the finished run: nothing is
    # trained and the recorded summary comes back.
    again = train(run_config(setup, tmp_path))
    assert again["resumed_at"] == [resumed]
    assert again["steps"] == summary["steps"] and again["history"] == summary["history"]


def test_a_long_query_fails_in_the_driver_before_any_worker_starts(
    ray_session, setup, tmp_path, monkeypatch
):
    """A data error is found by the driver's check, in seconds, and never reaches Ray
    Train (whose FailureConfig would restart the workers as if a node had died)."""
    import pipelines.train as train_module
    from qpeft.data.readers import DataError

    def no_workers(*args, **kwargs):
        raise AssertionError("a worker group was started")

    monkeypatch.setattr(train_module, "TorchTrainer", no_workers)
    data = write_prepared(tmp_path / "prepared", long_queries=("q3",))
    cfg = run_config({**setup, "data": data}, tmp_path)
    cfg.template.max_query_tokens = 8
    cfg.template.long_queries = "fail"
    with pytest.raises(DataError, match=r"query 'q3' has 22 tokens, over template\.max_query"):
        train(cfg)
    cfg.template.max_length = 20  # no room for a document after an 8-token query
    cfg.template.long_queries = "truncate"
    with pytest.raises(ConfigError, match=r"template\.max_length=20 leaves no room"):
        train(cfg)


def test_workers_taking_every_cpu_are_refused(ray_session, setup, tmp_path):
    cfg = run_config(setup, tmp_path)
    cfg.scaling.cpus_per_worker = 0.75  # 1.5 of 2 CPUs: half a CPU is not enough
    with pytest.raises(ConfigError, match="leave less than a whole CPU per node"):
        train(cfg)


def test_skipped_long_queries_are_left_out_of_the_sparse_e_prime(setup, tmp_path):
    """With long_queries: skip the driver's check leaves q3 out, and so does the set of
    E' rows training can reach (clipping q3 there would raise)."""
    from pipelines.train import (
        QuerySplits,
        check_training_queries,
        training_query_ids,
        training_token_ids,
    )
    from qpeft.lm.backbone import load_tokenizer
    from qpeft.lm.template import Template

    data = write_prepared(tmp_path / "prepared", long_queries=("q3",))
    cfg = run_config({**setup, "data": data}, tmp_path)
    cfg.adapter.method = "qpeft_a"
    cfg.template.max_query_tokens = 8
    cfg.template.long_queries = "skip"
    check = check_training_queries(cfg, QuerySplits("train", "dev"))
    assert check.skipped == ["q3"]
    template = Template(
        cfg.template, load_tokenizer(cfg.model), cfg.adapter.method, cfg.adapter.hint_gate
    )
    query_ids = training_query_ids(cfg, "train", check.skipped)
    assert "q3" not in query_ids
    ids = training_token_ids(cfg, template, "train", query_ids)  # raised QueryTooLongError before
    assert ids and set(template.hint_prefix_ids) <= set(ids)


def test_lora_trains_with_ddp_and_exports_a_peft_folder(ray_session, setup, tmp_path):
    """The LoRA baseline goes through the same DDP loop: its matrices live in each worker's
    LM, are synchronised as the adapter's parameters, and move the ranking."""
    cfg = run_config(setup, tmp_path, epochs=3)
    cfg.adapter.method = "lora"
    summary = train(cfg)
    history = summary["history"]
    assert summary["best_dev_ndcg10"] > history[0]["dev_ndcg10"], history
    backbone = load_backbone(ModelConfig(name=setup["model"]))
    trained = load_adapter(summary["adapter"], backbone)
    zero = QPeftModel.build(
        load_backbone(ModelConfig(name=setup["model"])),
        TemplateConfig(**TINY_TEMPLATE),
        AdapterConfig(method="zero_shot"),
    )
    assert test_ndcg(trained, setup["data"]) > test_ndcg(zero, setup["data"])
    peft_dir = tmp_path / "storage" / "tiny" / "adapter" / "peft"
    assert (peft_dir / "adapter_model.safetensors").exists()
    assert json.loads((peft_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_a_loss_that_turns_nan_stops_and_keeps_the_last_good_checkpoint(
    ray_session, setup, tmp_path, capsys
):
    """An absurd learning rate (AdamW moves each weight by about lr per step) overflows the
    adapter within a few steps. Training stops before the update of the step whose loss is
    not finite, its last checkpoint is the step before, and the command says which step."""
    from pipelines.train import main

    settings = dict(epochs=2, lr=1e30, grad_clip=0.0, checkpoint_every=1)
    summary = train(run_config(setup, tmp_path, **settings))
    diverged = summary["diverged_at_step"]
    assert diverged is not None and diverged == summary["steps"] + 1
    assert diverged < 2 * (32 // (4 * 2))  # it stopped before the end
    # The last checkpoint holds the weights of the last good step (the NaN update was never
    # taken) and says where training stopped.
    run_dir = tmp_path / "storage" / "tiny"
    latest = max(p for p in run_dir.glob("checkpoint_*") if p.is_dir())  # named by time
    last = json.loads((latest / "train_state.json").read_text())
    assert last["step"] == summary["steps"] and last["diverged_at_step"] == diverged
    weights = load_file(str(latest / "adapter" / WEIGHTS_NAME))
    assert all(w.isfinite().all() for w in weights.values())
    # The published adapter is the best dev check's, from before the overflow.
    backbone = load_backbone(ModelConfig(name=setup["model"]))
    kept = load_adapter(summary["adapter"], backbone)
    assert all(p.isfinite().all() for p in kept.adapter.parameters())
    # The command line fails, naming the step (the finished run is not trained again).
    config = tmp_path / "nan.yaml"
    config.write_text(json.dumps(to_dict(run_config(setup, tmp_path, **settings))))
    with pytest.raises(SystemExit) as stop:
        main(["--config", str(config)])
    assert f"NaN at step {diverged}" in str(stop.value)
