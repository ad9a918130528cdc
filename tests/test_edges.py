"""The edges (issue #14 items 10-11): the pipeline's input forms and the CLI's argument errors (one line, exit 2,
checked before any model or data work starts)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from hf_costeff import CostEffForSequenceClassification
from hf_costeff.serving import save_pretrained_atomic


@pytest.fixture(scope="module")
def model(minilm_tokenizer):
    torch.manual_seed(0)
    return CostEffForSequenceClassification(tiny_config(vocab_size=minilm_tokenizer.vocab_size, num_labels=2)).eval()


@pytest.fixture(scope="module")
def clf(model, minilm_tokenizer):
    from transformers import pipeline

    import hf_costeff.serving  # noqa: F401  (registers the task)

    return pipeline("costeff-text-classification", model=model, tokenizer=minilm_tokenizer)


# ---------------------------------------------------------------- pipeline (item 10)


def test_pipeline_empty_batch(clf):
    assert clf([]) == []
    assert clf.last_call_stats is None


@pytest.mark.parametrize("text", ["\x00\x01", "\u200b", " \t\n"])
def test_pipeline_text_without_tokens_refused(clf, text):
    with pytest.raises(ValueError, match="empty text"):
        clf(text)


def test_pipeline_sentence_pairs(clf, model, minilm_tokenizer):
    pairs = [["a gripping film", "it was good"], ["dull", "far too long and slow"]]
    as_lists = clf(pairs)
    as_dicts = clf([{"text": a, "text_pair": b} for a, b in pairs])
    assert [r["score"] for r in as_lists] == pytest.approx([r["score"] for r in as_dicts])
    with torch.no_grad():
        for (a, b), result in zip(pairs, as_lists, strict=True):
            expected = model(**minilm_tokenizer(a, b, return_tensors="pt")).logits.softmax(-1).max().item()
            assert result["score"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("bad", [5, None, ["ok", 3], [{"text": 3}]])
def test_pipeline_non_text_refused(clf, bad):
    with pytest.raises((ValueError, TypeError)):
        clf(bad)


# ---------------------------------------------------------------- CLI (item 11)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, minilm_tokenizer):
    return save_pretrained_atomic(model, tmp_path_factory.mktemp("cli") / "m", tokenizer=minilm_tokenizer)


def _bad_calls(saved, glue_dir, tmp_path):
    m, g = str(saved), str(glue_dir)
    missing = str(tmp_path / "no_such_dir")
    (tmp_path / "file").write_text("x")
    return [
        ["convert"],
        ["convert", missing, str(tmp_path / "out")],
        ["convert", m, str(tmp_path / "file")],
        ["convert", m, str(tmp_path / "o"), "--num_labels", "0"],
        ["convert", m, str(tmp_path / "o"), "--num_labels", "two"],
        ["convert", m, str(tmp_path / "o"), "--exit_layers", "1,x"],
        ["convert", m, str(tmp_path / "o"), "--exit_threshold", "nan"],
        ["convert", m, str(tmp_path / "o"), "--exit_pooler", "max"],
        ["slenderize", m, str(tmp_path / "s"), "--glue_dir", g, "--encoder_keep_fraction", "0"],
        ["slenderize", m, str(tmp_path / "s"), "--glue_dir", g, "--encoder_keep_fraction", "1.5"],
        [
            "slenderize",
            m,
            str(tmp_path / "s"),
            "--glue_dir",
            g,
            "--encoder_keep_fraction",
            "0.5",
            "--embedding_rank",
            "0",
        ],
        ["slenderize", m, str(tmp_path / "s"), "--glue_dir", g, "--encoder_keep_fraction", "0.5", "--task", "imdb"],
        ["slenderize", m, str(tmp_path / "s"), "--glue_dir", g, "--encoder_keep_fraction", "0.5", "--batch_size", "0"],
        ["slenderize", missing, str(tmp_path / "s"), "--encoder_keep_fraction", "0.5"],
        ["evaluate", m, "--glue_dir", g, "--max_examples", "0"],
        ["evaluate", m, "--glue_dir", g, "--output", str(tmp_path / "nonexistent" / "r.json")],
        ["evaluate", m, "--glue_dir", g, "--output", str(tmp_path)],
        ["evaluate", m, "--glue_dir", g, "--thresholds", ""],
        ["evaluate", m, "--glue_dir", g, "--thresholds", "a,b"],
        ["evaluate", m, "--glue_dir", g, "--thresholds", "5"],
        ["evaluate", m, "--glue_dir", g, "--criterion", "Entropy"],
        ["evaluate", m, "--glue_dir", g, "--criterion", "patience", "--patience", "0"],
        ["evaluate", m, "--glue_dir", g, "--task", "stsb"],  # a 2-label model on a regression task
        ["evaluate", m, "--glue_dir", missing],
        ["evaluate", missing, "--glue_dir", g],
        ["evaluate", m, "--glue_dir", g, "--batch_size", "-1"],
        ["push", m, "org/a/b"],
        ["push", m, "org/name", "--eval_json", missing],
        ["nope"],
    ]


def test_every_bad_cli_argument_is_one_line_and_exit_2(saved, glue_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    import hf_costeff.cli as cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_long_work(*args, **kwargs):
        raise AssertionError("argument errors must be found before data is read")

    monkeypatch.setattr(cli, "_dataloader", no_long_work)
    failures = []
    for call in _bad_calls(saved, glue_dir, tmp_path):
        try:
            status = cli.main(["--quiet", *call])
        except SystemExit as exit:  # argparse
            status = exit.code
        err = capsys.readouterr().err.strip()
        if status != 2 or len(err.splitlines()) != 1 or "Traceback" in err or "error:" not in err:
            failures.append((call, status, err[-300:]))
    assert failures == []


def test_cli_evaluate_refuses_task_label_mismatch_with_a_clear_message(saved, glue_dir, capsys):
    from hf_costeff.cli import main

    assert main(["--quiet", "evaluate", str(saved), "--glue_dir", str(glue_dir), "--task", "stsb"]) == 2
    assert "num_labels=2" in capsys.readouterr().err
