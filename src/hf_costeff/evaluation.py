"""Evaluating multi-exit models: exit logits once, any early-exit policy simulated, thresholds calibrated, latency.

The one place that turns exit logits into exit decisions, predictions, metrics and FLOPs. The CLI's ``evaluate``, the
benchmarks and ``MultiExitTrainer`` hand it exit logits (:class:`ExitPredictions`, collected here or gathered by any
evaluation loop); the decisions come from the model's own :class:`~hf_costeff.modeling_costeff.ExitDecision`, so the
simulated exit is the exit the model takes. One result type, :class:`PolicyResult`, with one set of names:
``avg_flops`` (mean FLOPs per example), ``flops_speedup`` (FLOPs of every layer / ``avg_flops``), ``avg_exit_layer``,
``layer_speedup``.

The early-exit decision of an example depends only on its own exit logits (batched early exit equals one-by-one
inference, tested in tests/test_modeling.py), so one pass that records every exit's logits
(:func:`collect_exit_logits`) is enough to know, for ANY threshold or patience, where each example would leave, what it
would predict and how many FLOPs it would cost (:func:`simulate_early_exit`, :func:`sweep_thresholds`). The model
never runs again for a sweep or a calibration (:func:`calibrate_threshold`). :func:`measure_latency` times the real
early-exit forward.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch
from torch import nn

from .configuration_costeff import CostEffConfig, ExitPolicy, validate_exit_policy
from .cost import forward_flops
from .data import batched_metric, compute_glue_metrics, get_task
from .modeling_costeff import ExitDecision, exit_score

_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
logger = logging.getLogger(__name__)


@dataclass
class ExitPredictions:
    """Every exit's logits on a labelled set, from one pass that runs all layers.

    Attributes:
        logits: ``(N, E, C)`` float32 logits of the ``E`` exits (``C = num_labels``; ``C = 1`` for regression).
        labels: ``(N,)`` gold labels (class ids, or floats for regression).
        lengths: ``(N,)`` unpadded token counts (sum of the attention mask), which set each example's FLOPs.
        config: the model's configuration (its ``exit_layers`` map exit index -> layer), when known.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    config: CostEffConfig | None = None

    def __post_init__(self) -> None:
        # Arrays from any evaluation loop (numpy from Trainer.evaluation_loop) are taken as they are.
        self.logits = torch.as_tensor(self.logits).float()
        self.labels, self.lengths = torch.as_tensor(self.labels), torch.as_tensor(self.lengths).long()
        if self.logits.dim() != 3:
            raise ValueError(f"logits must have shape (N, num_exits, num_labels), got {tuple(self.logits.shape)}")
        n = self.logits.shape[0]
        if self.labels.shape != (n,) or self.lengths.shape != (n,):
            raise ValueError(
                f"labels {tuple(self.labels.shape)} and lengths {tuple(self.lengths.shape)} must both be ({n},)"
            )
        if n == 0:
            raise ValueError("ExitPredictions needs at least one example")

    @property
    def num_exits(self) -> int:
        return self.logits.shape[1]


def _model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: batch[key].to(device) for key in _INPUT_KEYS if key in batch and batch[key] is not None}


