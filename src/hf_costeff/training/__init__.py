"""Training CostEff models with ``transformers.Trainer``: every exit, distillation, in-training slenderization, on
one process or many (DDP)."""

from . import distillation, recipe
from .distillation import *  # noqa: F403  (the losses: their list is distillation.__all__)
from .pruning_callback import SlenderizeCallback
from .recipe import *  # noqa: F403  (the recipe's stage loss weights: recipe.__all__)
from .trainer import MultiExitTrainer

__all__ = ["MultiExitTrainer", "SlenderizeCallback", *distillation.__all__, *recipe.__all__]
