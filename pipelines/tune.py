"""Sweep training hyperparameters with Ray Tune: `qpeft tune --config tune_configs/FILE`.

Every trial is a small function trainable that runs the same Ray Train trainer as
`qpeft train` (through `pipelines.train.train`) and reports its epoch metrics to Tune with
`TuneReportCallback`. ASHA stops weak trials after their early epochs. At the end the sweep
writes a results table, the best trial's full train config as YAML and its adapter. How
many trials run at once follows from the cluster's CPUs/GPUs and each trial's driver and
workers, with CPUs kept free for Ray Data. Re-running a sweep of the same name resumes it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import ray
import yaml
from ray import tune

from pipelines.cli import run_as_module, step_config
from pipelines.ray_setup import RaySection, cpu_nodes, init_ray, usable_cpus
from pipelines.search_space import check_distribution, example_value, to_domain
from pipelines.train import (
    TrainRunConfig,
    check_training_queries,
    describe_query_check,
    query_splits,
    train,
)
from qpeft import storage
from qpeft.artifacts import TrainingRun
from qpeft.config import (
    ConfigError,
    ModelConfig,
    from_dict,
    override,
    read_yaml,
    set_dotted,
    to_dict,
)
from qpeft.lm.backbone import pin_model


@dataclass
class SchedulerSection:
    """ASHA (asynchronous successive halving) over epochs, or FIFO (no early stopping)."""

    type: Literal["asha", "fifo"] = "asha"
    max_t: int | None = None  # epochs; null: train.epochs of the base config
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass
class SearchSection:
    """`random` samples the space (grid entries are crossed); `optuna` uses TPE."""

    type: Literal["random", "optuna"] = "random"
    seed: int = 13


@dataclass
class ResourcesSection:
    workers: int = 1  # Ray Train workers per trial
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    driver_cpus: float = 0.01  # the trial's own process only waits on its trainer (Tune
    # refuses 0)
    reserved_cpus: float = 1.0  # per node, free for Ray Data's tasks (a whole CPU each)
    max_concurrent_trials: int | None = None  # null: as many as the cluster fits


@dataclass
class SweepSection:
    name: str = "qpeft-sweep"
    storage_path: str = "runs/tune"
    base_config: str | None = None  # a `qpeft train` YAML; null: its defaults
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, every trial
    search_space: dict[str, Any] = field(default_factory=dict)  # dotted key -> distribution
    num_samples: int = 4  # samples per grid point
    metric: str = "dev_ndcg10"
    mode: Literal["max", "min"] = "max"
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    search_alg: SearchSection = field(default_factory=SearchSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)

    def validate(self) -> None:
        if not self.search_space:
            raise ConfigError("tune.search_space: give at least one key to sweep")
        for key, spec in self.search_space.items():
            check_distribution(key, spec)
        grid = [k for k, s in self.search_space.items() if s["type"] == "grid"]
        if grid and self.search_alg.type == "optuna":
            raise ConfigError(f"tune.search_space.{grid[0]}: grid is not supported with optuna")
        if self.num_samples < 1:
            raise ConfigError("tune.num_samples: must be >= 1")


@dataclass
class TuneRunConfig:
    tune: SweepSection = field(default_factory=SweepSection)
    ray: RaySection = field(default_factory=RaySection)


def flatten(mapping: dict, prefix: str = ""):
    """(dotted key, value) pairs; `--set tune.fixed.data.prepared_dir=X` arrives nested."""
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def base_train_config(section: SweepSection, ray_section: RaySection) -> TrainRunConfig:
    """The train config every trial starts from: base file, fixed values and the sweep's
    resources, checked (with an example value for every swept key) before anything runs."""
    data = read_yaml(section.base_config) if section.base_config else {}
    for key, value in flatten(section.fixed):
        set_dotted(data, key, value, "tune.fixed")
    where = section.base_config or "the default train config"
    try:
        cfg = from_dict(TrainRunConfig, data)
    except ConfigError as err:
        raise ConfigError(f"tune: {where} with tune.fixed: {err}") from None
    resources = section.resources
    cfg = replace(
        cfg,
        scaling=replace(
            cfg.scaling,
            num_workers=resources.workers,
            cpus_per_worker=resources.cpus_per_worker,
            use_gpu=resources.use_gpu,
        ),
        ray=ray_section,
        # Relative to where the sweep starts: Tune runs each trial in a folder of its own.
        data=replace(cfg.data, prepared_dir=storage.absolute(cfg.data.prepared_dir)),
    )
    examples = {key: example_value(spec) for key, spec in section.search_space.items()}
    override(cfg, examples, f"tune: {where} with tune.search_space")
    if section.scheduler.type == "asha" and (section.scheduler.max_t or 0) > cfg.train.epochs:
        raise ConfigError(
            f"tune.scheduler.max_t: {section.scheduler.max_t} epochs, but train.epochs is "
            f"{cfg.train.epochs}"
        )
    return cfg


def concurrency(resources: ResourcesSection) -> int:
    """Trials that fit at once: CPUs (keeping `reserved_cpus` per node free) and GPUs."""
    cluster = ray.cluster_resources()
    per_trial = resources.driver_cpus + resources.workers * resources.cpus_per_worker
    usable = usable_cpus(resources.reserved_cpus)
    if per_trial > usable:
        raise ConfigError(
            f"tune.resources: a trial needs {per_trial:g} CPUs but the cluster has "
            f"{cluster.get('CPU', 0):g} with {resources.reserved_cpus:g} per node "
            f"({cpu_nodes()} nodes) kept for Ray Data"
        )
    fits = math.floor(usable / per_trial + 1e-9)
    if resources.use_gpu:
        fits = min(fits, math.floor(cluster.get("GPU", 0) / resources.workers))
        if fits < 1:
            raise ConfigError(
                f"tune.resources: a trial needs {resources.workers} GPUs, the cluster has "
                f"{cluster.get('GPU', 0):g}"
            )
    if resources.max_concurrent_trials:
        fits = min(fits, resources.max_concurrent_trials)
    return fits


def trial_train_dir(sweep_dir: str) -> str:
    return storage.join(sweep_dir, "train")


def run_trial(params: dict, base: TrainRunConfig, model: ModelConfig, sweep_dir: str) -> None:
    """One trial: the sampled values on the base config, trained by `qpeft train`'s code;
    each epoch's report reaches Tune through TuneReportCallback. `model` is the base's model
    section as the driver resolved it (trials only read the model cache)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = override(base, params, "tune.search_space")
    cfg = replace(
        cfg,
        model=model,
        run=replace(
            cfg.run,
            name=tune.get_context().get_trial_id(),
            storage_path=trial_train_dir(sweep_dir),
        ),
        # Only epoch-end reports carry the metric ASHA compares.
        train=replace(cfg.train, checkpoint_every=10**9),
    )
    train(cfg, callbacks=[TuneReportCallback()])