@torch.inference_mode()
def collect_exit_logits(model: nn.Module, dataloader: Iterable[Mapping[str, torch.Tensor]]) -> ExitPredictions:
    """Run every layer once (``exit_criterion="none"``) and keep all exits' logits, labels and unpadded lengths.

    ``model``: a ``CostEffForSequenceClassification`` (or any classifier returning ``logits``: it is then seen as a
    single-exit model). ``dataloader`` yields padded batches with ``input_ids``, ``attention_mask``, ``labels``
    (``token_type_ids`` optional).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    costeff = isinstance(getattr(model, "config", None), CostEffConfig)
    logits, labels, lengths = [], [], []
    try:
        for batch in dataloader:
            if "labels" not in batch or "attention_mask" not in batch:
                raise ValueError("collect_exit_logits needs batches with 'labels' and 'attention_mask'")
            inputs = _model_inputs(batch, device)
            if costeff:
                output = model(**inputs, exit_criterion="none")
                logits.append(output.all_exit_logits.float().cpu())
            else:
                logits.append(model(**inputs).logits.float().cpu().unsqueeze(1))
            labels.append(batch["labels"].cpu())
            lengths.append(batch["attention_mask"].sum(-1).long().cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("collect_exit_logits got an empty dataloader")
    config = model.config if costeff else None
    return ExitPredictions(torch.cat(logits), torch.cat(labels), torch.cat(lengths), config)


def _config_of(preds: ExitPredictions, config: CostEffConfig | None) -> CostEffConfig:
    config = config if config is not None else preds.config
    if config is None:
        raise ValueError("a CostEffConfig is needed (pass config=..., or collect the predictions from a CostEff model)")
    if config.num_exits != preds.num_exits:
        raise ValueError(f"config has {config.num_exits} exits but the predictions hold {preds.num_exits}")
    return config


def logits_to_predictions(logits: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` logits -> ``(...)`` class ids, or the value itself for regression (``C = 1``). Works on numpy
    arrays alike."""
    return logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)


