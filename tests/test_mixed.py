"""Pairs of several adapters in one forward pass of the frozen LM (`qpeft.scoring.mixed`): each
adapter's scores equal its scores alone, zero-shot rows included, and LoRA is refused."""

from __future__ import annotations

import pytest
from conftest import build_model, moved_off_start

from qpeft.scoring.mixed import UnmixableAdapterError, common_prefix, score_mixed
from qpeft.scoring.scorer import score_pairs

QUERIES = ["what is flow", "heat wing", "boundary layer flow", "wing", "flow of heat"]
DOCS = [
    "wing flow heat boundary layer",
    "the wing",
    "flow of heat in a boundary layer",
    "layer of the wing and flow",
    "heat",
]
DEFAULT_PROMPT = {"prompt": None}  # each method's own prompt, as trained adapters have


def adapters(tiny) -> dict:
    return {
        "zero_shot": build_model(tiny, "zero_shot", template=DEFAULT_PROMPT).eval(),
        "qpeft_a": moved_off_start(
            build_model(tiny, "qpeft_a", 1, DEFAULT_PROMPT, heads=2, dropout=0.0)
        ),
        "qpeft_r": moved_off_start(build_model(tiny, "qpeft_r", 2, DEFAULT_PROMPT, k=2)),
        "soft_prompt": moved_off_start(build_model(tiny, "soft_prompt", 3, DEFAULT_PROMPT)),
        "qpeft_r_plain": moved_off_start(
            build_model(tiny, "qpeft_r", 4, DEFAULT_PROMPT, k=2, hint_gate=False)
        ),
    }


def alone_and_mixed(models: list, share_prefix: bool) -> tuple[list[float], list[float]]:
    """Every pair under every adapter, scored per adapter and in mixed batches of 4."""
    queries = [q for _ in models for q in QUERIES]
    docs = [d for _ in models for d in DOCS]
    owners = [i for i in range(len(models)) for _ in QUERIES]
    alone = [
        score
        for model in models
        for score in score_pairs(model, QUERIES, DOCS, batch_size=2, share_prefix=share_prefix)
    ]
    mixed = score_mixed(models, queries, docs, owners, batch_size=4, share_prefix=share_prefix)
    return alone, mixed


@pytest.mark.parametrize("share_prefix", [True, False])
def test_each_adapter_scores_in_a_mixed_batch_as_alone(tiny, share_prefix):
    found = adapters(tiny)
    models = [found[m] for m in ("zero_shot", "qpeft_a", "qpeft_r", "soft_prompt")]
    alone, mixed = alone_and_mixed(models, share_prefix)
    assert mixed == pytest.approx(alone, abs=1e-5)
    # The adapters really differ from zero-shot, so equality is not trivial.
    n = len(QUERIES)
    for index in range(1, len(models)):
        own, zero_shot = alone[index * n : (index + 1) * n], alone[:n]
        assert max(abs(a - b) for a, b in zip(own, zero_shot, strict=True)) > 1e-3


def test_the_shared_prefix_is_reused_only_where_every_row_has_it(tiny):
    found = adapters(tiny)
    gated = [found["zero_shot"], found["qpeft_a"], found["qpeft_r"]]
    assert common_prefix(gated) == len(found["zero_shot"].template.shared_prefix_ids)
    assert common_prefix([*gated, found["soft_prompt"]]) == 0  # its prompt is its own
    assert common_prefix([*gated, found["qpeft_r_plain"]]) == 0  # the paper's prompt
    # Plain (ungated) hints beside gated ones: positions and attention stay per row.
    alone, mixed = alone_and_mixed([*gated, found["qpeft_r_plain"]], share_prefix=True)
    assert mixed == pytest.approx(alone, abs=1e-5)


def test_untrained_gated_adapters_mixed_with_zero_shot_score_as_zero_shot(tiny):
    zero_shot = build_model(tiny, "zero_shot", template=DEFAULT_PROMPT).eval()
    untrained = build_model(tiny, "qpeft_a", template=DEFAULT_PROMPT, dropout=0.0).eval()
    alone, mixed = alone_and_mixed([zero_shot, untrained], share_prefix=True)
    half = len(QUERIES)
    assert mixed[:half] == pytest.approx(mixed[half:], abs=1e-6)
    assert mixed == pytest.approx(alone, abs=1e-5)


def test_lora_and_foreign_backbones_are_refused(tiny):
    lora = build_model(tiny, "lora")  # on its own copy of the LM
    beside_lora = build_model(lora.backbone, "zero_shot")
    with pytest.raises(UnmixableAdapterError, match="lora changes the LM's weights"):
        score_mixed([beside_lora, lora], QUERIES[:1], DOCS[:1], [0])
    with pytest.raises(UnmixableAdapterError, match="one backbone object"):
        score_mixed([build_model(tiny, "zero_shot"), beside_lora], QUERIES[:1], DOCS[:1], [0])
