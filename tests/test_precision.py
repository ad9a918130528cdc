"""Low precision (issue #14 item 13): what batched early exit guarantees in bfloat16.

fp32: every row's exit layer and logits equal running it alone (tests/test_modeling.py, to 1e-5). bf16: rounding
depends on the batch (padding length, kernel tiling), so a row whose exit score lies within bf16's rounding of the
threshold may leave at another layer when batched. This test bounds that: rows that agree on the exit layer agree on
the logits to bf16's tolerance, and every row that disagrees was within ``MARGIN`` of the threshold (fp32 score) at
the first exit where the two runs decided differently."""

from __future__ import annotations

import copy

import pytest
import torch
from test_modeling import _threshold_for_mixed_exits, spread_exit_model  # noqa: F401  (the fixture)

# bf16 keeps 8 bits of mantissa (relative rounding 2**-8 = 0.0039), compounded over 6 layers and the softmax: 0.1 (in
# nats for entropy, in probability for confidence) is a bound with room, not a measured maximum.
MARGIN = 0.1


def _scores(log_probs: torch.Tensor, criterion: str) -> torch.Tensor:
    return -(log_probs.exp() * log_probs).sum(-1) if criterion == "entropy" else log_probs.exp().max(-1).values


def _check_bf16(model, tokenizer, sentences, criterion) -> None:
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    threshold = _threshold_for_mixed_exits(model, batch, criterion)
    kwargs = {"exit_criterion": criterion, "exit_threshold": threshold}
    with torch.no_grad():
        # fp32 scores of every (row, exit): batched equals alone in fp32, so these are each row's own scores.
        scores = _scores(model(**batch, exit_criterion="none").all_exit_logits.log_softmax(-1), criterion)
        low = copy.deepcopy(model).to(torch.bfloat16)  # the fixture is shared: keep its fp32 weights
        batched = low(**batch, **kwargs)
        alone = [low(**tokenizer(s, return_tensors="pt"), **kwargs) for s in sentences]
    disagree = 0
    for i, single in enumerate(alone):
        if single.exit_layer.item() == batched.exit_layer[i].item():
            torch.testing.assert_close(batched.logits[i].float(), single.logits[0].float(), atol=0.1, rtol=0.05)
            continue
        disagree += 1
        first = min(single.exit_layer.item(), batched.exit_layer[i].item())
        score = float(scores[i, model.config.exit_layers.index(first)])
        assert abs(score - threshold) < MARGIN, (i, score, threshold)
    assert disagree <= len(sentences) // 4


@pytest.mark.parametrize("spread_exit_model", ["cls"], indirect=True)
def test_bf16_batched_exit_disagrees_only_near_the_threshold(
    spread_exit_model,  # noqa: F811
    minilm_tokenizer,
    sst2_sentences,
):
    _check_bf16(spread_exit_model, minilm_tokenizer, sst2_sentences[:32], "entropy")


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["entropy", "confidence"])
def test_bf16_batched_exit_all_poolings_and_criteria(
    spread_exit_model,  # noqa: F811
    minilm_tokenizer,
    sst2_sentences,
    criterion,
):
    _check_bf16(spread_exit_model, minilm_tokenizer, sst2_sentences, criterion)
