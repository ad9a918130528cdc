"""hf-costeff: slenderized multi-exit BERT (COST-EFF) for the Hugging Face ecosystem.

Importing the package registers ``CostEffConfig`` and the CostEff models with the Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .configuration_costeff import CostEffConfig
from .cost import average_flops, count_parameters, forward_flops, layer_flops
from .modeling_costeff import (
    CostEffForSequenceClassification,
    CostEffModel,
    CostEffPreTrainedModel,
    CostEffSequenceClassifierOutput,
)

AutoConfig.register("costeff", CostEffConfig, exist_ok=True)
AutoModel.register(CostEffConfig, CostEffModel, exist_ok=True)
AutoModelForSequenceClassification.register(CostEffConfig, CostEffForSequenceClassification, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "CostEffConfig",
    "CostEffForSequenceClassification",
    "CostEffModel",
    "CostEffPreTrainedModel",
    "CostEffSequenceClassifierOutput",
    "average_flops",
    "count_parameters",
    "forward_flops",
    "layer_flops",
]
