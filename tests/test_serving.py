"""Pipelines (stock and early-exit, batched), PEFT LoRA round trip, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_tiny_bert, tiny_config

from hf_costeff import CostEffForSequenceClassification, count_parameters, forward_flops
from hf_costeff.serving import EarlyExitTextClassificationPipeline, summarize_results

TEXTS = [
    "a good film",
    "bad",
    "a very long and winding sentence about nothing in particular at all",
    "ok then",
    "the best thing I have seen this year",
    "no",
    "meh",
    "truly, deeply, madly boring",
]


@pytest.fixture(scope="module")
def model(minilm_tokenizer):
    """Tiny random CostEff (heterogeneous widths, 3 labels, an exit after each of its 4 layers)."""
    torch.manual_seed(0)
    return CostEffForSequenceClassification(tiny_config(vocab_size=minilm_tokenizer.vocab_size)).eval()


def test_over_long_input_gets_one_clear_message(model, minilm_tokenizer, caplog):
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    import hf_costeff.serving  # noqa: F401  (registers the task)

    clf = pipeline("costeff-text-classification", model=model, tokenizer=minilm_tokenizer)
    text = "word " * (minilm_tokenizer.model_max_length + 100)  # beyond the tokenizer's limit too
    hf_logging.enable_propagation()  # transformers' own warnings reach caplog too
    try:
        with caplog.at_level("WARNING"):
            clf(text)
    finally:
        hf_logging.disable_propagation()
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert messages == [
        f"Input of {minilm_tokenizer.model_max_length + 102} tokens truncated to the model's maximum of 64 tokens"
    ]


def _alone(model, tokenizer, text, **kw):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt"), **kw)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_stock_pipeline(model, minilm_tokenizer, batch_size):
    from transformers import pipeline

    clf = pipeline("text-classification", model=model, tokenizer=minilm_tokenizer)
    results = clf(TEXTS, batch_size=batch_size)
    for text, result in zip(TEXTS, results, strict=True):
        probs = _alone(model, minilm_tokenizer, text).logits.softmax(-1)[0]
        assert result["label"] == f"LABEL_{int(probs.argmax())}"
        assert abs(result["score"] - float(probs.max())) < 1e-5


@pytest.mark.parametrize("batch_size", [1, 8])
def test_early_exit_pipeline(model, minilm_tokenizer, batch_size):
    from transformers import pipeline

    clf = pipeline("costeff-text-classification", model=model, tokenizer=minilm_tokenizer)
    assert isinstance(clf, EarlyExitTextClassificationPipeline)
    # A threshold between the first exit's entropies of the texts: some leave at layer 1, the others later.
    with torch.no_grad():
        first = model(**minilm_tokenizer(TEXTS, padding=True, return_tensors="pt")).all_exit_logits[:, 0]
    entropy = sorted((-(first.log_softmax(-1).exp() * first.log_softmax(-1)).sum(-1)).tolist())
    policy = {"exit_criterion": "entropy", "exit_threshold": (entropy[3] + entropy[4]) / 2}
    results = clf(TEXTS, batch_size=batch_size, **policy)
    exits = []
    for text, result in zip(TEXTS, results, strict=True):
        alone = _alone(model, minilm_tokenizer, text, **policy)
        length = len(minilm_tokenizer(text)["input_ids"])
        exit_layer = int(alone.exit_layer[0])
        exits.append(exit_layer)
        assert result["exit_layer"] == exit_layer
        assert abs(result["score"] - float(alone.logits.softmax(-1).max())) < 1e-5
        expected = forward_flops(model.config, length) / forward_flops(model.config, length, exit_layer)
        assert result["flops_speedup"] == pytest.approx(expected)
    assert len(set(exits)) > 1, f"the test model should exit at several layers, got {exits}"
    stats = clf.last_call_stats
    assert stats == summarize_results(results) and stats["num_inputs"] == len(TEXTS)
    total = sum(r["full_flops"] for r in results) / sum(r["flops"] for r in results)
    assert stats["flops_speedup"] == pytest.approx(total) and stats["flops_speedup"] > 1
    # A per-call threshold changes the exits; threshold 0 means no early exit.
    assert all(
        r["exit_layer"] == 4 and r["flops_speedup"] == 1
        for r in clf(TEXTS, exit_criterion="entropy", exit_threshold=0.0)
    )
    pair = clf({"text": "good", "text_pair": "fine"}, top_k=None)
    assert len(pair) == 3 and all("exit_layer" in row for row in pair)


def test_peft_lora_round_trip(tmp_path, minilm_tokenizer):
    from peft import AutoPeftModelForSequenceClassification, LoraConfig, PeftModel, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = CostEffForSequenceClassification(tiny_config(vocab_size=minilm_tokenizer.vocab_size, num_labels=2))
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(
        base, LoraConfig(task_type=TaskType.SEQ_CLS, target_modules=["query", "value"], r=4, init_lora_weights=False)
    )
    lora_names = [n for n, _ in peft_model.named_modules() if n.endswith(("query", "value")) and "lora" not in n]
    assert len(lora_names) == 8  # 4 layers x (query, value), the 0-head layer included
    batch = minilm_tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0, 1, 0])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(3):
        loss = peft_model(**batch, labels=labels).loss
        loss.backward(), optimizer.step(), optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    with open(tmp_path / "adapter" / "adapter_config.json") as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = str(tmp_path / "base")
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))

    reloaded = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    auto = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter").eval()
    merged = reloaded.merge_and_unload()
    assert type(merged) is CostEffForSequenceClassification
    with torch.no_grad():
        for candidate in (reloaded, auto, merged):
            torch.testing.assert_close(candidate(**batch).logits, expected, atol=1e-5, rtol=0)


def test_cli_convert_and_evaluate(tmp_path, minilm_tokenizer, glue_dir, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no Hub lookups (evaluate's metric script): no network timeouts
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    from hf_costeff.cli import main
    from hf_costeff.serving import load_costeff

    # A tiny BERT with MiniLM's tokenizer: the conversion and the GLUE sweep run for real, in seconds.
    save_tiny_bert(tmp_path / "bert", minilm_tokenizer, num_hidden_layers=6)
    out = tmp_path / "costeff"
    assert main(["--quiet", "convert", str(tmp_path / "bert"), str(out), "--exit_layers", "2,4,6"]) == 0
    converted = json.loads(capsys.readouterr().out)
    assert converted["num_exits"] == 3
    model = load_costeff(out)
    assert model.config.exit_layers == [2, 4, 6] and (out / "tokenizer.json").exists()

    report_path = tmp_path / "report.json"
    assert (
        main(
            [
                "--quiet",
                "evaluate",
                str(out),
                "--glue_dir",
                str(glue_dir),
                "--task",
                "sst2",
                "--criterion",
                "confidence",
                "--thresholds",
                "1.0,0.5",
                "--max_examples",
                "24",
                "--batch_size",
                "8",
                "--max_length",
                "64",
                "--output",
                str(report_path),
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["num_examples"] == 24 and [row["exit_layer"] for row in report["per_exit"]] == [2, 4, 6]
    none, all_exit = report["sweep"]
    # Confidence 1.0: nobody exits early (the last exit decides); 0.5: with 2 labels everybody leaves at layer 2.
    assert none["flops_speedup"] == pytest.approx(1.0) and none["avg_exit_layer"] == 6.0
    assert none["metrics"]["accuracy"] == pytest.approx(report["per_exit"][-1]["accuracy"])
    assert none["avg_flops"] == pytest.approx(report["full"]["avg_flops"])
    assert all_exit["avg_exit_layer"] == 2.0 and all_exit["flops_speedup"] > 2
    assert all_exit["metrics"]["accuracy"] == pytest.approx(report["per_exit"][0]["accuracy"])
    # Each exit alone costs what the sweep's "everyone leaves there" rows cost.
    assert report["per_exit"][0]["avg_flops"] == pytest.approx(all_exit["avg_flops"])
    assert report["per_exit"][-1]["avg_flops"] == pytest.approx(report["full"]["avg_flops"])
    assert report["per_exit"][0]["avg_flops"] < report["per_exit"][1]["avg_flops"] < report["per_exit"][2]["avg_flops"]

    assert main(["--quiet", "evaluate", str(out), "--glue_dir", str(glue_dir), "--thresholds", "5"]) == 2
    assert "out of range" in capsys.readouterr().err

    # slenderize: exit-aware importance on real SST-2 rows, pruned to half the encoder, embedding factorized.
    slim = tmp_path / "slim"
    args = ["--quiet", "slenderize", str(out), str(slim), "--glue_dir", str(glue_dir), "--task", "sst2"]
    args += ["--encoder_keep_fraction", "0.5", "--embedding_rank", "8", "--max_batches", "2", "--batch_size", "4"]
    assert main(args) == 0
    pruned = json.loads(capsys.readouterr().out)
    slim_model = load_costeff(slim)
    assert slim_model.config.layer_num_heads == pruned["layer_num_heads"] != [4] * 6
    assert slim_model.config.layer_intermediate_sizes == pruned["layer_intermediate_sizes"]
    assert slim_model.config.embedding_rank == 8
    full_encoder = count_parameters(model.config)["encoder"]
    assert pruned["parameters"]["encoder"] <= 0.5 * full_encoder
    assert pruned["parameters"] == count_parameters(slim_model.config)
    batch = minilm_tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    assert slim_model(**batch).all_exit_logits.shape == (2, 3, 2)
