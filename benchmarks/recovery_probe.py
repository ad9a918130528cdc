"""What the final recovery stage does to each exit: rerun it on a cached student with one setting changed.

The GLUE table's students are built in three stages (prune, hidden-state recovery, prediction + hidden recovery;
``benchmarks/glue_table.py``). This probe takes a student the table has already built, and reports every exit's dev
score after its hidden-state recovery (``hidden``), after the table's final stage (``recipe``), and after the final
stage retrained from the same hidden-recovered model with one change (``lr=``, ``beta=`` the prediction-KD weight,
``epochs=``, ``select=`` the checkpoint rule, ``last``, ``heldout`` or ``heldout_final``: see glue_table's
``--final_selection``; join several with ``+``). Every retrained variant starts from the same seed as the table's stage, so
``lr=<the table's --recover_lr>`` reproduces ``recipe``. A held-out ``select=`` variant also records the dev score at
each of its candidate checkpoints (recorded only: the choice is made on the held-out training rows), so the JSON
shows whether the held-out rows rank the checkpoints as dev does.

It exists because STS-B's students scored lower after the final stage than before it; the probe measures whether the
prediction term or the stage's length and learning rate is the cause. The scores are on the task's whole dev set,
the data the table reports on: the probe explains a result, its variants are not chosen on held-out data.

Usage: python benchmarks/recovery_probe.py --glue_dir ../shared/data/glue --task stsb --students quarter,eighth
           --variants hidden,recipe,beta=0,lr=5e-5 --output_dir DIR [--overwrite] [glue_table options...]
Any option this script does not know is glue_table's, and must match the run that built the cache (the stage keys
depend on it; ``--budgets`` must hold the students' budgets). Retrained variants are cached under
``<--cache_dir>/recovery_probe/`` so a rerun only evaluates. Writes DIR/recovery_probe_<task>.json and .png (an
existing file only with --overwrite) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glue_table  # noqa: E402  (the table's stages, cache and recipe)

from hf_costeff.data import get_task  # noqa: E402

CACHED = ("hidden", "recipe")


def _selection(value: str) -> str:
    if value not in glue_table.SELECTIONS:
        raise ValueError(f"choose from {glue_table.SELECTIONS}")
    return value


CHANGES = {"lr": float, "beta": float, "epochs": float, "select": _selection}


def parse_variant(text: str) -> dict:
    """``"hidden"``, ``"recipe"``, or ``key=value[+key=value...]`` with keys from ``CHANGES``."""
    if text in CACHED:
        return {}
    changes = {}
    for part in text.split("+"):
        key, sep, value = part.partition("=")
        if not sep or key not in CHANGES:
            raise ValueError(f"--variants: {part!r} is not one of {CACHED} nor key=value with a key in {list(CHANGES)}")
        try:
            changes[key] = CHANGES[key](value)
        except ValueError as error:
            what = error if key == "select" else "needs a number after '='"
            raise ValueError(f"--variants: {part!r} {what}") from None
        if key != "select" and (changes[key] < 0 or (key != "beta" and changes[key] == 0)):
            raise ValueError(f"--variants: {part!r} must be above 0 (beta: at least 0)")
    return changes


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, choices=glue_table.TASKS)
    p.add_argument("--students", required=True, help="comma-separated --budgets names of built students")
    p.add_argument("--variants", default="hidden,recipe,beta=0", help="hidden, recipe, key=value[+key=value] ...")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--overwrite", action="store_true")
    args, rest = p.parse_known_args(argv)
    args.students = [s for s in args.students.split(",") if s]
    args.variants = [v for v in args.variants.split(",") if v]
    if not args.students or not args.variants:
        p.error("--students and --variants need at least one entry each")
    try:
        args.changes = {v: parse_variant(v) for v in args.variants}
    except ValueError as error:
        p.error(str(error))
    table_args = glue_table.parse_args(
        [*rest, "--tasks", args.task, "--no_train", "--ablation_tasks", "", "--baseline_tasks", ""]
    )
    unknown = set(args.students) - {b.name for b in table_args.budgets}
    if unknown:
        p.error(f"--students: {sorted(unknown)} not among --budgets' names {[b.name for b in table_args.budgets]}")
    return args, table_args


def cached_run(table_args: argparse.Namespace, task: str) -> glue_table.TaskRun:
    """The table's run of ``task`` with its cached stages' keys found (``--no_train``: nothing is built)."""
    model_path = glue_table.resolve_model(table_args)
    run = glue_table.TaskRun(task, table_args, model_path, AutoTokenizer.from_pretrained(model_path))
    run.run()
    return run


def exit_scores(run: glue_table.TaskRun, model, tokenizer) -> list[float]:
    """Every exit's dev score alone, in GLUE units."""
    _, dev, collator = run.data.sets(tokenizer)
    loader = DataLoader(dev, batch_size=run.args.eval_batch_size, shuffle=False, collate_fn=collator)
    return [100 * v for v in glue_table.exit_metric(model, loader, run.task)]


