"""Slenderization (COST-EFF stage 2): exit-aware structured pruning of attention heads and FFN neurons, and
low-rank factorization and task-vocabulary trimming of the word embedding.

One job per module: ``importance`` (Taylor scores), ``plan`` (widths that meet a target), ``layer`` (masks and
slicing of one layer), ``embedding`` (SVD), ``vocabulary`` (task-vocabulary trimming), ``config`` (``PruningConfig``, saved beside the model).

```python
from hf_costeff.slenderize import PruningConfig, apply_pruning_config, compute_importance

importance = compute_importance(model, calibration_loader, exit_weighting="all", max_batches=20)
pruning_config = PruningConfig(encoder_keep_fraction=0.5, embedding_rank=128)
apply_pruning_config(model, importance, pruning_config)  # plan_widths + prune_model + factorize_embeddings
pruning_config.save_pretrained("out")  # pruning_config.json beside the model
model, tokenizer = trim_vocabulary(model, tokenizer, train_sentences, corpus="glue/sst2 train")
```
"""

from ..cost import summary
from .config import PRUNING_CONFIG_NAME, PruningConfig, per_layer
from .embedding import factorize_embeddings
from .importance import EXIT_WEIGHTINGS, Importance, compute_importance
from .layer import encoder_layers, prune_layer, prune_model, unit_masks
from .plan import apply_pruning_config, head_cost, neuron_cost, plan_widths, unpruned_config
from .vocabulary import trim_vocabulary, unknown_token_rate, write_vocab_file

__all__ = [
    "EXIT_WEIGHTINGS",
    "PRUNING_CONFIG_NAME",
    "Importance",
    "PruningConfig",
    "apply_pruning_config",
    "compute_importance",
    "encoder_layers",
    "factorize_embeddings",
    "head_cost",
    "neuron_cost",
    "per_layer",
    "plan_widths",
    "prune_layer",
    "prune_model",
    "summary",
    "trim_vocabulary",
    "unit_masks",
    "unknown_token_rate",
    "unpruned_config",
    "write_vocab_file",
]