def build_scheduler(section: SweepSection, epochs: int):
    if section.scheduler.type == "fifo":
        return None
    return tune.schedulers.ASHAScheduler(
        time_attr="epoch",
        max_t=section.scheduler.max_t or epochs,
        grace_period=section.scheduler.grace_period,
        reduction_factor=section.scheduler.reduction_factor,
        # A trial that reaches max_t finishes on its own (and exports its adapter) instead
        # of being stopped right after its last report.
        stop_last_trials=False,
    )


def build_search_alg(section: SweepSection, max_concurrent: int):
    """The searcher, limited to `max_concurrent` running trials (TuneConfig's own limit
    does not reach a BasicVariantGenerator passed in: all grid trials started at once)."""
    if section.search_alg.type == "optuna":
        try:
            import optuna  # noqa: F401  (Ray's OptunaSearch only asserts that it is there)
        except ImportError as e:
            raise ConfigError(
                "tune.search_alg.type: optuna needs Optuna, which is not installed: "
                "pip install 'qpeft-ray[tune]'"
            ) from e
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=section.search_alg.seed), max_concurrent)
    return tune.search.BasicVariantGenerator(
        random_state=section.search_alg.seed, max_concurrent=max_concurrent
    )


def trial_rows(results, section: SweepSection, sweep_dir: str) -> list[dict]:
    """One row per trial, best first: swept values, best metric, epochs, how it ended."""
    metric = f"best_{section.metric}"
    rows = []
    for result in results:
        trial_id = Path(result.path).name  # trial folders are named by trial id
        history = result.metrics_dataframe
        has_metric = history is not None and section.metric in history
        values = history[section.metric].dropna().tolist() if has_metric else []
        train_dir = storage.join(trial_train_dir(sweep_dir), trial_id)
        if result.error:
            status = f"error: {str(result.error).splitlines()[0][:120]}"
        elif TrainingRun(train_dir).is_complete():
            status = "completed"
        else:
            status = "stopped early"
        rows.append(
            {
                "trial_id": trial_id,
                **{key: result.config.get(key) for key in section.search_space},
                metric: ((max if section.mode == "max" else min)(values) if values else None),
                "epochs": int(history["epoch"].max()) if values else 0,
                "status": status,
                "train_dir": train_dir,
            }
        )
    sign = -1 if section.mode == "max" else 1
    rows.sort(key=lambda r: (r[metric] is None, sign * (r[metric] or 0.0), r["trial_id"]))
    return rows


