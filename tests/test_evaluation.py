"""Evaluation helpers: simulated early exit == the model's real early exit, sweeps, calibration, latency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_config

from hf_costeff import CostEffForSequenceClassification
from hf_costeff.configuration_costeff import ExitPolicy
from hf_costeff.cost import average_flops
from hf_costeff.evaluation import (
    ExitPredictions,
    calibrate_policy,
    calibrate_threshold,
    collect_exit_logits,
    default_regression_thresholds,
    default_thresholds,
    evaluate_exit_logits,
    evaluate_policy,
    first_exit_warning,
    measure_latency,
    paired_bootstrap,
    per_exit_flops,
    per_exit_metrics,
    simulate_early_exit,
    sweep_thresholds,
)


def _random_model(**overrides) -> CostEffForSequenceClassification:
    torch.manual_seed(0)
    model = CostEffForSequenceClassification(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for exit_head in model.exits:  # sharper random exits: examples then leave at different layers
            exit_head.classifier.weight.mul_(40)
    return model


def _batches(num_batches: int = 3, batch_size: int = 8, vocab: int = 120, seed: int = 1) -> list[dict]:
    """Random padded batches of varied lengths, with labels."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        lengths = torch.randint(3, 17, (batch_size,), generator=generator)
        ids = torch.randint(1, vocab, (batch_size, int(lengths.max())), generator=generator)
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        batches.append(
            {
                "input_ids": ids * mask,
                "attention_mask": mask,
                "token_type_ids": torch.zeros_like(ids),
                "labels": torch.randint(0, 3, (batch_size,), generator=generator),
            }
        )
    return batches


def _between_scores(preds: ExitPredictions, criterion: str, count: int) -> list[float]:
    """Thresholds halfway between distinct observed scores: far from any decision boundary."""
    log_probs = torch.log_softmax(preds.logits[:, :-1], dim=-1)
    scores = -(log_probs.exp() * log_probs).sum(-1) if criterion == "entropy" else log_probs.max(-1).values.exp()
    ordered = scores.flatten().double().sort().values
    picks = torch.linspace(0.15, 0.85, count)
    return [float((ordered[int(p * (len(ordered) - 2))] + ordered[int(p * (len(ordered) - 2)) + 1]) / 2) for p in picks]


@pytest.mark.parametrize("exit_layers", [None, [1, 3, 4]])
@pytest.mark.parametrize("criterion", ["entropy", "confidence", "patience"])
def test_simulated_early_exit_equals_real_early_exit(criterion, exit_layers):
    model = _random_model(exit_layers=exit_layers)
    batches = _batches()
    preds = collect_exit_logits(model, batches)
    assert preds.logits.shape == (24, model.config.num_exits, 3)
    assert torch.equal(preds.lengths, torch.cat([b["attention_mask"].sum(-1) for b in batches]))
    values = (
        list(range(1, model.config.num_exits + 1)) if criterion == "patience" else _between_scores(preds, criterion, 4)
    )
    seen_layers = set()
    for value in values:
        kwargs = {"exit_patience": value} if criterion == "patience" else {"exit_threshold": value}
        with torch.inference_mode():
            outputs = [
                model(**{k: v for k, v in b.items() if k != "labels"}, exit_criterion=criterion, **kwargs)
                for b in batches
            ]
        real_layers = torch.cat([o.exit_layer for o in outputs])
        real_predictions = torch.cat([o.logits.argmax(-1) for o in outputs])
        layers, predictions = simulate_early_exit(preds, model.config, criterion, value)
        assert torch.equal(layers, real_layers), (criterion, value)
        assert torch.equal(predictions, real_predictions), (criterion, value)
        seen_layers |= set(layers.tolist())
    # The check means something only if examples actually left at several different exits.
    assert len(seen_layers) >= 2, seen_layers


