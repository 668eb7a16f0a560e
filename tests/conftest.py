"""Shared fixtures: a tiny random LLaMA with a word-level tokenizer (fast, offline)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from qpeft.config import AdapterConfig, TemplateConfig
from qpeft.lm.backbone import Backbone, tiny_backbone
from qpeft.scoring.model import QPeftModel

# `model.dtype: auto` means float32 in every test process, Ray workers and CLI subprocesses
# included (they inherit it): recorded figures and exact comparisons hold on any CPU.
# tests/test_dtype.py checks the auto rule itself on described hardware.
os.environ.setdefault("QPEFT_AUTO_DTYPE", "float32")

# Words of the default template as the whitespace tokenizer splits them.
TEMPLATE_WORDS = [
    "given",
    "the",
    "hints",
    "please",
    "generate",
    "a",
    "question",
    "for",
    "input",
    "passage",
    "Passage:",
    "hints:",
    "Question:",
]

WORDS = [
    *TEMPLATE_WORDS,
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "chi",
    "psi",
    "omega",
    "wing",
    "flow",
    "heat",
    "boundary",
    "layer",
    "what",
    "is",
    "of",
    "and",
]

# The tiny tokenizer splits on whitespace, so template pieces are plain words.
TINY_TEMPLATE = dict(
    prompt="given the hints please generate a question for the input passage",
    passage_prefix="Passage:",
    passage_suffix="",
    hint_prefix="hints:",
    hint_suffix="",
    question="Question:",
)


@pytest.fixture(scope="session")
def tiny() -> Backbone:
    return tiny_backbone(WORDS, hidden_size=32, num_layers=2, num_heads=4, seed=0)


def build_model(
    backbone: Backbone, method: str, seed: int = 0, template: dict | None = None, **adapter
) -> QPeftModel:
    torch.manual_seed(seed)
    if method == "lora":  # LoRA goes into the LM itself: keep the shared fixture clean
        backbone = copy.deepcopy(backbone)
    return QPeftModel.build(
        backbone,
        TemplateConfig(**{**TINY_TEMPLATE, **(template or {})}),
        AdapterConfig(method=method, **adapter),
    )


@pytest.fixture(scope="session")
def ray_session():
    """One Ray for the whole session (start-up costs ~10 s); 2 CPUs like CI."""
    import ray

    import pipelines.ray_setup  # noqa: F401  (sets Ray's environment defaults first)

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=300 * 2**20,
            include_dashboard=True,  # the state API: Train's and Tune's clean-up need it
            dashboard_host="127.0.0.1",
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 (moto) on 127.0.0.1 with one bucket; its endpoint and keys are what a
    user would export, so pyarrow (and Ray started from this process) finds it."""
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="qpeft-test")
    yield env
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_dir(s3_server, request):
    """A fresh s3:// folder for one test."""
    import re
    import uuid

    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    return f"s3://qpeft-test/{name}-{uuid.uuid4().hex[:8]}"


def moved_off_start(model: QPeftModel, seed: int = 7) -> QPeftModel:
    """The adapter with every trainable weight moved off its start and the hint gate open,
    so that it scores as a trained one would, unlike zero-shot; in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.adapter.named_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
            if name.endswith("gate.weight"):
                parameter.fill_(0.7)
    return model.eval()
