"""One layer's structured pruning: head/neuron masks (to score units) and slicing (to remove them).

Masks are applied to a CostEff model through forward pre-hooks (nothing in the model changes).

A head mask of layer ``l`` multiplies the input of ``encoder.layer[l].attention.output.dense``, the attention context
``(batch, seq, heads * head_dim)``, by the mask expanded over ``head_dim``: a 0 removes that head's contribution
exactly as deleting its rows/columns would. A neuron mask multiplies the input of ``encoder.layer[l].output.dense``,
the FFN activations ``(batch, seq, F_l)``. With masks of ones that require grad, ``mask.grad`` is the first-order
Taylor estimate of the loss change when the unit is removed (Molchanov et al. 2017; Michel et al. 2019).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from .config import per_layer, update_model_configs

if TYPE_CHECKING:
    from .importance import Importance


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """``encoder.layer`` of a ``CostEffForSequenceClassification`` or a bare ``CostEffModel``."""
    base = getattr(model, "costeff", model)
    encoder = getattr(base, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer"):
        raise ValueError(f"{type(model).__name__} is not a CostEff model (no encoder.layer)")
    return encoder.layer


def _default_masks(
    layers: nn.ModuleList, head_dim: int, values: Sequence[torch.Tensor] | None, kind: str
) -> list[torch.Tensor]:
    masks = []
    for i, layer in enumerate(layers):
        dense = layer.attention.output.dense if kind == "head" else layer.output.dense
        width = dense.in_features // head_dim if kind == "head" else dense.in_features
        param = dense.weight
        if values is None:
            mask = torch.ones(width, dtype=param.dtype, device=param.device)
        else:
            mask = torch.as_tensor(values[i], dtype=param.dtype, device=param.device).detach().clone()
            if mask.shape != (width,):
                raise ValueError(f"{kind} mask of layer {i} has shape {tuple(mask.shape)}, expected ({width},)")
        masks.append(mask)
    return masks


@contextmanager
def unit_masks(
    model: nn.Module,
    head_masks: Sequence[torch.Tensor] | None = None,
    neuron_masks: Sequence[torch.Tensor] | None = None,
    requires_grad: bool = False,
) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Install head/neuron masks on every layer for the duration of the ``with`` block, then remove them.

    Args:
        model: a CostEff model.
        head_masks: one ``(layer_num_heads[l],)`` tensor per layer; default ones.
        neuron_masks: one ``(layer_intermediate_sizes[l],)`` tensor per layer; default ones.
        requires_grad: make the masks leaf tensors that require grad (their ``.grad`` is then the Taylor score).

    Yields:
        ``(head_masks, neuron_masks)``: the tensors in use (copies of the given values).
    """
    layers = encoder_layers(model)
    head_dim = model.config.head_dim
    heads = _default_masks(layers, head_dim, head_masks, "head")
    neurons = _default_masks(layers, head_dim, neuron_masks, "neuron")
    for mask in (*heads, *neurons):
        mask.requires_grad_(requires_grad)

    def head_hook(mask: torch.Tensor):
        def hook(module: nn.Module, args: tuple) -> tuple:
            # (B, T, heads * head_dim) * (heads * head_dim,): each head's slice scaled by its mask value.
            return (args[0] * mask.repeat_interleave(head_dim),) + args[1:]

        return hook

    def neuron_hook(mask: torch.Tensor):
        def hook(module: nn.Module, args: tuple) -> tuple:
            return (args[0] * mask,) + args[1:]

        return hook

    handles = []
    try:
        for layer, head_mask, neuron_mask in zip(layers, heads, neurons, strict=True):
            handles.append(layer.attention.output.dense.register_forward_pre_hook(head_hook(head_mask)))
            handles.append(layer.output.dense.register_forward_pre_hook(neuron_hook(neuron_mask)))
        yield heads, neurons
    finally:
        for handle in handles:
            handle.remove()


def _keep_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """``prune_linear_layer`` keeping dtype and ``requires_grad`` (it returns float32, trainable layers)."""
    with warnings.catch_warnings():
        # nn.Linear's init warns on a zero-size weight (a fully pruned block); the weight is overwritten anyway.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        new = prune_linear_layer(linear, index, dim)
    new = new.to(dtype=linear.weight.dtype)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if linear.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


@torch.no_grad()
def prune_layer(layer: nn.Module, heads: Sequence[int] | None, neurons: Sequence[int] | None, head_dim: int) -> None:
    """Keep only the heads ``heads`` and FFN neurons ``neurons`` (indices; ``None`` keeps all) of one ``CostEffLayer``.

    Slices the query/key/value rows (and biases) of removed heads, the matching input columns of
    ``attention.output.dense``, the rows (and bias) of ``intermediate.dense`` and the input columns of
    ``output.dense``; an empty list leaves empty projections (the block adds only its output bias).
    """
    if heads is not None:
        attention = layer.attention
        keep = torch.tensor(list(heads), dtype=torch.long)
        index = (keep[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        for name in ("query", "key", "value"):
            setattr(attention.self, name, _keep_linear(getattr(attention.self, name), index, dim=0))
        attention.output.dense = _keep_linear(attention.output.dense, index, dim=1)
        attention.self.num_heads = len(keep)
    if neurons is not None:
        keep = torch.tensor(list(neurons), dtype=torch.long)
        layer.intermediate.dense = _keep_linear(layer.intermediate.dense, keep, dim=0)
        layer.output.dense = _keep_linear(layer.output.dense, keep, dim=1)


@torch.no_grad()
def prune_model(
    model: nn.Module,
    importance: Importance,
    layer_num_heads: Sequence[int] | int,
    layer_intermediate_sizes: Sequence[int] | int,
) -> nn.Module:
    """Remove, in place, all but the ``layer_num_heads[l]`` most important heads and ``layer_intermediate_sizes[l]``
    neurons of every layer (:func:`prune_layer`).

    Updates ``config.layer_num_heads`` / ``layer_intermediate_sizes`` and ``attention.self.num_heads``. Layers already
    at their target keep their Parameter objects; sliced layers get new ones, so an optimizer must be rebuilt.

    Returns:
        ``model`` itself.
    """
    config = model.config
    importance.check(config)
    heads = per_layer(layer_num_heads, config.num_hidden_layers, "layer_num_heads", config.layer_num_heads)
    ffn = per_layer(
        layer_intermediate_sizes,
        config.num_hidden_layers,
        "layer_intermediate_sizes",
        config.layer_intermediate_sizes,
    )
    for i, layer in enumerate(encoder_layers(model)):
        prune_layer(
            layer,
            importance.top_heads(i, heads[i]) if heads[i] != config.layer_num_heads[i] else None,
            importance.top_neurons(i, ffn[i]) if ffn[i] != config.layer_intermediate_sizes[i] else None,
            config.head_dim,
        )
    update_model_configs(model, layer_num_heads=list(heads), layer_intermediate_sizes=list(ffn))
    return model


__all__ = ["encoder_layers", "prune_layer", "prune_model", "unit_masks"]
