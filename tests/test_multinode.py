"""Two Ray nodes on one machine (`ray start --head`, `ray start --address`) and jobs sent
with `ray job submit`, all reading and writing s3:// paths of a local S3 (moto): training's
2 workers land one per node and checkpoint to the shared storage path, then a rerank job
scores with the adapter from S3 and an evaluate job reports on its run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qpeft import storage
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
def two_nodes(tmp_path, s3_server):
    """A head and a worker node of 2 CPUs each, in their own temp folder so that stopping
    them leaves any other Ray on this machine alone; both see the S3 endpoint and keys."""
    temp = Path("/tmp") / f"qpeft-mn-{os.getpid()}"
    env = {
        **os.environ,
        **s3_server,
        # The jobs' `python` must be this interpreter, activated or not.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
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


def submit(module: str, config: dict, folder: Path, env: dict) -> str:
    """`ray job submit` one step with its config; returns the job's output."""
    path = folder / f"{module}.yaml"
    path.write_text(yaml.safe_dump(config))
    job = ray_cli(
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
        f"pipelines.{module}",
        "--config",
        str(path),
        env=env,
        timeout=800,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout.lower()
    return job.stdout


def test_jobs_on_two_nodes_share_checkpoints_and_outputs_in_s3(two_nodes, s3_dir, tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    prepared = storage.join(s3_dir, "prepared")
    storage.copy_dir(str(write_prepared(tmp_path / "prepared", n_train=16, n_dev=4)), prepared)
    train_dir = storage.join(s3_dir, "train", "two-nodes")
    submit(
        "train",
        {
            "model": {"name": model},
            "template": TINY_TEMPLATE,
            "adapter": {"method": "qpeft_r", "k": 3},
            "train": {"epochs": 1, "queries_per_batch": 2, "checkpoint_every": 2, "dev_depth": 5},
            "data": {"prepared_dir": prepared},
            "scaling": {
                "num_workers": 2,
                "cpus_per_worker": 0.5,
                "placement_strategy": "STRICT_SPREAD",
            },
            "run": {
                "name": "two-nodes",
                "storage_path": storage.join(s3_dir, "train"),
                "max_failures": 0,
            },
        },
        tmp_path,
        two_nodes,
    )
    metrics = json.loads(storage.read_text(storage.join(train_dir, "metrics.json")))
    nodes = metrics["history"][-1]["worker_nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes  # one worker per node
    assert metrics["steps"] == 16 // (2 * 2)
    assert any(n.startswith("checkpoint_") for n in storage.list_dir(train_dir))
    assert metrics["adapter"] == storage.join(train_dir, "adapter")
    assert "adapter_model.safetensors" in storage.list_dir(metrics["adapter"])

    reranked = storage.join(s3_dir, "rerank")
    submit(
        "rerank",
        {
            "model": {"name": model},
            "template": TINY_TEMPLATE,
            "rerank": {
                "prepared_dir": prepared,
                "method": "qpeft_r",
                "adapter_dir": metrics["adapter"],
                "output_dir": reranked,
                "queries_per_shard": 2,
                "cpus_per_actor": 0.5,
            },
        },
        tmp_path,
        two_nodes,
    )
    run = storage.join(reranked, "qpeft_r")
    assert {"_SUCCESS", "run", "run.trec", "counts.json"} <= set(storage.list_dir(run))
    counts = json.loads(storage.read_text(storage.join(run, "counts.json")))
    assert counts["pairs_written"] == 8 * 5 and counts["duplicated"] == 0  # 8 test queries

    report = storage.join(s3_dir, "evaluate")
    output = submit(
        "evaluate",
        {
            "evaluate": {
                "prepared_dir": prepared,
                "runs": {"qpeft_r": run},
                "measures": ["ndcg@10"],
                "output_dir": report,
            }
        },
        tmp_path,
        two_nodes,
    )
    result = json.loads(storage.read_text(storage.join(report, "report.json")))
    assert result["queries"] == 8 and 0 < result["runs"]["qpeft_r"]["mean"]["ndcg@10"] <= 1
    assert "| qpeft_r (baseline) |" in output