def test_simulation_extremes_and_bad_policies():
    model = _random_model()
    preds = collect_exit_logits(model, _batches(1))
    layers, predictions = simulate_early_exit(preds, model.config, "none", None)
    assert layers.eq(4).all() and torch.equal(predictions, preds.logits[:, -1].argmax(-1))
    layers, _ = simulate_early_exit(preds, model.config, "confidence", 0.0)
    assert layers.eq(1).all()  # every max probability is >= 0
    layers, _ = simulate_early_exit(preds, model.config, "entropy", 0.0)
    assert layers.eq(4).all()  # no entropy is < 0: only the last exit, which always exits
    with pytest.raises(ValueError, match="exit_threshold"):
        simulate_early_exit(preds, model.config, "entropy", 5.0)
    with pytest.raises(ValueError, match="exit_patience"):
        simulate_early_exit(preds, model.config, "patience", 0)
    with pytest.raises(ValueError, match="exits"):
        simulate_early_exit(preds, tiny_config(exit_layers=[2, 4]), "entropy", 0.5)


def test_sweep_flops_equal_cost_average_flops():
    model = _random_model()
    preds = collect_exit_logits(model, _batches())
    thresholds = default_thresholds(preds, "entropy", num=12)
    rows = sweep_thresholds(preds, model.config, "rte", "entropy", thresholds)
    assert len(rows) == len(thresholds)
    full = average_flops(model.config, [4] * 24, preds.lengths.tolist())
    for row in rows:
        layers, predictions = simulate_early_exit(preds, model.config, "entropy", row["threshold"])
        assert row["avg_flops"] == average_flops(model.config, layers.tolist(), preds.lengths.tolist())
        assert row["flops_speedup"] == pytest.approx(full / row["avg_flops"])
        assert row["metric"] == pytest.approx(float((predictions == preds.labels).float().mean()))
        assert sum(row["exit_histogram"].values()) == 24
        assert row["layer_speedup"] == pytest.approx(4 / layers.float().mean().item())
    # Higher entropy thresholds let examples leave earlier: FLOPs never grow along the sweep.
    flops = [row["avg_flops"] for row in rows]
    assert flops == sorted(flops, reverse=True) and flops[0] > flops[-1]


def _constructed_predictions() -> ExitPredictions:
    """10 examples, label 0, 4 exits (uniform layers). The last exit is always right.

    exit 1: examples 0-5 confidently right (entropy 0.04), 6-7 fairly confidently wrong (0.39), 8-9 barely right
    (0.6919); exits 2-3: barely right for all (0.6919).
    """
    logits = torch.zeros(10, 4, 2)
    logits[:, 1:3] = torch.tensor([0.1, 0.0])
    logits[:, 3] = torch.tensor([3.0, 0.0])
    logits[:6, 0] = torch.tensor([5.0, 0.0])
    logits[6:8, 0] = torch.tensor([0.0, 2.0])
    logits[8:, 0] = torch.tensor([0.1, 0.0])
    config = tiny_config(num_labels=2, layer_num_heads=[2] * 4, layer_intermediate_sizes=[16] * 4)
    return ExitPredictions(logits, torch.zeros(10, dtype=torch.long), torch.full((10,), 8), config)


def test_calibrate_threshold_meets_its_target():
    preds = _constructed_predictions()
    candidates = [0.0, 0.1, 0.5, math.log(2)]
    accuracy = {row["threshold"]: row["metric"] for row in sweep_thresholds(preds, None, "rte", "entropy", candidates)}
    assert accuracy == pytest.approx({0.0: 1.0, 0.1: 1.0, 0.5: 0.8, math.log(2): 0.8})
    # No accuracy lost: the fastest exact threshold is 0.1 (six examples leave at layer 1).
    assert calibrate_threshold(preds, task="rte", max_metric_drop=0.0, thresholds=candidates) == 0.1
    # Up to 0.2 lost: the fastest of all (everyone leaves at layer 1).
    assert calibrate_threshold(preds, task="rte", max_metric_drop=0.2, thresholds=candidates) == math.log(2)
    # Speed-up >= 1.5: 0.1 gives ~1.8x at full accuracy, the most accurate one reaching it.
    assert calibrate_threshold(preds, task="rte", min_speedup=1.5, thresholds=candidates) == 0.1
    # Speed-up >= 3: only ln 2 (~4x) reaches it.
    assert calibrate_threshold(preds, task="rte", min_speedup=3.0, thresholds=candidates) == math.log(2)
    # Default candidates find a threshold meeting the target too.
    found = calibrate_threshold(preds, task="rte", max_metric_drop=0.0)
    row = sweep_thresholds(preds, None, "rte", "entropy", [found])[0]
    assert row["metric"] == 1.0 and row["flops_speedup"] > 1.7


