"""Slenderization (COST-EFF stage 2): exit-aware structured pruning of attention heads and FFN neurons, and
low-rank factorization and task-vocabulary trimming of the word embedding.

```python
from hf_costeff.slenderize import PruningConfig, compute_importance, plan_widths, prune_model, factorize_embeddings

importance = compute_importance(model, calibration_loader, exit_weighting="all", max_batches=20)
heads, ffn = plan_widths(model.config, importance, PruningConfig(encoder_keep_fraction=0.5))
prune_model(model, importance, heads, ffn)
error = factorize_embeddings(model, rank=128)
model, tokenizer = trim_vocabulary(model, tokenizer, train_sentences, corpus="glue/sst2 train")
```
"""

from .config import PruningConfig
from .layer import encoder_layers, unit_masks
from .model import (
    EXIT_WEIGHTINGS,
    KEEP_FRACTION_OF_UNPRUNED,
    Importance,
    compute_importance,
    factorize_embeddings,
    head_cost,
    neuron_cost,
    plan_widths,
    prune_model,
    summary,
    unpruned_config,
)
from .vocabulary import trim_vocabulary, unknown_token_rate, write_vocab_file

__all__ = [
    "EXIT_WEIGHTINGS",
    "KEEP_FRACTION_OF_UNPRUNED",
    "Importance",
    "PruningConfig",
    "compute_importance",
    "encoder_layers",
    "factorize_embeddings",
    "head_cost",
    "neuron_cost",
    "plan_widths",
    "prune_model",
    "summary",
    "trim_vocabulary",
    "unit_masks",
    "unknown_token_rate",
    "unpruned_config",
    "write_vocab_file",
]
