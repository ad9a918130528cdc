"""Width planning: how many heads and FFN neurons each layer keeps to meet a ``PruningConfig``, and applying it."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..configuration_costeff import CostEffConfig
from ..cost import count_parameters
from .config import PruningConfig
from .embedding import factorize_embeddings
from .importance import Importance
from .layer import prune_model

logger = logging.getLogger(__name__)


def head_cost(config: CostEffConfig) -> int:
    """Encoder parameters of one attention head: its query/key/value rows and biases, and output-dense columns."""
    return 4 * config.hidden_size * config.head_dim + 3 * config.head_dim


def neuron_cost(config: CostEffConfig) -> int:
    """Encoder parameters of one FFN neuron: its intermediate row and bias, and output-dense column."""
    return 2 * config.hidden_size + 1


def unpruned_config(config: CostEffConfig) -> CostEffConfig:
    """A copy of ``config`` with ``num_attention_heads`` heads and ``intermediate_size`` neurons in every layer."""
    full = config.__class__.from_dict(config.to_dict())
    full.layer_num_heads = [config.num_attention_heads] * config.num_hidden_layers
    full.layer_intermediate_sizes = [config.intermediate_size] * config.num_hidden_layers
    return full


def plan_widths(
    config: CostEffConfig, importance: Importance | None, pruning_config: PruningConfig
) -> tuple[list[int], list[int]]:
    """Per-layer widths ``(layer_num_heads, layer_intermediate_sizes)`` that meet ``pruning_config``.

    Explicit widths are taken as given (a layer is never widened: a target above the current width keeps the current
    one; unset lists keep the current widths). A global budget removes the heads and neurons of lowest
    ``importance / parameter cost`` across all layers until the encoder has at most
    ``encoder_keep_fraction * encoder parameters of the unpruned model``; it stops within one unit's cost of the
    budget, and never takes a layer below ``keep_min_heads`` heads. ``importance`` is needed only for a budget.
    """
    if not isinstance(pruning_config, PruningConfig):
        raise ValueError(f"pruning_config must be a PruningConfig, got {type(pruning_config).__name__}")
    layers = config.num_hidden_layers
    current_heads, current_ffn = list(config.layer_num_heads), list(config.layer_intermediate_sizes)
    if pruning_config.encoder_keep_fraction is None:
        heads = current_heads if pruning_config.layer_num_heads is None else pruning_config.heads(layers)
        ffn = current_ffn if pruning_config.layer_intermediate_sizes is None else pruning_config.ffn(layers)
        return (
            [min(t, c) for t, c in zip(heads, current_heads, strict=True)],
            [min(t, c) for t, c in zip(ffn, current_ffn, strict=True)],
        )

    if importance is None:
        raise ValueError("a global budget (encoder_keep_fraction) needs importance scores")
    importance.check(config)
    target = pruning_config.encoder_keep_fraction * count_parameters(unpruned_config(config))["encoder"]
    params = count_parameters(config)["encoder"]
    h_cost, n_cost = head_cost(config), neuron_cost(config)
    # One candidate per unit: (importance per parameter, kind, layer, cost); removed cheapest-per-parameter first.
    scores = torch.cat([h / h_cost for h in importance.heads] + [n / n_cost for n in importance.neurons])
    kinds = [(0, i) for i in range(layers) for _ in range(current_heads[i])]
    kinds += [(1, i) for i in range(layers) for _ in range(current_ffn[i])]
    heads, ffn = list(current_heads), list(current_ffn)
    floor = [min(pruning_config.keep_min_heads, h) for h in current_heads]
    for unit in torch.argsort(scores, stable=True).tolist():
        if params <= target:
            break
        kind, layer = kinds[unit]
        if kind == 0:
            if heads[layer] <= floor[layer]:
                continue
            heads[layer] -= 1
            params -= h_cost
        else:
            ffn[layer] -= 1
            params -= n_cost
    if params > target:
        logger.warning(
            "encoder_keep_fraction=%g is out of reach with keep_min_heads=%d: the encoder keeps %d parameters "
            "(budget %d)",
            pruning_config.encoder_keep_fraction,
            pruning_config.keep_min_heads,
            params,
            int(target),
        )
    return heads, ffn


def apply_pruning_config(model: nn.Module, importance: Importance | None, pruning_config: PruningConfig) -> dict:
    """Slenderize ``model`` in place to ``pruning_config``: plan the widths, prune, and factorize the word embedding
    when ``pruning_config.embedding_rank`` is set (the one place a requested embedding rank is applied).

    Returns ``{"layer_num_heads", "layer_intermediate_sizes", "embedding_error"}`` (``embedding_error`` is
    ``factorize_embeddings``' relative reconstruction error, ``None`` without a rank).
    """
    heads, ffn = plan_widths(model.config, importance, pruning_config)
    if heads != list(model.config.layer_num_heads) or ffn != list(model.config.layer_intermediate_sizes):
        if importance is None:
            raise ValueError("pruning to smaller widths needs importance scores (compute_importance)")
        prune_model(model, importance, heads, ffn)
    rank = pruning_config.embedding_rank
    error = factorize_embeddings(model, rank) if rank is not None else None
    return {"layer_num_heads": heads, "layer_intermediate_sizes": ffn, "embedding_error": error}


__all__ = ["apply_pruning_config", "head_cost", "neuron_cost", "plan_widths", "unpruned_config"]
