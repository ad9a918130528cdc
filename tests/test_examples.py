"""End-to-end runs of the example scripts on the offline MiniLM and real SST-2 data."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_costeff  # noqa: F401  (registers the Auto classes)
from hf_costeff.data import load_glue

REPO = Path(__file__).resolve().parents[1]


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve the module's string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_run_costeff_glue_tiny_run_saves_a_consistent_model(tmp_path, glue_dir, minilm_path):
    example = _load_example("run_costeff_glue")
    out = tmp_path / "run"
    results = example.main(
        [
            *("--model_name_or_path", minilm_path, "--glue_dir", str(glue_dir), "--task_name", "sst2"),
            *("--output_dir", str(out), "--max_train_samples", "64", "--max_eval_samples", "64"),
            *("--max_seq_length", "32", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32"),
            *("--teacher_epochs", "1", "--num_train_epochs", "1", "--exit_pooling", "mean"),
            *("--target_heads", "6", "--target_ffn", "768", "--embedding_rank", "64", "--num_prune_events", "1"),
            *("--calibration_batches", "1", "--eval_thresholds", "0.3,0.6", "--calibration_samples", "48"),
            *("--save_strategy", "no", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true"),
            "--trim_vocabulary",
        ]
    )
    final = out / "final"
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    config = model.config
    assert config.layer_num_heads == [6] * 6 and config.layer_intermediate_sizes == [768] * 6
    assert config.embedding_rank == 64 and config.exit_pooling == "mean"
    assert config.id2label == {0: "negative", 1: "positive"}
    assert config.exit_criterion == "entropy" and config.exit_threshold == results["deployed_exit_threshold"]
    assert json.loads((out / "all_results.json").read_text())["student_params"] == results["student_params"]
    assert results["full_student_params"]["encoder"] > results["student_params"]["encoder"]  # before vs after pruning
    assert results["teacher_avg_flops"] > results["deployed_avg_flops"]
    assert "model-index" in (final / "README.md").read_text()
    # --trim_vocabulary: the saved model, its tokenizer files, parameter count and card hold the trimmed vocabulary.
    trimmed = results["vocabulary_trimming"]
    assert config.vocab_size == trimmed["vocab_size"] < trimmed["original_vocab_size"] == 30522
    assert len((final / "vocab.txt").read_text(encoding="utf-8").splitlines()) == config.vocab_size
    assert results["student_params"] == hf_costeff.count_parameters(config)
    assert f"{config.vocab_size:,} tokens on glue/sst2 train" in (final / "README.md").read_text()

    # The saved model, reloaded and run with its own exit policy, reproduces the reported dev accuracy and exits.
    tokenizer = AutoTokenizer.from_pretrained(final)
    dev = load_glue("sst2", glue_dir)["validation"].select(range(64))
    batch = tokenizer(list(dev["sentence"]), truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model(**batch)
    accuracy = float(np.mean(output.logits.argmax(-1).numpy() == np.array(dev["label"])))
    assert accuracy == pytest.approx(results["deployed_accuracy"], abs=1e-9)
    assert output.exit_layer.float().mean().item() == pytest.approx(results["deployed_avg_exit_layer"], abs=1e-6)
    # Without the saved policy every layer runs, and the last exit gives the reported last-exit accuracy.
    with torch.no_grad():
        full = model(**batch, exit_criterion="none").logits.argmax(-1).numpy()
    assert float(np.mean(full == np.array(dev["label"]))) == pytest.approx(results["eval_exit6_accuracy"], abs=1e-9)


def test_tokenizer_is_never_built_from_a_config_alone(tmp_path, minilm_path):
    from transformers import BertConfig

    example = _load_example("run_costeff_glue")
    bare = tmp_path / "teacher"  # a saved model without tokenizer files, as save_pretrained(model) alone leaves it
    BertConfig(vocab_size=30522).save_pretrained(bare)

    class Args:
        teacher_name_or_path, model_name_or_path = str(bare), minilm_path

    assert len(example.load_tokenizer(Args)) == 30522  # skipped the bare folder, took the base model's
    Args.model_name_or_path = str(bare)
    with pytest.raises(ValueError, match="No tokenizer files"):
        example.load_tokenizer(Args)


@pytest.mark.slow
def test_main_job_compresses_and_keeps_most_accuracy(tmp_path):
    """The README's main job, as a user runs it (about 5 minutes on 2 cores)."""
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "main"), "GLUE_DIR": str(REPO.parent / "shared/data/glue")}
    subprocess.run(["bash", str(REPO / "examples" / "main_job.sh"), "--disable_tqdm", "true"], check=True, env=env)
    results = json.loads((tmp_path / "main" / "all_results.json").read_text())
    teacher = results["teacher_eval_accuracy"]
    assert teacher > 0.75  # a real fine-tune of the real model, not chance (50.9% on SST-2 dev)
    assert results["student_encoder_fraction_of_teacher"] < 0.35
    assert results["eval_exit6_accuracy"] > teacher - 0.08
    assert results["eval_exit1_accuracy"] > 0.6  # the first exit learned something
    assert results["eval_entropy_0.65_avg_exit_layer"] < 6.0  # and examples do leave early


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "slow or not slow"]))
