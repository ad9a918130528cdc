"""One process of the 2-process (gloo) run of tests/test_distributed.py. Not a test module: the test starts it twice
with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set, as ``torchrun`` would.

    python tests/ddp_worker.py <workdir> <tiny-bert-folder> <glue_dir>

Each process writes ``<workdir>/rank<R>.json``: what it ended with (pruned widths, weight digests, metrics, files
it opened for writing in the example's output folder), for the test to compare across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from test_training import _args, _collate, _dataset, _full_model, _prune_callback, _tiny_bert
from transformers import TrainerCallback

from hf_costeff.training import MultiExitTrainer

EVAL_EXAMPLES = 21  # odd: the 2-process eval loader pads its last batch, which gather_for_metrics must drop
EVAL_THRESHOLDS = [0.5, 1.05]


def eval_set():
    return _dataset(EVAL_EXAMPLES, seed=5)


def digest(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of ``module``'s state dict, by name (bit-exact)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class StepLog(TrainerCallback):
    """Records, per optimizer step, the model's widths as every callback after the trainer's own hook sees them."""

    def __init__(self):
        self.widths: dict[int, list[int]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.widths[state.global_step] = list(model.config.layer_num_heads)


def api_run(work: Path) -> dict:
    """MultiExitTrainer + SlenderizeCallback, 2 events, gradient accumulation 2, a checkpoint after both events,
    then a resumed run from it, as a new job would."""
    out = work / "api"
    args = _args(
        out,
        max_steps=8,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        per_device_eval_batch_size=4,
        save_strategy="steps",
        save_steps=6,
        ddp_backend="gloo",
    )
    teacher = _tiny_bert()  # hidden 48 vs 32: trainer-owned projections, averaged across processes too
    callback, steps = _prune_callback(), StepLog()
    trainer = MultiExitTrainer(
        model=_full_model(),
        args=args,
        data_collator=_collate,
        train_dataset=_dataset(64),
        eval_dataset=eval_set(),
        teacher=teacher,
        alpha=0.5,
        eval_exit_thresholds=EVAL_THRESHOLDS,
        callbacks=[callback, steps],
    )
    trainer.train()
    metrics = trainer.evaluate()
    preds = trainer.collect_exit_logits()
    trainer.save_model(str(work / "final"))
    result = {
        "history": callback.history,
        "widths_by_step": steps.widths,
        "event_logs": [h["step"] for h in trainer.state.log_history if "prune_event" in h],
        "config": {k: getattr(trainer.model.config, k) for k in ("layer_num_heads", "layer_intermediate_sizes")},
        "embedding_rank": trainer.model.config.embedding_rank,
        "digest": digest(trainer.model),
        "projections_digest": digest(trainer.hidden_projections),
        "optimizer_covers_model": {id(p) for p in trainer.model.parameters()}
        <= {id(p) for g in trainer.optimizer.param_groups for p in g["params"]},
        "eval": metrics,
        "eval_examples": len(preds.labels),
        "eval_labels": preds.labels.tolist(),
    }

    resumed_callback = _prune_callback()
    resumed = MultiExitTrainer(
        model=_full_model(),  # built at full size, as a fresh job builds it
        args=args,
        data_collator=_collate,
        train_dataset=_dataset(64),
        teacher=teacher,
        alpha=0.5,
        callbacks=[resumed_callback],
    )
    resumed.train(resume_from_checkpoint=str(Path(args.output_dir) / "checkpoint-6"))
    result["resumed"] = {
        "global_step": resumed.state.global_step,
        "history": resumed_callback.history,
        "config": resumed.model.config.layer_num_heads,
        "digest": digest(resumed.model),
        "train_loss": resumed.state.log_history[-1]["train_loss"],
    }
    return result


def fsdp_refusal(work: Path) -> str:
    """The message MultiExitTrainer gives when asked to prune in training under FSDP (it refuses)."""
    try:
        MultiExitTrainer(
            model=_full_model(),
            args=_args(work / "fsdp", fsdp=True, ddp_backend="gloo"),
            data_collator=_collate,
            train_dataset=_dataset(8),
            callbacks=[_prune_callback()],
        )
    except ValueError as exc:
        return str(exc)
    return "accepted"


def example_run(work: Path, bert: str, glue_dir: str) -> dict:
    """examples/run_costeff_glue.py, recording every file this process opens for writing in its output folder."""
    import importlib.util  # noqa: PLC0415

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("run_costeff_glue", repo / "examples" / "run_costeff_glue.py")
    example = importlib.util.module_from_spec(spec)
    sys.modules["run_costeff_glue"] = example
    spec.loader.exec_module(example)

    out = (work / "example").resolve()
    written: set[str] = set()

    def audit(event: str, event_args) -> None:
        if event == "open" and event_args[0] is not None and isinstance(event_args[0], (str, os.PathLike)):
            mode, flags = event_args[1], event_args[2]
            writes = (
                any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
            )
            path = Path(os.fsdecode(event_args[0])).resolve()
            if writes and out in path.parents:
                written.add(str(path.relative_to(out)))
        elif event in ("os.rename", "os.replace", "os.mkdir") and isinstance(event_args[0], (str, os.PathLike)):
            # os.rename/os.replace audit (src, dst, src_dir_fd, dst_dir_fd): the destination is the second argument.
            path = Path(os.fsdecode(event_args[1] if event != "os.mkdir" else event_args[0])).resolve()
            if out in path.parents or path == out:
                written.add(str(path.relative_to(out)) if path != out else ".")

    sys.addaudithook(audit)
    results = example.main(
        [
            *("--model_name_or_path", bert, "--glue_dir", glue_dir, "--task_name", "sst2"),
            *("--output_dir", str(out), "--max_train_samples", "64", "--max_eval_samples", str(EVAL_EXAMPLES)),
            *("--max_seq_length", "32", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4"),
            *("--teacher_epochs", "1", "--num_train_epochs", "1", "--exit_pooling", "mean"),
            *("--target_heads", "2", "--target_ffn", "32", "--embedding_rank", "16", "--num_prune_events", "2"),
            *("--calibration_batches", "1", "--eval_thresholds", "0.3,0.6", "--calibration_samples", "24"),
            *("--save_strategy", "no", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true"),
            *("--ddp_backend", "gloo", "--logging_steps", "1"),
            *("--ta_epochs", "1", "--recover_hidden_epochs", "1", "--recover_epochs", "1"),
        ]
    )
    sys.stdout.flush()
    untimed = {k: v for k, v in results.items() if not k.endswith("seconds")}
    untimed["stages"] = [{k: v for k, v in stage.items() if k != "train_seconds"} for stage in results["stages"]]
    return {"results": untimed, "written": sorted(written)}


def main() -> None:
    torch.set_num_threads(1)  # two processes on a shared machine
    work, bert, glue_dir = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    rank = int(os.environ["RANK"])
    result = {"rank": rank, "world_size": int(os.environ["WORLD_SIZE"]), "api": api_run(work)}
    result["fsdp"] = fsdp_refusal(work)
    result["example"] = example_run(work, bert, glue_dir)
    (work / f"rank{rank}.json").write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
