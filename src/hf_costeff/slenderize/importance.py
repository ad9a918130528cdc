"""Exit-aware first-order Taylor importance of every attention head and FFN neuron (COST-EFF's pruning signal)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..choices import EXIT_WEIGHTINGS
from ..configuration_costeff import CostEffConfig
from .layer import unit_masks

_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass
class Importance:
    """First-order Taylor importance of every attention head and FFN neuron of a CostEff model.

    Attributes:
        heads: one ``(layer_num_heads[l],)`` float tensor per layer: sum over batches of ``|dL/dm_h|`` (``m_h = 1``).
        neurons: one ``(layer_intermediate_sizes[l],)`` float tensor per layer, likewise.
        num_batches: batches accumulated.
        exit_weighting: ``"all"`` or ``"final"``: the exits whose loss fed the gradients.
    """

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    num_batches: int = 0
    exit_weighting: str = "all"

    def __post_init__(self) -> None:
        if len(self.heads) != len(self.neurons):
            raise ValueError(f"Importance has {len(self.heads)} head tensors but {len(self.neurons)} neuron tensors")
        self.heads = [torch.as_tensor(h, dtype=torch.float32).detach().cpu().reshape(-1) for h in self.heads]
        self.neurons = [torch.as_tensor(n, dtype=torch.float32).detach().cpu().reshape(-1) for n in self.neurons]

    def check(self, config: CostEffConfig) -> None:
        """Raise ``ValueError`` unless the scores have the widths of ``config`` (stale after a prune)."""
        if len(self.heads) != config.num_hidden_layers:
            raise ValueError(f"importance covers {len(self.heads)} layers, the model has {config.num_hidden_layers}")
        for i, (h, n) in enumerate(zip(self.heads, self.neurons, strict=True)):
            if h.numel() != config.layer_num_heads[i] or n.numel() != config.layer_intermediate_sizes[i]:
                raise ValueError(
                    f"importance of layer {i} has {h.numel()} heads / {n.numel()} neurons but the model has "
                    f"{config.layer_num_heads[i]} / {config.layer_intermediate_sizes[i]}: recompute it after pruning"
                )

    def top_heads(self, layer: int, k: int) -> list[int]:
        """Indices of the ``k`` most important heads of ``layer``, ascending (ties keep the lower index)."""
        return _top_k(self.heads[layer], k)

    def top_neurons(self, layer: int, k: int) -> list[int]:
        """Indices of the ``k`` most important FFN neurons of ``layer``, ascending."""
        return _top_k(self.neurons[layer], k)


def _top_k(scores: torch.Tensor, k: int) -> list[int]:
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return sorted(order.tolist())


def _model_inputs(batch: Mapping, device: torch.device) -> dict[str, torch.Tensor]:
    if not isinstance(batch, Mapping):
        raise ValueError(f"the dataloader must yield dicts of tensors, got {type(batch).__name__}")
    inputs = {}
    for key in (*_INPUT_KEYS, "labels", "label"):
        if key in batch and batch[key] is not None:
            value = batch[key]
            value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            inputs["labels" if key == "label" else key] = value.to(device)
    if "input_ids" not in inputs:
        raise ValueError(f"a calibration batch has no input_ids (keys: {sorted(batch)})")
    return inputs


def _teacher_logits(teacher: nn.Module, inputs: dict[str, torch.Tensor], num_exits: int) -> torch.Tensor:
    """Teacher logits ``(B, num_exits, C)``: per exit when the teacher has as many exits, else its final logits."""
    kwargs = {k: v for k, v in inputs.items() if k in _INPUT_KEYS}
    if "exit_criterion" in inspect.signature(teacher.forward).parameters:
        kwargs["exit_criterion"] = "none"  # every exit, no early exit
    with torch.no_grad():
        output = teacher(**kwargs)
    per_exit = getattr(output, "all_exit_logits", None)
    if per_exit is not None and per_exit.shape[1] == num_exits:
        return per_exit.float()
    return output.logits.float().unsqueeze(1).expand(-1, num_exits, -1)


def _soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft-target cross-entropy of ``(B, C)`` logits at ``temperature`` (MSE for one regression output)."""
    if student.shape[-1] == 1:
        return F.mse_loss(student.float(), teacher)
    log_p = F.log_softmax(student.float() / temperature, dim=-1)
    return -(F.softmax(teacher / temperature, dim=-1) * log_p).sum(-1).mean()


