"""Task-vocabulary trimming measured: saved models before and after ``trim_vocabulary`` on a task's training texts.

For each ``--model`` folder (a CostEff student or a BERT teacher, with its tokenizer): dev metric before and after
trimming (every layer; for CostEff also the saved exit policy), total parameters, kept vocabulary, the share of dev
tokens that are ``[UNK]``, the share of dev texts split into other pieces, and the largest logit change on the dev
texts split as before (which the trimming guarantees to be unchanged). Writes a JSON report and prints a Markdown table.

Usage: python benchmarks/trim_vocabulary.py --model runs/sst2-minilm/final --model runs/sst2-minilm/teacher \
    --glue_dir ../shared/data/glue --task sst2 --max_seq_length 64 --output docs/results/trim_vocabulary_sst2.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding

from hf_costeff.data import compute_glue_metrics, get_task, glue_texts, load_glue, tokenize_glue
from hf_costeff.evaluation import collect_exit_logits, sweep_thresholds
from hf_costeff.serving.hub import load_costeff, load_folder_tokenizer
from hf_costeff.slenderize import trim_vocabulary
from hf_costeff.slenderize.vocabulary import compare_tokenizations


def _loader(tokenizer, validation, task: str, max_length: int, batch_size: int) -> DataLoader:
    encoded = tokenize_glue(datasets.DatasetDict({"validation": validation}), tokenizer, task, max_length=max_length)[
        "validation"
    ]
    return DataLoader(encoded, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))


@torch.no_grad()
def _evaluate(model, loader, task: str) -> tuple[dict[str, float], torch.Tensor]:
    """Main metric per policy and the every-layer logits ``(N, C)``."""
    model.eval()
    if getattr(model.config, "model_type", None) == "costeff":
        preds = collect_exit_logits(model, loader)
        scores = {"every layer": sweep_thresholds(preds, model.config, task, "none", [None])[0]["metric"]}
        criterion, threshold = model.config.exit_criterion, model.config.exit_threshold
        if criterion != "none":
            row = sweep_thresholds(preds, model.config, task, criterion, [threshold])[0]
            scores[f"saved {criterion} < {threshold:.4g}"] = row["metric"]
        return scores, preds.logits[:, -1]
    logits, labels = [], []
    for batch in tqdm(loader, desc="evaluate", leave=False):
        labels.append(batch.pop("labels"))
        logits.append(model(**batch).logits)
    logits = torch.cat(logits)
    predictions = logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1)
    metric = compute_glue_metrics(task, predictions.numpy(), torch.cat(labels).numpy())[get_task(task).main_metric]
    return {"every layer": metric}, logits


def measure(folder: str, data, args) -> dict:
    started = time.time()
    is_costeff = getattr(AutoConfig.from_pretrained(folder), "model_type", None) == "costeff"
    model = load_costeff(folder) if is_costeff else AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = load_folder_tokenizer(folder)
    dev_texts = glue_texts(data["validation"], args.task)
    before_scores, before_logits = _evaluate(
        model, _loader(tokenizer, data["validation"], args.task, args.max_seq_length, args.batch_size), args.task
    )
    params_before, vocab_before = sum(p.numel() for p in model.parameters()), model.config.vocab_size
    model, trimmed = trim_vocabulary(
        model, tokenizer, glue_texts(data["train"], args.task), corpus=f"glue/{args.task} train"
    )
    after_scores, after_logits = _evaluate(
        model, _loader(trimmed, data["validation"], args.task, args.max_seq_length, args.batch_size), args.task
    )
    # Dev examples whose every text splits as before must give the same logits (the trimming's guarantee).
    same = [
        all(
            tokenizer.tokenize(data["validation"][i][key]) == trimmed.tokenize(data["validation"][i][key])
            for key in get_task(args.task).text_keys
        )
        for i in range(len(data["validation"]))
    ]
    same = torch.tensor(same)
    drift = (after_logits[same] - before_logits[same]).abs().max().item() if same.any() else None
    return {
        "model": folder,
        "kind": "costeff" if is_costeff else type(model).__name__,
        "vocab_before": vocab_before,
        "vocab_after": model.config.vocab_size,
        "params_before": params_before,
        "params_after": sum(p.numel() for p in model.parameters()),
        "dev_before": before_scores,
        "dev_after": after_scores,
        "dev_tokenization": compare_tokenizations(tokenizer, trimmed, dev_texts),
        "dev_examples_split_as_before": int(same.sum()),
        "max_logit_change_on_those": drift,
        "wall_seconds": time.time() - started,
    }


def markdown(rows: list[dict], task: str) -> str:
    metric = get_task(task).main_metric
    lines = [
        f"| model | vocabulary | parameters (M) | dev {metric}, policy: before → after | dev tokens [UNK] "
        "before → after | dev texts split differently | max logit change (texts split as before) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        scores = "; ".join(
            f"{name}: {100 * r['dev_before'][name]:.2f} → {100 * r['dev_after'][name]:.2f}" for name in r["dev_before"]
        )
        tok = r["dev_tokenization"]
        drift = "n/a" if r["max_logit_change_on_those"] is None else f"{r['max_logit_change_on_those']:.1e}"
        lines.append(
            f"| {Path(r['model']).name} ({r['kind']}) | {r['vocab_before']:,} → {r['vocab_after']:,} | "
            f"{r['params_before'] / 1e6:.2f} → {r['params_after'] / 1e6:.2f} "
            f"({r['params_before'] / r['params_after']:.2f}× fewer) | {scores} | "
            f"{100 * tok['unknown_rate_before']:.2f}% → {100 * tok['unknown_rate_after']:.2f}% | "
            f"{100 * tok['texts_resplit']:.1f}% | {drift} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="saved model folder (repeatable)")
    parser.add_argument("--glue_dir", help="folder with <task>/{train,dev}.tsv (default: GLUE from the Hub)")
    parser.add_argument("--task", default="sst2", help="GLUE task: its training texts are kept, its dev set scored")
    parser.add_argument("--max_seq_length", type=int, default=128, help="dev truncation (use the training one)")
    parser.add_argument("--batch_size", type=int, default=64, help="dev batch size")
    parser.add_argument("--output", help="write the JSON report here")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = load_glue(args.task, args.glue_dir)
    rows = [measure(folder, data, args) for folder in args.model]
    report = {
        "command": "python benchmarks/trim_vocabulary.py " + " ".join(f"--model {m}" for m in args.model),
        "args": vars(args),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads (shared 2-core CPU), torch {torch.__version__}",
        "rows": rows,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(rows, args.task))


if __name__ == "__main__":
    main()
