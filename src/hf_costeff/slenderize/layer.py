"""Head and FFN-neuron masks applied to a CostEff model through forward pre-hooks (nothing in the model changes).

A head mask of layer ``l`` multiplies the input of ``encoder.layer[l].attention.output.dense``, the attention context
``(batch, seq, heads * head_dim)``, by the mask expanded over ``head_dim``: a 0 removes that head's contribution
exactly as deleting its rows/columns would. A neuron mask multiplies the input of ``encoder.layer[l].output.dense``,
the FFN activations ``(batch, seq, F_l)``. With masks of ones that require grad, ``mask.grad`` is the first-order
Taylor estimate of the loss change when the unit is removed (Molchanov et al. 2017; Michel et al. 2019).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


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


__all__ = ["encoder_layers", "unit_masks"]
