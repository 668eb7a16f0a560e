"""Starting or joining Ray the same way in every step."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from qpeft.config import ConfigError, ModelConfig

# Cut start-up work and noise (RAY_NOTES.md); set before ray is imported anywhere.
for _name, _value in (
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
    ("RAY_TRAIN_METRICS_ENABLED", "0"),
    ("RAY_TRAIN_ENABLE_PRINT_PATCH", "0"),
):
    os.environ.setdefault(_name, _value)


@dataclass
class RaySection:
    """`address: null` starts a local Ray (or, under `ray job submit`, joins the job's
    cluster from $RAY_ADDRESS); `auto` or `ray://...` joins a running cluster."""

    address: str | None = None
    num_cpus: int | None = None
    object_store_memory_mb: int = 300
    # The dashboard serves the state API, which Ray Train's placement-group cleaner and
    # Tune's trial clean-up query; without it they log a warning every second (and Tune
    # over Train hangs, RAY_NOTES.md). It listens on 127.0.0.1 unless told otherwise.
    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    progress_bars: bool = False


def init_ray(config: RaySection) -> None:
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        # Under `ray job submit` the job's environment names its cluster: join it.
        address = config.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(
                num_cpus=config.num_cpus,
                object_store_memory=config.object_store_memory_mb * 2**20,
                include_dashboard=config.include_dashboard,
                dashboard_host=config.dashboard_host,
                log_to_driver=True,
            )
    if not config.progress_bars:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = DataContext.get_current()
    context.enable_progress_bars = config.progress_bars
    context.print_on_execution_start = False


def check_cpu_headroom(wanted: float, what: str, advice: str) -> None:
    """Refuse work whose CPU requests take every CPU of the cluster: Ray Data's read tasks
    then never get one and the run hangs without an error (RAY_NOTES.md)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    if wanted >= total:
        raise ConfigError(
            f"{what} take all {total:g} CPUs of the cluster and leave none for Ray Data, "
            f"which then waits forever; {advice}"
        )


def local_paths_absolute(model: ModelConfig) -> ModelConfig:
    """Ray workers may run in another directory (Ray Train moves them into the run's
    folder): a model given as a relative local path must be made absolute first."""
    path = Path(model.name)
    return replace(model, name=str(path.resolve())) if path.exists() else model
