"""Two CPU processes (gloo), started as torchrun starts them: in-training pruning gives one model on every process,
evaluation covers the whole eval set once, and only the main process writes the example's output folder.

The processes run tests/ddp_worker.py; each reports what it ended with, and the tests compare the reports."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
from conftest import save_tiny_bert
from test_training import _args, _collate
from transformers import AutoModelForSequenceClassification

import hf_costeff  # noqa: F401  (registers the Auto classes)
from hf_costeff.training import MultiExitTrainer

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "ddp_worker.py"
WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, glue_dir, minilm_tokenizer):
    """Start the two processes once; returns (workdir, [rank 0 report, rank 1 report], [rank 0 output, ...])."""
    work = tmp_path_factory.mktemp("ddp")
    bert = save_tiny_bert(work / "tiny-bert", minilm_tokenizer, max_position_embeddings=64)
    port = str(_free_port())
    procs = []
    for rank in range(WORLD_SIZE):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": str(WORLD_SIZE),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(WORLD_SIZE),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(work), bert, str(glue_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=900)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{output[-6000:]}"
    reports = [json.loads((work / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    return work, reports, outputs


def _timing(key: str) -> bool:
    return any(word in key for word in ("runtime", "per_second", "seconds"))


def test_pruning_events_give_one_model_on_every_process(ddp_run):
    _, (r0, r1), _ = ddp_run
    a0, a1 = r0["api"], r1["api"]
    assert r0["world_size"] == r1["world_size"] == WORLD_SIZE
    # Two events, each exactly once, at its optimizer step (gradient accumulation 2: 4 micro-batches per event).
    assert [e["step"] for e in a0["history"]] == [2, 4]
    assert a0["event_logs"] == [2, 4]
    assert a0["widths_by_step"]["1"] == [4] * 4 and a0["widths_by_step"]["2"] == [3] * 4  # callbacks see the prune
    assert a0["config"] == {"layer_num_heads": [2] * 4, "layer_intermediate_sizes": [16] * 4}
    assert a0["embedding_rank"] == a1["embedding_rank"] == 8
    # Same kept units, same widths, same SVD, and gradients averaged after every event: bit-identical weights.
    assert a0["history"] == a1["history"]
    assert a0["config"] == a1["config"]
    assert a0["digest"] == a1["digest"]
    assert a0["projections_digest"] == a1["projections_digest"]
    assert a0["optimizer_covers_model"] and a1["optimizer_covers_model"]


def test_in_training_pruning_under_fsdp_is_refused(ddp_run):
    _, reports, _ = ddp_run
    for report in reports:
        assert "does not run under FSDP" in report["fsdp"] and "docs/distributed.md" in report["fsdp"]


def test_resume_under_two_processes_from_a_pruned_checkpoint(ddp_run):
    _, (r0, r1), _ = ddp_run
    s0, s1 = r0["api"]["resumed"], r1["api"]["resumed"]
    assert s0["global_step"] == s1["global_step"] == 8
    assert s0["history"] == s1["history"] == []  # both events were in the checkpoint already
    assert s0["config"] == s1["config"] == [2] * 4
    assert s0["digest"] == s1["digest"]
    assert math.isfinite(s0["train_loss"])


def test_two_process_evaluation_equals_one_process_evaluation(ddp_run, tmp_path):
    work, (r0, r1), _ = ddp_run
    ev0, ev1 = r0["api"]["eval"], r1["api"]["eval"]
    eval_set = ddp_worker.eval_set()
    # Every example once, in order, on both processes (the 2-process loader pads its last batch with repeats).
    assert r0["api"]["eval_examples"] == r1["api"]["eval_examples"] == len(eval_set)
    assert r0["api"]["eval_labels"] == r1["api"]["eval_labels"] == list(eval_set["labels"])
    assert {k: v for k, v in ev0.items() if not _timing(k)} == {k: v for k, v in ev1.items() if not _timing(k)}

    model = AutoModelForSequenceClassification.from_pretrained(work / "final")
    single = MultiExitTrainer(
        model=model,
        args=_args(tmp_path),
        data_collator=_collate,
        eval_dataset=eval_set,
        eval_exit_thresholds=ddp_worker.EVAL_THRESHOLDS,
    ).evaluate()
    keys = {k for k in single if not _timing(k) and k != "epoch"}
    assert keys == {k for k in ev0 if not _timing(k) and k != "epoch"}
    assert any(k.endswith("_accuracy") for k in keys)
    for key in sorted(keys):
        if key.endswith("_accuracy") or "exit_fraction" in key:
            assert ev0[key] == single[key], key  # counts over the same examples: exact
        else:
            assert ev0[key] == pytest.approx(single[key], rel=1e-5), key  # losses, FLOPs: float noise of batching


def test_example_script_one_writer_one_answer(ddp_run):
    work, (r0, r1), (out0, out1) = ddp_run
    e0, e1 = r0["example"], r1["example"]
    # The teacher stage, the student's metrics and the calibrated threshold: one answer on every process.
    same0 = {k: v for k, v in e0["results"].items() if not _timing(k)}
    same1 = {k: v for k, v in e1["results"].items() if not _timing(k)}
    assert same0 == same1
    assert "teacher_eval_accuracy" in same0 and "deployed_exit_threshold" in same0
    assert [e["step"] for e in same0["pruning_events"]] == [1, 2]
    # Every stage of the recipe ran on both processes, with one dev answer per stage.
    assert [s["stage"] for s in same0["stages"]] == ["teacher", "ta", "prune", "recover_hidden", "recover_pred"]
    # Exactly one writer of the output folder: the main process wrote the TA, final/, the card and all_results.json.
    assert e1["written"] == []
    assert {"ta/config.json", "final/config.json", "final/README.md", "all_results.json"} <= set(e0["written"])
    assert out0.count("Per-exit dev accuracy") == 1 and "Per-exit dev" not in out1
    saved = json.loads((work / "example" / "all_results.json").read_text())
    assert saved["deployed_exit_threshold"] == same0["deployed_exit_threshold"]
    final = AutoModelForSequenceClassification.from_pretrained(work / "example" / "final")
    assert final.config.layer_num_heads == same0["layer_num_heads"] == [2, 2]
    assert final.config.exit_threshold == same0["deployed_exit_threshold"]