def test_calibrate_threshold_stops_before_the_first_threshold_that_breaks_the_drop():
    """The accuracy of a threshold sweep need not fall monotonically: a threshold past one that loses too much can pass
    again by luck. The calibration does not jump the cliff: it keeps the last threshold before the first miss."""
    config = tiny_config(num_labels=2, layer_num_heads=[4, 2, 2, 1], layer_intermediate_sizes=[48, 20, 7, 4])
    n = 10
    logits = torch.zeros(n, config.num_exits, 2)  # unsure everywhere (entropy ln 2): nobody leaves before the end
    logits[:, -1, 0] = 5.0  # the last exit is right (every label is 0)
    # Rows 0-2: the first exit right with entropy 0.50, the second wrong with entropy 0.30. At a threshold of 0.4 they
    # leave at the second exit (wrong); at 0.6 already at the first (right again).
    logits[:3, 0, 0] = math.log(0.8 / 0.2)
    logits[:3, 1, 1] = math.log(0.91 / 0.09)
    preds = ExitPredictions(logits, torch.zeros(n, dtype=torch.long), torch.full((n,), 8), config)
    candidates = [0.0, 0.2, 0.4, 0.6]
    accuracy = [row["metric"] for row in sweep_thresholds(preds, None, "rte", "entropy", candidates)]
    assert accuracy == pytest.approx([1.0, 1.0, 0.7, 1.0])
    assert calibrate_threshold(preds, task="rte", max_metric_drop=0.1, thresholds=candidates) == 0.2
    assert calibrate_threshold(preds, task="rte", max_metric_drop=0.3, thresholds=candidates) == 0.6
    with pytest.raises(ValueError, match="no entropy policy"):  # the most cautious candidate already misses
        calibrate_threshold(preds, task="rte", max_metric_drop=0.1, thresholds=[0.4, 0.6])


def test_calibrate_threshold_margin_and_limit_warning(caplog):
    preds = _constructed_predictions()
    candidates = [0.0, 0.1, 0.5, math.log(2)]
    # 0.5 and ln 2 lose 0.2: within max_metric_drop=0.2, not within 0.2 - a margin of 0.05.
    with caplog.at_level("WARNING", logger="hf_costeff.evaluation"):
        assert calibrate_threshold(preds, task="rte", max_metric_drop=0.2, thresholds=candidates) == math.log(2)
    assert "sends 100% of the examples out at the first exit" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_costeff.evaluation"):
        assert calibrate_threshold(preds, task="rte", max_metric_drop=0.2, margin=0.05, thresholds=candidates) == 0.1
    assert "first exit" not in caplog.text
    with pytest.raises(ValueError, match="margin must be in"):
        calibrate_threshold(preds, task="rte", max_metric_drop=0.01, margin=0.02)
    with pytest.raises(ValueError, match="margin applies to max_metric_drop only"):
        calibrate_threshold(preds, task="rte", min_speedup=1.5, margin=0.01)


def test_first_exit_warning_is_measured_not_read_off_the_threshold():
    config = tiny_config(num_labels=2)
    n, exits = 100, config.num_exits
    labels = torch.zeros(n, dtype=torch.long)
    logits = torch.zeros(n, exits, 2)
    logits[:, 1:, 0] = 6.0  # every later exit is sure
    logits[:95, 0, 0] = 6.0  # the first exit is sure of 95 examples, undecided (entropy ln 2) on the others
    preds = ExitPredictions(logits, labels, torch.full((n,), 8), config)
    row = evaluate_policy(preds, config, "sst2", "entropy", 0.3)
    assert row["exit_histogram"][1] == 95
    assert "95% of the examples out at the first exit (layer 1)" in first_exit_warning(row)
    assert first_exit_warning(row, share=0.96) is None
    # A threshold next to ln 2 = 0.6931, yet the first exit is undecided on every example: nobody leaves there.
    logits[:, 0] = 0.0
    near_limit = evaluate_policy(preds, config, "sst2", "entropy", 0.6659)
    assert near_limit["exit_histogram"].get(1, 0) == 0 and first_exit_warning(near_limit) is None
    with pytest.raises(ValueError, match="share"):
        first_exit_warning(row, share=0.0)


