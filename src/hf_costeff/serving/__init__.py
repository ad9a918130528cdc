"""Serving CostEff models: Hub packaging (remote code, model card, atomic saves, strict loading), big-model device
maps, an early-exit pipeline, and ONNX export with an ONNX Runtime early-exit model (``serving.onnx``, torch-free at
inference). Importing this package registers the ``"costeff-text-classification"`` task."""

from transformers.utils import is_torch_available

from .model_card import build_model_card, card_template, write_model_card
from .onnx import ORTCostEffForSequenceClassification, export_onnx

# Without torch only the model cards and the ONNX Runtime model are usable (see hf_costeff/__init__.py).
if is_torch_available():
    from .hub import (
        AUTO_MAP,
        costeff_device_map,
        load_costeff,
        prepare_for_hub,
        push_costeff_to_hub,
        recover_interrupted_save,
        save_pretrained_atomic,
    )
    from .pipeline import TASK, EarlyExitTextClassificationPipeline, register_pipeline, summarize_results

    register_pipeline()

__all__ = [
    "AUTO_MAP",
    "TASK",
    "EarlyExitTextClassificationPipeline",
    "ORTCostEffForSequenceClassification",
    "build_model_card",
    "card_template",
    "costeff_device_map",
    "export_onnx",
    "load_costeff",
    "prepare_for_hub",
    "push_costeff_to_hub",
    "recover_interrupted_save",
    "register_pipeline",
    "save_pretrained_atomic",
    "summarize_results",
    "write_model_card",
]
