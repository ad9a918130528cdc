"""Loss functions for training multi-exit CostEff models: per-exit hard labels, prediction and hidden-state distillation.

Every function is a pure function of tensors so that it can be tested against a hand computation; the
``MultiExitTrainer`` only gathers the tensors and weights the terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

PRED_KD_LOSSES = ("kl", "ce")


def hard_label_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Loss of one exit against gold labels: MSE for regression (``num_labels == 1``), cross-entropy otherwise.

    Args:
        logits: ``(batch, num_labels)``.
        labels: ``(batch,)`` class ids, or floats for regression.
    """
    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
    return F.cross_entropy(logits.float(), labels.view(-1))


def prediction_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, loss_type: str = "kl"
) -> torch.Tensor:
    """Soft-label distillation of one exit, averaged over the batch.

    Classification: ``"kl"`` is ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (exactly 0 when the logits are equal);
    ``"ce"`` is ``T^2 * CE(softmax(t/T), log_softmax(s/T))``, the soft-target cross-entropy of COST-EFF, which differs
    from ``"kl"`` only by the teacher's entropy (a constant: same gradients). The ``T^2`` factor keeps gradient
    magnitudes independent of ``T`` (Hinton et al.). Regression (one output): MSE between the outputs.

    Args:
        student_logits, teacher_logits: ``(batch, num_labels)``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    if loss_type not in PRED_KD_LOSSES:
        raise ValueError(f"prediction KD loss must be one of {PRED_KD_LOSSES}, got {loss_type!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    p_teacher = log_p_teacher.exp()
    if loss_type == "kl":
        per_example = (p_teacher * (log_p_teacher - log_p_student)).sum(-1)
    else:
        per_example = -(p_teacher * log_p_student).sum(-1)
    return per_example.mean() * temperature**2


def masked_hidden_mse(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """COST-EFF's hidden-state loss for one layer: per example, the mean over its real tokens of the mean over
    features of the squared difference; then the mean over the batch.

    Args:
        student_hidden, teacher_hidden: ``(batch, seq, hidden)`` (already projected to the same size).
        attention_mask: ``(batch, seq)``, 1 for real tokens; ``None`` counts every token.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states differ in shape: student {tuple(student_hidden.shape)}, teacher {tuple(teacher_hidden.shape)}"
        )
    per_token = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(-1)  # (batch, seq)
    if attention_mask is None:
        return per_token.mean()
    mask = (attention_mask != 0).to(per_token.dtype)
    per_example = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_example.mean()


def layer_mapping(num_student_states: int, num_teacher_states: int) -> list[int]:
    """Teacher hidden state used for each student hidden state, mapped proportionally.

    States count the embedding output too (``layers + 1``): student state ``l`` learns from teacher state
    ``floor(l * L_t / L_s + 1/2)`` (halves round up), so embeddings map to embeddings and the last layer to the last.
    """
    if num_student_states < 2 or num_teacher_states < 2:
        raise ValueError("hidden-state distillation needs the embedding output and at least one layer on both sides")
    ls, lt = num_student_states - 1, num_teacher_states - 1
    return [math.floor(layer * lt / ls + 0.5) for layer in range(num_student_states)]


def hidden_distillation_loss(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    attention_mask: torch.Tensor | None,
    projections: nn.ModuleList | None = None,
) -> torch.Tensor:
    """Sum over student states ``l`` of ``masked_hidden_mse(proj_l(S_l), T_map(l))``.

    Args:
        student_states: ``L_s + 1`` tensors ``(batch, seq, H_s)`` (embedding output, then every layer).
        teacher_states: ``L_t + 1`` tensors ``(batch, seq, H_t)``.
        projections: one module per student state mapping ``H_s -> H_t`` (``None``: sizes must match).
    """
    mapping = layer_mapping(len(student_states), len(teacher_states))
    if projections is not None and len(projections) != len(student_states):
        raise ValueError(f"{len(projections)} projections for {len(student_states)} student hidden states")
    total = student_states[0].new_zeros((), dtype=torch.float32)
    for index, teacher_index in enumerate(mapping):
        student = student_states[index]
        if projections is not None:
            student = projections[index](student)
        total = total + masked_hidden_mse(student, teacher_states[teacher_index], attention_mask)
    return total


def build_hidden_projections(student_hidden: int, teacher_hidden: int, num_states: int) -> nn.ModuleList | None:
    """``Linear(H_s, H_t)`` per student hidden state when the sizes differ, ``None`` when they match (identity)."""
    if student_hidden == teacher_hidden:
        return None
    return nn.ModuleList(nn.Linear(student_hidden, teacher_hidden) for _ in range(num_states))


__all__ = [
    "PRED_KD_LOSSES",
    "build_hidden_projections",
    "hard_label_loss",
    "hidden_distillation_loss",
    "layer_mapping",
    "masked_hidden_mse",
    "prediction_distillation_loss",
]
