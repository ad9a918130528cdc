"""CostEff model: BERT equivalence, batched early exit, save/load, Auto classes, pipelines, losses."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertModel,
    pipeline,
)

from hf_costeff import CostEffForSequenceClassification, CostEffModel


@pytest.fixture(scope="module")
def bert_and_costeff(minilm_path):
    torch.manual_seed(0)
    bert = BertForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    return bert, CostEffForSequenceClassification.from_bert(bert).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_converted_model_matches_bert_logits(bert_and_costeff, minilm_tokenizer, sst2_sentences, attn):
    bert, costeff = bert_and_costeff
    bert.set_attn_implementation(attn)
    costeff.set_attn_implementation(attn)
    batch = minilm_tokenizer(sst2_sentences[:32], padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        expected, got = bert(**batch).logits, costeff(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_converted_every_exit_sees_the_same_hidden_states_as_bert(bert_and_costeff, minilm_tokenizer, sst2_sentences):
    bert, costeff = bert_and_costeff
    batch = minilm_tokenizer(sst2_sentences[:8], padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = bert.bert(**batch, output_hidden_states=True).hidden_states
        ours = costeff(**batch, output_hidden_states=True)
    assert len(ours.hidden_states) == len(reference) == 7
    for theirs, mine in zip(reference, ours.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    assert ours.all_exit_logits.shape == (8, 6, 2)
    # init_exits_from_final copies BERT's pooler + classifier into every exit.
    torch.testing.assert_close(ours.all_exit_logits[:, -1], ours.logits)


def test_from_bert_accepts_bare_bert_model_and_path(minilm_path):
    bare = BertModel.from_pretrained(minilm_path)
    from_model = CostEffForSequenceClassification.from_bert(bare, num_labels=3)
    from_path = CostEffForSequenceClassification.from_bert(minilm_path, num_labels=3, exit_pooler="tanh")
    assert from_model.config.num_labels == 3 and from_model.exits[0].dense is not None
    assert from_path.exits[0].dense is None
    torch.testing.assert_close(
        from_model.costeff.encoder.layer[3].output.dense.weight, bare.encoder.layer[3].output.dense.weight
    )


def test_from_bert_refuses_a_non_bert_checkpoint(tmp_path):
    CostEffForSequenceClassification(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a BERT"):
        CostEffForSequenceClassification.from_bert(str(tmp_path))


@pytest.fixture(scope="module", params=["cls", "mean"])
def spread_exit_model(request, minilm_path, minilm_tokenizer, sst2_sentences):
    """A converted MiniLM whose exits have large random classifiers centred on the batch's median logit gap, so
    predictions and confidence vary across examples and layers; exits pool [CLS] or the mean of real tokens."""
    torch.manual_seed(0)
    model = CostEffForSequenceClassification.from_bert(
        minilm_path, num_labels=2, init_exits_from_final=False, exit_pooling=request.param
    ).eval()
    generator = torch.Generator().manual_seed(1)
    batch = minilm_tokenizer(sst2_sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        for exit_head in model.exits:
            exit_head.classifier.weight.copy_(torch.randn(exit_head.classifier.weight.shape, generator=generator) * 0.3)
            exit_head.classifier.bias.zero_()
        logits = model(**batch).all_exit_logits
        for k, exit_head in enumerate(model.exits):
            gaps = (logits[:, k, 1] - logits[:, k, 0]).sort().values
            # Halfway between the two middle gaps: no example is left on a tie between the classes.
            exit_head.classifier.bias[1] = -(gaps[31] + gaps[32]) / 2
    return model


def _threshold_for_mixed_exits(model, batch, criterion):
    """A threshold in the widest gap between the scores of every (example, exit) pair, between their 30th and 70th
    percentiles: examples leave at different exits, and none sits where a 1e-6 padding difference flips it."""
    with torch.no_grad():
        log_probs = model(**batch, exit_criterion="none").all_exit_logits.log_softmax(-1)
    score = -(log_probs.exp() * log_probs).sum(-1) if criterion == "entropy" else log_probs.exp().max(-1).values
    ordered = score.flatten().sort().values
    low, high = int(0.3 * len(ordered)), int(0.7 * len(ordered))
    gaps = ordered[low + 1 : high] - ordered[low : high - 1]
    i = low + int(gaps.argmax())
    return float((ordered[i] + ordered[i + 1]) / 2)


@pytest.mark.parametrize("criterion", ["entropy", "confidence", "patience"])
def test_batched_early_exit_equals_one_by_one(spread_exit_model, minilm_tokenizer, sst2_sentences, criterion):
    model = spread_exit_model
    batch = minilm_tokenizer(sst2_sentences, padding=True, return_tensors="pt")
    kwargs = {"exit_criterion": criterion}
    if criterion == "patience":
        kwargs["exit_patience"] = 1
    else:
        kwargs["exit_threshold"] = _threshold_for_mixed_exits(model, batch, criterion)
    with torch.no_grad():
        batched = model(**batch, **kwargs)
        assert batched.exit_layer.shape == (64,)
        assert len(set(batched.exit_layer.tolist())) > 1, "the test needs examples leaving at different layers"
        for i, sentence in enumerate(sst2_sentences):
            alone = model(**minilm_tokenizer(sentence, return_tensors="pt"), **kwargs)
            assert alone.exit_layer.item() == batched.exit_layer[i].item(), i
            torch.testing.assert_close(batched.logits[i], alone.logits[0], atol=1e-5, rtol=0)


def test_early_exit_with_threshold_that_never_fires_equals_full_model(
    bert_and_costeff, minilm_tokenizer, sst2_sentences
):
    _, model = bert_and_costeff
    batch = minilm_tokenizer(sst2_sentences[:16], padding=True, return_tensors="pt")
    with torch.no_grad():
        full = model(**batch)
        never = model(**batch, exit_criterion="entropy", exit_threshold=0.0)  # entropy < 0 is impossible
        always = model(**batch, exit_criterion="confidence", exit_threshold=0.0)
    torch.testing.assert_close(never.logits, full.logits, atol=1e-5, rtol=0)
    assert never.exit_layer.tolist() == [6] * 16
    assert always.exit_layer.tolist() == [1] * 16
    torch.testing.assert_close(always.logits, full.all_exit_logits[:, 0], atol=1e-5, rtol=0)


def test_save_load_round_trip_heterogeneous_widths(tmp_path):
    config = tiny_config(
        vocab_size=300,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        layer_num_heads=[12, 7, 3, 0, 5, 12],
        layer_intermediate_sizes=[1536, 800, 0, 64, 1536, 300],
        embedding_rank=48,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = CostEffForSequenceClassification(config).eval()
    assert model.costeff.encoder.layer[1].attention.self.query.weight.shape == (7 * 32, 384)
    assert model.costeff.encoder.layer[3].attention.output.dense.weight.shape == (384, 0)
    assert model.costeff.encoder.layer[2].intermediate.dense.weight.shape == (0, 384)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and not any(name.endswith(".bin") for name in files)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CostEffForSequenceClassification)
    assert loaded.config.layer_num_heads == [12, 7, 3, 0, 5, 12]
    for (name, mine), (_, theirs) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(mine, theirs), name
    ids = torch.randint(1, 300, (3, 17))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_auto_classes_are_registered(tmp_path):
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("costeff"), type(config))
    assert isinstance(AutoModel.from_config(config), CostEffModel)
    assert isinstance(AutoModelForSequenceClassification.from_config(config), CostEffForSequenceClassification)
    base = CostEffModel(config)
    out = base(input_ids=torch.randint(0, 120, (2, 5)), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 5, 32) and len(out.hidden_states) == 5


def test_stock_text_classification_pipeline(bert_and_costeff, minilm_tokenizer, sst2_sentences):
    _, model = bert_and_costeff
    classifier = pipeline("text-classification", model=model, tokenizer=minilm_tokenizer)
    results = classifier(sst2_sentences[:5], batch_size=4)
    with torch.no_grad():
        probs = model(**minilm_tokenizer(sst2_sentences[:5], padding=True, return_tensors="pt")).logits.softmax(-1)
    assert [r["label"] for r in results] == [f"LABEL_{i}" for i in probs.argmax(-1).tolist()]
    assert [r["score"] for r in results] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_loss_is_weighted_sum_over_exits_in_training():
    torch.manual_seed(0)
    model = CostEffForSequenceClassification(tiny_config(exit_loss_weights=[0.5, 0.0, 2.0, 1.0])).train()
    ids, labels = torch.randint(0, 120, (4, 9)), torch.tensor([0, 2, 1, 1])
    out = model(input_ids=ids, labels=labels)
    per_exit = [torch.nn.functional.cross_entropy(out.all_exit_logits[:, k], labels) for k in range(4)]
    expected = 0.5 * per_exit[0] + 2.0 * per_exit[2] + per_exit[3]
    torch.testing.assert_close(out.loss, expected)


def test_regression_loss_and_patience():
    torch.manual_seed(0)
    model = CostEffForSequenceClassification(tiny_config(num_labels=1)).eval()
    ids, labels = torch.randint(0, 120, (5, 6)), torch.rand(5) * 5
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        expected = sum(torch.nn.functional.mse_loss(out.all_exit_logits[:, k, 0], labels) for k in range(4))
        torch.testing.assert_close(out.loss, expected)
        far = model(input_ids=ids, exit_criterion="patience", exit_patience=1, exit_threshold=1e6)
        assert far.exit_layer.tolist() == [2] * 5  # the second exit is the first that can agree with a previous one


def test_unknown_labels_are_refused():
    model = CostEffForSequenceClassification(tiny_config()).eval()
    with pytest.raises(ValueError, match="labels must be class ids"):
        model(input_ids=torch.randint(0, 120, (2, 4)), labels=torch.tensor([0, 3]))


def test_per_call_policy_is_validated():
    model = CostEffForSequenceClassification(tiny_config()).eval()
    ids = torch.randint(0, 120, (2, 4))
    with pytest.raises(ValueError, match="out of range"):
        model(input_ids=ids, exit_criterion="entropy", exit_threshold=5.0)
    with pytest.raises(ValueError, match="exit_criterion"):
        model(input_ids=ids, exit_criterion="fastest")


def test_gradient_equilibrium_scales_the_gradient_from_deeper_exits():
    torch.manual_seed(0)
    ids, labels = torch.randint(0, 120, (4, 7)), torch.tensor([0, 1, 2, 0])
    config = dict(
        num_hidden_layers=2, layer_num_heads=[4, 4], layer_intermediate_sizes=[48, 48], exit_loss_weights=[0.0, 1.0]
    )
    grads = {}
    for equilibrium in (False, True):
        torch.manual_seed(0)
        model = CostEffForSequenceClassification(tiny_config(**config, gradient_equilibrium=equilibrium)).train()
        model(input_ids=ids, labels=labels).loss.backward()
        grads[equilibrium] = [layer.output.dense.weight.grad.clone() for layer in model.costeff.encoder.layer]
    # Only the final exit has weight: its gradient reaches layer 1 halved (R = 2 exits from layer 1 on).
    torch.testing.assert_close(grads[True][0], 0.5 * grads[False][0])
    torch.testing.assert_close(grads[True][1], grads[False][1])


def test_zero_width_layers_run_and_backpropagate():
    model = CostEffForSequenceClassification(
        tiny_config(layer_num_heads=[0, 0, 0, 0], layer_intermediate_sizes=[0, 0, 0, 0])
    ).train()
    out = model(input_ids=torch.randint(0, 120, (2, 5)), labels=torch.tensor([1, 2]))
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_mean_pooling_exits_ignore_padding(minilm_path, minilm_tokenizer, sst2_sentences):
    model = CostEffForSequenceClassification.from_bert(minilm_path, num_labels=2, exit_pooling="mean").eval()
    short = minilm_tokenizer(sst2_sentences[:4], padding=True, return_tensors="pt")
    padded = minilm_tokenizer(sst2_sentences[:4], padding="max_length", max_length=96, return_tensors="pt")
    with torch.no_grad():
        a, b = model(**short).all_exit_logits, model(**padded).all_exit_logits
        cls = CostEffForSequenceClassification.from_bert(minilm_path, num_labels=2, exit_pooling="cls").eval()
        cls = cls(**short).all_exit_logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - cls).abs().max() > 1e-3  # mean pooling really reads other tokens than [CLS]
