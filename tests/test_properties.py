"""Property test: random (possibly invalid) configurations and token batches either run with the right output
shapes or raise ValueError, never another exception type."""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hf_costeff import CostEffConfig, CostEffForSequenceClassification  # noqa: E402

# Invalid values, one of which may replace a field of an otherwise valid configuration.
INVALID = {
    "vocab_size": 0,
    "num_hidden_layers": 0,
    "attention_probs_dropout_prob": 1.5,
    "layer_num_heads": [9],
    "layer_intermediate_sizes": [-1],
    "exit_layers": [0],
    "embedding_rank": -1,
    "exit_pooler": "max",
    "exit_criterion": "bogus",
    "exit_threshold": float("nan"),
    "exit_patience": 0,
}


@st.composite
def config_and_batch(draw):
    layers = draw(st.integers(min_value=1, max_value=3))
    heads = draw(st.sampled_from([1, 2]))
    num_labels = draw(st.sampled_from([1, 2, 3]))
    criterion = draw(
        st.sampled_from(["none", "patience"] if num_labels == 1 else ["none", "entropy", "confidence", "patience"])
    )
    threshold = draw(st.floats(0.0, 0.69)) if criterion != "none" else None
    fields = dict(
        vocab_size=20,
        hidden_size=8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=8,
        max_position_embeddings=8,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_num_heads=draw(st.lists(st.integers(0, heads), min_size=layers, max_size=layers)),
        layer_intermediate_sizes=draw(st.lists(st.integers(0, 8), min_size=layers, max_size=layers)),
        exit_layers=sorted(set(draw(st.lists(st.integers(1, layers), max_size=2))) | {layers}),
        embedding_rank=draw(st.none() | st.integers(1, 4)),
        exit_pooler=draw(st.sampled_from(["dense", "tanh"])),
        exit_criterion=criterion,
        exit_threshold=threshold,
        exit_patience=1,
    )
    broken = draw(st.none() | st.sampled_from(sorted(INVALID)))
    if broken is not None:
        fields[broken] = INVALID[broken]
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, 10))  # up to 10 > max_position_embeddings: refused with a ValueError
    ids = draw(st.lists(st.integers(0, 20), min_size=batch * length, max_size=batch * length))  # 20 is out of vocab
    mask = draw(st.lists(st.sampled_from([0, 1, 1, 1]), min_size=batch * length, max_size=batch * length))
    return fields, torch.tensor(ids).view(batch, length), torch.tensor(mask).view(batch, length)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_and_batch(), st.booleans())
def test_runs_or_raises_value_error(case, train):
    fields, input_ids, attention_mask = case
    try:
        config = CostEffConfig(**fields)
        model = CostEffForSequenceClassification(config).train(train)
        with torch.no_grad():
            output = model(input_ids=input_ids, attention_mask=attention_mask)
    except ValueError:
        return
    batch = input_ids.shape[0]
    assert output.logits.shape == (batch, config.num_labels)
    assert output.exit_layer.shape == (batch,)
    assert bool(((output.exit_layer >= 1) & (output.exit_layer <= config.num_hidden_layers)).all())
    assert set(output.exit_layer.tolist()) <= set(config.exit_layers)
    if output.all_exit_logits is not None:
        assert output.all_exit_logits.shape == (batch, config.num_exits, config.num_labels)
    assert torch.isfinite(output.logits).all()
