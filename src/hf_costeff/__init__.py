"""hf-costeff: slenderized multi-exit BERT (COST-EFF) for the Hugging Face ecosystem.

Four places, one per stage:

* the model: ``configuration_costeff`` / ``modeling_costeff`` (``CostEffConfig``, ``CostEffForSequenceClassification``);
* the slenderization: ``hf_costeff.slenderize`` (exit-aware importance, real pruning, embedding factorization);
* the training: ``hf_costeff.training`` (``MultiExitTrainer``, ``SlenderizeCallback``);
* the serving: ``hf_costeff.serving`` (Hub packaging, strict loading, device maps, the early-exit pipeline).

Importing the package registers ``CostEffConfig`` and the CostEff models with the Auto classes and the
``"costeff-text-classification"`` pipeline task.
"""

from transformers import AutoConfig
from transformers.utils import is_torch_available

from .configuration_costeff import CostEffConfig
from .cost import average_flops, count_parameters, forward_flops, layer_flops

AutoConfig.register("costeff", CostEffConfig, exist_ok=True)

# Without torch only the configuration, the cost formulas and the ONNX Runtime model (hf_costeff.serving.onnx) load:
# a CPU serving image for an exported model needs numpy and onnxruntime, not torch.
if is_torch_available():
    from transformers import AutoModel, AutoModelForSequenceClassification

    from .modeling_costeff import (
        CostEffForSequenceClassification,
        CostEffModel,
        CostEffPreTrainedModel,
        CostEffSequenceClassifierOutput,
    )

    AutoModel.register(CostEffConfig, CostEffModel, exist_ok=True)
    AutoModelForSequenceClassification.register(CostEffConfig, CostEffForSequenceClassification, exist_ok=True)

    from .serving import EarlyExitTextClassificationPipeline, load_costeff, push_costeff_to_hub  # registers the task

from .serving import ORTCostEffForSequenceClassification, export_onnx  # noqa: E402

# Imported on first use: ``transformers.Trainer`` and ``datasets`` add seconds to ``import hf_costeff``.
_LAZY = {
    "compute_glue_metrics": "data",
    "load_glue": "data",
    "tokenize_glue": "data",
    "calibrate_policy": "evaluation",
    "calibrate_threshold": "evaluation",
    "collect_exit_logits": "evaluation",
    "simulate_early_exit": "evaluation",
    "sweep_thresholds": "evaluation",
    "PruningConfig": "slenderize",
    "compute_importance": "slenderize",
    "factorize_embeddings": "slenderize",
    "plan_widths": "slenderize",
    "prune_model": "slenderize",
    "trim_vocabulary": "slenderize",
    "MultiExitTrainer": "training",
    "SlenderizeCallback": "training",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "CostEffConfig",
    "CostEffForSequenceClassification",
    "CostEffModel",
    "CostEffPreTrainedModel",
    "CostEffSequenceClassifierOutput",
    "EarlyExitTextClassificationPipeline",
    "MultiExitTrainer",
    "ORTCostEffForSequenceClassification",
    "PruningConfig",
    "SlenderizeCallback",
    "average_flops",
    "calibrate_policy",
    "calibrate_threshold",
    "collect_exit_logits",
    "compute_glue_metrics",
    "compute_importance",
    "count_parameters",
    "export_onnx",
    "factorize_embeddings",
    "forward_flops",
    "layer_flops",
    "load_costeff",
    "load_glue",
    "plan_widths",
    "prune_model",
    "push_costeff_to_hub",
    "simulate_early_exit",
    "sweep_thresholds",
    "tokenize_glue",
    "trim_vocabulary",
]
