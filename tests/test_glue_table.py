"""benchmarks/glue_table.py's own logic on a tiny setting: the dev-halves scheme never reports a prediction with a
threshold calibrated on it, a fully cached rerun trains nothing, and the JSON has the issue's schema."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_bert, tiny_config
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import glue_table  # noqa: E402

from hf_costeff.configuration_costeff import ExitPolicy  # noqa: E402
from hf_costeff.data import compute_glue_metrics  # noqa: E402
from hf_costeff.evaluation import ExitPredictions  # noqa: E402


def test_dev_halves_are_fixed_disjoint_and_cover_dev():
    a, b = glue_table.dev_halves(101, seed=42)
    assert len(a) == 50 and len(b) == 51
    assert set(a).isdisjoint(b) and set(a) | set(b) == set(range(101))
    a2, b2 = glue_table.dev_halves(101, seed=42)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    with pytest.raises(ValueError, match="at least 2"):
        glue_table.dev_halves(1, seed=0)


def test_halves_report_never_reports_on_its_calibration_rows(monkeypatch):
    config = tiny_config(num_labels=2, layer_num_heads=[4, 2, 2, 1], layer_intermediate_sizes=[48, 20, 7, 4])
    n = 60
    generator = torch.Generator().manual_seed(0)
    # Each example's length is its id (1..n): the wrapped functions below see which rows they get.
    preds = ExitPredictions(
        torch.randn(n, config.num_exits, 2, generator=generator) * 3,
        torch.randint(0, 2, (n,), generator=generator),
        torch.arange(1, n + 1),
        config,
    )
    calibrated, applied = {}, []
    real_calibrate, real_simulate = glue_table.calibrate_policy, glue_table.simulate_early_exit

    def calibrate(p, **kwargs):
        policy = real_calibrate(p, **kwargs)
        calibrated.setdefault(policy.value, set()).update(p.lengths.tolist())
        return policy

    def simulate(p, config, criterion, value, regression_threshold=None):
        applied.append((value, set(p.lengths.tolist())))
        return real_simulate(p, config, criterion, value, regression_threshold)

    monkeypatch.setattr(glue_table, "calibrate_policy", calibrate)
    monkeypatch.setattr(glue_table, "simulate_early_exit", simulate)
    halves = glue_table.dev_halves(n, seed=3)
    report = glue_table.halves_report(preds, config, "sst2", "entropy", halves, max_metric_drop=0.05)

    assert len(applied) == 2
    reported = set()
    for value, rows in applied:
        if value is not None:  # None: a half that fell back to every layer, where no threshold applies
            assert rows.isdisjoint(calibrated[value]), "a threshold was applied to rows it was calibrated on"
        reported |= rows
    assert reported == set(range(1, n + 1))  # every dev row reported exactly once (halves are disjoint)
    # The pooled score is the metric of the two applied halves' predictions together.
    layers, predictions = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    for part, index in zip(report["parts"], (halves[1], halves[0]), strict=True):
        sub = glue_table.subset(preds, index)
        lay, pred = real_simulate(sub, config, "entropy" if part["kept"] else "none", part["calibrated_value"])
        layers[index], predictions[index] = lay, pred
    expected = compute_glue_metrics("sst2", predictions.numpy(), preds.labels.numpy())["accuracy"]
    assert report["metric"] == pytest.approx(expected, abs=1e-12)
    assert report["avg_exit_layer"] == pytest.approx(float(layers.float().mean()), abs=1e-9)


def test_halves_report_calibrates_within_the_margin():
    """Each half's threshold keeps that half within max_metric_drop - margin; without the margin it may spend it all."""
    config = tiny_config(num_labels=2, layer_num_heads=[4, 2, 2, 1], layer_intermediate_sizes=[48, 20, 7, 4])
    n = 400
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (n,), generator=generator)
    # Later exits are more often right: early exiting costs accuracy, so the drop budget is what binds.
    logits = torch.randn(n, config.num_exits, 2, generator=generator)
    for k in range(config.num_exits):
        logits[torch.arange(n), k, labels] += 0.8 * (k + 1)
    preds = ExitPredictions(logits, labels, torch.full((n,), 12), config)
    halves = glue_table.dev_halves(n, seed=0)
    drop, margin = 0.03, 0.02
    with_margin = glue_table.halves_report(preds, config, "sst2", "entropy", halves, drop, margin)
    without = glue_table.halves_report(preds, config, "sst2", "entropy", halves, drop)
    for part in with_margin["parts"]:
        assert part["calibration_drop"] <= drop - margin + 1e-12
    assert max(p["calibration_drop"] for p in without["parts"]) > drop - margin  # the margin changed the choice
    for tight, loose in zip(with_margin["parts"], without["parts"], strict=True):
        assert tight["calibrated_value"] <= loose["calibrated_value"]  # a tighter budget exits no earlier


def test_halves_report_falls_back_to_all_layers_when_the_check_fails(monkeypatch):
    """A threshold that loses more than allowed on the half it is applied to is not deployed there."""
    config = tiny_config(num_labels=2, layer_num_heads=[4, 2, 2, 1], layer_intermediate_sizes=[48, 20, 7, 4])
    n = 80
    labels = torch.arange(n) % 2
    logits = torch.zeros(n, config.num_exits, 2)
    logits[torch.arange(n), 1:, labels] = 5.0  # later exits right and sure
    logits[torch.arange(n), 0, 1 - labels] = 5.0  # the first exit sure and wrong
    preds = ExitPredictions(logits, labels, torch.full((n,), 10), config)
    halves = glue_table.dev_halves(n, seed=0)
    # The first calibration (on half A) "finds" 0.69 (near ln 2): applied to half B, every row leaves at the wrong first
    # exit. The second (on half B) finds 0.0: nobody leaves early.
    values = iter([0.69, 0.0])
    monkeypatch.setattr(glue_table, "calibrate_policy", lambda p, **kwargs: ExitPolicy("entropy", next(values), None))
    report = glue_table.halves_report(preds, config, "sst2", "entropy", halves, max_metric_drop=0.01)
    rejected, kept = report["parts"]
    assert rejected["reported_on"] == "B" and not rejected["kept"] and rejected["value"] is None
    assert rejected["check_drop"] == pytest.approx(1.0) and rejected["reported_drop"] == 0.0
    assert kept["kept"] and kept["reported_drop"] == 0.0
    assert report["metric"] == 1.0 and report["avg_exit_layer"] == config.num_hidden_layers
    assert "all layers on half B" in glue_table.policy_text("entropy", report)