def test_calibrate_threshold_refuses_impossible_or_ambiguous_targets():
    preds = _constructed_predictions()
    with pytest.raises(ValueError, match="speed-up >= 10"):
        calibrate_threshold(preds, task="rte", min_speedup=10.0)
    with pytest.raises(ValueError, match="metric drop <= 0.0"):
        calibrate_threshold(preds, task="rte", max_metric_drop=0.0, thresholds=[0.5, math.log(2)])
    with pytest.raises(ValueError, match="exactly one target"):
        calibrate_threshold(preds, task="rte", max_metric_drop=0.1, min_speedup=2.0)
    with pytest.raises(ValueError, match="exactly one target"):
        calibrate_threshold(preds, task="rte")
    with pytest.raises(ValueError, match="dataloader"):
        calibrate_threshold(_random_model(), task="rte", max_metric_drop=0.1)


def test_calibrate_threshold_from_a_model_and_patience():
    model = _random_model(num_labels=2)
    batches = _batches()
    for batch in batches:
        batch["labels"] = batch["labels"] % 2
    patience = calibrate_threshold(model, batches, task="rte", criterion="patience", max_metric_drop=0.0)
    assert patience in range(1, 5)
    preds = collect_exit_logits(model, batches)
    row = sweep_thresholds(preds, None, "rte", "patience", [patience])[0]
    full = sweep_thresholds(preds, None, "rte", "none", [None])[0]
    assert row["metric"] >= full["metric"]


def test_calibrate_policy_on_a_regression_model_chooses_patience_and_agreement_together():
    """A regression model's policy has two parameters; the calibration returns the fastest pair within the drop."""
    config = tiny_config(num_labels=1, layer_num_heads=[4, 2, 2, 1], layer_intermediate_sizes=[48, 20, 7, 4])
    generator = torch.Generator().manual_seed(0)
    n = 300
    labels = torch.rand(n, generator=generator) * 5
    # Each exit is the label plus noise: small at every exit on easy rows (they can leave early), shrinking with
    # depth on hard ones (leaving early costs there).
    noise = torch.tensor([1.0, 0.5, 0.2, 0.1]).repeat(n, 1)
    noise[: n // 2] = 0.05
    logits = (labels[:, None] + noise * torch.randn(n, 4, generator=generator)).unsqueeze(-1)
    preds = ExitPredictions(logits, labels, torch.randint(4, 20, (n,), generator=generator), config)
    allowed = 0.01
    policy = calibrate_policy(preds, task="stsb", max_metric_drop=allowed)
    assert isinstance(policy, ExitPolicy) and policy.criterion == "patience"
    assert policy.value == policy.patience and policy.regression_threshold == policy.threshold >= 0
    # By hand: for each agreement threshold, lower the patience from the most cautious (every exit must agree) while
    # the drop holds; the fastest of those per-threshold choices is the policy.
    full = evaluate_policy(preds, None, "stsb", "none", None)["metric"]
    picks = []
    for t in default_regression_thresholds(preds):
        for patience in range(preds.num_exits, 0, -1):
            row = evaluate_policy(preds, None, "stsb", "patience", patience, t)
            if full - row["metric"] > allowed + 1e-12:
                break
            picks.append(row)
    chosen = evaluate_policy(preds, None, "stsb", "patience", policy.patience, policy.threshold)
    assert full - chosen["metric"] <= allowed + 1e-12
    assert chosen["avg_flops"] == pytest.approx(min(r["avg_flops"] for r in picks))
    assert chosen["flops_speedup"] > 1.1 and sum(1 for c in chosen["exit_histogram"].values() if c) >= 2


def test_a_regression_policy_in_the_configuration_exits_where_the_simulation_says():
    model = _random_model(num_labels=1)
    batches = _batches(num_batches=4)
    preds = collect_exit_logits(model, [{**b, "labels": b["labels"].float()} for b in batches])
    gaps = (preds.logits[:, 1:, 0] - preds.logits[:, :-1, 0]).abs()
    policy = ExitPolicy("patience", float(gaps.median()), 1)
    policy.apply(model.config)
    expected, _ = simulate_early_exit(preds, None, policy.criterion, policy.value, policy.regression_threshold)
    with torch.no_grad():
        layers = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).exit_layer for b in batches])
    assert torch.equal(layers, expected)
    assert len(set(layers.tolist())) >= 2  # a policy under which examples leave at different layers


