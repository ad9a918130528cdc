"""Slenderization: Taylor importance (exit-aware vs final-only), width planning, structured pruning, SVD embeddings."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification

from hf_costeff import CostEffForSequenceClassification, count_parameters, forward_flops
from hf_costeff.slenderize import (
    Importance,
    PruningConfig,
    compute_importance,
    factorize_embeddings,
    head_cost,
    neuron_cost,
    plan_widths,
    prune_model,
    summary,
    unit_masks,
    unpruned_config,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (30x slower on the shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _full_config(**overrides):
    fields = dict(layer_num_heads=[4] * 4, layer_intermediate_sizes=[48] * 4)
    fields.update(overrides)
    return tiny_config(**fields)


def _model(seed: int = 0, **overrides) -> CostEffForSequenceClassification:
    torch.manual_seed(seed)
    return CostEffForSequenceClassification(_full_config(**overrides))


def _batches(n: int = 3, batch_size: int = 6, length: int = 11, num_labels: int = 3, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(1, 120, (batch_size, length), generator=g)
        mask = torch.ones_like(ids)
        mask[0, length // 2 :] = 0  # padding in one row, so the attention mask matters
        batches.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
            }
        )
    return batches


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _flops(model, **inputs) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs)
    return counter.get_total_flops()


# ---------------------------------------------------------------- exactness of pruning


def test_pruning_zero_masked_units_keeps_logits():
    """Units whose mask is 0 (zero importance) are the ones removed: the pruned model equals the masked one."""
    model = _model().eval()
    g = torch.Generator().manual_seed(3)
    head_masks = [(torch.rand(4, generator=g) > 0.5).float() for _ in range(4)]
    neuron_masks = [(torch.rand(48, generator=g) > 0.4).float() for _ in range(4)]
    head_masks[0] = torch.zeros(4)  # layer 1 loses every head
    neuron_masks[2] = torch.zeros(48)  # layer 3 loses every neuron
    head_masks[3] = torch.ones(4)  # layer 4 keeps all heads (its attention Parameters must stay the same objects)
    batch = _inputs(_batches(1)[0])
    with torch.no_grad(), unit_masks(model, head_masks, neuron_masks):
        masked = model(**batch).all_exit_logits
    with torch.no_grad():
        unmasked = model(**batch).all_exit_logits
    assert not torch.allclose(masked, unmasked, atol=1e-4)  # the masks do something

    kept_query = model.costeff.encoder.layer[3].attention.self.query.weight
    heads = [int(m.sum()) for m in head_masks]
    ffn = [int(m.sum()) for m in neuron_masks]
    prune_model(model, Importance(head_masks, neuron_masks), heads, ffn)

    assert model.config.layer_num_heads == heads and heads[0] == 0
    assert model.config.layer_intermediate_sizes == ffn and ffn[2] == 0
    assert model.costeff.encoder.layer[3].attention.self.query.weight is kept_query
    for i, layer in enumerate(model.costeff.encoder.layer):
        assert layer.attention.self.num_heads == heads[i]
        assert layer.attention.self.query.weight.shape == (heads[i] * 8, 32)
        assert layer.attention.output.dense.weight.shape == (32, heads[i] * 8)
        assert layer.intermediate.dense.weight.shape == (ffn[i], 32)
        assert layer.intermediate.dense.bias.shape == (ffn[i],)
        assert layer.output.dense.weight.shape == (32, ffn[i])
    with torch.no_grad():
        pruned = model(**batch).all_exit_logits
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=1e-5)


def test_prune_keeps_dtype_and_frozen_flags():
    model = _model().to(torch.float64)
    model.costeff.encoder.layer[1].intermediate.dense.weight.requires_grad_(False)
    imp = Importance([torch.rand(4) for _ in range(4)], [torch.rand(48) for _ in range(4)])
    prune_model(model, imp, 2, 10)
    layer = model.costeff.encoder.layer[1]
    assert layer.attention.self.key.weight.dtype == torch.float64
    assert not layer.intermediate.dense.weight.requires_grad and layer.intermediate.dense.bias.requires_grad


# ---------------------------------------------------------------- budget, cost, round trip


def test_budget_pruning_hits_parameter_count_flops_and_round_trips(tmp_path):
    model = _model().eval()
    model.set_attn_implementation("eager")  # FlopCounterMode does not count CPU sdpa
    before = copy.deepcopy(model.config)
    batch = _inputs(_batches(1, batch_size=1, length=17)[0])
    batch.pop("attention_mask")
    flops_before = _flops(model, **batch)
    imp = Importance([torch.rand(4) for _ in range(4)], [torch.rand(48) for _ in range(4)])
    full_encoder = count_parameters(model.config)["encoder"]
    heads, ffn = plan_widths(model.config, imp, PruningConfig(encoder_keep_fraction=0.45))
    prune_model(model, imp, heads, ffn)

    target = 0.45 * full_encoder
    encoder = count_parameters(model.config)["encoder"]
    assert target - max(head_cost(model.config), neuron_cost(model.config)) < encoder <= target
    assert all(h >= 1 for h in heads)  # keep_min_heads=1
    assert model.num_parameters() == count_parameters(model.config)["total"]
    assert sum(p.numel() for p in model.costeff.encoder.parameters()) == encoder
    flops_after = _flops(model, **batch)
    assert flops_after == forward_flops(model.config, 17) and flops_before == forward_flops(before, 17)
    assert flops_after < 0.6 * flops_before
    table = summary(before, model)
    assert f"{encoder:,}" in table and "| 1 | 4 → " in table

    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    loaded.set_attn_implementation("eager")  # the saved model was measured with eager attention
    assert loaded.config.layer_num_heads == heads and loaded.config.layer_intermediate_sizes == ffn
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    # Every weight is bit-identical, but the logits are not: BLAS picks its kernel (and so its summation order) by
    # memory alignment, and a memory-mapped safetensors load is aligned differently from a fresh allocation. fp32
    # round-off through a few layers of short dot products is ~1e-7 relative (3.7e-9 absolute seen); 1e-5 relative
    # leaves room, while a wrong or re-initialised weight moves the logits by orders of magnitude more.
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**batch).all_exit_logits, model(**batch).all_exit_logits, atol=1e-6, rtol=1e-5
        )


def test_keep_min_heads():
    config = _full_config()
    imp = Importance([torch.rand(4) for _ in range(4)], [torch.full((48,), 1e3) for _ in range(4)])  # heads go first
    # 0.45 of the encoder is reached only once all 16 heads are gone (or, with one head kept per layer, some neurons).
    heads, _ = plan_widths(config, imp, PruningConfig(encoder_keep_fraction=0.45))
    assert heads == [1, 1, 1, 1]
    heads, _ = plan_widths(config, imp, PruningConfig(encoder_keep_fraction=0.45, keep_min_heads=0))
    assert heads == [0, 0, 0, 0]


def test_explicit_widths_and_most_important_units_kept():
    model = _model()
    heads = [torch.tensor([0.1, 5.0, 0.2, 3.0])] * 4
    neurons = [torch.arange(48, dtype=torch.float32).flip(0)] * 4  # neuron 0 most important
    imp = Importance(heads, neurons)
    value_rows = model.costeff.encoder.layer[2].attention.self.value.weight[24:32].clone()  # head 3
    plan = plan_widths(model.config, imp, PruningConfig(layer_num_heads=[2, 2, 4, 9], layer_intermediate_sizes=5))
    assert plan == ([2, 2, 4, 4], [5] * 4)  # never widened
    prune_model(model, imp, [2, 2, 2, 2], [5] * 4)
    assert imp.top_heads(2, 2) == [1, 3]
    torch.testing.assert_close(model.costeff.encoder.layer[2].attention.self.value.weight[8:16], value_rows)


# ---------------------------------------------------------------- embeddings


def test_svd_full_rank_exact_and_rank_r_parameter_count(tmp_path):
    model = _model().eval()
    ids = torch.randint(0, 120, (3, 9))
    ids[0, -2:] = 0  # padding token
    with torch.no_grad():
        reference = model.costeff.embeddings(ids)
    assert factorize_embeddings(model, 32) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model.costeff.embeddings(ids), reference, atol=1e-5, rtol=1e-5)
    assert model.costeff.embeddings.word_embeddings.padding_idx == 0

    before = model.num_parameters()
    error_8 = factorize_embeddings(model, 8)  # refactorizes the (exact) rank-32 product
    assert 0.0 < error_8 < 1.0
    assert model.config.embedding_rank == 8
    assert model.num_parameters() == before - (120 * 32 + 32 * 32) + (120 * 8 + 8 * 32)
    assert model.num_parameters() == count_parameters(model.config)["total"]
    # Refactorizing a rank-8 product to rank 4 equals factorizing the rank-8 matrix directly.
    product = model.costeff.embeddings.word_embeddings.weight @ model.costeff.embeddings.word_embeddings_proj.weight.T
    s = torch.linalg.svdvals(product.detach().double())
    expected = float((s[4:] ** 2).sum().sqrt() / (s**2).sum().sqrt())
    assert factorize_embeddings(model, 4) == pytest.approx(expected, rel=1e-6)
    assert factorize_embeddings(model, 4) == pytest.approx(0.0, abs=1e-6)

    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6, rtol=1e-5
        )  # layout, see above


# ---------------------------------------------------------------- importance


def test_importance_restores_state_and_teacher_equal_to_student_gives_zero():
    model = _model().train()
    model.costeff.embeddings.LayerNorm.weight.requires_grad_(False)
    imp = compute_importance(model, _batches(), max_batches=2)
    assert imp.num_batches == 2
    assert model.training and not model.costeff.embeddings.LayerNorm.weight.requires_grad
    assert model.costeff.encoder.layer[0].attention.self.query.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(bool((h > 0).all()) for h in imp.heads) and all(bool((n >= 0).all()) for n in imp.neurons)
    assert [h.shape[0] for h in imp.heads] == [4] * 4 and [n.shape[0] for n in imp.neurons] == [48] * 4

    # Soft-target CE has zero gradient where the student already equals the teacher.
    same = compute_importance(model, _batches(), teacher=copy.deepcopy(model), temperature=2.0)
    other = compute_importance(model, _batches(), teacher=_model(seed=5), temperature=2.0)
    scale = max(float(h.max()) for h in other.heads)
    assert scale > 0 and max(float(h.max()) for h in same.heads) < 1e-4 * scale


def test_importance_of_pruned_layers_with_zero_width():
    model = CostEffForSequenceClassification(tiny_config())  # widths [4, 2, 0, 3] / [48, 20, 7, 0]
    imp = compute_importance(model, _batches(2), exit_weighting="final")
    assert [h.numel() for h in imp.heads] == [4, 2, 0, 3]
    assert [n.numel() for n in imp.neurons] == [48, 20, 7, 0]
    heads, ffn = plan_widths(model.config, imp, PruningConfig(encoder_keep_fraction=0.3))
    prune_model(model, imp, heads, ffn)
    assert count_parameters(model.config)["encoder"] <= 0.3 * count_parameters(unpruned_config(model.config))["encoder"]


@pytest.fixture(scope="module")
def sst2_batches(glue_dir, minilm_tokenizer):
    from hf_costeff.data import load_glue

    train = load_glue("sst2", glue_dir)["train"].select(range(48))
    batches = []
    for start in range(0, 48, 16):
        rows = train[start : start + 16]
        encoded = minilm_tokenizer(rows["sentence"], padding=True, truncation=True, max_length=64, return_tensors="pt")
        batches.append({**encoded, "labels": torch.tensor(rows["label"])})
    return batches


def test_exit_aware_and_final_only_importance_rank_differently(minilm_path, sst2_batches):
    torch.manual_seed(0)
    model = CostEffForSequenceClassification.from_bert(minilm_path, num_labels=2)
    every = compute_importance(model, sst2_batches, exit_weighting="all")
    final = compute_importance(model, sst2_batches, exit_weighting="final")
    assert every.num_batches == final.num_batches == 3
    # The last layer feeds only the final exit, so its scores are the same either way...
    torch.testing.assert_close(every.heads[-1], final.heads[-1], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(every.neurons[-1], final.neurons[-1], rtol=1e-4, atol=1e-9)
    # ...while earlier layers also answer to their own exits, which changes which units matter.
    differing = [i for i in range(5) if set(every.top_heads(i, 6)) != set(final.top_heads(i, 6))]
    assert differing, "exit-aware and final-only importance kept the same top-6 heads in every layer"
    differing_ffn = [i for i in range(5) if set(every.top_neurons(i, 460)) != set(final.top_neurons(i, 460))]
    assert len(differing_ffn) == 5
    # Both prune MiniLM to the same shapes but different units.
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    prune_model(a, every, 6, 460)
    prune_model(b, final, 6, 460)
    assert a.config.layer_num_heads == b.config.layer_num_heads == [6] * 6
    assert not torch.equal(
        a.costeff.encoder.layer[0].output.dense.weight, b.costeff.encoder.layer[0].output.dense.weight
    )


# ---------------------------------------------------------------- iterative pruning


def _two_steps(model, batches) -> torch.Tensor:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # pruning replaced the Parameters
    for batch in batches[:2]:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss


def test_iterative_pruning_with_training_between_events():
    model = _model().train()
    batches = _batches(4)
    full = count_parameters(model.config)["encoder"]
    for heads_target, ffn_target in (([3, 3, 4, 2], 30), ([1, 2, 3, 2], 12)):
        imp = compute_importance(model, batches, max_batches=2)
        heads, ffn = plan_widths(
            model.config, imp, PruningConfig(layer_num_heads=heads_target, layer_intermediate_sizes=ffn_target)
        )
        prune_model(model, imp, heads, ffn)
        assert (
            model.config.layer_num_heads == heads_target and model.config.layer_intermediate_sizes == [ffn_target] * 4
        )
        assert torch.isfinite(_two_steps(model, batches))
    layer = model.costeff.encoder.layer[1]
    assert layer.attention.self.query.weight.shape == (16, 32) and layer.output.dense.weight.shape == (32, 12)
    assert layer.attention.self.num_heads == 2
    for fraction in (0.3, 0.2):  # of the unpruned encoder, as the schedule's final target is
        imp = compute_importance(model, batches, max_batches=2)
        heads, ffn = plan_widths(model.config, imp, PruningConfig(encoder_keep_fraction=fraction))
        prune_model(model, imp, heads, ffn)
        assert fraction * full - head_cost(model.config) < count_parameters(model.config)["encoder"] <= fraction * full
        assert model.num_parameters() == count_parameters(model.config)["total"]
        assert torch.isfinite(_two_steps(model, batches))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"encoder_keep_fraction": 1.5}, "encoder_keep_fraction"),
        ({"encoder_keep_fraction": 0.0}, "encoder_keep_fraction"),
        ({"encoder_keep_fraction": 0.5, "layer_num_heads": 2}, "encoder_keep_fraction"),
        ({"layer_num_heads": [2, -1]}, "layer_num_heads[1]"),
        ({"layer_num_heads": 0}, "keep_min_heads"),
        ({"layer_intermediate_sizes": 2.5}, "layer_intermediate_sizes"),
        ({"keep_min_heads": -1}, "keep_min_heads"),
        ({"embedding_rank": 0}, "embedding_rank"),
    ],
)
def test_pruning_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        PruningConfig(**kwargs)


def test_bad_calls_raise_value_errors():
    model = _model()
    imp = Importance([torch.rand(4) for _ in range(4)], [torch.rand(48) for _ in range(4)])
    with pytest.raises(ValueError, match="exit_weighting"):
        compute_importance(model, _batches(), exit_weighting="some")
    with pytest.raises(ValueError, match="no batches"):
        compute_importance(model, [])
    with pytest.raises(ValueError, match="labels"):
        compute_importance(model, [_inputs(b) for b in _batches()])
    with pytest.raises(ValueError, match="temperature"):
        compute_importance(model, _batches(), temperature=0)
    with pytest.raises(ValueError, match=r"layer_num_heads\[0\]"):
        prune_model(model, imp, [5, 4, 4, 4], 48)
    with pytest.raises(ValueError, match="layer_intermediate_sizes"):
        prune_model(model, imp, 4, [1, 2])
    with pytest.raises(ValueError, match="needs importance"):
        plan_widths(model.config, None, PruningConfig(encoder_keep_fraction=0.5))
    prune_model(model, imp, 2, 10)
    with pytest.raises(ValueError, match="recompute it after pruning"):
        prune_model(model, imp, 1, 5)  # stale scores
    for rank in (0, 33, 2.0):
        with pytest.raises(ValueError, match="rank"):
            factorize_embeddings(model, rank)


def test_pruning_config_saves_and_loads_beside_the_model(tmp_path):
    model = CostEffForSequenceClassification(tiny_config()).eval()
    config = PruningConfig(layer_num_heads=[2, 1, 0, 3], layer_intermediate_sizes=7, keep_min_heads=0, embedding_rank=8)
    model.save_pretrained(tmp_path)
    path = config.save_pretrained(tmp_path)
    assert path.name == "pruning_config.json" and (tmp_path / "config.json").exists()
    assert PruningConfig.from_pretrained(tmp_path) == config == PruningConfig.from_pretrained(path)
    # The width fields carry CostEffConfig's names: the plan lands in the model config under the same keys.
    heads, ffn = plan_widths(model.config, None, config)
    assert (heads, ffn) == ([2, 1, 0, 3], [7, 7, 7, 0])
    path.write_text(path.read_text().replace("layer_num_heads", "heads_per_layer"))
    with pytest.raises(ValueError, match="heads_per_layer"):
        PruningConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not know"):
        PruningConfig.from_pretrained(tmp_path / "config.json")  # a file that is not a pruning config
