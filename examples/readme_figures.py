#!/usr/bin/env python
"""The main job's figures in README.md and docs/compress.md, written from its all_results.json (never by hand).

    bash examples/main_job.sh
    python examples/readme_figures.py runs/sst2-minilm/all_results.json --write

prints the README paragraph and the docs/compress.md section; with ``--write`` it copies the JSON to
docs/results/main_job_sst2.json (the run the docs quote) and replaces the text between the
``<!-- main-job:begin -->`` / ``<!-- main-job:end -->`` markers of README.md and docs/compress.md. The test suite
checks that both files hold what this script renders from docs/results/main_job_sst2.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from hf_costeff.configuration_costeff import ExitPolicy

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "main_job_sst2.json"
BEGIN, END = "<!-- main-job:begin -->", "<!-- main-job:end -->"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _policy(r: dict) -> str:
    policy = ExitPolicy(r["deployed_exit_criterion"], r["deployed_exit_threshold"], r["deployed_exit_patience"])
    return str(policy) if policy.criterion != "none" else "every layer (the calibrated policy failed its dev check)"


def readme_paragraph(r: dict) -> str:
    """The README's "Set-up" paragraph on the main job."""
    params_ratio = r["teacher_params"] / r["student_params"]["total"]
    ta = f"teaching assistant {_pct(r['ta_full_accuracy'])} through all layers; " if "ta_full_accuracy" in r else ""
    return (
        f"One run ({r['date']}, {r['machine']}; {r['wall_seconds'] / 60:.1f} minutes wall time, the machine shared "
        f"with other jobs): teacher {_pct(r['teacher_eval_accuracy'])} dev accuracy; {ta}student {params_ratio:.1f}× fewer "
        f"parameters, {_pct(r['student_full_accuracy'])} through all layers and {_pct(r['deployed_accuracy'])} with "
        f"its saved exit policy ({_policy(r)}, dev drop {100 * r['deployed_metric_drop']:.2f} points of the allowed "
        f"{100 * r['max_metric_drop']:g}), where it spends {r['teacher_avg_flops'] / r['deployed_avg_flops']:.1f}× "
        f"fewer FLOPs than the teacher and runs {r['deployed_measured_speedup']:.1f}× faster (measured, batch "
        f"{r['latency_batch_size']}). These figures are written by `examples/readme_figures.py` from the run's "
        "`all_results.json` ([docs/results/main_job_sst2.json](docs/results/main_job_sst2.json)); "
        "[docs/compress.md](docs/compress.md#what-the-main-job-measured) has the tables."
    )


