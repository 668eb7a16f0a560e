"""Two Ray nodes on one machine (`ray start --head`, `ray start --address`) and a training
job sent with `ray job submit`: its 2 workers land one per node and checkpoint to the
shared storage path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_TEMPLATE
from tests.synthetic import save_tiny_model, write_prepared

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parent.parent
GCS_PORT, DASHBOARD_PORT = 6391, 8271


def ray_cli(*args: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    ray = Path(sys.executable).with_name("ray")
    return subprocess.run(
        [str(ray), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture
def two_nodes(tmp_path):
    """A head and a worker node of 2 CPUs each, in their own temp folder so that stopping
    them leaves any other Ray on this machine alone."""
    temp = Path("/tmp") / f"qpeft-mn-{os.getpid()}"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",  # both the nodes and the job client (RAY_NOTES.md)
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    head = ray_cli(
        "start",
        "--head",
        f"--port={GCS_PORT}",
        "--num-cpus=2",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={DASHBOARD_PORT}",
        "--ray-client-server-port=23091",  # outside the worker port range (10002-19999)
        "--dashboard-agent-listen-port=52391",  # each node's agent needs its own port
        f"--temp-dir={temp}",
        env=env,
    )
    try:
        assert head.returncode == 0, head.stderr
        worker = ray_cli(
            "start",
            f"--address=127.0.0.1:{GCS_PORT}",
            "--num-cpus=2",
            "--dashboard-agent-listen-port=52392",
            f"--temp-dir={temp}",
            env=env,
        )
        assert worker.returncode == 0, worker.stderr
        yield env
    finally:
        subprocess.run(["pkill", "-f", str(temp)], check=False)


def test_job_submit_trains_one_worker_per_node_to_shared_storage(two_nodes, tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    data = write_prepared(tmp_path / "prepared", n_train=16, n_dev=4, n_test=2)
    storage = tmp_path / "shared"
    config = {
        "model": {"name": model},
        "template": TINY_TEMPLATE,
        "adapter": {"method": "qpeft_r", "k": 3},
        "train": {"epochs": 1, "queries_per_batch": 2, "checkpoint_every": 2, "dev_depth": 5},
        "data": {"prepared_dir": str(data)},
        "scaling": {
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "placement_strategy": "STRICT_SPREAD",
        },
        "run": {"name": "two-nodes", "storage_path": str(storage), "max_failures": 0},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    submit = ray_cli(
        "job",
        "submit",
        "--address",
        f"http://127.0.0.1:{DASHBOARD_PORT}",
        "--working-dir",
        ".",
        "--runtime-env",
        "cluster/runtime_env.yaml",
        "--",
        "python",
        "-m",
        "pipelines.train",
        "--config",
        str(path),
        env=two_nodes,
        timeout=800,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout.lower()
    metrics = json.loads((storage / "two-nodes" / "metrics.json").read_text())
    nodes = metrics["history"][-1]["worker_nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes  # one worker per node
    assert metrics["steps"] == 16 // (2 * 2)
    assert list((storage / "two-nodes").glob("checkpoint_*"))
    assert (storage / "two-nodes" / "adapter" / "adapter_model.safetensors").exists()