def retrain(
    run: glue_table.TaskRun, budget: glue_table.Budget, parent: str, ta_key: str, changes: dict, work: Path
) -> tuple:
    """The final stage from ``parent`` as the table builds it (same seed, TA, epochs, lr), with ``changes``; returns
    the model and what its checkpoint selection found (dev recorded as the watched set)."""
    recipe = glue_table.Recipe()
    table = run.step_settings(budget, recipe, "recover_pred")
    settings = {
        "epochs": changes.get("epochs", table["epochs"]),
        "lr": changes.get("lr", table["lr"]),
        "selection": changes.get("select", table.get("selection", "last")),
    }
    kd = run.kd_source(recipe, ta_key)
    if budget.trim:
        kd, _ = glue_table.trim_to_task(kd, run.data)
    set_seed(run.args.seed)
    model = run.load(parent)
    tokenizer = run.tokenizer_of(parent)
    watch = run.data.sets(tokenizer)[1] if settings["selection"] != "last" else None
    return run.distill(model, kd, work, settings, tokenizer, beta=changes.get("beta", 1.0), watch=watch)


def probe_student(run: glue_table.TaskRun, args, name: str) -> dict:
    budget = next(b for b in run.args.budgets if b.name == name)
    info = run.models.get(f"costeff_{name}")
    if info is None or info["key"] is None:
        raise SystemExit(f"recovery_probe: costeff_{name} is not built for {run.task} with these glue_table options")
    final_key, ta_key = info["key"], run.models["costeff_ta"]["key"]
    parent = run.cache.meta(final_key)["parents"][-1]
    tokenizer = run.tokenizer_of(parent)
    store = Path(run.args.cache_dir) / "recovery_probe" / run.cache.root.name / final_key
    out = {"final_key": final_key, "hidden_key": parent, "variants": {}}
    for variant, changes in args.changes.items():
        cached = store / f"{variant}.json"
        if cached.exists():
            out["variants"][variant] = json.loads(cached.read_text())
            continue
        start = time.perf_counter()
        work = store / f"{variant}-work"  # the retraining's checkpoints: a killed variant resumes from them
        selection = {}
        if variant in CACHED:
            model = run.load(parent if variant == "hidden" else final_key)
        else:
            model, selection = retrain(run, budget, parent, ta_key, changes, work)
        result = {"per_exit_score": exit_scores(run, model, tokenizer), "seconds": time.perf_counter() - start}
        if selection:
            result["selection"] = selection
        store.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")  # renamed into place: a killed run leaves no half-written result
        tmp.write_text(json.dumps(result))
        os.replace(tmp, cached)
        shutil.rmtree(work, ignore_errors=True)  # the probe's own scratch folder, done with once the result is saved
        out["variants"][variant] = result
        print(f"[{run.task}] {name} {variant}: " + " ".join(f"{s:.2f}" for s in result["per_exit_score"]), flush=True)
    return out


def selection_curves(selection: dict) -> tuple[list[int], list[float], list[float]]:
    """Steps, and at each the selection criterion (mean over exits, or the last exit) on the held-out rows and on dev
    (recorded, not chosen on), in GLUE units."""

    def value(row: dict, where: str) -> float:
        exits = row.get(f"{where}_per_exit")
        if not exits or exits[-1] is None:
            return float("nan")
        return 100 * (float(np.mean(exits)) if "mean_exit" in selection["criterion"] else exits[-1])

    evals = selection["evals"]
    return [e["step"] for e in evals], [value(e, "heldout") for e in evals], [value(e, "watch") for e in evals]


# Rules for keeping one checkpoint of a selecting run, each applied to its recorded evaluations: what Trainer keeps
# at the table's default (the last), the two held-out criteria (--final_selection heldout / heldout_final: one run
# records both, since the held-out split and the training are the same and only the kept checkpoint differs), and
# the best last exit on dev, the reported data (an oracle: how much any rule could gain, never a rule to deploy).
PICK_RULES = {
    "last": lambda e: e["step"],
    "heldout": lambda e: float(np.mean(e["heldout_per_exit"])),
    "heldout_final": lambda e: e["heldout_per_exit"][-1],
    "dev_final (oracle)": lambda e: e["watch_per_exit"][-1],
}


def recorded(selection: dict) -> list[dict]:
    """The evaluations of a selecting run with both held-out and dev exits recorded (a variant resumed from a
    checkpoint has dev only after the resume)."""
    return [e for e in selection["evals"] if e.get("watch_per_exit") and None not in e["heldout_per_exit"]]


def picks(selection: dict) -> dict[str, dict]:
    """For each rule of ``PICK_RULES``, the step it keeps (the first of equal bests, as Trainer keeps) and the dev
    score of every exit there, in GLUE units, over the :func:`recorded` evaluations; ``{}`` when there are none."""
    evals = recorded(selection)
    if not evals:
        return {}
    out = {}
    for rule, key in PICK_RULES.items():
        best = max(evals, key=key)  # max() keeps the first of equal keys
        out[rule] = {"step": best["step"], "dev_per_exit": [100 * v for v in best["watch_per_exit"]]}
    return out


