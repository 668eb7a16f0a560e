"""Ray Tune sweeps: search-space files checked with named errors, concurrency derived from
the cluster, and a 4-trial ASHA sweep of real `qpeft train` trials on a tiny model."""

import json
import math
from pathlib import Path

import pytest
import yaml

from pipelines.search_space import check_distribution, to_domain
from pipelines.tune import ResourcesSection, TuneRunConfig, concurrency, sweep
from qpeft.config import ConfigError, ModelConfig, from_dict, load_config
from qpeft.lm.backbone import load_backbone
from qpeft.loading.checkpoint import load_adapter
from qpeft.scoring.scorer import score_pairs
from tests.conftest import TINY_TEMPLATE
from tests.synthetic import save_tiny_model, write_prepared


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "gaussian"}, r"train\.lr\.type: 'gaussian' is not one of"),
        ({"type": "loguniform", "lower": 0, "upper": 1}, r"train\.lr\.lower: .* lower > 0"),
        ({"type": "uniform", "lower": 2, "upper": 1}, r"train\.lr: lower \(2\) must be below"),
        ({"type": "uniform", "lower": 1}, r"train\.lr: uniform needs upper"),
        ({"type": "choice", "values": []}, r"train\.lr\.values: expected a non-empty list"),
        ({"type": "uniform", "lower": 0, "upper": 1, "step": 2}, r"train\.lr\.step: unknown"),
        ({"type": "uniform", "lower": "a", "upper": 1}, r"train\.lr\.lower: expected a number"),
        (0.1, r"train\.lr: expected a mapping with a 'type'"),
    ],
)
def test_bad_distributions_name_the_key_and_reason(spec, message):
    with pytest.raises(ConfigError, match=message):
        check_distribution("train.lr", spec)


def test_distributions_become_tune_domains():
    domain = to_domain({"type": "loguniform", "lower": "1e-3", "upper": 1.0e-1})
    samples = [domain.sample() for _ in range(200)]
    assert all(1e-3 <= s <= 1e-1 for s in samples)
    assert to_domain({"type": "grid", "values": [1, 2]}) == {"grid_search": [1, 2]}
    assert set(to_domain({"type": "choice", "values": [5, 10]}).categories) == {5, 10}


def test_swept_and_fixed_keys_are_checked_against_the_train_config(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump({"tune": {"search_space": {"train.lrr": {"type": "choice", "values": [1]}}}})
    )
    cfg = load_config(TuneRunConfig, path)
    from pipelines.tune import base_train_config

    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key"):
        base_train_config(cfg.tune, cfg.ray)
    cfg.tune.search_space = {"adapter.k": {"type": "choice", "values": ["ten"]}}
    with pytest.raises(ConfigError, match=r"adapter\.k: expected an integer"):
        base_train_config(cfg.tune, cfg.ray)
    with pytest.raises(ConfigError, match=r"tune\.search_space: give at least one key"):
        from_dict(TuneRunConfig, {"tune": {}})


def test_concurrency_follows_cluster_cpus(ray_session):
    # A whole CPU stays free for Ray Data: 2 trials of 0.49 + 0.01, but 1 of 0.5 + 0.01.
    assert concurrency(ResourcesSection(workers=1, cpus_per_worker=0.49)) == 2
    assert concurrency(ResourcesSection(workers=1, cpus_per_worker=0.5)) == 1
    assert concurrency(ResourcesSection(workers=2, cpus_per_worker=0.49)) == 1
    assert concurrency(ResourcesSection(workers=1, max_concurrent_trials=1)) == 1
    with pytest.raises(ConfigError, match=r"a trial needs 2\.01 CPUs"):
        concurrency(ResourcesSection(workers=2, cpus_per_worker=1.0))


