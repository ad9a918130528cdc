"""Training CostEff models with ``transformers.Trainer``: every exit, distillation, in-training slenderization."""

from .distillation import (
    build_hidden_projections,
    hard_label_loss,
    hidden_distillation_loss,
    layer_mapping,
    masked_hidden_mse,
    prediction_distillation_loss,
)
from .metrics import early_exit_metrics, logits_to_predictions, make_metric_fn, per_exit_metrics
from .pruning_callback import SlenderizeCallback
from .trainer import MultiExitTrainer

__all__ = [
    "MultiExitTrainer",
    "SlenderizeCallback",
    "build_hidden_projections",
    "early_exit_metrics",
    "hard_label_loss",
    "hidden_distillation_loss",
    "layer_mapping",
    "logits_to_predictions",
    "make_metric_fn",
    "masked_hidden_mse",
    "per_exit_metrics",
    "prediction_distillation_loss",
]