def simulate_early_exit(
    preds: ExitPredictions,
    config: CostEffConfig | None,
    criterion: str,
    threshold_or_patience: float | int | None,
    regression_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each example would leave, and what it would predict, under an exit policy, without running the model.

    The exits' logits go through the model's own :class:`~hf_costeff.modeling_costeff.ExitDecision` in order:
    ``"entropy"`` exits when the entropy of ``softmax`` (natural log) is ``< threshold``; ``"confidence"`` when the max
    probability is ``>= threshold``; ``"patience"`` keeps PABEE's counter (+1 when an exit's argmax equals the previous
    exit's, reset otherwise; for regression, when they differ by less than ``regression_threshold``) and exits when it
    reaches the patience; ``"none"`` runs every layer. The last exit always exits.

    Returns ``(exit_layers, predictions)``, both ``(N,)``: the 1-based layer of the exit taken, and its class id (or
    value for regression).
    """
    config = _config_of(preds, config)
    logits = preds.logits
    n, num_exits, num_labels = logits.shape
    if criterion == "patience":
        validate_exit_policy(criterion, regression_threshold, threshold_or_patience, num_exits, num_labels)
        decision = ExitDecision(criterion, regression_threshold, threshold_or_patience)
    else:
        if criterion != "none":
            validate_exit_policy(criterion, threshold_or_patience, None, num_exits, num_labels)
        decision = ExitDecision(criterion, threshold_or_patience)
    done = torch.stack([decision.update(logits[:, k]) for k in range(num_exits)], dim=1)
    done[:, -1] = True
    first = done.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximal index: the first exit satisfied
    layers = torch.tensor(config.exit_layers, dtype=torch.long)[first]
    predictions = logits_to_predictions(logits[torch.arange(n), first])
    return layers, predictions


class _FlopsTable:
    """``forward_flops`` of every (example, exit) pair, computed once per distinct length: sweeps stay fast."""

    def __init__(self, config: CostEffConfig, lengths: torch.Tensor):
        self.config = config
        unique, inverse = torch.unique(lengths, return_inverse=True)
        table = np.array(
            [[forward_flops(config, int(t), layer) for layer in config.exit_layers] for t in unique.tolist()],
            dtype=np.int64,
        )
        self.per_example = table[inverse.numpy()]  # (N, E) int64
        self.index = {layer: k for k, layer in enumerate(config.exit_layers)}

    def average(self, exit_layers: torch.Tensor) -> float:
        cols = np.array([self.index[int(layer)] for layer in exit_layers.tolist()])
        # Integer sum then one true division: bit-identical to cost.average_flops.
        return int(self.per_example[np.arange(len(cols)), cols].sum()) / len(cols)

    def full(self) -> float:
        return self.at_exit(-1)

    def at_exit(self, k: int) -> float:
        """Mean FLOPs when every example leaves at exit ``k``."""
        return int(self.per_example[:, k].sum()) / self.per_example.shape[0]


class PolicyResult(TypedDict):
    """Quality and cost of one early-exit policy on a labelled set: a row of a sweep, the CLI's JSON, a benchmark's.

    Keys: ``criterion``; ``threshold`` (entropy/confidence threshold, or the regression agreement threshold of
    ``"patience"``; ``None`` when unused); ``patience`` (``None`` unless ``"patience"``); ``metrics`` (the task's
    metrics); ``metric`` (its main one); ``avg_flops`` (mean FLOPs per example, ``cost.average_flops`` at the exits
    taken and the unpadded lengths); ``flops_speedup`` (FLOPs of every layer on the same examples / ``avg_flops``);
    ``avg_exit_layer``; ``layer_speedup`` (``num_hidden_layers / avg_exit_layer``); ``exit_histogram``
    ({layer: examples}).
    """

    criterion: str
    threshold: float | None
    patience: int | None
    metrics: dict[str, float]
    metric: float
    avg_flops: float
    flops_speedup: float
    avg_exit_layer: float
    layer_speedup: float
    exit_histogram: dict[int, int]


def compute_metrics(task: str | None, predictions, labels) -> dict[str, float]:
    """The GLUE metrics of ``task`` (``data.compute_glue_metrics``); without a task, accuracy for class ids and MSE
    for float predictions (regression)."""
    if task is not None:
        return compute_glue_metrics(task, predictions, labels)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if np.issubdtype(predictions.dtype, np.floating):
        return {"mse": float(np.mean((predictions.astype(np.float64) - labels) ** 2))}
    return {"accuracy": float(np.mean(predictions == labels))}


def _main_metric(task: str | None, metrics: Mapping[str, float]) -> float:
    return metrics[get_task(task).main_metric] if task is not None else next(iter(metrics.values()))


def per_exit_metrics(preds: ExitPredictions, task: str | None, config: CostEffConfig | None = None) -> list[dict]:
    """One row per exit, every example leaving there: ``{"exit_layer": layer, **metrics}``."""
    config = _config_of(preds, config)
    labels = preds.labels.numpy()
    return [
        {"exit_layer": layer, **compute_metrics(task, logits_to_predictions(preds.logits[:, k]).numpy(), labels)}
        for k, layer in enumerate(config.exit_layers)
    ]


def per_exit_flops(preds: ExitPredictions, config: CostEffConfig | None = None) -> list[float]:
    """Mean FLOPs per example at each exit, every example leaving there (``cost.average_flops`` at the examples'
    unpadded lengths): the cost side of :func:`per_exit_metrics`, one value per exit in the same order."""
    config = _config_of(preds, config)
    table = _FlopsTable(config, preds.lengths)
    return [table.at_exit(k) for k in range(len(config.exit_layers))]


def paired_bootstrap(
    task: str,
    predictions,
    reference_predictions,
    labels,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float] | None]:
    """Percentile intervals of a model's metric against a reference model's (a student against its teacher) on one
    evaluation set, by resampling its examples with replacement, the same resample for both.

    Returns ``{"metric", "reference", "difference", "ratio"}``, each ``(low, high)`` at ``level``: the model's main
    GLUE metric (fractions, as :func:`compute_metrics`), the reference's, ``metric - reference`` and
    ``metric / reference`` (``None`` when no resample leaves the reference above 0, as a Matthews correlation can).
    Pairing matters: both models get the same hard and easy examples in every resample, so the ratio's interval is
    narrower than the two metrics' intervals suggest. The intervals say how far the figures would move on another
    evaluation set drawn like this one, for the same trained models and the same exit thresholds; they say nothing of
    how far another training run would move them.
    """
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (exclusive), got {level!r}")
    predictions, reference_predictions, labels = (np.asarray(a) for a in (predictions, reference_predictions, labels))
    if not predictions.shape == reference_predictions.shape == labels.shape or labels.ndim != 1 or labels.size < 2:
        raise ValueError(
            f"predictions {predictions.shape}, reference_predictions {reference_predictions.shape} and labels "
            f"{labels.shape} must be 1-D, of one length, with at least 2 examples"
        )
    key = get_task(task).main_metric
    index = np.random.default_rng(seed).integers(0, labels.size, size=(resamples, labels.size))
    # A resample with one class (or a constant prediction) can leave a correlation undefined: nan, which the
    # percentiles below skip (a Matthews correlation or F1 is 0 there, as scikit-learn says).
    metric = batched_metric(key, predictions[index], labels[index])
    reference = batched_metric(key, reference_predictions[index], labels[index])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(reference > 0, metric / np.where(reference > 0, reference, 1.0), np.nan)
    tails = [50 * (1 - level), 50 * (1 + level)]

    def interval(values: np.ndarray) -> tuple[float, float] | None:
        if np.isnan(values).all():
            return None
        low, high = np.nanpercentile(values, tails)
        return float(low), float(high)

    return {
        "metric": interval(metric),
        "reference": interval(reference),
        "difference": interval(metric - reference),
        "ratio": interval(ratio),
    }


def _evaluate_policy(
    preds: ExitPredictions,
    config: CostEffConfig,
    task: str | None,
    criterion: str,
    value,
    table: _FlopsTable,
    regression_threshold: float | None,
) -> PolicyResult:
    layers, predictions = simulate_early_exit(preds, config, criterion, value, regression_threshold)
    metrics = compute_metrics(task, predictions.numpy(), preds.labels.numpy())
    avg_flops = table.average(layers)
    histogram = {int(layer): int((layers == layer).sum()) for layer in config.exit_layers}
    patience = value if criterion == "patience" else None
    return PolicyResult(
        criterion=criterion,
        threshold=regression_threshold if criterion == "patience" else value,
        patience=patience,
        metrics=metrics,
        metric=_main_metric(task, metrics),
        avg_flops=avg_flops,
        flops_speedup=table.full() / avg_flops,
        avg_exit_layer=float(layers.float().mean()),
        layer_speedup=config.num_hidden_layers / float(layers.float().mean()),
        exit_histogram=histogram,
    )


def evaluate_policy(
    preds: ExitPredictions,
    config: CostEffConfig | None,
    task: str | None,
    criterion: str,
    threshold_or_patience: float | int | None,
    regression_threshold: float | None = None,
) -> PolicyResult:
    """The :class:`PolicyResult` of one policy (arguments as :func:`simulate_early_exit`; ``task`` as
    :func:`compute_metrics`)."""
    config = _config_of(preds, config)
    table = _FlopsTable(config, preds.lengths)
    return _evaluate_policy(preds, config, task, criterion, threshold_or_patience, table, regression_threshold)


def sweep_thresholds(
    preds: ExitPredictions,
    config: CostEffConfig | None,
    task: str | None,
    criterion: str,
    thresholds: Sequence[float | int],
    regression_threshold: float | None = None,
) -> list[PolicyResult]:
    """One :class:`PolicyResult` per threshold (or patience): the task's metrics and cost had the model run with that
    policy. The FLOPs of every (example, exit) pair are computed once for the whole sweep."""
    config = _config_of(preds, config)
    if len(thresholds) == 0:
        raise ValueError("sweep_thresholds needs at least one threshold")
    table = _FlopsTable(config, preds.lengths)
    return [
        _evaluate_policy(preds, config, task, criterion, value, table, regression_threshold) for value in thresholds
    ]


def evaluate_exit_logits(
    preds: ExitPredictions,
    task: str | None = None,
    policies: Mapping[str, tuple[str, float | None, int | None]] | None = None,
    config: CostEffConfig | None = None,
) -> dict[str, float]:
    """Flat metrics of already-collected exit logits (e.g. gathered by ``Trainer.evaluation_loop``), for a log.

    ``policies``: ``{name: (criterion, threshold, patience)}``, the model's ``exit_*`` arguments. Returns
    ``exit{L}_{m}`` for every exit layer ``L`` and metric ``m``, ``mean_exit_{m}`` (the mean over exits), and per
    policy ``{name}_{m}``, ``{name}_avg_flops``, ``{name}_flops_speedup``, ``{name}_avg_exit_layer``,
    ``{name}_layer_speedup`` and ``{name}_exit_fraction_L{L}`` (the share of examples leaving at layer ``L``).
    """
    config = _config_of(preds, config)
    flat: dict[str, float] = {}
    sums: dict[str, float] = {}
    for row in per_exit_metrics(preds, task, config):
        for name, value in row.items():
            if name != "exit_layer":
                flat[f"exit{row['exit_layer']}_{name}"] = float(value)
                sums[name] = sums.get(name, 0.0) + float(value)
    flat.update({f"mean_exit_{name}": total / config.num_exits for name, total in sums.items()})
    table = _FlopsTable(config, preds.lengths)
    for name, (criterion, threshold, patience) in (policies or {}).items():
        if criterion == "patience":
            row = _evaluate_policy(preds, config, task, criterion, patience, table, threshold)
        else:
            row = _evaluate_policy(preds, config, task, criterion, threshold, table, None)
        flat.update({f"{name}_{m}": float(v) for m, v in row["metrics"].items()})
        for key in ("avg_flops", "flops_speedup", "avg_exit_layer", "layer_speedup"):
            flat[f"{name}_{key}"] = float(row[key])
        for layer, count in row["exit_histogram"].items():
            flat[f"{name}_exit_fraction_L{layer}"] = count / preds.logits.shape[0]
    return flat


def default_thresholds(preds: ExitPredictions, criterion: str, num: int = 60) -> list[float | int]:
    """Candidate thresholds spanning the criterion's range: quantiles of the observed per-exit scores (where the
    exit decisions actually change), plus the range's ends. Patience: every value 1..E."""
    num_exits, num_labels = preds.logits.shape[1:]
    if criterion == "patience":
        return list(range(1, num_exits + 1))
    if criterion not in ("entropy", "confidence"):
        raise ValueError(f"no thresholds for criterion {criterion!r}: use 'entropy', 'confidence' or 'patience'")
    scores = exit_score(preds.logits[:, :-1], criterion).flatten()
    low, high = (0.0, math.log(max(num_labels, 2))) if criterion == "entropy" else (0.0, 1.0)
    quantiles = torch.quantile(scores.double(), torch.linspace(0, 1, num, dtype=torch.float64)).tolist()
    candidates = {round(min(max(q, low), high), 6) for q in quantiles} | {low, high}
    # Entropy exits when < threshold: the ends (0 = never early, ln C = always at the first exit) both matter.
    return sorted(candidates, reverse=criterion == "confidence")


