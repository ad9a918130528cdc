"""Serving CostEff models: Hub packaging (remote code, model card, atomic saves, strict loading), big-model device
maps and an early-exit pipeline. Importing this package registers the ``"costeff-text-classification"`` task."""

from .hub import (
    AUTO_MAP,
    costeff_device_map,
    load_costeff,
    prepare_for_hub,
    push_costeff_to_hub,
    recover_interrupted_save,
    save_pretrained_atomic,
)
from .model_card import build_model_card, card_template, write_model_card
from .pipeline import TASK, EarlyExitTextClassificationPipeline, register_pipeline, summarize_results

register_pipeline()

__all__ = [
    "AUTO_MAP",
    "TASK",
    "EarlyExitTextClassificationPipeline",
    "build_model_card",
    "card_template",
    "costeff_device_map",
    "load_costeff",
    "prepare_for_hub",
    "push_costeff_to_hub",
    "recover_interrupted_save",
    "register_pipeline",
    "save_pretrained_atomic",
    "summarize_results",
    "write_model_card",
]