def test_calibrate_policy_on_a_classifier_is_the_threshold_calibration():
    preds = _constructed_predictions()
    policy = calibrate_policy(preds, task="rte", max_metric_drop=0.0)
    assert policy == ExitPolicy("entropy", calibrate_threshold(preds, task="rte", max_metric_drop=0.0), None)
    patience = calibrate_policy(preds, task="rte", criterion="patience", min_speedup=1.2)
    assert patience.threshold is None
    assert patience.patience == calibrate_threshold(preds, task="rte", criterion="patience", min_speedup=1.2)


def test_calibration_refuses_what_a_regression_model_cannot_do():
    model = _random_model(num_labels=1)
    batches = _batches(num_batches=1)
    for batch in batches:
        batch["labels"] = batch["labels"].float()
    preds = collect_exit_logits(model, batches)
    with pytest.raises(ValueError, match="regression_threshold must be given"):
        calibrate_threshold(preds, task="stsb", criterion="patience", max_metric_drop=0.1)
    with pytest.raises(ValueError, match="needs class probabilities"):
        calibrate_policy(preds, task="stsb", criterion="entropy", max_metric_drop=0.1)
    with pytest.raises(ValueError, match="regression_thresholds"):
        calibrate_policy(_constructed_predictions(), task="rte", max_metric_drop=0.1, regression_thresholds=[0.1])
    with pytest.raises(ValueError, match="regression_threshold applies"):
        calibrate_threshold(_constructed_predictions(), task="rte", max_metric_drop=0.1, regression_threshold=0.1)
    with pytest.raises(ValueError, match="num_labels=1"):
        default_regression_thresholds(_constructed_predictions())


def test_measure_latency_runs_the_real_early_exit():
    model = _random_model()
    features = [{"input_ids": list(range(1, 1 + n)), "attention_mask": [1] * n} for n in (3, 9, 5, 12)]
    seconds = measure_latency(model, features, batch_size=2, repeats=3, exit_criterion="entropy", exit_threshold=0.5)
    assert 0 < seconds < 5
    assert model.training is False
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, features, repeats=0)


def test_evaluate_exit_logits_from_gathered_arrays_matches_the_sweep():
    """Logits gathered elsewhere (numpy, as Trainer.evaluation_loop returns them) give the same numbers as the sweep."""
    model = _random_model(layer_num_heads=[4, 4, 4, 4], layer_intermediate_sizes=[48] * 4)
    preds = collect_exit_logits(model, _batches())
    gathered = ExitPredictions(preds.logits.numpy(), preds.labels.numpy(), preds.lengths.numpy(), model.config)
    threshold = _between_scores(preds, "entropy", 1)[0]
    flat = evaluate_exit_logits(
        gathered, policies={"entropy": ("entropy", threshold, None), "patience": ("patience", None, 2)}
    )
    (row,) = sweep_thresholds(preds, None, None, "entropy", [threshold])
    assert flat["entropy_accuracy"] == row["metrics"]["accuracy"] == row["metric"]
    assert flat["entropy_avg_flops"] == row["avg_flops"] and flat["entropy_flops_speedup"] == row["flops_speedup"]
    assert flat["entropy_avg_exit_layer"] == row["avg_exit_layer"] and 1 < row["avg_exit_layer"] < 4
    assert sum(flat[f"entropy_exit_fraction_L{layer}"] for layer in model.config.exit_layers) == pytest.approx(1.0)
    layers, _ = simulate_early_exit(preds, None, "patience", 2)
    assert flat["patience_avg_exit_layer"] == pytest.approx(float(layers.float().mean()))
    per_exit = per_exit_metrics(preds, None)
    assert [r["exit_layer"] for r in per_exit] == [1, 2, 3, 4]
    for r in per_exit:
        assert flat[f"exit{r['exit_layer']}_accuracy"] == r["accuracy"]
    assert flat["mean_exit_accuracy"] == pytest.approx(sum(r["accuracy"] for r in per_exit) / 4)