def first_exit_warning(result: PolicyResult, share: float = 0.9) -> str | None:
    """A warning when ``result``'s policy sends at least ``share`` of its examples out at the first exit, else ``None``.

    Such a policy is rarely what a calibration should find: it usually means the calibration rows were easier than the
    data the model will see (e.g. SST-2's short training phrases against its full dev sentences), not that the first
    layer is as good as the last. Measured on the examples, not read off the threshold: a threshold near the
    criterion's limit (entropy near ln(num_labels)) can still keep most examples going when the first exit is unsure.
    """
    histogram = result["exit_histogram"]
    total = sum(histogram.values())
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if total == 0:
        return None
    first = min(histogram)
    fraction = histogram[first] / total
    if fraction < share:
        return None
    value = result["patience"] if result["criterion"] == "patience" else result["threshold"]
    return (
        f"{result['criterion']} {value:.4g} sends {100 * fraction:.0f}% of the examples out at the first exit (layer "
        f"{first}): check it on the data you report (the calibration rows may be easier)"
    )


def default_regression_thresholds(preds: ExitPredictions, num: int = 20) -> list[float]:
    """Candidate agreement thresholds for patience on a regression model: 0 and quantiles of how far each exit's
    prediction lies from the previous exit's (where the patience counter's decisions actually change)."""
    if preds.logits.shape[-1] != 1:
        raise ValueError("default_regression_thresholds needs a regression model's predictions (num_labels=1)")
    if preds.num_exits < 2:
        return [0.0]
    gaps = (preds.logits[:, 1:, 0] - preds.logits[:, :-1, 0]).abs().flatten().double()
    # Just above each quantile: the counter counts a gap when it is strictly below the threshold.
    quantiles = torch.quantile(gaps, torch.linspace(0, 1, num, dtype=torch.float64)).tolist()
    return sorted({0.0} | {round(q, 6) + 1e-6 for q in quantiles})