def markdown(rows: list[dict], section: SweepSection) -> str:
    columns = ["trial_id", *section.search_space, f"best_{section.metric}", "epochs", "status"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(
    rows: list[dict], base: TrainRunConfig, section: SweepSection, sweep_dir: str
) -> dict:
    table = markdown(rows, section)
    storage.write_text(storage.join(sweep_dir, "results.md"), table + "\n")
    storage.write_text(storage.join(sweep_dir, "results.json"), json.dumps(rows, indent=2) + "\n")
    best = rows[0]
    if best[f"best_{section.metric}"] is None:
        raise ConfigError(f"tune: no trial reported {section.metric}")
    config = override(base, {key: best[key] for key in section.search_space})
    config = replace(config, run=replace(config.run, name=f"{section.name}-best"))
    storage.write_text(
        storage.join(sweep_dir, "best_config.yaml"),
        f"# Best trial {best['trial_id']} of sweep {section.name}: "
        f"{section.metric} {best[f'best_{section.metric}']:.4f}\n"
        + yaml.safe_dump(to_dict(config), sort_keys=False),
    )
    adapter = storage.join(sweep_dir, "best_adapter")
    storage.copy(TrainingRun(best["train_dir"]).best_adapter(), adapter)
    print(table)
    print(
        f"\n[tune] best trial {best['trial_id']}: {section.metric} "
        f"{best[f'best_{section.metric}']:.4f}; best_config.yaml and best_adapter/ in {sweep_dir}"
    )
    return {"best": best, "trials": rows, "best_adapter": adapter}


def sweep(cfg: TuneRunConfig) -> dict:
    section = cfg.tune
    base = base_train_config(section, cfg.ray)
    model = pin_model(base.model)
    # Data and template errors stop the sweep here, not in every trial's workers. (A swept
    # template or adapter key is checked again by each trial's own driver.)
    check = check_training_queries(base, query_splits(base.data))
    print(f"[tune] {describe_query_check(check, base.template)}", flush=True)
    init_ray(cfg.ray)
    storage_path = storage.absolute(section.storage_path)  # a local folder or a cloud URI
    sweep_dir = storage.join(storage_path, section.name)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, model=model, sweep_dir=sweep_dir),
        {"cpu": section.resources.driver_cpus},
    )
    if tune.Tuner.can_restore(sweep_dir):
        print(f"[tune] resuming sweep {sweep_dir}", flush=True)
        tuner = tune.Tuner.restore(sweep_dir, trainable, resume_errored=True)
    else:
        running = concurrency(section.resources)
        print(f"[tune] up to {running} trials at once", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space={k: to_domain(s) for k, s in section.search_space.items()},
            tune_config=tune.TuneConfig(
                metric=section.metric,
                mode=section.mode,
                scheduler=build_scheduler(section, base.train.epochs),
                search_alg=build_search_alg(section, running),
                num_samples=section.num_samples,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(name=section.name, storage_path=storage_path),
        )
    results = tuner.fit()
    rows = trial_rows(results, section, sweep_dir)
    return write_outputs(rows, base, section, sweep_dir)


def main(argv: list[str] | None = None) -> None:
    sweep(step_config(TuneRunConfig, __doc__.splitlines()[0], argv))


if __name__ == "__main__":
    sys.exit(run_as_module("pipelines.tune"))
