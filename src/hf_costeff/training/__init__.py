"""Training CostEff models with ``transformers.Trainer``: every exit, distillation, in-training slenderization, on
one process or many (DDP)."""

from .distillation import (
    build_hidden_projections,
    hard_label_loss,
    hidden_distillation_loss,
    layer_mapping,
    masked_hidden_mse,
    prediction_distillation_loss,
)
from .pruning_callback import SlenderizeCallback
from .recipe import COSTEFF_STAGE_LOSS_WEIGHTS, stage_loss_weights
from .trainer import MultiExitTrainer

__all__ = [
    "COSTEFF_STAGE_LOSS_WEIGHTS",
    "MultiExitTrainer",
    "SlenderizeCallback",
    "build_hidden_projections",
    "hard_label_loss",
    "hidden_distillation_loss",
    "layer_mapping",
    "masked_hidden_mse",
    "prediction_distillation_loss",
    "stage_loss_weights",
]