def _check_target(max_metric_drop: float | None, min_speedup: float | None, margin: float) -> None:
    if (max_metric_drop is None) == (min_speedup is None):
        raise ValueError("give exactly one target: max_metric_drop or min_speedup")
    if max_metric_drop is not None and not max_metric_drop >= 0:
        raise ValueError(f"max_metric_drop must be >= 0, got {max_metric_drop}")
    if not 0 <= margin or (max_metric_drop is not None and margin > max_metric_drop):
        raise ValueError(f"margin must be in [0, max_metric_drop], got {margin}")
    if margin and max_metric_drop is None:
        raise ValueError("margin applies to max_metric_drop only")
    if min_speedup is not None and not min_speedup >= 1:
        raise ValueError(f"min_speedup must be >= 1 (a speed-up over running every layer), got {min_speedup}")


def _exit_predictions(model_or_preds, dataloader, caller: str) -> ExitPredictions:
    if isinstance(model_or_preds, ExitPredictions):
        return model_or_preds
    if dataloader is None:
        raise ValueError(f"{caller} needs a dataloader when given a model")
    return collect_exit_logits(model_or_preds, dataloader)


def _last_before_the_first_miss(rows: list[PolicyResult], within: Callable[[PolicyResult], bool]):
    """Walking ``rows`` from the most FLOPs to the fewest (cautious to aggressive), the last one before the first that
    is not ``within`` the budget (``None`` if the first already is not)."""
    pick = None
    for row in sorted(rows, key=lambda r: (-r["avg_flops"], -r["metric"])):
        if not within(row):
            break
        pick = row
    return pick