def test_per_exit_flops_are_the_cost_model_at_each_exit_and_each_length():
    """Exit k's figure is ``cost.average_flops`` with every example leaving at exit k's layer, at its own length."""
    model = _random_model(layer_num_heads=[4, 2, 4, 1], layer_intermediate_sizes=[48, 16, 32, 8])
    preds = collect_exit_logits(model, _batches())
    assert len(set(preds.lengths.tolist())) > 1  # lengths differ, so a padded-length shortcut would be caught
    flops = per_exit_flops(preds)
    n = len(preds.lengths)
    expected = [average_flops(model.config, [layer] * n, preds.lengths.tolist()) for layer in model.config.exit_layers]
    assert flops == pytest.approx(expected, rel=1e-12)
    assert flops == sorted(flops) and len(set(flops)) == len(flops)  # every layer adds work


def test_encoder_exit_hook_drops_rows_like_running_them_alone():
    """Rows the hook lets go leave the batch; the others end as if they had run alone (padding trimmed)."""
    model = _random_model(layer_num_heads=[4, 4, 4, 4], layer_intermediate_sizes=[48] * 4)
    batch = _batches(num_batches=1)[0]
    leave_after_layer_2 = torch.arange(8) % 3 == 0

    def hook(layer_idx, hidden_states, attention_mask):
        if layer_idx == 1:
            return hidden_states, ~leave_after_layer_2
        return hidden_states, None

    with torch.no_grad():
        base = model.costeff(batch["input_ids"], batch["attention_mask"], exit_hook=hook)
        assert base.last_hidden_state.shape[0] == int((~leave_after_layer_2).sum())
        for row, i in enumerate((~leave_after_layer_2).nonzero().flatten().tolist()):
            length = int(batch["attention_mask"][i].sum())
            alone = model.costeff(batch["input_ids"][i : i + 1, :length]).last_hidden_state[0]
            torch.testing.assert_close(base.last_hidden_state[row, :length], alone, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- paired bootstrap


def _labels_and_two_models(n: int = 2000, correct: float = 0.9, reference_correct: float = 0.8, seed: int = 0):
    """Binary labels and two models' predictions: the model is right wherever the reference is, and on more rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    order = rng.permutation(n)
    model_right = np.zeros(n, dtype=bool)
    model_right[order[: int(correct * n)]] = True
    reference_right = np.zeros(n, dtype=bool)
    reference_right[order[: int(reference_correct * n)]] = True
    return labels, np.where(model_right, labels, 1 - labels), np.where(reference_right, labels, 1 - labels)


def test_paired_bootstrap_interval_has_the_binomial_width_and_the_pairing_narrows_the_difference():
    labels, model, reference = _labels_and_two_models()
    ci = paired_bootstrap("sst2", model, reference, labels, resamples=2000, seed=1)
    low, high = ci["metric"]
    assert low < 0.9 < high
    # A proportion's 95% interval is about 2 * 1.96 * sqrt(p (1 - p) / n) wide.
    expected = 2 * 1.96 * math.sqrt(0.9 * 0.1 / 2000)
    assert high - low == pytest.approx(expected, rel=0.15)
    # The model is right wherever the reference is: every resample has it ahead, by about 0.1.
    d_low, d_high = ci["difference"]
    assert 0 < d_low < 0.1 < d_high
    # Paired, the difference varies only through the 10% of rows where the two disagree: sqrt(0.1 * 0.9 / n), far
    # narrower than the two intervals' widths added (what unpaired resamples would give).
    assert d_high - d_low == pytest.approx(expected, rel=0.15)
    r_low, r_high = ci["ratio"]
    assert r_low < 0.9 / 0.8 < r_high and r_low > 1


def test_paired_bootstrap_of_a_model_against_itself_is_a_point_and_is_seeded():
    labels, model, _ = _labels_and_two_models(n=300)
    ci = paired_bootstrap("mrpc", model, model, labels, resamples=200, seed=3)
    assert ci["difference"] == (0.0, 0.0) and ci["ratio"] == pytest.approx((1.0, 1.0))
    assert ci == paired_bootstrap("mrpc", model, model, labels, resamples=200, seed=3)
    assert ci["metric"] != paired_bootstrap("mrpc", model, model, labels, resamples=200, seed=4)["metric"]


def test_paired_bootstrap_scores_regression_and_leaves_no_ratio_for_a_reference_at_zero():
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, size=400)
    ci = paired_bootstrap("stsb", labels + rng.normal(0, 1, 400), labels + rng.normal(0, 2, 400), labels, 300)
    assert 0 < ci["reference"][0] < ci["reference"][1] < ci["metric"][1] and ci["difference"][0] > 0
    # A reference that always predicts one class has a Matthews correlation of 0 on every resample: no ratio.
    labels = rng.integers(0, 2, size=200)
    ci = paired_bootstrap("cola", labels, np.zeros(200, dtype=int), labels, resamples=50)
    assert ci["reference"] == (0.0, 0.0) and ci["ratio"] is None and ci["metric"] == (1.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resamples": 0}, "resamples"),
        ({"resamples": 2.5}, "resamples"),
        ({"level": 1.0}, "level"),
        ({"labels": np.zeros(9, dtype=int)}, "labels"),
    ],
)
def test_paired_bootstrap_rejects_bad_arguments_naming_them(kwargs, message):
    args = {"predictions": np.zeros(10, dtype=int), "reference_predictions": np.ones(10, dtype=int)}
    args["labels"] = kwargs.pop("labels", np.arange(10) % 2)
    with pytest.raises(ValueError, match=message):
        paired_bootstrap("sst2", **args, **kwargs)


def test_batched_metric_matches_scikit_learn_and_scipy_row_by_row_including_degenerate_rows():
    import warnings

    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    from hf_costeff.data import batched_metric

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(50, 30))
    predictions = np.where(rng.random((50, 30)) < 0.7, labels, 1 - labels)
    predictions[0] = 0  # a constant prediction: Matthews 0, F1 0 when no positive is predicted or true
    labels[1] = 1  # one class only
    labels[2], predictions[2] = 0, 0  # no positive anywhere: F1's zero division
    reference_formulas = {
        "accuracy": lambda p, r: accuracy_score(r, p),
        "f1": lambda p, r: f1_score(r, p, zero_division=0.0),
        "matthews_correlation": lambda p, r: matthews_corrcoef(r, p),
    }
    for key, formula in reference_formulas.items():
        expected = [formula(p, r) for p, r in zip(predictions, labels, strict=True)]
        assert batched_metric(key, predictions, labels) == pytest.approx(expected, abs=1e-12), key
    scores = rng.normal(size=(40, 25)).round(1)  # rounded: ties, which Spearman ranks by their average
    gold = scores + rng.normal(scale=1.0, size=(40, 25))
    scores[0] = 3.0  # a constant row: no correlation (nan), as scipy says
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, formula in (("pearson", pearsonr), ("spearmanr", spearmanr)):
            expected = [formula(s, g)[0] for s, g in zip(scores, gold, strict=True)]
            assert batched_metric(key, scores, gold) == pytest.approx(expected, abs=1e-9, nan_ok=True), key
    with pytest.raises(ValueError, match="binary"):
        batched_metric("f1", np.full((1, 3), 2), np.ones((1, 3), dtype=int))
    with pytest.raises(ValueError, match="metric key"):
        batched_metric("bleu", predictions, labels)