def agreement(selection: dict) -> dict | None:
    """How far the held-out rows can stand in for dev in one selecting run, by the last exit at every candidate
    with both recorded: the Spearman rank correlation of the two curves (a rule only needs the ranking), and their
    mean levels in GLUE units (held-out rows that earlier stages trained on score above dev). ``None`` with fewer
    than 3 such candidates."""
    from scipy.stats import spearmanr  # noqa: PLC0415

    evals = recorded(selection)
    if len(evals) < 3:
        return None
    heldout = [e["heldout_per_exit"][-1] for e in evals]
    dev = [e["watch_per_exit"][-1] for e in evals]
    return {
        "candidates": len(evals),
        "spearman_last_exit": float(spearmanr(heldout, dev)[0]),
        "heldout_last_exit_mean": 100 * float(np.mean(heldout)),
        "dev_last_exit_mean": 100 * float(np.mean(dev)),
    }


def plot(task: str, metric: str, students: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    selecting = any("selection" in r for s in students.values() for r in s["variants"].values())
    rows = 2 if selecting else 1
    fig, axes = plt.subplots(rows, len(students), figsize=(4.5 * len(students), 3.6 * rows), squeeze=False)
    for column, (name, result) in enumerate(students.items()):
        ax = axes[0][column]
        for variant, r in result["variants"].items():
            scores = r["per_exit_score"]
            ax.plot(range(1, len(scores) + 1), scores, marker="o", label=variant)
        ax.set_title(f"{task} costeff_{name}")
        ax.set_xlabel("exit")
        ax.set_ylabel(f"dev {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if not selecting:
            continue
        # The checkpoint rule's evidence: the held-out rows it chose on, and dev (recorded only), at every candidate.
        ax = axes[1][column]
        for variant, r in result["variants"].items():
            if "selection" not in r:
                continue
            steps, heldout, dev = selection_curves(r["selection"])
            line = ax.plot(steps, heldout, "-", marker=".", label=f"{variant}: held-out train")[0]
            ax.plot(steps, dev, "--", marker=".", color=line.get_color(), label=f"{variant}: dev (not chosen on)")
            ax.axvline(r["selection"]["best_step"], color=line.get_color(), lw=0.8, alpha=0.6)
        ax.set_xlabel("final-stage step (vertical: kept)")
        ax.set_ylabel(f"selection criterion, {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args, table_args = parse_args(argv)
    out_dir = Path(args.output_dir)
    paths = [out_dir / f"recovery_probe_{args.task}.{ext}" for ext in ("json", "png")]
    if not args.overwrite and any(p.exists() for p in paths):
        raise SystemExit(f"recovery_probe: {paths[0]} exists; pass --overwrite to replace it")
    torch.set_num_threads(table_args.threads)
    run = cached_run(table_args, args.task)
    start = time.perf_counter()
    students = {name: probe_student(run, args, name) for name in args.students}
    for result in students.values():
        for r in result["variants"].values():
            if "selection" in r:
                r["picks"] = picks(r["selection"])
                r["agreement"] = agreement(r["selection"])
    metric = get_task(args.task).main_metric
    report = {
        "task": args.task,
        "metric": metric,
        "machine": glue_table.machine(),
        "command": glue_table.command_line(),
        "recover_lr": table_args.recover_lr,
        "final_stage_epochs": table_args.student_epochs[args.task],
        "students": students,
        "wall_seconds": time.perf_counter() - start,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(args.task, metric, students, paths[1])
    n = max(len(r["per_exit_score"]) for s in students.values() for r in s["variants"].values())
    print(f"\n{args.task}: dev {metric} of every exit alone (wrote {paths[0]})\n")
    print("| student | variant | " + " | ".join(f"exit {k}" for k in range(1, n + 1)) + " |")
    print("|---|---|" + "---|" * n)
    for name, s in students.items():
        for variant, r in s["variants"].items():
            print(f"| {name} | {variant} | " + " | ".join(f"{v:.2f}" for v in r["per_exit_score"]) + " |")
    rows = [(name, variant, r) for name, s in students.items() for variant, r in s["variants"].items()]
    if any("picks" in r for _, _, r in rows):
        print(f"\nWhich checkpoint each rule keeps (one selecting run; dev {metric} there):\n")
        print("| student | run | rule | step | dev, last exit | dev, mean over exits |")
        print("|---|---|---|---|---|---|")
    for name, variant, r in rows:
        for rule, pick in r.get("picks", {}).items():
            dev = pick["dev_per_exit"]
            print(f"| {name} | {variant} | {rule} | {pick['step']} | {dev[-1]:.2f} | {sum(dev) / len(dev):.2f} |")
    for name, variant, r in rows:
        if r.get("agreement"):
            a = r["agreement"]
            print(
                f"{name} {variant}: held-out rows vs dev at the last exit over {a['candidates']} candidates: "
                f"Spearman {a['spearman_last_exit']:.2f}, mean {a['heldout_last_exit_mean']:.2f} vs "
                f"{a['dev_last_exit_mean']:.2f}"
            )
    return report


if __name__ == "__main__":
    main()