def _best_policy(
    preds: ExitPredictions,
    config: CostEffConfig,
    task: str,
    criterion: str,
    paths: Sequence[Sequence[tuple[float | int, float | None]]],
    max_metric_drop: float | None,
    min_speedup: float | None,
    margin: float,
) -> PolicyResult:
    """The best candidate for the target; see :func:`calibrate_threshold`. ``paths``: lists of
    ``(threshold_or_patience, regression_threshold)`` candidates along which the policy grows more aggressive (one
    path for a one-parameter rule; one per agreement threshold for a regression model's patience)."""
    table = _FlopsTable(config, preds.lengths)
    path_rows = [
        [_evaluate_policy(preds, config, task, criterion, value, table, reg) for value, reg in path] for path in paths
    ]
    rows = [row for path in path_rows for row in path]
    full = _evaluate_policy(preds, config, task, "none", None, table, None)["metric"]
    if max_metric_drop is not None:
        # A tiny tolerance so that a drop equal to the target (up to float rounding) counts as meeting it.
        allowed = max_metric_drop - margin

        def within(row: PolicyResult) -> bool:
            return full - row["metric"] <= allowed + 1e-12

        # Not simply the cheapest candidate within the drop: among ~60 noisy candidates, the cheapest that passes is
        # often a lucky one past a cliff, which then fails on the data it is applied to (the GLUE table's dev halves:
        # 13 of 34 fell back with that rule, 4 with this one). Along each path, stop before the first miss.
        picks = [row for path in path_rows if (row := _last_before_the_first_miss(path, within)) is not None]
        best = min(picks, key=lambda r: (r["avg_flops"], -r["metric"]), default=None)
        margin_text = f" - margin {margin}" if margin else ""
        target = f"a metric drop <= {max_metric_drop}{margin_text} (all layers: {full:.4f})"
    else:
        ok = [r for r in rows if r["flops_speedup"] >= min_speedup - 1e-12]
        best = max(ok, key=lambda r: (r["metric"], -r["avg_flops"]), default=None)
        target = f"a FLOPs speed-up >= {min_speedup}"
    if best is None:
        reached = max(rows, key=lambda r: r["flops_speedup"])
        raise ValueError(
            f"no {criterion} policy among {len(rows)} candidates reaches {target}; the fastest candidate gives a "
            f"speed-up of {reached['flops_speedup']:.2f}x at metric {reached['metric']:.4f}"
        )
    warning = first_exit_warning(best)
    if warning is not None:
        logger.warning("calibrated policy: %s", warning)
    return best


