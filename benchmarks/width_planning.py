"""Does the global width plan beat uniform widths at equal size? Dev accuracy of each plan, before and after recovery.

A fine-tuned classifier (``--teacher``, BERT or CostEff; e.g. ``runs/sst2-minilm/teacher`` of the main job) is
converted to CostEff, its heads' and neurons' exit-aware importance is estimated once on training batches, and for
each ``--keep_fractions`` value the encoder is pruned to that fraction of its parameters with:

* ``uniform``: the same number of heads (``round(keep * heads)``) and the FFN width that fills the same parameter
  count in every layer (equal size up to one neuron per layer);
* ``plan_widths(..., normalize=...)`` for ``layer`` (per-layer normalised, the default), ``kind`` and ``none`` (raw
  importance per parameter, the former behaviour).

Every variant keeps the most important units inside each layer (``prune_model``), so only the widths differ. Each is
scored on the whole dev set at its last exit right after pruning, and again after ``--recovery_steps`` of
distillation from the unpruned model (``MultiExitTrainer``, same seed and data for all).

Usage: python benchmarks/width_planning.py --teacher runs/sst2-minilm/teacher --output results.json
(``--output`` is required: the script never writes into the repository on its own).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainingArguments

from hf_costeff import CostEffForSequenceClassification, count_parameters
from hf_costeff.data import compute_glue_metrics, load_glue, tokenize_glue
from hf_costeff.slenderize import PruningConfig, compute_importance, plan_widths, prune_model
from hf_costeff.slenderize.plan import head_cost, neuron_cost
from hf_costeff.training import MultiExitTrainer

REPO = Path(__file__).resolve().parents[1]
NORMALIZATIONS = ("layer", "kind", "none")


def uniform_widths(config, keep: float, budget: int) -> tuple[list[int], list[int]]:
    """``round(keep * heads)`` heads per layer and the FFN width that brings the encoder to ``budget`` parameters."""
    layers = config.num_hidden_layers
    heads = max(1, round(keep * config.num_attention_heads))
    full = count_parameters(config)["encoder"]
    per_layer_removed = (full - budget) / layers
    ffn_removed = (per_layer_removed - (config.num_attention_heads - heads) * head_cost(config)) / neuron_cost(config)
    ffn = min(config.intermediate_size, max(0, config.intermediate_size - round(ffn_removed)))
    return [heads] * layers, [ffn] * layers


@torch.inference_mode()
def last_exit_accuracy(model, loader) -> float:
    model.eval()
    predictions, labels = [], []
    for batch in loader:
        labels.append(batch.pop("labels"))
        predictions.append(model(**batch, exit_criterion="none").logits.argmax(-1))
    return compute_glue_metrics("sst2", torch.cat(predictions).numpy(), torch.cat(labels).numpy())["accuracy"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="fine-tuned SST-2 classifier folder (BERT or CostEff)")
    p.add_argument("--output", required=True, help="JSON file to write (refuses to overwrite without --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    p.add_argument("--keep_fractions", default="0.5,0.3", help="comma-separated encoder keep fractions")
    p.add_argument("--exit_pooling", default="mean", choices=["cls", "mean"])
    p.add_argument("--importance_batches", type=int, default=16, help="training batches of 32 for the importance")
    p.add_argument(
        "--variants",
        default="uniform," + ",".join(f"plan_{n}" for n in NORMALIZATIONS),
        help="comma-separated subset of uniform, plan_layer, plan_kind, plan_none",
    )
    p.add_argument("--recovery_steps", type=int, default=60, help="distillation steps after pruning (0: none)")
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists: pass --overwrite to replace it")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()

    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    raw = load_glue("sst2", args.glue_dir)
    raw["train"] = raw["train"].shuffle(seed=args.seed).select(range(max(2000, 32 * args.importance_batches)))
    data = tokenize_glue(raw, tokenizer, "sst2", max_length=args.max_length)
    columns = ["input_ids", "attention_mask", "token_type_ids", "labels"]
    for split in data:
        data[split] = data[split].remove_columns([c for c in data[split].column_names if c not in columns])
    collator = DataCollatorWithPadding(tokenizer)
    dev = torch.utils.data.DataLoader(data["validation"], batch_size=64, collate_fn=collator)
    calib = torch.utils.data.DataLoader(data["train"], batch_size=32, collate_fn=collator)

    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher).eval()
    base = CostEffForSequenceClassification.from_bert(teacher, exit_pooling=args.exit_pooling)
    importance = compute_importance(base, calib, max_batches=args.importance_batches)
    full_params = count_parameters(base.config)["encoder"]
    rows = [{"variant": "unpruned", "keep_fraction": 1.0, "encoder_params": full_params}]
    rows[0]["accuracy_pruned"] = last_exit_accuracy(base, dev)
    print(f"unpruned: encoder {full_params:,} parameters, dev accuracy {rows[0]['accuracy_pruned']:.4f}", flush=True)

    for keep in [float(v) for v in args.keep_fractions.split(",")]:
        pruning = PruningConfig(encoder_keep_fraction=keep)
        plans = {f"plan_{n}": plan_widths(base.config, importance, pruning, normalize=n) for n in NORMALIZATIONS}
        budget = count_parameters(_pruned_config(base.config, *plans["plan_layer"]))["encoder"]
        plans = {"uniform": uniform_widths(base.config, keep, budget), **plans}
        plans = {name: widths for name, widths in plans.items() if name in args.variants.split(",")}
        for name, (heads, ffn) in plans.items():
            model = copy.deepcopy(base)
            prune_model(model, importance, heads, ffn)
            row = {
                "variant": name,
                "keep_fraction": keep,
                "encoder_params": count_parameters(model.config)["encoder"],
                "layer_num_heads": heads,
                "layer_intermediate_sizes": ffn,
                "accuracy_pruned": last_exit_accuracy(model, dev),
            }
            if args.recovery_steps:
                row["accuracy_recovered"] = recover(model, teacher, data["train"], collator, tokenizer, args, dev)
            rows.append(row)
            shown = {k: v for k, v in row.items() if k not in ("variant", "keep_fraction")}
            print(f"keep={keep:g} {name}: {shown}", flush=True)

    report = {
        "command": "python benchmarks/width_planning.py " + " ".join(argv if argv is not None else _argv()),
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads ({platform.processor() or 'cpu'})",
        "wall_seconds": round(time.time() - started, 1),
        "teacher": args.teacher,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_table(rows)
    print(f"Written to {out} ({report['wall_seconds']:.0f} s)")
    return report


def _argv() -> list[str]:
    import sys  # noqa: PLC0415

    return sys.argv[1:]


def _pruned_config(config, heads, ffn):
    pruned = config.__class__.from_dict(config.to_dict())
    pruned.layer_num_heads, pruned.layer_intermediate_sizes = list(heads), list(ffn)
    return pruned


def recover(model, teacher, train, collator, tokenizer, args, dev) -> float:
    """``--recovery_steps`` of distillation from the unpruned teacher, then the dev accuracy at the last exit."""
    targs = TrainingArguments(
        output_dir="/tmp/width_planning_unused",
        max_steps=args.recovery_steps,
        per_device_train_batch_size=32,
        learning_rate=1e-4,
        warmup_steps=0.1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = MultiExitTrainer(
        model=model,
        args=targs,
        train_dataset=train,
        data_collator=collator,
        processing_class=tokenizer,
        teacher=teacher,
    )
    trainer.train()
    return last_exit_accuracy(model, dev)


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'keep':>5} {'variant':<11} {'encoder params':>15} {'heads/layer':<24} {'FFN/layer':<34} {'pruned':>7} {'recovered':>9}"
    )
    for r in rows:
        heads = ",".join(map(str, r.get("layer_num_heads", []))) or "-"
        ffn = ",".join(map(str, r.get("layer_intermediate_sizes", []))) or "-"
        rec = f"{r['accuracy_recovered']:.4f}" if "accuracy_recovered" in r else "-"
        print(
            f"{r['keep_fraction']:>5g} {r['variant']:<11} {r['encoder_params']:>15,} {heads:<24} {ffn:<34} "
            f"{r['accuracy_pruned']:>7.4f} {rec:>9}"
        )


if __name__ == "__main__":
    main()