def test_the_ray_data_cpu_is_kept_on_every_node(monkeypatch):
    """Two nodes of 2 CPUs: 6 trials of 0.5 CPU fit in 4 - 1 CPUs but could leave half a
    CPU on each node, and the two-node sweep hung that way; one CPU per node is kept."""
    import ray

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}] * 2 + [
        {"Alive": False, "Resources": {"CPU": 2.0}},
        {"Alive": True, "Resources": {"GPU": 1.0}},  # no CPUs: nothing to keep there
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "GPU": 1.0})
    assert concurrency(ResourcesSection(workers=1, cpus_per_worker=0.49)) == 4
    with pytest.raises(ConfigError, match=r"1 per node \(2 nodes\)"):
        concurrency(ResourcesSection(workers=3, cpus_per_worker=0.9))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_trial_asha_sweep_stops_a_weak_trial_and_exports_the_best(ray_session, tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    data = write_prepared(tmp_path / "prepared", n_train=16, n_dev=6, n_test=4)
    base = {
        "model": {"name": model},
        "template": TINY_TEMPLATE,
        # The paper's plain hints, which the tiny model learns within an epoch (gated hints
        # open slowly; tests/test_gated_hints.py covers them).
        "adapter": {"method": "qpeft_r", "k": 3, "hint_gate": False},
        # One rate for E' and the MLP, so the weak trials' 1e-9 really freezes everything.
        "train": {
            "epochs": 2,  # ASHA's rungs at 1 and 2: enough to stop a weak trial early
            "queries_per_batch": 4,
            "patience": 2,
            "dev_depth": 5,
            "embedding_lr": None,
        },
        "data": {"prepared_dir": str(data)},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep_config = {
        "tune": {
            "name": "tiny-sweep",
            "storage_path": str(tmp_path / "tune"),
            "base_config": str(tmp_path / "base.yaml"),
            "fixed": {"run.max_failures": 0},
            # One learning rate that learns and two that cannot move the adapter, 2 trials at
            # a time: whichever of the first two reaches epoch 1 first, the third trial meets
            # both at that rung and falls below their median, so ASHA stops it there.
            "search_space": {"train.lr": {"type": "grid", "values": [0.03, 1e-9, 1e-9]}},
            "num_samples": 1,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "resources": {"workers": 1, "cpus_per_worker": 0.49},  # 2 trials at once
        },
        "ray": {"num_cpus": 2},
    }
    result = sweep(from_dict(TuneRunConfig, sweep_config))
    trials = result["trials"]
    assert len(trials) == 3
    assert all(not t["status"].startswith("error") for t in trials), trials
    assert any(t["status"] == "stopped early" and t["epochs"] < 2 for t in trials), trials
    best = result["best"]
    assert best["train.lr"] == 0.03 and best["status"] == "completed"
    weak = [t["best_dev_ndcg10"] for t in trials if t["train.lr"] < 1e-6]
    assert best["best_dev_ndcg10"] > max(weak)

    sweep_dir = tmp_path / "tune" / "tiny-sweep"
    best_config = yaml.safe_load((sweep_dir / "best_config.yaml").read_text())
    assert best_config["train"]["lr"] == 0.03 and best_config["adapter"]["method"] == "qpeft_r"
    rows = json.loads((sweep_dir / "results.json").read_text())
    assert [r["trial_id"] for r in rows] == [t["trial_id"] for t in trials]
    assert "| trial_id | train.lr |" in (sweep_dir / "results.md").read_text()

    backbone = load_backbone(ModelConfig(name=model))
    adapter = load_adapter(sweep_dir / "best_adapter", backbone)
    scores = score_pairs(adapter, ["w1 w2"], ["w1 w2 w3 w4"])
    assert math.isfinite(scores[0])

    # The same name resumes the finished sweep: no trial runs again, same table.
    again = sweep(from_dict(TuneRunConfig, sweep_config))
    assert [t["trial_id"] for t in again["trials"]] == [t["trial_id"] for t in trials]
    assert again["best"]["best_dev_ndcg10"] == best["best_dev_ndcg10"]


def test_optuna_search_samples_the_yaml_space(ray_session, tmp_path):
    from ray import tune

    from pipelines.tune import SweepSection, build_search_alg

    section = from_dict(
        SweepSection,
        {
            "search_space": {
                "train.lr": {"type": "loguniform", "lower": 1.0e-3, "upper": 1.0e-1},
                "adapter.k": {"type": "choice", "values": [5, 10]},
            },
            "search_alg": {"type": "optuna", "seed": 3},
        },
    )

    def trainable(config):
        tune.report({"dev_ndcg10": -abs(config["train.lr"] - 0.01)})

    results = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.5}),
        param_space={k: to_domain(s) for k, s in section.search_space.items()},
        tune_config=tune.TuneConfig(
            metric="dev_ndcg10",
            mode="max",
            search_alg=build_search_alg(section, 1),
            num_samples=3,
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(name="optuna", storage_path=str(tmp_path)),
    ).fit()
    configs = [r.config for r in results]
    assert len(configs) == 3 and all(1e-3 <= c["train.lr"] <= 1e-1 for c in configs)
    assert all(c["adapter.k"] in (5, 10) for c in configs)
    assert not results.errors


SHIPPED_SWEEPS = [*Path("tune_configs").glob("*.yaml"), *Path("results").glob("*/sweep/*.yaml")]


@pytest.mark.parametrize("path", sorted(SHIPPED_SWEEPS), ids=str)
def test_shipped_sweeps_check_against_their_base_configs(path):
    from pipelines.tune import base_train_config

    cfg = load_config(TuneRunConfig, path)
    base = base_train_config(cfg.tune, cfg.ray)
    assert base.adapter.method in ("qpeft_r", "qpeft_a", "soft_prompt", "lora")
    assert (cfg.tune.scheduler.max_t or base.train.epochs) <= base.train.epochs
    # Trials run in working folders of their own: the data path is fixed where `qpeft tune`
    # starts (a relative one failed every trial of the first Cranfield sweep).
    assert base.data.prepared_dir == str(Path("runs/prepare/cranfield").absolute())