def test_halves_report_checks_the_pooled_metric(monkeypatch):
    """Matthews correlation is not an average over rows: two halves that each keep within the drop can lose more
    together. The pooled check then falls back the half whose threshold lost most on its own half."""
    config = tiny_config(num_labels=2, layer_num_heads=[4, 2, 2, 1], layer_intermediate_sizes=[48, 20, 7, 4])
    # Labels, all-layers and early predictions of 10 rows per half, found by a random search for a pooled Matthews
    # loss (0.40) well above each half's (0.16 and 0.16).
    label = [0, 1, 0, 0, 0, 1, 0, 0, 1, 1] + [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    last = [1, 1, 1, 0, 0, 0, 0, 1, 1, 1] + [1, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    early = [1, 1, 1, 0, 1, 0, 0, 1, 1, 1] + [1, 0, 1, 1, 1, 0, 0, 0, 1, 1]
    n = len(label)
    halves = glue_table.dev_halves(n, seed=0)
    order = np.concatenate(halves)  # row i of the lists above is dev row order[i]
    labels = torch.zeros(n, dtype=torch.long)
    logits = torch.zeros(n, config.num_exits, 2)  # middle exits unsure (entropy ln 2): nobody leaves there
    for i, row in enumerate(order):
        labels[row] = label[i]
        logits[row, -1, last[i]] = 5.0
        if early[i] != last[i]:
            logits[row, 0, early[i]] = 20.0  # sure at the first exit, and it differs from all layers
    preds = ExitPredictions(logits, labels, torch.full((n,), 10), config)
    monkeypatch.setattr(glue_table, "calibrate_policy", lambda p, **kwargs: ExitPolicy("entropy", 0.3, None))
    allowed = 0.25
    report = glue_table.halves_report(preds, config, "cola", "entropy", halves, max_metric_drop=allowed)

    half_drops = [p["check_drop"] for p in report["parts"]]
    assert half_drops == pytest.approx([0.1611, 0.1609], abs=1e-3) or half_drops == pytest.approx(
        [0.1609, 0.1611], abs=1e-3
    )
    assert all(p["rejected_by"] in (None, "pooled") for p in report["parts"])  # both pass their own half's check
    rejected = [p for p in report["parts"] if p["rejected_by"] == "pooled"]
    assert rejected and rejected[0]["pooled_drop"] == pytest.approx(0.4015, abs=1e-3)
    assert rejected[0]["check_drop"] == max(half_drops)  # the half that lost most on its own half falls back first
    full = compute_glue_metrics("cola", np.array(last)[np.argsort(order)], labels.numpy())["matthews_correlation"]
    assert full - report["metric"] <= allowed + 1e-12  # the pooled promise holds
    assert "the pooled dev lost 40.15" in glue_table.policy_text("entropy", report)


def test_halves_report_calibrates_patience_on_a_regression_task():
    """STS-B has no entropy: each half gets a patience and an agreement threshold, chosen on the other half, and the
    pooled report is what the model's own patience rule gives with them."""
    config = tiny_config(num_labels=1, layer_num_heads=[4, 2, 2, 1], layer_intermediate_sizes=[48, 20, 7, 4])
    n = 200
    generator = torch.Generator().manual_seed(2)
    labels = torch.rand(n, generator=generator) * 5
    # Each exit is the label plus noise that shrinks with depth: later exits agree with each other and are better.
    noise = torch.tensor([1.2, 0.4, 0.15, 0.1])
    logits = (labels[:, None] + noise * torch.randn(n, config.num_exits, generator=generator)).unsqueeze(-1)
    preds = ExitPredictions(logits, labels, torch.full((n,), 12), config)
    halves = glue_table.dev_halves(n, seed=0)
    report = glue_table.halves_report(preds, config, "stsb", "patience", halves, max_metric_drop=0.01)

    layers, predictions = torch.zeros(n, dtype=torch.long), torch.zeros(n)
    for part, index in zip(report["parts"], (halves[1], halves[0]), strict=True):
        assert part["calibrated_value"] in range(1, config.num_exits + 1) and part["regression_threshold"] >= 0
        assert part["calibration_drop"] <= 0.01 + 1e-12
        sub = glue_table.subset(preds, index)
        rule = ("patience", part["calibrated_value"], part["regression_threshold"]) if part["kept"] else ("none", None)
        layers[index], predictions[index] = glue_table.simulate_early_exit(sub, config, *rule)
    expected = compute_glue_metrics("stsb", predictions.numpy(), labels.numpy())["pearson"]
    assert report["metric"] == pytest.approx(expected, abs=1e-9)
    assert report["avg_exit_layer"] < config.num_hidden_layers  # the noisy first exit is skipped, the rest exit early
    assert "consecutive exits within" in glue_table.policy_text("patience", report)


def test_ablation_lines_say_what_each_variant_costs():
    base = glue_table.Budget.parse("eighth=2:256:p0.125:trim")
    names = [name for name, _, _ in glue_table.ablations(base)]
    assert set(names) == set(glue_table.ABLATION_PARTS)  # every variant says what it measures
    row = {"kind": "costeff", "params": 2_000_000, "drop": 0.4}
    t = {
        "models": [{**row, "name": "costeff_eighth", "score_all_layers": 86.5}],
        "ablation": [
            {**row, "name": "abl_no_ta", "score_all_layers": 85.0},
            {**row, "name": "abl_rank_only", "score_all_layers": 89.25},
        ],
    }
    lines = glue_table.ablation_lines(t, "costeff_eighth")
    assert "the exit policy then loses 0.40 more" in lines[1]
    no_ta = next(line for line in lines if line.startswith("| abl_no_ta"))
    assert "| +1.50 |" in no_ta and "teaching assistant" in no_ta  # the TA is worth 1.5 points
    rank_only = next(line for line in lines if line.startswith("| abl_rank_only"))
    assert "| -2.75 |" in rank_only and "width pruning" in rank_only  # cutting the width costs 2.75
    assert glue_table.ablation_lines({**t, "ablation": []}, "costeff_eighth") == []


def test_budget_parsing_and_rank_fit():
    b = glue_table.Budget.parse("eighth=2:256:p0.125:trim")
    assert (b.heads, b.ffn, b.rank, b.params_fraction, b.trim) == (2, 256, None, 0.125, True)
    assert glue_table.Budget.parse("wide=8:1024:r256").rank == 256
    # The default schedule stays out of the stage keys: stages built before epochs_scale existed keep their cache.
    assert b.epochs_scale == 1.0
    assert b.settings() == {
        "name": "eighth",
        "heads": 2,
        "ffn": 256,
        "rank": None,
        "params_fraction": 0.125,
        "trim": True,
    }
    deep = glue_table.Budget.parse("e=2:128:p0.125:trim:deep")
    assert deep.deep_exits and deep.settings()["deep_exits"] and not b.deep_exits
    assert deep.static_twin() == glue_table.Budget.parse("f=2:128:p0.125:trim").static_twin() != b.static_twin()
    weights = glue_table.depth_weights(6)
    assert (
        sum(weights) == pytest.approx(6) and weights == sorted(weights) and weights[5] == pytest.approx(6 * weights[0])
    )
    long = glue_table.Budget.parse("eighth=2:256:p0.125:trim:x2")
    assert long.epochs_scale == 2.0 and long.trim and long.settings()["epochs_scale"] == 2.0
    assert glue_table.Budget.parse("e=2:256:r8:x1.5").epochs_scale == 1.5
    # A student seed is in the key only when given, and only a budget's own seed overrides --seed.
    seeded = glue_table.Budget.parse("e=4:128:p0.125:trim:x2:s44")
    assert (seeded.seed, seeded.epochs_scale, seeded.trim, b.seed) == (44, 2.0, True, None)
    assert seeded.settings()["seed"] == 44 and "seed" not in b.settings()
    assert glue_table.stage_seed({"budget": seeded.settings()}, 42) == 44
    assert glue_table.stage_seed({"budget": b.settings()}, 42) == glue_table.stage_seed({"epochs": 1}, 42) == 42
    assert glue_table.stage_seed({"budget": glue_table.Budget.parse("e=2:16:r4:s0").settings()}, 42) == 0
    bad_budgets = ("x=2:256", "x=2:256:q3", "x=0:256:r4", "x=2:256:p2", "x=2:256:r4:fast", "x=2:256:r4:x0")
    for bad in bad_budgets + ("x=2:256:r4:x", "x=2:256:r4:x2:x3", "x=2:256:r4:s", "x=2:256:r4:s1:s2", "x=2:256:r4:s-1"):
        with pytest.raises(ValueError, match="--budgets"):
            glue_table.Budget.parse(bad)
    names = ["eighth", "eighth_x2"]
    assert glue_table._budget_tasks(None, names) == {n: list(glue_table.TASKS) for n in names}
    assert glue_table._budget_tasks("eighth_x2=sst2+rte", names)["eighth_x2"] == ["sst2", "rte"]
    for bad in ("nope=sst2", "eighth_x2=qqp", "eighth_x2="):
        with pytest.raises(ValueError, match="--budget_tasks"):
            glue_table._budget_tasks(bad, names)
    # The ablation varies its budget on the ablation tasks, so that budget must run there.
    with pytest.raises(SystemExit):
        glue_table.parse_args(["--budgets", "eighth=2:256:p0.125", "--budget_tasks", "eighth=rte"])
    from hf_costeff.cost import count_parameters

    config = tiny_config(num_labels=2, layer_num_heads=[4] * 4, layer_intermediate_sizes=[48] * 4)
    full = count_parameters(config)["total"]
    rank, cap = glue_table.fit_rank(config, glue_table.Budget.parse("b=2:16:p0.6"), full)
    assert cap == int(0.6 * full)
    planned = config.__class__.from_dict(config.to_dict())
    planned.layer_num_heads, planned.layer_intermediate_sizes = [2] * 4, [16] * 4
    planned.embedding_rank = rank
    assert count_parameters(planned)["total"] <= cap
    planned.embedding_rank = rank + 1
    assert rank == config.hidden_size or count_parameters(planned)["total"] > cap


def _write_tiny_glue(glue_dir, folder: Path, task: str = "sst2", train: int = 48, dev: int = 32) -> None:
    """The first ``train`` / ``dev`` rows of the real task (header kept) under ``folder/task``."""
    (folder / task).mkdir(parents=True)
    for name, n in (("train.tsv", train), ("dev.tsv", dev)):
        lines = (glue_dir / task / name).read_text(encoding="utf-8").splitlines()
        (folder / task / name).write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")


@pytest.fixture
def tiny_bert(tmp_path, minilm_tokenizer):
    return save_tiny_bert(tmp_path / "tiny-bert", minilm_tokenizer)


def test_pipeline_json_schema_and_cached_rerun_trains_nothing(tmp_path, glue_dir, tiny_bert, monkeypatch):
    data = tmp_path / "glue"
    _write_tiny_glue(glue_dir, data)
    argv = [
        "--model_name_or_path", tiny_bert, "--glue_dir", str(data), "--tasks", "sst2",
        "--budgets", "small=2:16:p0.6,small_deep=2:16:p0.6:deep", "--max_steps", "4", "--batch_size", "8",
        "--save_steps", "2",
        "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"),
        "--results_md", str(tmp_path / "results.md"), "--write", "--exit_pooling", "mean", "--ablation_tasks", "",
    ]  # fmt: skip
    first = glue_table.main(argv)
    report = json.loads((tmp_path / "out" / "glue_table.json").read_text())
    task = report["tasks"]["sst2"]
    assert task["metric"] == "accuracy"
    assert set(task["teacher"]) >= {"score", "params", "avg_flops"}
    assert isinstance(task["teacher"]["params"], int) and 0 <= task["teacher"]["score"] <= 100
    names = {m["name"] for m in task["models"]}
    # small_deep differs from small only in its exit weights: one static baseline serves both.
    assert names == {"costeff_ta", "costeff_small", "costeff_small_deep", "deebert", "pabee", "static_small"}
    deep_config = json.loads(next((tmp_path / "cache").glob("sst2_*/costeff_small_deep-*/config.json")).read_text())
    plain_config = json.loads(next((tmp_path / "cache").glob("sst2_*/costeff_small-*/config.json")).read_text())
    assert deep_config["exit_loss_weights"] == pytest.approx([2 / 3, 4 / 3])  # saved at pruning, kept through recovery
    assert plain_config["exit_loss_weights"] is None
    for m in task["models"]:
        assert m["kind"] in glue_table.KINDS
        assert isinstance(m["name"], str) and isinstance(m["policy"], str) and isinstance(m["params"], int)
        assert 0 <= m["score"] <= 100 and m["avg_flops"] > 0
        assert m["drop"] == pytest.approx(m["score_all_layers"] - m["score"], abs=1e-9)
        # Intervals from the paired bootstrap over the 32 dev rows; the rows themselves stay out of the JSON.
        assert "predictions" not in m and "labels" not in m and m["ci95"]["resamples"] == 1000
        low, high = m["ci95"]["score"]
        assert 0 <= low <= m["score"] <= high <= 100 and high - low > 1  # 32 rows: several points wide
    small = next(m for m in task["models"] if m["name"] == "costeff_small")
    assert small["params"] <= 0.6 * task["teacher"]["params"]  # the budget is on p.numel(), embeddings included
    assert small["heads"] == [2, 2] and small["ffn"] == [16, 16]
    # Each exit alone: its score and cost; the last exit is the all-layers run, the first is cheaper.
    assert len(small["per_exit_flops"]) == len(small["per_exit_score"]) == 2
    assert small["per_exit_flops"][-1] == pytest.approx(small["avg_flops_all_layers"])
    assert small["per_exit_score"][-1] == pytest.approx(small["score_all_layers"])
    assert small["per_exit_flops"][0] < small["per_exit_flops"][1]
    assert task["teacher"]["per_exit_flops"] == pytest.approx([task["teacher"]["avg_flops"]])
    assert (tmp_path / "out" / "glue_table_sst2.png").stat().st_size > 0
    results_md = (tmp_path / "results.md").read_text()
    assert "glue_table:begin" in results_md
    assert "](out/glue_table_sst2.png)" in results_md  # linked from the page's folder, wherever --output_dir is
    teacher_flops, exit1 = task["teacher"]["avg_flops"], small["per_exit_flops"][0]
    assert f"| costeff_small | {small['per_exit_score'][0]:.2f} ({teacher_flops / exit1:.1f}×) |" in results_md
    low, high = small["ci95"]["retention"]
    assert f"| {small['retention']:.1f}% ({low:.1f}–{high:.1f}) |" in results_md

    def no_training(*args, **kwargs):
        raise AssertionError("a cached rerun trained")

    monkeypatch.setattr("transformers.Trainer.train", no_training)
    again = glue_table.main(argv)
    before = {m["name"]: m["score"] for m in first["tasks"]["sst2"]["models"]}
    after = {m["name"]: m["score"] for m in again["tasks"]["sst2"]["models"]}
    assert before == after and not again["tasks"]["sst2"]["pending"]


def test_a_regression_task_reports_a_calibrated_patience_policy(tmp_path, glue_dir, minilm_tokenizer):
    """STS-B's multi-exit models exit by PABEE's patience, both of its parameters chosen on the other dev half."""
    data = tmp_path / "glue"
    _write_tiny_glue(glue_dir, data, "stsb", dev=40)
    bert = save_tiny_bert(tmp_path / "tiny-bert", minilm_tokenizer, num_hidden_layers=3, num_labels=1)
    report = glue_table.main(
        [
            "--model_name_or_path", bert, "--glue_dir", str(data), "--tasks", "stsb", "--stages", "teacher,ta",
            "--budgets", "small=2:16:p0.6", "--max_steps", "4", "--batch_size", "8", "--ablation_tasks", "",
            "--cache_dir", str(tmp_path / "cache"), "--exit_pooling", "mean", "--max_metric_drop", "0.5",
        ]
    )  # fmt: skip
    ta = next(m for m in report["tasks"]["stsb"]["models"] if m["name"] == "costeff_ta")
    assert ta["criterion"] == "patience" and ta["allowed_drop"] == pytest.approx(50.0)
    assert all("regression_threshold" in half for half in ta["halves"])
    assert ta["policy"].count("patience = ") == 2 and "consecutive exits within" in ta["policy"]
    assert ta["drop"] <= ta["allowed_drop"] + 1e-9
    assert ta["sweep"] == sorted(ta["sweep"])  # the (patience, threshold) cloud's frontier: cheaper is worse


def test_timed_checkpoints_save_after_the_period(monkeypatch):
    from transformers import TrainerControl

    clock = [100.0]
    monkeypatch.setattr(glue_table.time, "monotonic", lambda: clock[0])
    callback = glue_table.TimedCheckpoints(minutes=1.0)
    control = TrainerControl()
    clock[0] += 59.0
    assert not callback.on_step_end(None, None, control).should_save
    clock[0] += 2.0
    assert callback.on_step_end(None, None, control).should_save
    callback.on_save(None, None, control)
    control = TrainerControl()
    clock[0] += 30.0
    assert not callback.on_step_end(None, None, control).should_save
    assert not glue_table.TimedCheckpoints(minutes=0).on_step_end(None, None, TrainerControl()).should_save


@pytest.mark.slow
def test_ablation_variants_build_and_report(tmp_path, glue_dir, tiny_bert):
    data = tmp_path / "glue"
    _write_tiny_glue(glue_dir, data)
    report = glue_table.main(
        [
            "--model_name_or_path", tiny_bert, "--glue_dir", str(data), "--tasks", "sst2", "--stages",
            "teacher,ta,students,ablation", "--budgets", "small=2:16:p0.6", "--ablation_budget", "small",
            "--max_steps", "4", "--batch_size", "8", "--cache_dir", str(tmp_path / "cache"), "--exit_pooling", "mean",
        ]
    )  # fmt: skip
    task = report["tasks"]["sst2"]
    rows = {m["name"]: m for m in task["ablation"]}
    assert set(rows) == {"abl_no_ta", "abl_one_shot", "abl_width_only", "abl_rank_only"}
    small = next(m for m in task["models"] if m["name"] == "costeff_small")
    assert rows["abl_width_only"]["heads"] == small["heads"] and rows["abl_width_only"]["embedding_rank"] is None
    assert (
        rows["abl_rank_only"]["heads"] == [4, 4] and rows["abl_rank_only"]["embedding_rank"] == small["embedding_rank"]
    )
    assert rows["abl_no_ta"]["params"] == small["params"] == rows["abl_one_shot"]["params"]


def _student_weights(cache: Path, name: str) -> dict[str, torch.Tensor]:
    (path,) = cache.glob(f"sst2_*/{name}-*/model.safetensors")
    return load_file(path)


def test_a_budget_seed_trains_its_own_student_on_the_shared_teacher_and_ta(tmp_path, glue_dir, tiny_bert):
    """``:s<seed>`` reruns a student with another seed on the cached teacher and TA; the same seed as --seed gives
    the same student, so the flag changes the seed and nothing else."""
    data, cache = tmp_path / "glue", tmp_path / "cache"
    _write_tiny_glue(glue_dir, data)
    glue_table.main(
        [
            "--model_name_or_path", tiny_bert, "--glue_dir", str(data), "--tasks", "sst2", "--seed", "42",
            "--budgets", "small=2:16:p0.6,small_s42=2:16:p0.6:s42,small_s7=2:16:p0.6:s7", "--stages",
            "teacher,ta,students", "--baseline_tasks", "", "--ablation_tasks", "", "--max_steps", "4",
            "--batch_size", "8", "--cache_dir", str(cache), "--exit_pooling", "mean",
        ]
    )  # fmt: skip
    assert len(list(cache.glob("sst2_*/teacher-*"))) == len(list(cache.glob("sst2_*/costeff_ta-*"))) == 1
    plain, same, other = (_student_weights(cache, f"costeff_{n}") for n in ("small", "small_s42", "small_s7"))
    assert plain.keys() == same.keys() == other.keys()
    # Same seed, same code path, same process: equal up to float rounding.
    assert all(torch.allclose(plain[k], same[k], atol=1e-6, rtol=0) for k in plain)
    assert max((plain[k] - other[k]).abs().max().item() for k in plain) > 1e-4


def test_the_recorded_command_can_be_pasted_back(monkeypatch):
    argv = ["--tasks", "sst2", "--ablation_tasks", "", "--budgets", "a=2:16:r4", "--output_dir", "my results"]
    monkeypatch.setattr(sys, "argv", ["benchmarks/glue_table.py", *argv])
    line = glue_table.command_line()
    assert "--ablation_tasks '' " in line and "'my results'" in line
    assert shlex.split(line)[2:] == argv


def test_no_train_on_an_empty_cache_lists_everything_pending(tmp_path, glue_dir, tiny_bert, monkeypatch):
    data = tmp_path / "glue"
    _write_tiny_glue(glue_dir, data)

    def no_training(*args, **kwargs):
        raise AssertionError("--no_train trained")

    monkeypatch.setattr("transformers.Trainer.train", no_training)
    out = tmp_path / "out"
    glue_table.main(
        [
            "--model_name_or_path", tiny_bert, "--glue_dir", str(data), "--tasks", "sst2", "--no_train", "--write",
            "--budgets", "small=2:16:p0.6,other=2:8:p0.5", "--budget_tasks", "other=rte",
            "--ablation_budget", "small", "--cache_dir", str(tmp_path / "cache"),
            "--output_dir", str(out), "--results_md", str(tmp_path / "results.md"),
        ]
    )  # fmt: skip
    report = json.loads((out / "glue_table.json").read_text())
    task = report["tasks"]["sst2"]
    assert report["partial"] and task["teacher"] is None and task["models"] == []
    assert {"teacher", "costeff_ta", "costeff_small", "deebert", "pabee", "static_small", "abl_no_ta"} <= set(
        task["pending"]
    )
    assert "prune_small" not in task["pending"]  # one line per model, naming the stage it waits for
    assert task["pending"]["costeff_small"].startswith("prune_small")
    # A budget scoped to another task is neither built nor listed as pending here (nor is its static baseline).
    assert not any(name.endswith("_other") for name in task["pending"])
    assert report["budget_tasks"]["other"] == ["rte"] and "sst2" in report["budget_tasks"]["small"]
    assert "PARTIAL" in (tmp_path / "results.md").read_text()


def test_heading_says_partial_only_while_a_stage_is_pending():
    built = {"pending": {}, "teacher": {"score": 1.0}}
    every = {task: dict(built) for task in glue_table.TASKS}
    assert glue_table.heading({"tasks": every}) == "## GLUE table against fully trained teachers"
    some = {"cola": dict(built), "sst2": dict(built)}  # a page over two tasks, in the table's task order
    assert glue_table.heading({"tasks": some}).endswith("(sst2, cola only)")
    some["cola"] = {"pending": {"costeff_eighth_x2": "not built yet"}, "teacher": {"score": 1.0}}
    assert glue_table.heading({"tasks": some}).endswith("(PARTIAL: stages still pending; sst2, cola only)")
    every["rte"] = {"pending": {}, "teacher": None}
    assert glue_table.heading({"tasks": every}).endswith("(PARTIAL: stages still pending)")


def test_targets_with_nothing_measured_are_not_met():
    """An all-pending report must not read as a kept promise (no model measured is not "no violation")."""
    report = {"tasks": {"sst2": {"teacher": None, "models": [], "matched_flops": {}}}}
    out = glue_table.targets(report, [])
    assert out["policies_within_allowed_drop"] == {
        "violations": [],
        "checked": 0,
        "halves": 0,
        "fell_back": {"half": 0, "pooled": 0},
        "met": False,
        "measured": False,
    }
    assert not any(t["met"] for t in out.values()) and not any(t["measured"] for t in out.values())
    assert all("not measured yet" in glue_table.target_line(name, t) for name, t in out.items())


def test_target_lines_say_what_was_measured():
    def model(name, retention, params_ratio, flops_ratio, drop=0.5):
        return {"name": name, "kind": "costeff", "retention": retention, "params_ratio": params_ratio}, {
            "flops_ratio": flops_ratio,
            "drop": drop,
            "allowed_drop": 1.0,
        }

    tasks = {}
    for task, retention in (("sst2", 95.9), ("mrpc", 100.6)):
        a, b = model("costeff_eighth", retention, 8.01, 8.0, drop=1.4 if task == "mrpc" else 0.5)
        kept = {"kept": True, "rejected_by": None}
        halves = [kept, {"kept": False, "rejected_by": "pooled" if task == "mrpc" else "half"}]
        tasks[task] = {"teacher": {"score": 90.0}, "models": [{**a, **b, "halves": halves}], "matched_flops": {}}
    front = {"costeff_better_or_equal": 3, "costeff_worse": 0, "baseline_cannot_reach_flops": 1}
    tasks["sst2"]["matched_flops"] = {kind: front for kind in ("deebert", "pabee", "static")}
    tasks["sst2"]["pending"] = {"static_quarter": "not built yet", "abl_no_ta": "not built yet"}
    out = glue_table.targets({"tasks": tasks}, [])
    lines = {name: glue_table.target_line(name, t) for name, t in out.items()}
    # No worse point so far, but a static baseline still pending: no verdict yet.
    assert not out["sst2_pareto_vs_baselines"]["met"]
    assert "INCOMPLETE (static_quarter not built yet)" in lines["sst2_pareto_vs_baselines"]
    del tasks["sst2"]["pending"]["static_quarter"]
    assert glue_table.targets({"tasks": tasks}, [])["sst2_pareto_vs_baselines"]["met"]
    assert (
        "MISSED — costeff_eighth keeps 95.9% with 8.0x fewer parameters and 8.0x fewer FLOPs"
        in lines["sst2_97pct_at_1_8_params_1_10_flops"]
    )
    assert (
        "INCOMPLETE (2 of 5 tasks measured) — mean 98.2% (sst2 95.9%, mrpc 100.6%)"
        in lines["mean_retention_at_1_8_params"]
    )
    assert (
        "MISSED — 2 models checked; 2 of 4 dev halves fell back to every layer (1 failed their own half's check, "
        "1 the pooled check); mrpc costeff_eighth lost 1.40 (allowed 1.00)" in lines["policies_within_allowed_drop"]
    )
    tasks["sst2"]["models"][0]["ci95"] = {"retention": [93.04, 98.41]}
    line = glue_table.target_line(
        "sst2_97pct_at_1_8_params_1_10_flops",
        glue_table.targets({"tasks": tasks}, [])["sst2_97pct_at_1_8_params_1_10_flops"],
    )
    assert "keeps 95.9% (95% interval over dev resamples 93.0–98.4%) with 8.0x fewer" in line
    # The mean's interval: the two tasks' half-widths (2.7 and 1.0 points) add in quadrature, over 2 tasks.
    tasks["mrpc"]["models"][0]["ci95"] = {"retention": [99.6, 101.6]}
    mean = glue_table.targets({"tasks": tasks}, [])["mean_retention_at_1_8_params"]
    half = 1.96 * math.hypot(5.37 / 3.92, 2.0 / 3.92) / 2
    assert mean["mean_ci95"] == pytest.approx([98.25 - half, 98.25 + half])
    assert f"mean 98.2% (95% interval {98.25 - half:.1f}–{98.25 + half:.1f}%, from the tasks' own) (sst2" in (
        glue_table.target_line("mean_retention_at_1_8_params", mean)
    )


def test_recovery_probe_reproduces_the_final_stage(tmp_path, glue_dir, tiny_bert, capsys, monkeypatch):
    """benchmarks/recovery_probe.py: retraining the final stage at the table's own settings gives the table's scores
    back (same seed, same parent), so a variant differs from the recipe only by its change; a rerun only reads its
    cache."""
    import recovery_probe  # noqa: PLC0415

    data = tmp_path / "glue"
    _write_tiny_glue(glue_dir, data)
    table = [
        "--model_name_or_path", tiny_bert, "--glue_dir", str(data), "--budgets", "small=2:16:p0.6",
        "--max_steps", "4", "--batch_size", "8", "--cache_dir", str(tmp_path / "cache"), "--exit_pooling", "mean",
    ]  # fmt: skip
    glue_table.main([*table, "--tasks", "sst2", "--stages", "teacher,ta,students", "--ablation_tasks", ""])
    probe = ["--task", "sst2", "--students", "small", "--output_dir", str(tmp_path / "out"), *table]
    variants = "hidden,recipe,lr=0.0002,lr=0.05+beta=0"  # 2e-4 is glue_table's --recover_lr
    report = recovery_probe.main([*probe, "--variants", variants])
    scores = {v: r["per_exit_score"] for v, r in report["students"]["small"]["variants"].items()}
    assert list(scores) == variants.split(",") and all(len(s) == 2 for s in scores.values())
    assert scores["lr=0.0002"] == pytest.approx(scores["recipe"], abs=1e-6)
    # Not only the scores (a tiny model on 32 rows may tie by chance): the retrained weights are the table's.
    table_args = glue_table.parse_args([*table, "--tasks", "sst2", "--no_train", "--ablation_tasks", ""])
    run = recovery_probe.cached_run(table_args, "sst2")
    final = run.models["costeff_small"]["key"]
    retrained, selection = recovery_probe.retrain(
        run, table_args.budgets[0], run.cache.meta(final)["parents"][-1], run.models["costeff_ta"]["key"], {},
        tmp_path / "work",
    )  # fmt: skip
    assert selection == {}  # the table's rule: the last checkpoint
    built = run.load(final).state_dict()
    for name, value in retrained.state_dict().items():
        torch.testing.assert_close(value, built[name], rtol=1e-5, atol=1e-6, msg=name)
    assert (tmp_path / "out" / "recovery_probe_sst2.png").stat().st_size > 0
    assert not list((tmp_path / "cache" / "recovery_probe").glob("*/*/*-work"))  # no scratch left once saved
    assert "| small | recipe |" in capsys.readouterr().out

    # A rerun reads every variant from the cache (training would fail here) and keeps the output unless told.
    with pytest.raises(SystemExit, match="--overwrite"):
        recovery_probe.main([*probe, "--variants", variants])
    monkeypatch.setattr(recovery_probe, "retrain", lambda *a, **k: pytest.fail("a cached variant was retrained"))
    again = recovery_probe.main([*probe, "--variants", variants, "--overwrite"])
    assert again["students"]["small"]["variants"] == report["students"]["small"]["variants"]


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ("lr", "key=value"),
        ("momentum=0.9", "key=value"),
        ("lr=fast", "a number"),
        ("epochs=0", "above 0"),
        ("select=best", "choose from"),
    ],
)
def test_recovery_probe_rejects_bad_variants_naming_the_option(variants, message, capsys):
    import recovery_probe  # noqa: PLC0415

    with pytest.raises(SystemExit) as exit_info:
        recovery_probe.parse_args(
            ["--task", "sst2", "--students", "eighth", "--output_dir", "x", "--variants", variants]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--variants" in err and message in err


def test_heldout_split_is_fixed_disjoint_and_sized(tmp_path, glue_dir, minilm_tokenizer):
    data = tmp_path / "glue"
    _write_tiny_glue(glue_dir, data)
    args = glue_table.parse_args(["--glue_dir", str(data), "--tasks", "sst2"])
    task = glue_table.TaskData("sst2", args, minilm_tokenizer)
    fit, heldout = task.heldout_split()
    train, _, _ = task.sets()
    assert len(heldout) == round(glue_table.HELDOUT_FRACTION * len(train)) and len(fit) + len(heldout) == len(train)
    rows = lambda part: {tuple(ids) for ids in part["input_ids"]}  # noqa: E731
    assert not rows(fit) & rows(heldout) and rows(fit) | rows(heldout) == rows(train)
    again_fit, again_heldout = glue_table.TaskData("sst2", args, minilm_tokenizer).heldout_split()
    assert again_heldout["input_ids"] == heldout["input_ids"] and again_fit["input_ids"] == fit["input_ids"]


def _tiny_stsb_table(tmp_path, glue_dir, tokenizer, *, layers: int, max_steps: int) -> tuple[str, list[str]]:
    """A tiny BERT and glue_table's options for one small student on a 60-row STS-B (the held-out rule's tests)."""
    data = tmp_path / "glue"
    _write_tiny_glue(glue_dir, data, "stsb", train=60, dev=40)
    bert = save_tiny_bert(tmp_path / "tiny-bert", tokenizer, num_hidden_layers=layers, num_labels=1)
    table = [
        "--model_name_or_path", bert, "--glue_dir", str(data), "--tasks", "stsb", "--budgets", "small=2:16:p0.6",
        "--max_steps", str(max_steps), "--batch_size", "8", "--ablation_tasks", "",
        "--cache_dir", str(tmp_path / "cache"), "--exit_pooling", "mean",
    ]  # fmt: skip
    return bert, table


def test_final_selection_keeps_the_checkpoint_best_on_heldout_rows(tmp_path, glue_dir, minilm_tokenizer, capsys):
    """--final_selection heldout: the final stage evaluates on train rows it does not train on and keeps the best
    checkpoint (mean over exits); only that stage's key changes. The probe's select=heldout variant also records dev
    at every candidate, and its kept model's dev scores are those of the chosen step."""
    import recovery_probe  # noqa: PLC0415

    bert, table = _tiny_stsb_table(tmp_path, glue_dir, minilm_tokenizer, layers=3, max_steps=6)
    table += ["--recover_lr", "0.01"]
    glue_table.main([*table, "--stages", "teacher,ta,students"])
    chosen = glue_table.main([*table, "--stages", "teacher,ta,students", "--final_selection", "heldout"])
    keys = {}
    for name in ("last", "heldout"):
        args = glue_table.parse_args([*table, "--no_train", "--final_selection", name])
        run = glue_table.TaskRun("stsb", args, bert, minilm_tokenizer)
        run.run()
        final = run.models["costeff_small"]["key"]
        keys[name] = (final, run.cache.meta(final)["parents"])
    assert keys["last"][0] != keys["heldout"][0] and keys["last"][1] == keys["heldout"][1]  # the same parents
    meta = run.cache.meta(keys["heldout"][0])
    selection = meta["selection"]
    metric = "eval_heldout_mean_exit_pearson"
    assert selection["heldout_rows"] == 6 and selection["max_steps"] == 6
    assert [e["step"] for e in selection["evals"]] == [1, 2, 3, 4, 5, 6]  # every candidate, the last step included
    values = [e[metric] for e in selection["evals"]]
    assert selection["best_metric"] == pytest.approx(max(values))
    assert selection["best_step"] == 1 + values.index(max(values))  # the first of equal bests, as Trainer keeps
    assert f"kept the checkpoint of step {selection['best_step']} of 6, best mean over exits" in meta["recipe"]
    assert all(np.mean(e["heldout_per_exit"]) == pytest.approx(e[metric]) for e in selection["evals"])
    # The saved model is the chosen checkpoint: its held-out mean over exits is the best one recorded.
    model, tokenizer = run.load(keys["heldout"][0]), run.tokenizer_of(keys["heldout"][0])
    _, heldout = run.data.heldout_split(tokenizer)
    loader = torch.utils.data.DataLoader(
        heldout.remove_columns(["length"]), batch_size=16, collate_fn=run.data.sets(tokenizer)[2]
    )
    rows = glue_table.per_exit_metrics(glue_table.collect_exit_logits(model, loader), "stsb", model.config)
    assert np.mean([r["pearson"] for r in rows]) == pytest.approx(selection["best_metric"], abs=1e-5)

    probe = ["--task", "stsb", "--students", "small", "--output_dir", str(tmp_path / "out"), *table]
    report = recovery_probe.main([*probe, "--variants", "recipe,select=heldout,select=heldout_final"])
    variant = report["students"]["small"]["variants"]["select=heldout"]
    evals = variant["selection"]["evals"]
    assert [e[metric] for e in evals] == pytest.approx(values, abs=1e-6)  # the table's stage, retrained
    best = next(e for e in evals if e["step"] == variant["selection"]["best_step"])
    watched = best["watch_mean_exit_pearson"]  # dev at the kept step, recorded, not chosen on
    assert np.mean(variant["per_exit_score"]) == pytest.approx(100 * watched, abs=1e-4)
    # ... and the table reports that checkpoint: its dev scores are the retrained variant's.
    small = next(m for m in chosen["tasks"]["stsb"]["models"] if m["name"] == "costeff_small")
    assert small["per_exit_score"] == pytest.approx(variant["per_exit_score"], abs=1e-4)
    # By the last exit: the kept step is the first best last exit on the held-out rows, and the kept model's dev
    # scores are the ones recorded at that step (the same training, only the kept checkpoint differs).
    final = report["students"]["small"]["variants"]["select=heldout_final"]
    last = [e["heldout_per_exit"][-1] for e in final["selection"]["evals"]]
    assert final["selection"]["criterion"] == "heldout_exit3_pearson"
    assert final["selection"]["best_step"] == final["selection"]["evals"][last.index(max(last))]["step"]
    kept = next(e for e in final["selection"]["evals"] if e["step"] == final["selection"]["best_step"])
    assert final["per_exit_score"] == pytest.approx([100 * v for v in kept["watch_per_exit"]], abs=1e-4)
    # One selecting run tells what each rule keeps: the heldout_final run's own pick is its "heldout_final" rule's.
    assert final["agreement"]["candidates"] == 6  # every candidate has both curves recorded
    rules = final["picks"]
    assert rules["heldout_final"]["step"] == final["selection"]["best_step"]
    assert rules["heldout_final"]["dev_per_exit"] == pytest.approx(final["per_exit_score"], abs=1e-4)
    assert rules["heldout"]["step"] == variant["selection"]["best_step"] and rules["last"]["step"] == 6
    assert rules["dev_final (oracle)"]["dev_per_exit"][-1] >= max(r["dev_per_exit"][-1] for r in rules.values())


def test_heldout_from_students_keeps_the_rows_out_of_the_ta_and_every_student_stage(
    tmp_path, glue_dir, minilm_tokenizer, monkeypatch, capsys
):
    """--heldout_from final: only the final stage trains without the held-out rows (the TA, pruning and hidden
    recovery fit them). --heldout_from students: none of those stages sees them; the teacher is the same."""
    bert, table = _tiny_stsb_table(tmp_path, glue_dir, minilm_tokenizer, layers=2, max_steps=2)
    table += ["--stages", "teacher,ta,students", "--final_selection", "heldout_final"]
    args = glue_table.parse_args(table)
    _, heldout = glue_table.TaskData("stsb", args, minilm_tokenizer).heldout_split()
    held = {tuple(ids) for ids in heldout["input_ids"]}
    seen = []  # (stage, number of training rows, how many of them are held-out rows)
    real_ta, real_train = glue_table.pareto.build_ta, glue_table.pareto.train_multi_exit

    def record(stage, ctx):
        rows = [tuple(ids) for ids in ctx["train"]["input_ids"]]
        seen.append((stage, len(rows), sum(row in held for row in rows)))

    def spy_ta(ctx, teacher):
        record("ta", ctx)
        return real_ta(ctx, teacher)

    def spy_train(model, ctx, **kwargs):
        record("student", ctx)
        return real_train(model, ctx, **kwargs)

    monkeypatch.setattr(glue_table.pareto, "build_ta", spy_ta)
    monkeypatch.setattr(glue_table.pareto, "train_multi_exit", spy_train)
    keys = {}
    for scope in ("final", "students"):
        seen.clear()
        glue_table.main([*table, "--heldout_from", scope])
        run = glue_table.TaskRun(
            "stsb", glue_table.parse_args([*table, "--heldout_from", scope]), bert, minilm_tokenizer
        )
        run.run()
        keys[scope] = (
            run.models["teacher"]["key"],
            run.models["costeff_ta"]["key"],
            run.models["costeff_small"]["key"],
        )
        stages = [stage for stage, _, _ in seen]
        assert stages[0] == "ta" and stages[-3:] == ["student"] * 3  # TA, then prune, hidden and final stages
        final = seen[-1]
        assert final[1:] == (60 - len(held), 0)
        before = {(n, overlap) for _, n, overlap in seen[:-1]}  # the TA, pruning and hidden recovery
        assert before == ({(60, len(held))} if scope == "final" else {(60 - len(held), 0)})
        recipe = run.cache.meta(keys[scope][2])["recipe"]
        held_out_of = "it" if scope == "final" else "the TA and every student stage"
        assert recipe.endswith(f"on {len(held)} train rows held out of {held_out_of}")
    assert keys["final"][0] == keys["students"][0]  # the same teacher, trained on every row
    assert keys["final"][1] != keys["students"][1] and keys["final"][2] != keys["students"][2]

    with pytest.raises(SystemExit) as exit_info:
        glue_table.parse_args([*table[:-2], "--heldout_from", "students"])
    assert exit_info.value.code == 2 and "--heldout_from" in capsys.readouterr().err


def test_recovery_probe_agreement_ranks_the_two_curves():
    """The held-out rows stand in for dev by their ranking of the candidates: Spearman +1 when both curves rise
    together, -1 when one falls as the other rises; candidates without dev recorded are skipped."""
    import recovery_probe  # noqa: PLC0415

    def selection(heldout, dev):
        evals = [
            {"step": i + 1, "heldout_per_exit": [0.1, h], "watch_per_exit": d}
            for i, (h, d) in enumerate(zip(heldout, dev, strict=True))
        ]
        return {"evals": evals}

    same = recovery_probe.agreement(selection([0.5, 0.7, 0.6, 0.9], [[0, 0.2], [0, 0.4], [0, 0.3], [0, 0.5]]))
    assert same["spearman_last_exit"] == pytest.approx(1.0) and same["candidates"] == 4
    assert same["heldout_last_exit_mean"] == pytest.approx(67.5) and same["dev_last_exit_mean"] == pytest.approx(35.0)
    opposite = recovery_probe.agreement(selection([0.5, 0.7, 0.6], [[0, 0.4], [0, 0.2], [0, 0.3]]))
    assert opposite["spearman_last_exit"] == pytest.approx(-1.0)
    assert recovery_probe.agreement(selection([0.5, 0.7, 0.6], [[0, 0.4], None, [0, 0.3]])) is None  # 2 with dev


def test_bootstrap_resamples_must_not_be_negative(capsys):
    with pytest.raises(SystemExit) as exit_info:
        glue_table.parse_args(["--bootstrap", "-5"])
    assert exit_info.value.code == 2 and "--bootstrap" in capsys.readouterr().err
    assert glue_table.parse_args(["--bootstrap", "0"]).bootstrap == 0


def test_bootstrap_intervals_are_in_table_units():
    labels = np.arange(40) % 2
    teacher = labels.copy()
    teacher[:4] = 1 - teacher[:4]  # 90% right
    student = labels.copy()
    student[:8] = 1 - student[:8]  # 80% right, wrong wherever the teacher is
    ci = glue_table.bootstrap_intervals("sst2", student, teacher, labels, resamples=500, seed=0)
    assert ci["resamples"] == 500
    assert 0 < ci["score"][0] < 80 < ci["score"][1] < 100
    assert ci["retention"][0] < 100 * 0.8 / 0.9 < ci["retention"][1] < 100