def calibrate_threshold(
    model_or_preds: nn.Module | ExitPredictions,
    dataloader: Iterable[Mapping[str, torch.Tensor]] | None = None,
    *,
    task: str,
    criterion: str = "entropy",
    max_metric_drop: float | None = None,
    min_speedup: float | None = None,
    thresholds: Sequence[float | int] | None = None,
    config: CostEffConfig | None = None,
    margin: float = 0.0,
    regression_threshold: float | None = None,
) -> float | int:
    """The exit threshold (patience for ``"patience"``) that meets a target on a validation set.

    Exactly one target:
      * ``max_metric_drop``: the largest allowed drop of the task's main metric (in its own units, e.g. ``0.01`` =
        one accuracy point) below the same model running every layer. Walking the candidates from the most average
        FLOPs to the fewest (cautious to aggressive), returns the last one before the first that loses more: the
        fastest threshold such that every more cautious one keeps within the drop too. Not the fastest of all that
        pass, which on a noisy calibration set is often a lucky threshold past a cliff (it then loses far more on the
        data it is applied to).
      * ``min_speedup``: the smallest FLOPs speed-up over running every layer. Returns the most accurate threshold
        reaching it; ties go to the faster one.

    ``margin``: a safety margin for ``max_metric_drop``: the calibration rows must stay within
    ``max_metric_drop - margin``, so that the sampling noise of the calibration set does not spend the whole budget
    (a drop measured on ``n`` rows has a standard error of about ``sqrt(discordant fraction / n)``). Check the result
    on the data you report (see the main job in examples/run_costeff_glue.py).

    ``model_or_preds``: a CostEff model (with ``dataloader``) or :class:`ExitPredictions`. ``thresholds``: candidates
    (default :func:`default_thresholds`). ``regression_threshold``: for ``"patience"`` on a regression model, the
    fixed agreement threshold of two consecutive exits (:func:`calibrate_policy` chooses it too). Raises
    ``ValueError`` when no candidate meets the target. Logs a warning when the result sends nearly every calibration
    row out at the first exit (:func:`first_exit_warning`).
    """
    _check_target(max_metric_drop, min_speedup, margin)
    preds = _exit_predictions(model_or_preds, dataloader, "calibrate_threshold")
    config = _config_of(preds, config)
    if criterion == "patience" and preds.logits.shape[-1] == 1 and regression_threshold is None:
        raise ValueError(
            "regression_threshold must be given to calibrate patience on a regression model (two consecutive exits "
            "agree when their predictions differ by less than it); calibrate_policy chooses it with the patience"
        )
    if regression_threshold is not None and criterion != "patience":
        raise ValueError(f"regression_threshold applies to criterion='patience' only, got criterion={criterion!r}")
    candidates = list(thresholds) if thresholds is not None else default_thresholds(preds, criterion)
    best = _best_policy(
        preds,
        config,
        task,
        criterion,
        [[(value, regression_threshold) for value in candidates]],
        max_metric_drop,
        min_speedup,
        margin,
    )
    return best["patience"] if criterion == "patience" else best["threshold"]


