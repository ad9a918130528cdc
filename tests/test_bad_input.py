"""Bad input gets a clear error naming the problem."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from hf_costeff import CostEffConfig, CostEffForSequenceClassification
from hf_costeff.serving import load_costeff, save_pretrained_atomic


@pytest.fixture(scope="module")
def model(minilm_tokenizer):
    torch.manual_seed(0)
    return CostEffForSequenceClassification(tiny_config(vocab_size=minilm_tokenizer.vocab_size)).eval()


@pytest.fixture()
def saved(tmp_path, model):
    return save_pretrained_atomic(model, tmp_path / "m")


@pytest.mark.parametrize("task", ["text-classification", "costeff-text-classification"])
def test_empty_text(model, minilm_tokenizer, task):
    from transformers import pipeline

    import hf_costeff.serving  # noqa: F401  (registers the task)

    clf = pipeline(task, model=model, tokenizer=minilm_tokenizer)
    if task == "costeff-text-classification":
        with pytest.raises(ValueError, match="empty text"):
            clf(["fine", "   "])
    else:  # the stock pipeline tokenizes "" to [CLS] [SEP] and answers: only ours refuses it
        assert len(clf([""])) == 1


def test_too_long_input(model, minilm_tokenizer, caplog):
    from transformers import pipeline

    long_text = "word " * 200  # > max_position_embeddings = 64
    stock = pipeline("text-classification", model=model, tokenizer=minilm_tokenizer)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=64"):
        stock(long_text)
    clf = pipeline("costeff-text-classification", model=model, tokenizer=minilm_tokenizer)
    with pytest.raises(ValueError, match="exceeds the model's maximum of 64"):
        clf(long_text, truncation=False)
    result = clf(long_text)[0]
    assert result["full_flops"] == pytest.approx(result["flops"] * result["flops_speedup"])
    ids = minilm_tokenizer(long_text, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected = model(**ids).logits.softmax(-1).max().item()
    assert result["score"] == pytest.approx(expected, abs=1e-5)


def test_labels_out_of_range(model):
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, num_labels=3\)"):
        model(input_ids=ids, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels must be class ids"):
        model(input_ids=ids, labels=torch.tensor([-1, 0]))


def test_config_edited_after_saving(saved):
    from transformers import AutoModelForSequenceClassification

    config = json.loads((saved / "config.json").read_text())
    config["layer_num_heads"] = [4, 1, 0, 3]  # layer 2 really has 2 heads
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # transformers 5.23 refuses, vaguely
        AutoModelForSequenceClassification.from_pretrained(saved)
    with pytest.raises(
        ValueError, match=r"do not match the shapes.*layer_num_heads=\[4, 1, 0, 3\].*layer\.1\.attention"
    ):
        load_costeff(saved)


def test_config_with_more_exits_than_weights(saved):
    config = json.loads((saved / "config.json").read_text())
    config["exit_layers"] = [1, 2, 3, 4]
    config["num_labels"] = 3
    (saved / "config.json").write_text(json.dumps(config))
    load_costeff(saved)  # unchanged: loads
    config["exit_layers"] = [2, 4]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unexpected"):
        load_costeff(saved)


def test_invalid_config_values(saved):
    config = json.loads((saved / "config.json").read_text())
    config["layer_num_heads"] = [4, 2, 0, 9]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"layer_num_heads\[3\]=9 exceeds num_attention_heads=4"):
        load_costeff(saved)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(saved, damage):
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file" * 4)
    with pytest.raises(ValueError, match="Corrupt or truncated safetensors"):
        load_costeff(saved)


def test_bert_checkpoint_where_costeff_expected(minilm_path):
    # transformers alone would load it with random exits and only a logged report; both entry points refuse it.
    with pytest.raises(ValueError, match="'bert' checkpoint, not a CostEff one.*from_bert"):
        CostEffForSequenceClassification.from_pretrained(minilm_path)
    with pytest.raises(ValueError, match="'bert' checkpoint, not a CostEff one"):
        load_costeff(minilm_path)
    from transformers import AutoModelForSequenceClassification

    # The Auto class still resolves a BERT folder to BERT: the check does not get in its way.
    assert (
        type(AutoModelForSequenceClassification.from_pretrained(minilm_path)).__name__
        == "BertForSequenceClassification"
    )


def test_thresholds_out_of_range(model, minilm_tokenizer):
    from transformers import pipeline

    with pytest.raises(ValueError, match="out of range for entropy with 3 labels"):
        tiny_config(exit_criterion="entropy", exit_threshold=2.0)
    with pytest.raises(ValueError, match="out of range for confidence"):
        CostEffConfig(exit_criterion="confidence", exit_threshold=1.5, num_hidden_layers=2)
    with pytest.raises(ValueError, match="exit_threshold must be set"):
        tiny_config(exit_criterion="entropy")
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="out of range for confidence"):
        model(input_ids=ids, exit_criterion="confidence", exit_threshold=-0.1)
    with pytest.raises(ValueError, match="finite number"):
        model(input_ids=ids, exit_criterion="entropy", exit_threshold=float("nan"))
    clf = pipeline("costeff-text-classification", model=model, tokenizer=minilm_tokenizer)
    with pytest.raises(ValueError, match="out of range for entropy"):
        clf("fine", exit_criterion="entropy", exit_threshold=5.0)
    with pytest.raises(ValueError, match="exit_criterion must be one of"):
        clf("fine", exit_criterion="sometimes")