def compress_section(r: dict) -> str:
    """docs/compress.md's tables of the run: teacher vs student, then every evaluated threshold."""
    metric = "accuracy"
    thresholds = sorted(
        float(m.group(1)) for k in r if (m := re.fullmatch(rf"eval_entropy_([0-9.]+)_{metric}", k)) is not None
    )
    exits = sorted(int(m.group(1)) for k in r if (m := re.fullmatch(rf"eval_exit(\d+)_{metric}", k)) is not None)
    t_flops = r["teacher_avg_flops"]
    stages = r.get("stages", [])
    ta_seconds = sum(s["train_seconds"] for s in stages if s["stage"] == "ta")
    lines = [
        f"Run of {r['date']} on {r['machine']}: {r['wall_seconds']:.0f} s wall time (teacher "
        f"{r.get('teacher_train_seconds', float('nan')):.0f} s, "
        + (f"TA {ta_seconds:.0f} s, " if "ta_full_accuracy" in r else "")
        + f"student {r['student_train_seconds']:.0f} s of training). "
        "Source: [results/main_job_sst2.json](results/main_job_sst2.json).",
        "",
        "| | dev accuracy | parameters | encoder parameters | MFLOPs / example | FLOPs ÷ teacher | measured speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| teacher | {_pct(r['teacher_eval_accuracy'])} | {r['teacher_params'] / 1e6:.2f}M | "
        f"{r['teacher_encoder_params'] / 1e6:.2f}M | {t_flops / 1e6:.1f} | 1.0× | 1.00× |",
    ]
    if "ta_full_accuracy" in r:
        lines.append(
            f"| teaching assistant (TA), every layer | {_pct(r['ta_full_accuracy'])} | {r['ta_params'] / 1e6:.2f}M | "
            f"{r['ta_encoder_params'] / 1e6:.2f}M | {r['ta_avg_flops'] / 1e6:.1f} | {t_flops / r['ta_avg_flops']:.1f}× | "
            f"{r['ta_measured_speedup']:.2f}× |"
        )
    lines += [
        f"| student, every layer | {_pct(r['student_full_accuracy'])} | {r['student_params']['total'] / 1e6:.2f}M | "
        f"{r['student_params']['encoder'] / 1e6:.2f}M | {r['student_full_avg_flops'] / 1e6:.1f} | "
        f"{t_flops / r['student_full_avg_flops']:.1f}× | {r['student_full_measured_speedup']:.2f}× |",
        f"| student, saved policy: {_policy(r)} | {_pct(r['deployed_accuracy'])} | "
        f"{r['student_params']['total'] / 1e6:.2f}M | {r['student_params']['encoder'] / 1e6:.2f}M | "
        f"{r['deployed_avg_flops'] / 1e6:.1f} | {t_flops / r['deployed_avg_flops']:.1f}× | "
        f"{r['deployed_measured_speedup']:.2f}× |",
        "",
        f"The saved policy was calibrated on {r['calibration_rows']} held-out training rows drawn with the dev set's "
        f"lengths, to lose at most {100 * r['max_metric_drop']:g} point minus a {100 * r['calibration_margin']:g}-point "
        f"margin; on dev it lost {100 * r['deployed_metric_drop']:.2f} points (mean exit layer "
        f"{r['deployed_avg_exit_layer']:.2f}).",
    ]
    lines += [f"Warning of the run: {w}" for w in r.get("deployed_policy_warnings", [])]
    if stages:
        lines += ["", "The stages, each with its dev accuracy through every layer:", ""]
        lines += [
            f"{number}. {s['description']}: "
            + (f"{_pct(s['dev_accuracy'])}, " if s.get("dev_accuracy") is not None else "")
            + f"{s['train_seconds']:.0f} s."
            for number, s in enumerate(stages, 1)
        ]
    lines += [
        "",
        "| entropy threshold | dev accuracy | mean exit layer | FLOPs ÷ teacher |",
        "|---:|---:|---:|---:|",
    ]
    for t in thresholds:
        p = f"eval_entropy_{t:g}_"
        lines.append(
            f"| {t:g} | {_pct(r[p + metric])} | {r[p + 'avg_exit_layer']:.2f} | {t_flops / r[p + 'avg_flops']:.1f}× |"
        )
    lines += [
        "",
        "Per-exit dev accuracy (every example through every layer): "
        + ", ".join(f"{100 * r[f'eval_exit{k}_{metric}']:.2f}" for k in exits)
        + f" for exits {exits[0]}–{exits[-1]}.",
    ]
    return "\n".join(lines)


def replace_region(text: str, body: str, name: str) -> str:
    """``text`` with the part between the BEGIN/END markers replaced by ``body``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"{name} must hold exactly one {BEGIN} ... {END} region")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def region(text: str) -> str:
    """The text between the markers (what :func:`replace_region` wrote)."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


TARGETS = {REPO / "README.md": readme_paragraph, REPO / "docs" / "compress.md": compress_section}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", help="all_results.json of a main-job run")
    p.add_argument(
        "--write",
        action="store_true",
        help="copy it to docs/results/main_job_sst2.json and rewrite the marked regions of README.md and docs/compress.md",
    )
    args = p.parse_args(argv)
    results = json.loads(Path(args.results).read_text(encoding="utf-8"))
    for path, render in TARGETS.items():
        body = render(results)
        if args.write:
            path.write_text(replace_region(path.read_text(encoding="utf-8"), body, path.name), encoding="utf-8")
            print(f"rewrote the main-job region of {path.relative_to(REPO)}")
        else:
            print(f"--- {path.relative_to(REPO)}\n{body}\n")
    if args.write and Path(args.results).resolve() != RESULTS.resolve():
        shutil.copyfile(args.results, RESULTS)
        print(f"copied {args.results} to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
