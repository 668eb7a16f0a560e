"""Starting or joining Ray the same way in every step."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from qpeft.config import ConfigError

# Cut start-up work and noise (usage stats, Train's preemption watcher, metrics and print
# patch: measured seconds of start-up each on 2 cores); set before ray is imported anywhere.
# Train's controller polls its workers every 2 s by default and so notices a started or
# finished group up to 2 s late: every 0.5 s took 2 s off a tiny 2-epoch run (24 -> 22 s).
for _name, _value in (
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
    ("RAY_TRAIN_METRICS_ENABLED", "0"),
    ("RAY_TRAIN_ENABLE_PRINT_PATCH", "0"),
    ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"),
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
    # over Train hung without it in Ray 2.60). It listens on 127.0.0.1 unless told otherwise.
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


def cpu_nodes() -> int:
    """Alive nodes that offer CPUs."""
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)


def usable_cpus(reserved_per_node: float = 1.0) -> float:
    """CPUs that actors and trials may request while Ray Data keeps a whole CPU somewhere.
    The reserve is per node: when requests leave `nodes` CPUs free in all, at least one node
    has a whole CPU free, however the requests were spread (with 2 nodes of 2 CPUs, 3 CPUs
    of requests could leave half a CPU on each node, and Ray Data's tasks wait forever)."""
    import ray

    return ray.cluster_resources().get("CPU", 0) - reserved_per_node * cpu_nodes()


def check_cpu_headroom(wanted: float, what: str, advice: str) -> None:
    """Refuse work whose CPU requests leave no whole CPU for Ray Data's tasks: they then
    never start and the run hangs without an error (Ray 2.60 on a 2-core machine)."""
    import ray

    if wanted > usable_cpus() + 1e-9:
        total = ray.cluster_resources().get("CPU", 0)
        raise ConfigError(
            f"{what} leave less than a whole CPU per node of the cluster's {total:g} CPUs "
            f"({cpu_nodes()} nodes) for Ray Data, which then waits forever; {advice}"
        )
