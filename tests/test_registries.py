"""Adding a method is its adapter module plus one line in `qpeft.methods.METHODS`: every
config, step and the model card take their choices from that table."""

import pytest
import torch

from pipelines.demo import DemoSection
from pipelines.rerank import RerankSection
from pipelines.train import TrainRunConfig
from qpeft.adapters import Adapter, adapter_class
from qpeft.config import AdapterConfig, ConfigError, TemplateConfig, from_dict
from qpeft.loading.checkpoint import save_adapter
from qpeft.methods import METHODS, Method, trainable_methods
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_pairs


class ScaledPrompt(Adapter):
    """A toy method: the hard prompt's embeddings times one trainable scale."""

    method = "scaled_prompt"

    def __init__(self, config, backbone, template, trainable_ids=None):
        super().__init__(config, backbone, template, trainable_ids)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.prompt = backbone.input_embeddings(torch.tensor(template.prompt_ids)).detach()

    def prompt_embeddings(self) -> torch.Tensor:
        return self.prompt * self.scale


@pytest.fixture
def toy_method(monkeypatch):
    method = Method("scaled_prompt", f"{__name__}:ScaledPrompt", "a scaled hard prompt")
    monkeypatch.setitem(METHODS, method.name, method)
    return method.name


def test_every_registered_method_names_its_own_adapter_class():
    for name in METHODS:
        assert adapter_class(name).method == name


def test_a_registered_method_is_accepted_by_every_config_and_step(tiny, toy_method, tmp_path):
    assert toy_method in trainable_methods()
    assert from_dict(AdapterConfig, {"method": toy_method}).method == toy_method
    train = from_dict(TrainRunConfig, {"adapter": {"method": toy_method}})
    assert train.adapter.method == toy_method
    rerank = from_dict(RerankSection, {"method": toy_method, "adapter_dir": "x"}, "rerank")
    assert rerank.method == toy_method
    with pytest.raises(ConfigError, match="needs its adapter"):
        from_dict(RerankSection, {"method": toy_method}, "rerank")
    assert from_dict(DemoSection, {"methods": [toy_method]}, "demo").methods == [toy_method]
    model = QPeftModel.build(tiny, TemplateConfig(), AdapterConfig(method=toy_method))
    assert model.adapter.num_trainable_parameters() == 1
    assert len(score_pairs(model, ["wing flow"], ["flow over a wing"])) == 1
    save_adapter(model, tmp_path / "adapter")
    assert "a scaled hard prompt" in (tmp_path / "adapter" / "README.md").read_text()


def test_unregistered_names_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"adapter\.method: 'qpeft_x' is not one of"):
        from_dict(AdapterConfig, {"method": "qpeft_x"}, "adapter")
    with pytest.raises(ConfigError, match=r"rerank\.method: 'bm42' is not one of"):
        from_dict(RerankSection, {"method": "bm42"}, "rerank")
    with pytest.raises(ConfigError, match="zero_shot has nothing to train"):
        from_dict(TrainRunConfig, {"adapter": {"method": "zero_shot"}})