def calibrate_policy(
    model_or_preds: nn.Module | ExitPredictions,
    dataloader: Iterable[Mapping[str, torch.Tensor]] | None = None,
    *,
    task: str,
    criterion: str | None = None,
    max_metric_drop: float | None = None,
    min_speedup: float | None = None,
    config: CostEffConfig | None = None,
    margin: float = 0.0,
    regression_thresholds: Sequence[float] | None = None,
) -> ExitPolicy:
    """The whole exit policy that meets a target on a validation set, ready for the configuration:
    ``calibrate_policy(...).apply(model.config)``.

    ``criterion`` defaults to ``"entropy"`` for a classifier and ``"patience"`` for a regression model (the only
    rule a single output supports). Entropy, confidence and a classifier's patience have one parameter, chosen as
    :func:`calibrate_threshold` chooses it. Patience on a regression model has two, the patience and the agreement
    threshold of consecutive exits: for each of ``regression_thresholds`` (default
    :func:`default_regression_thresholds`) the patience is chosen as :func:`calibrate_threshold` would, and the
    fastest of those pairs is returned (with ``min_speedup``: the most accurate pair reaching it). Same targets,
    ``margin`` and ``ValueError`` as :func:`calibrate_threshold`.
    """
    _check_target(max_metric_drop, min_speedup, margin)
    preds = _exit_predictions(model_or_preds, dataloader, "calibrate_policy")
    config = _config_of(preds, config)
    regression = preds.logits.shape[-1] == 1
    criterion = criterion if criterion is not None else ("patience" if regression else "entropy")
    if regression_thresholds is not None and not (criterion == "patience" and regression):
        raise ValueError("regression_thresholds applies to criterion='patience' on a regression model only")
    if criterion == "patience" and regression:
        thresholds = (
            list(regression_thresholds) if regression_thresholds is not None else default_regression_thresholds(preds)
        )
        if not thresholds:
            raise ValueError("regression_thresholds must hold at least one threshold")
        paths = [[(p, t) for p in default_thresholds(preds, "patience")] for t in thresholds]
    else:
        paths = [[(value, None) for value in default_thresholds(preds, criterion)]]
    best = _best_policy(preds, config, task, criterion, paths, max_metric_drop, min_speedup, margin)
    # A PolicyResult's threshold/patience are already the configuration's fields (None where the rule has none).
    return ExitPolicy(criterion, best["threshold"], best["patience"])


def _pad(features: Sequence[Mapping], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized examples into ``(B, T)`` tensors (T = longest example)."""
    length = max(len(f["input_ids"]) for f in features)
    batch = {}
    for key in _INPUT_KEYS:
        if key not in features[0]:
            continue
        pad = pad_token_id if key == "input_ids" else 0
        batch[key] = torch.tensor([list(f[key]) + [pad] * (length - len(f[key])) for f in features], dtype=torch.long)
    return batch


def make_batches(features: Sequence[Mapping], batch_size: int, pad_token_id: int = 0) -> list[dict[str, torch.Tensor]]:
    """Padded input batches (``input_ids``, ``attention_mask``, ``token_type_ids``) of ``batch_size`` examples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(features) == 0:
        raise ValueError("make_batches needs at least one example")
    return [_pad(features[i : i + batch_size], pad_token_id) for i in range(0, len(features), batch_size)]


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    data: Sequence[Mapping] | Iterable[Mapping[str, torch.Tensor]],
    batch_size: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    **forward_kwargs,
) -> float:
    """Median over ``repeats`` timed passes of the mean wall time per batch, in seconds.

    ``data``: tokenized examples (a ``datasets.Dataset`` or a list of dicts, batched here by ``batch_size`` and
    padded to each batch's longest example) or ready batches of tensors (a DataLoader or list of dicts of tensors).
    The batches are built before timing; ``warmup`` untimed passes come first. ``forward_kwargs`` go to every call
    (e.g. ``exit_criterion="entropy", exit_threshold=0.3`` for the real early exit). Throughput is
    ``batch_size / result`` when every batch is full.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    first = data[0] if isinstance(data, Sequence) or hasattr(data, "__getitem__") else None
    ids = first.get("input_ids") if first is not None else None
    if first is not None and not (isinstance(ids, torch.Tensor) and ids.dim() == 2):
        pad_id = getattr(model.config, "pad_token_id", 0) or 0
        batches = make_batches(list(data), batch_size, pad_id)
    else:
        batches = [_model_inputs(batch, torch.device("cpu")) for batch in data]
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            for batch in batches:
                model(**batch, **forward_kwargs)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for batch in batches:
                model(**batch, **forward_kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) / len(batches))
    finally:
        model.train(was_training)
    return statistics.median(times)


__all__ = [
    "ExitPredictions",
    "PolicyResult",
    "calibrate_policy",
    "calibrate_threshold",
    "collect_exit_logits",
    "compute_metrics",
    "default_regression_thresholds",
    "default_thresholds",
    "evaluate_exit_logits",
    "evaluate_policy",
    "first_exit_warning",
    "logits_to_predictions",
    "make_batches",
    "measure_latency",
    "per_exit_flops",
    "per_exit_metrics",
    "simulate_early_exit",
    "sweep_thresholds",
]
