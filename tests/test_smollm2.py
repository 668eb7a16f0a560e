"""End-to-end check on the real packaged SmolLM2-135M (slow: converts the GGUF once)."""

import pytest

from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig
from qpeft.lm.backbone import load_backbone
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_pairs

PASSAGES = {
    "aero": "Boundary layer separation on a wing happens when the flow near the surface meets "
    "an adverse pressure gradient, slows down and detaches, which causes stall and a loss of lift.",
    "bread": "To bake bread, mix flour, water, salt and yeast, knead the dough, let it rise for "
    "an hour and bake it in a hot oven until the crust is golden.",
    "photo": "Photosynthesis in green plants converts light energy, water and carbon dioxide "
    "into glucose and oxygen inside the chloroplasts of leaf cells.",
    "history": "The French Revolution began in 1789 with the storming of the Bastille and ended "
    "the absolute monarchy of Louis XVI.",
}
QUERIES = {
    "aero": "what causes flow separation on a wing",
    "bread": "how do you bake bread with yeast",
    "photo": "how do plants turn light into sugar",
    "history": "when did the french revolution start",
}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_zero_shot_smollm2_ranks_relevant_passage_first():
    backbone = load_backbone(ModelConfig(name="smollm2-135m"))
    model = QPeftModel.build(backbone, TemplateConfig(), AdapterConfig(method="zero_shot"))
    names = list(PASSAGES)
    for topic, query in QUERIES.items():
        scores = score_pairs(model, [query] * len(names), [PASSAGES[n] for n in names])
        ranking = [n for _, n in sorted(zip(scores, names, strict=True), reverse=True)]
        assert ranking[0] == topic, (query, dict(zip(names, scores, strict=True)))
