"""Two Ray nodes on one machine (`ray start --head`, `ray start --address`) and every step
sent as a job with `ray job submit`, all reading and writing s3:// paths of a local S3
(moto): prepare writes its tables from both nodes; training's 2 workers land one per node
and checkpoint to the shared storage path; a rerank job scores with the adapter from S3 and
an evaluate job reports on its run; a Tune sweep keeps its trial and results there."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qpeft import storage
from qpeft.data.runs import read_run
from qpeft.metrics import mean_ndcg10
from tests.conftest import TINY_TEMPLATE
from tests.synthetic import save_tiny_model, write_prepared
from tests.test_prepare import write_files

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parent.parent
GCS_PORT, DASHBOARD_PORT = 6391, 8271


def ray_cli(*args: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    ray = Path(sys.executable).with_name("ray")
    return subprocess.run(
        [str(ray), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def two_nodes(s3_server):
    """A head and a worker node of 2 CPUs each, in their own temp folder so that stopping
    them leaves any other Ray on this machine alone; both see the S3 endpoint and keys."""
    temp = Path("/tmp") / f"qpeft-mn-{os.getpid()}"
    env = {
        **os.environ,
        **s3_server,
        # The jobs' `python` must be this interpreter, activated or not.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "disabled",  # both the nodes and the job client, or Ray refuses
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
            # Its own folder, as on a second machine: sharing the head's, this node's
            # runtime-env cleanup deleted the job driver's working directory under it.
            f"--temp-dir={temp / 'worker'}",
            env=env,
        )
        assert worker.returncode == 0, worker.stderr
        yield env
    finally:
        subprocess.run(["pkill", "-f", str(temp)], check=False)
        time.sleep(5)  # a GCS server outlived SIGTERM here; what is left is killed
        subprocess.run(["pkill", "-9", "-f", str(temp)], check=False)
        shutil.rmtree(temp, ignore_errors=True)


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


@pytest.fixture(scope="module")
def shared(s3_server, tmp_path_factory) -> dict:
    """A tiny model on local disk (every node of this machine sees it) and a prepared
    directory in the bucket, for all the jobs of this module."""
    local = tmp_path_factory.mktemp("multinode")
    bucket = f"s3://qpeft-test/multinode-{os.getpid()}"
    prepared = storage.join(bucket, "prepared")
    storage.copy(str(write_prepared(local / "prepared", n_train=16, n_dev=4)), prepared)
    return {"model": save_tiny_model(local / "tiny"), "prepared": prepared, "s3": bucket}


def test_prepare_job_writes_its_tables_to_s3(two_nodes, shared, tmp_path):
    source = write_files(tmp_path)
    out = storage.join(shared["s3"], "prepare-files")
    output = submit(
        "prepare",
        {"prepare": {"output_dir": out, "source": source, "first_stage": {"depth": 3}}},
        tmp_path,
        two_nodes,
    )
    assert "documents: 5" in output
    for table in ("corpus", "queries", "qrels", "run", "candidates", "groups"):
        assert "_SUCCESS" in storage.list_dir(storage.join(out, table)), table
    counts = json.loads(storage.read_text(storage.join(out, "counts.json")))
    assert counts["queries"] == 2 and counts["skipped"]["queries"] == {"empty_query": 1}
    assert counts["candidates"] == 5 and "_SUCCESS" in storage.list_dir(out)
    cands = storage.read_parquet(storage.join(out, "candidates"), ["query_id", "doc_id", "rank"])
    assert sorted(tuple(c.values()) for c in cands.to_pylist()) == [
        ("q1", "d1", 1),
        ("q1", "d3", 2),
        ("q1", "d5", 3),
        ("q2", "d2", 1),
        ("q2", "d4", 2),
    ]


def test_train_rerank_evaluate_jobs_share_checkpoints_and_outputs_in_s3(
    two_nodes, shared, tmp_path
):
    model, prepared, s3_dir = shared["model"], shared["prepared"], shared["s3"]
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
                "docs_per_shard": 4,
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
    # The job's figure is the one computed here from the same run and qrels in S3.
    qrels: dict[str, dict[str, int]] = {}
    for row in storage.read_parquet(storage.join(prepared, "qrels")).to_pylist():
        if row["query_id"] in result["per_query"]["qpeft_r"]:
            qrels.setdefault(row["query_id"], {})[row["doc_id"]] = row["relevance"]
    expected = mean_ndcg10(qrels, read_run(run))
    assert result["queries"] == 8
    assert result["runs"]["qpeft_r"]["mean"]["ndcg@10"] == pytest.approx(expected, abs=1e-9)
    assert "| qpeft_r (baseline) |" in output


def test_tune_sweep_job_keeps_its_trial_and_results_in_s3(two_nodes, shared, tmp_path):
    base = {
        "model": {"name": shared["model"]},
        "template": TINY_TEMPLATE,
        "adapter": {"method": "qpeft_r", "k": 3},
        "train": {"epochs": 1, "queries_per_batch": 4, "dev_depth": 5},
        "data": {"prepared_dir": shared["prepared"]},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweeps = storage.join(shared["s3"], "tune")
    submit(
        "tune",
        {
            "tune": {
                "name": "lr",
                "storage_path": sweeps,
                "base_config": str(tmp_path / "base.yaml"),
                "fixed": {"run.max_failures": 0},
                # One trial: choosing among trials is tests/test_tune.py's; this job shows
                # a trial's run and the sweep's table and best adapter kept in S3.
                "search_space": {"train.lr": {"type": "grid", "values": [0.03]}},
                "num_samples": 1,
                "scheduler": {"type": "fifo"},
                "resources": {"workers": 1, "cpus_per_worker": 0.49},
            }
        },
        tmp_path,
        two_nodes,
    )
    sweep = storage.join(sweeps, "lr")
    rows = json.loads(storage.read_text(storage.join(sweep, "results.json")))
    assert len(rows) == 1 and rows[0]["status"] == "completed", rows
    assert all(r["train_dir"].startswith("s3://") for r in rows)
    assert {"best_adapter", "best_config.yaml", "results.md", "train"} <= set(
        storage.list_dir(sweep)
    )
    assert "adapter_model.safetensors" in storage.list_dir(storage.join(sweep, "best_adapter"))