def compute_importance(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    exit_weighting: str = "all",
    teacher: nn.Module | None = None,
    temperature: float = 1.0,
    max_batches: int | None = None,
) -> Importance:
    """Accumulate ``|gradient x mask|`` of every head and FFN-neuron mask over calibration batches.

    The loss is the sum over every exit (``exit_weighting="all"``, each weighted by ``config.exit_loss_weights``,
    1 by default: COST-EFF's exit-aware importance) or the final exit's alone (``"final"``, the ablation). Its targets
    are the batch's ``labels``, or with ``teacher`` the teacher's soft labels at ``temperature`` (per exit when the
    teacher has as many exits, else its final logits for every exit).

    The pass runs with dropout off (``model.eval()``), with the exit criterion forced to ``"none"`` so every layer
    runs, and with the parameters' ``requires_grad`` off so no ``.grad`` is touched; all three are restored after.

    Args:
        model: a ``CostEffForSequenceClassification``.
        dataloader: yields dicts with ``input_ids`` ``(B, T)``, ``attention_mask``, optional ``token_type_ids``, and
            ``labels`` ``(B,)`` (needed unless ``teacher`` is given).
        exit_weighting: ``"all"`` or ``"final"``.
        teacher: optional model giving soft labels.
        temperature: softmax temperature of the soft labels (> 0).
        max_batches: stop after this many batches (default: the whole dataloader).

    Returns:
        ``Importance`` whose ``heads[l]`` is ``(layer_num_heads[l],)`` and ``neurons[l]`` ``(layer_intermediate_sizes[l],)``.
    """
    if exit_weighting not in EXIT_WEIGHTINGS:
        raise ValueError(f"exit_weighting must be one of {EXIT_WEIGHTINGS}, got {exit_weighting!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature!r}")
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be an integer >= 1 or None, got {max_batches!r}")
    if not hasattr(model, "exits"):
        raise ValueError(f"compute_importance needs a CostEffForSequenceClassification, got {type(model).__name__}")
    config = model.config
    num_exits = config.num_exits
    weights = [1.0] if exit_weighting == "final" else list(config.exit_loss_weights or [1.0] * num_exits)
    device = next(model.parameters()).device
    heads = [torch.zeros(n) for n in config.layer_num_heads]
    neurons = [torch.zeros(n) for n in config.layer_intermediate_sizes]

    was_training = model.training
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    teacher_training = teacher.training if teacher is not None else False
    num_batches = 0
    try:
        model.eval()
        if teacher is not None:
            teacher.eval()
        for p, _ in grad_flags:
            p.requires_grad_(False)
        with torch.enable_grad(), unit_masks(model, requires_grad=True) as (head_masks, neuron_masks):
            masks = [*head_masks, *neuron_masks]
            for batch in dataloader:
                if max_batches is not None and num_batches >= max_batches:
                    break
                inputs = _model_inputs(batch, device)
                labels = inputs.pop("labels", None)
                if teacher is None and labels is None:
                    raise ValueError("calibration batches need labels when no teacher is given")
                output = model(**inputs, exit_criterion="none")
                logits = output.all_exit_logits  # (B, num_exits, C)
                if teacher is not None:
                    targets = _teacher_logits(teacher, inputs, num_exits)
                if exit_weighting == "final":
                    logits = logits[:, -1:]
                    targets = targets[:, -1:] if teacher is not None else None
                losses = [
                    _soft_loss(logits[:, k], targets[:, k], temperature)
                    if teacher is not None
                    else model.classification_loss(logits[:, k], labels)
                    for k in range(logits.shape[1])
                ]
                loss = sum(w * part for w, part in zip(weights, losses, strict=True) if w)
                num_batches += 1
                if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                    continue  # nothing prunable left in the model
                grads = torch.autograd.grad(loss, masks, allow_unused=True)
                for score, grad in zip([*heads, *neurons], grads, strict=True):
                    if grad is not None:
                        score += grad.detach().abs().float().cpu()
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        model.train(was_training)
        if teacher is not None:
            teacher.train(teacher_training)
    if num_batches == 0:
        raise ValueError("the calibration dataloader yielded no batches")
    return Importance(heads, neurons, num_batches=num_batches, exit_weighting=exit_weighting)


__all__ = ["EXIT_WEIGHTINGS", "Importance", "compute_importance"]
