"""Per-exit and early-exit metrics of a multi-exit model, as plain functions of numpy arrays.

``MultiExitTrainer.evaluate`` gathers the arrays and calls these; they are usable on their own after any evaluation
loop. Metric names are flat (``exit3_accuracy``, ``early_exit_entropy_0.3_accuracy``...) so that ``Trainer.log``
accepts them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..configuration_costeff import CostEffConfig
from ..cost import average_flops, forward_flops

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def make_metric_fn(task: str | None = None, num_labels: int = 2) -> MetricFn:
    """``fn(predictions, references) -> dict``: the GLUE metrics of ``task`` (``compute_glue_metrics``), or, without a
    task, accuracy for classification and MSE for regression. ``predictions`` are class ids (or floats when
    ``num_labels == 1``)."""
    if task is not None:
        from ..data import compute_glue_metrics  # noqa: PLC0415 (data imports datasets; keep it lazy)

        return lambda predictions, references: compute_glue_metrics(task, predictions, references)
    if num_labels == 1:
        return lambda predictions, references: {
            "mse": float(np.mean((np.asarray(predictions, dtype=np.float64) - np.asarray(references)) ** 2))
        }
    return lambda predictions, references: {
        "accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))
    }


def logits_to_predictions(logits: np.ndarray) -> np.ndarray:
    """``(..., num_labels)`` logits -> class ids ``(...)``, or the squeezed value for one output (regression)."""
    logits = np.asarray(logits)
    return logits[..., 0] if logits.shape[-1] == 1 else logits.argmax(-1)


def per_exit_metrics(
    all_exit_logits: np.ndarray, labels: np.ndarray, exit_layers: Sequence[int], metric_fn: MetricFn
) -> dict[str, float]:
    """Metrics of every exit run on every example.

    Args:
        all_exit_logits: ``(num_examples, num_exits, num_labels)``.
        labels: ``(num_examples,)``.
        exit_layers: the 1-based layer of each exit (``config.exit_layers``), used in the names: ``exit{layer}_{m}``.
    Returns also ``mean_exit_{m}``: the mean over exits (COST-EFF selects checkpoints on it).
    """
    all_exit_logits = np.asarray(all_exit_logits)
    if all_exit_logits.ndim != 3 or all_exit_logits.shape[1] != len(exit_layers):
        raise ValueError(
            f"all_exit_logits must be (examples, {len(exit_layers)} exits, labels), got {all_exit_logits.shape}"
        )
    metrics: dict[str, float] = {}
    sums: dict[str, float] = {}
    for k, layer in enumerate(exit_layers):
        for name, value in metric_fn(logits_to_predictions(all_exit_logits[:, k]), labels).items():
            metrics[f"exit{layer}_{name}"] = float(value)
            sums[name] = sums.get(name, 0.0) + float(value)
    metrics.update({f"mean_exit_{name}": total / len(exit_layers) for name, total in sums.items()})
    return metrics


def early_exit_metrics(
    config: CostEffConfig,
    logits: np.ndarray,
    exit_layer: np.ndarray,
    seq_lengths: np.ndarray,
    labels: np.ndarray,
    metric_fn: MetricFn,
    prefix: str = "early_exit_",
) -> dict[str, float]:
    """Quality and cost of one early-exit run.

    Args:
        config: the evaluated model's configuration (its shapes give the FLOPs).
        logits: ``(num_examples, num_labels)``, each example's logits at the exit it left from.
        exit_layer: ``(num_examples,)`` 1-based layer each example left after.
        seq_lengths: ``(num_examples,)`` unpadded token counts (FLOPs are counted on real tokens).
        labels: ``(num_examples,)``.
    Returns ``{prefix}{metric}``, ``{prefix}avg_flops`` (per example, ``hf_costeff.cost.average_flops``),
    ``{prefix}flops_ratio`` (vs. running every layer on the same examples), ``{prefix}avg_exit_layer``,
    ``{prefix}layer_speedup`` (``num_layers / avg_exit_layer``) and ``{prefix}exit_fraction_L{layer}`` for every exit
    layer (the exit-layer histogram, as fractions of examples).
    """
    exit_layer = np.asarray(exit_layer).astype(int)
    seq_lengths = np.asarray(seq_lengths).astype(int)
    if not (len(exit_layer) == len(seq_lengths) == len(labels) == len(logits)) or len(labels) == 0:
        raise ValueError(
            f"logits ({len(logits)}), exit_layer ({len(exit_layer)}), seq_lengths ({len(seq_lengths)}) and labels "
            f"({len(labels)}) must hold the same non-zero number of examples"
        )
    metrics = {f"{prefix}{name}": float(v) for name, v in metric_fn(logits_to_predictions(logits), labels).items()}
    flops = average_flops(config, exit_layer.tolist(), seq_lengths.tolist())
    full = sum(forward_flops(config, int(t)) for t in seq_lengths) / len(seq_lengths)
    avg_layer = float(exit_layer.mean())
    metrics[f"{prefix}avg_flops"] = float(flops)
    metrics[f"{prefix}flops_ratio"] = float(flops / full)
    metrics[f"{prefix}avg_exit_layer"] = avg_layer
    metrics[f"{prefix}layer_speedup"] = config.num_hidden_layers / avg_layer
    for layer in config.exit_layers:
        metrics[f"{prefix}exit_fraction_L{layer}"] = float(np.mean(exit_layer == layer))
    return metrics


__all__ = ["MetricFn", "early_exit_metrics", "logits_to_predictions", "make_metric_fn", "per_exit_metrics"]
