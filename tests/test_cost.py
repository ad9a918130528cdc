"""Cost accounting from shapes vs torch's FlopCounterMode and the model's real parameter count."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from torch.utils.flop_counter import FlopCounterMode

from hf_costeff import CostEffForSequenceClassification, average_flops, count_parameters, forward_flops


def _measured_flops(model, **inputs) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs)
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def minilm(minilm_path):
    # FlopCounterMode does not count CPU sdpa kernels; eager attention is the same math as explicit matmuls.
    model = CostEffForSequenceClassification.from_bert(minilm_path, num_labels=2, exit_pooler="tanh").eval()
    model.set_attn_implementation("eager")
    return model


@pytest.mark.parametrize("length", [128, 23])
def test_full_forward_flops_match_flop_counter(minilm, minilm_tokenizer, sst2_sentences, length):
    inputs = minilm_tokenizer(
        sst2_sentences[3], return_tensors="pt", padding="max_length", max_length=length, truncation=True
    )
    measured = _measured_flops(minilm, **inputs)
    assert forward_flops(minilm.config, length) == pytest.approx(measured, rel=0.02)


def test_heterogeneous_factorized_flops_match_flop_counter():
    config = tiny_config(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=128,
        layer_num_heads=[8, 5, 0, 2, 8, 1],
        layer_intermediate_sizes=[128, 64, 0, 9, 128, 30],
        embedding_rank=16,
        num_labels=2,
    )
    model = CostEffForSequenceClassification(config).eval()
    model.set_attn_implementation("eager")
    measured = _measured_flops(model, input_ids=torch.randint(1, 300, (1, 41)))
    assert forward_flops(config, 41) == pytest.approx(measured, rel=0.02)


def test_early_exit_flops_match_flop_counter_per_exit_layer(minilm, minilm_tokenizer, sst2_sentences):
    """A confidence threshold of 0 leaves at the first exit; 1.01 is refused, so use entropy 0 for 'never'."""
    inputs = minilm_tokenizer(sst2_sentences[5], return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    first = _measured_flops(minilm, **inputs, exit_criterion="confidence", exit_threshold=0.0)
    last = _measured_flops(minilm, **inputs, exit_criterion="entropy", exit_threshold=0.0)
    assert forward_flops(minilm.config, length, exit_layer=1) == pytest.approx(first, rel=0.02)
    assert forward_flops(minilm.config, length, exit_layer=6) == pytest.approx(last, rel=0.02)
    assert last > 5 * first


def test_average_flops_of_a_batched_early_exit_run(minilm, minilm_tokenizer, sst2_sentences):
    """Sum of per-example measured FLOPs at each example's own exit equals average_flops * n."""
    sentences = sst2_sentences[:6]
    batch = minilm_tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        exit_layers = minilm(**batch, exit_criterion="patience", exit_patience=1).exit_layer.tolist()
    lengths = batch["attention_mask"].sum(1).tolist()
    measured = 0
    for sentence, exit_layer in zip(sentences, exit_layers, strict=True):
        single = minilm_tokenizer(sentence, return_tensors="pt")
        with torch.no_grad():
            assert minilm(**single, exit_criterion="patience", exit_patience=1).exit_layer.item() == exit_layer
        measured += _measured_flops(minilm, **single, exit_criterion="patience", exit_patience=1)
    assert average_flops(minilm.config, exit_layers, lengths) == pytest.approx(measured / len(sentences), rel=0.02)


@pytest.mark.parametrize("pooler", ["dense", "tanh"])
def test_parameter_count_matches_model(pooler):
    config = tiny_config(embedding_rank=8, exit_pooler=pooler, exit_layers=[2, 4])
    model = CostEffForSequenceClassification(config)
    counts = count_parameters(config)
    assert counts["total"] == model.num_parameters()
    assert counts["embeddings"] == sum(p.numel() for p in model.costeff.embeddings.parameters())
    assert counts["exits"] == sum(p.numel() for p in model.exits.parameters())


def test_cost_functions_refuse_bad_arguments():
    config = tiny_config(exit_layers=[2, 4])
    with pytest.raises(ValueError, match="exit_layer=3"):
        forward_flops(config, 10, exit_layer=3)
    with pytest.raises(ValueError, match="seq_length"):
        forward_flops(config, 0)
    with pytest.raises(ValueError, match="sequence lengths"):
        average_flops(config, [2, 4], [10])
