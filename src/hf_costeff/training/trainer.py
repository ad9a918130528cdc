"""``MultiExitTrainer``: a ``transformers.Trainer`` that trains every exit of a CostEff model, optionally distils a
teacher into it (predictions per exit and hidden states per layer), evaluates every exit and the early-exit policy,
and survives in-training slenderization (``SlenderizeCallback``) and resumption from pruned checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import speed_metrics

from ..checkpoints import last_complete_checkpoint
from ..configuration_costeff import COSTEFF_ARCHITECTURE_FIELDS
from ..modeling_costeff import CostEffForSequenceClassification
from .distillation import (
    PRED_KD_LOSSES,
    build_hidden_projections,
    hard_label_loss,
    hidden_distillation_loss,
    prediction_distillation_loss,
)
from .metrics import early_exit_metrics, make_metric_fn, per_exit_metrics

PROJECTIONS_NAME = "distill_projections.pt"
_SHAPE_FIELDS = ("num_hidden_layers", "hidden_size", "num_labels") + COSTEFF_ARCHITECTURE_FIELDS


def _is_costeff(model: nn.Module) -> bool:
    return (
        isinstance(model, CostEffForSequenceClassification)
        or getattr(getattr(model, "config", None), "model_type", None) == "costeff"
    )


def canonicalize_parameter_order(model: nn.Module) -> None:
    """Reorder ``model``'s submodules and parameters as a freshly built model of its configuration orders them.

    In-place pruning can register a module late (a factorized embedding's projection is appended after the
    position embeddings), and optimizer checkpoints map state to parameters by position: a resumed run, which builds
    the model from the checkpoint's configuration, must see the same order as the run that wrote the checkpoint.
    """
    with torch.device("meta"):
        reference = type(model)(copy.deepcopy(model.config))
    reference_modules = dict(reference.named_modules())
    for name, module in model.named_modules():
        ref = reference_modules.get(name)
        if ref is None:
            continue
        for attr in ("_modules", "_parameters"):
            order = {key: i for i, key in enumerate(getattr(ref, attr))}
            items = sorted(getattr(module, attr).items(), key=lambda kv: order.get(kv[0], len(order)))
            setattr(module, attr, dict(items))


class MultiExitTrainer(Trainer):
    """Trainer for ``CostEffForSequenceClassification``.

    Training loss (per batch, every exit computed on every example)::

        alpha * sum_k w_k CE(z_k, y)                              # hard labels
      + beta  * sum_k w_k KD(z_k, z_k^teacher)                    # prediction distillation (T^2-scaled)
      + gamma * sum_l MSE_masked(P_l(h_l), h_map(l)^teacher)      # hidden-state distillation

    ``w_k`` are ``exit_loss_weights`` (default: the model's ``config.exit_loss_weights``, i.e. the paper's plain sum).
    Student exit ``k`` learns from teacher exit ``k`` when the teacher has as many exits, else from the teacher's final
    logits. Student hidden state ``l`` (0 = embedding output) is compared with teacher state ``round(l*L_t/L_s)``
    through a trainer-owned ``Linear(H_s, H_t)`` when the hidden sizes differ (identity otherwise).

    Defaults: without a teacher ``alpha=1, beta=gamma=0``; with a teacher COST-EFF's stage-2/3 recipe
    ``alpha=0, beta=1, gamma=1`` (prediction + hidden distillation, no hard labels, T=1).

    Args:
        teacher: a frozen model with the student's tokenizer: ``BertForSequenceClassification``, or a single/multi-exit
            CostEff model. It is kept as an attribute (not a submodule), moved to the student's device, set to eval
            mode and ``requires_grad_(False)``.
        alpha, beta, gamma: weights of the hard-label, prediction-KD and hidden-KD terms.
        temperature: distillation temperature ``T``.
        pred_kd_loss: ``"kl"`` (exactly 0 when student == teacher) or ``"ce"`` (soft-target CE, COST-EFF's; same
            gradients).
        exit_loss_weights: per-exit weights overriding the model's.
        task_name: GLUE task whose metric ``evaluate`` reports per exit (``hf_costeff.data.compute_glue_metrics``);
            ``None``: accuracy (MSE for regression).
        eval_exit_criterion, eval_exit_thresholds, eval_exit_patience: the early-exit policies ``evaluate`` measures
            in addition to every exit (one run per threshold). With no threshold and a model whose configured
            criterion is not ``"none"``, the configured policy is measured.
        All other arguments are ``Trainer``'s.
    """

    # The loss is a per-batch mean: let Trainer divide it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        teacher: nn.Module | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        gamma: float | None = None,
        temperature: float = 1.0,
        pred_kd_loss: str = "kl",
        exit_loss_weights: Sequence[float] | None = None,
        task_name: str | None = None,
        eval_exit_criterion: str = "entropy",
        eval_exit_thresholds: Sequence[float] = (),
        eval_exit_patience: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if not _is_costeff(self.model):
            raise ValueError(f"MultiExitTrainer trains a CostEff model, got {type(self.model).__name__}")
        default_kd = 1.0 if teacher is not None else 0.0
        self.alpha = float(alpha if alpha is not None else (0.0 if teacher is not None else 1.0))
        self.beta = float(beta if beta is not None else default_kd)
        self.gamma = float(gamma if gamma is not None else default_kd)
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.alpha + self.beta + self.gamma == 0:
            raise ValueError("alpha, beta and gamma are all 0: the loss would be identically zero")
        if teacher is None and (self.beta > 0 or self.gamma > 0):
            raise ValueError(f"beta={self.beta} / gamma={self.gamma} weight distillation terms but no teacher is given")
        if pred_kd_loss not in PRED_KD_LOSSES:
            raise ValueError(f"pred_kd_loss must be one of {PRED_KD_LOSSES}, got {pred_kd_loss!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.pred_kd_loss = pred_kd_loss
        num_exits = self.model.config.num_exits
        if exit_loss_weights is not None:
            exit_loss_weights = [float(w) for w in exit_loss_weights]
            if len(exit_loss_weights) != num_exits or any(not math.isfinite(w) or w < 0 for w in exit_loss_weights):
                raise ValueError(f"exit_loss_weights must be {num_exits} finite numbers >= 0, got {exit_loss_weights}")
        self.exit_loss_weights = exit_loss_weights
        self.task_name = task_name
        self.eval_exit_criterion = eval_exit_criterion
        self.eval_exit_thresholds = [float(t) for t in eval_exit_thresholds]
        self.eval_exit_patience = eval_exit_patience

        self.teacher = None
        self.hidden_projections: nn.ModuleList | None = None
        if teacher is not None:
            if teacher.config.num_labels != self.model.config.num_labels:
                raise ValueError(
                    f"teacher has num_labels={teacher.config.num_labels}, the student {self.model.config.num_labels}"
                )
            # An attribute, not a submodule: never optimized, saved or wrapped with the student.
            self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
            if self.gamma > 0:
                self.hidden_projections = build_hidden_projections(
                    self.model.config.hidden_size, teacher.config.hidden_size, self.model.config.num_hidden_layers + 1
                )
                if self.hidden_projections is not None:
                    self.hidden_projections.to(self.args.device)
        self._loss_parts: dict[str, float] = {}
        self._loss_parts_count = 0
        self.pending_logs: dict[str, float] = {}  # merged into the next training log (pruning events)
        self._slenderize_callback = None
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "bind_trainer"):
                callback.bind_trainer(self)

    def add_callback(self, callback) -> None:
        super().add_callback(callback)
        for cb in self.callback_handler.callbacks:
            if hasattr(cb, "bind_trainer") and getattr(cb, "trainer", None) is None:
                cb.bind_trainer(self)

    # ---- loss ----

    def exit_weights(self, num_exits: int) -> list[float]:
        """Per-exit weights of the hard-label and prediction-KD terms."""
        if self.exit_loss_weights is not None:
            return list(self.exit_loss_weights)
        return list(self.model.config.exit_loss_weights or [1.0] * num_exits)

    def teacher_outputs(self, inputs: dict[str, torch.Tensor], hidden: bool) -> tuple[torch.Tensor, tuple | None]:
        """Teacher exit logits ``(batch, teacher_exits, num_labels)`` and (optionally) its hidden states."""
        teacher_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs}
        extra = {"exit_criterion": "none"} if _is_costeff(self.teacher) else {}
        self.teacher.eval()
        with torch.no_grad():
            out = self.teacher(**teacher_inputs, output_hidden_states=hidden, **extra)
        exit_logits = getattr(out, "all_exit_logits", None)
        if exit_logits is None:
            exit_logits = out.logits[:, None]
        return exit_logits, (out.hidden_states if hidden else None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The weighted sum in the class docstring; ``num_items_in_batch`` is unused (every term is a batch mean)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        use_teacher = self.teacher is not None and (self.beta > 0 or self.gamma > 0)
        want_hidden = use_teacher and self.gamma > 0
        outputs = model(**inputs, output_hidden_states=want_hidden, exit_criterion="none")
        student_logits = outputs.all_exit_logits  # (batch, exits, labels)
        num_exits, num_labels = student_logits.shape[1], student_logits.shape[2]
        weights = self.exit_weights(num_exits)
        loss = student_logits.new_zeros((), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        if self.alpha > 0 or labels is not None:
            if labels is None:
                if self.alpha > 0:
                    raise ValueError("alpha > 0 needs 'labels' in the batch")
            else:
                parts["loss_hard"] = sum(
                    w * hard_label_loss(student_logits[:, k], labels, num_labels) for k, w in enumerate(weights) if w
                )
                if self.alpha > 0:
                    loss = loss + self.alpha * parts["loss_hard"]
        if use_teacher:
            teacher_logits, teacher_hidden = self.teacher_outputs(inputs, want_hidden)
            if self.beta > 0:
                per_exit = teacher_logits.shape[1] == num_exits
                parts["loss_pred_kd"] = sum(
                    w
                    * prediction_distillation_loss(
                        student_logits[:, k],
                        teacher_logits[:, k if per_exit else -1],
                        self.temperature,
                        self.pred_kd_loss,
                    )
                    for k, w in enumerate(weights)
                    if w
                )
                loss = loss + self.beta * parts["loss_pred_kd"]
            if want_hidden:
                parts["loss_hidden_kd"] = hidden_distillation_loss(
                    outputs.hidden_states, teacher_hidden, inputs.get("attention_mask"), self.hidden_projections
                )
                loss = loss + self.gamma * parts["loss_hidden_kd"]
        if model.training:
            for name, value in parts.items():
                self._loss_parts[name] = self._loss_parts.get(name, 0.0) + float(value.detach())
            self._loss_parts_count += 1
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each loss term since the last training log (``loss_hard``, ``loss_pred_kd``...)."""
        if "loss" in logs and self._loss_parts_count:
            for name, total in self._loss_parts.items():
                logs[name] = round(total / self._loss_parts_count, 4)
            self._loss_parts, self._loss_parts_count = {}, 0
        if "loss" in logs and self.pending_logs:
            logs.update(self.pending_logs)
            self.pending_logs = {}
        super().log(logs, start_time)

    # ---- optimizer / scheduler: projections and in-training pruning ----

    def create_optimizer(self, model=None):
        """Trainer's optimizer plus the hidden-KD projections (a param group without weight decay)."""
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if created and self.hidden_projections is not None:
            optimizer.add_param_group({"params": list(self.hidden_projections.parameters()), "weight_decay": 0.0})
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Trainer's scheduler, restarted at the last pruning event: it spans the steps left after it.

        A pruning event rebuilds the optimizer (its Parameters are replaced), and the LR schedule restarts with it, as
        COST-EFF restarts warmup/decay after each prune. On resume the same offset is recomputed from the schedule.
        """
        offset = 0
        if self._slenderize_callback is not None:
            offset = self._slenderize_callback.last_event_step(self.state.global_step, num_training_steps)
        return super().create_scheduler(max(1, num_training_steps - offset), optimizer)

    def rebuild_optimizer_and_scheduler(self) -> None:
        """New optimizer and LR scheduler over the model's current Parameters (after pruning replaced them).

        Trainer's loop reads ``self.optimizer`` / ``self.lr_scheduler`` at every step, so replacing them here takes
        effect at the next step. The optimizer is wrapped by accelerate as Trainer does at the start of training.
        """
        old = self.optimizer
        self.optimizer, self.lr_scheduler = None, None
        canonicalize_parameter_order(self.model)
        self.create_optimizer()
        self.optimizer = self.accelerator.prepare_optimizer(self.optimizer)
        if old is not None and old in self.accelerator._optimizers:
            self.accelerator._optimizers.remove(old)  # drop the stale wrapper (and its state) from accelerate
        self.create_scheduler(num_training_steps=self.state.max_steps, optimizer=self.optimizer)
        self.callback_handler.optimizer = self.optimizer
        self.callback_handler.lr_scheduler = self.lr_scheduler

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.hidden_projections is not None and self.args.should_save:
            torch.save(self.hidden_projections.state_dict(), os.path.join(output_dir, PROJECTIONS_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, PROJECTIONS_NAME) if checkpoint else None
        if self.hidden_projections is not None and path and os.path.isfile(path):
            self.hidden_projections.load_state_dict(torch.load(path, map_location=self.args.device, weights_only=True))

    # ---- resume from a checkpoint with other shapes ----

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; when resuming, first rebuilds the model with the checkpoint's shapes (a checkpoint
        written after a pruning event is smaller than the model this trainer was built with)."""
        if resume_from_checkpoint is True:  # the newest *complete* one: a killed save leaves a half-written folder
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint found in output directory ({self.args.output_dir})")
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self.match_checkpoint_shapes(str(resume_from_checkpoint))
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint or None,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )

    def match_checkpoint_shapes(self, checkpoint: str) -> bool:
        """Replace ``self.model`` by a fresh model of the checkpoint's configuration when their shapes differ (its
        weights are loaded by ``Trainer`` afterwards). Returns whether the model was replaced."""
        if not os.path.isfile(os.path.join(checkpoint, "config.json")):
            raise ValueError(f"{checkpoint} holds no config.json: not a checkpoint of this model")
        config = type(self.model.config).from_pretrained(checkpoint)
        current = self.model.config
        if all(getattr(config, f, None) == getattr(current, f, None) for f in _SHAPE_FIELDS):
            return False
        reference = next(self.model.parameters())
        config._attn_implementation = current._attn_implementation
        model = type(self.model)(config).to(device=reference.device, dtype=reference.dtype)
        self.model = self.model_wrapped = model
        self.callback_handler.model = model
        self.optimizer, self.lr_scheduler = None, None
        return True

    # ---- evaluation: every exit + early exit ----

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Metrics of every exit (criterion ``"none"``) and of each configured early-exit policy, logged and returned
        with ``metric_key_prefix``: ``eval_loss``, ``eval_exit{L}_{metric}``, ``eval_mean_exit_{metric}``, and per
        policy ``eval_{criterion}_{threshold}_{metric|avg_flops|flops_ratio|avg_exit_layer|layer_speedup|
        exit_fraction_L{L}}``."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            metrics: dict[str, float] = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        start = time.time()
        dataloader = self.get_eval_dataloader(dataset)
        model = self.model
        config = model.config
        was_training = model.training
        model.eval()
        metric_fn = make_metric_fn(self.task_name, config.num_labels)
        policies = self._eval_policies()
        exit_logits, labels, losses, lengths = [], [], [], []
        early = {name: ([], []) for name, _ in policies}
        try:
            with torch.no_grad():
                for batch in dataloader:
                    batch = self._prepare_inputs(batch)
                    out = model(**batch, exit_criterion="none")
                    exit_logits.append(out.all_exit_logits.float().cpu().numpy())
                    labels.append(batch["labels"].cpu().numpy())
                    losses.append(float(out.loss) * len(batch["labels"]))
                    mask = batch.get("attention_mask")
                    lengths.append(
                        (mask != 0).sum(-1).cpu().numpy()
                        if mask is not None
                        else np.full(len(batch["labels"]), batch["input_ids"].shape[1])
                    )
                    inputs = {k: v for k, v in batch.items() if k != "labels"}
                    for name, policy in policies:
                        ee = model(**inputs, **policy)
                        early[name][0].append(ee.logits.float().cpu().numpy())
                        early[name][1].append(ee.exit_layer.cpu().numpy())
        finally:
            model.train(was_training)
        labels_np = np.concatenate(labels)
        lengths_np = np.concatenate(lengths)
        metrics = {"loss": sum(losses) / len(labels_np)}
        metrics.update(per_exit_metrics(np.concatenate(exit_logits), labels_np, config.exit_layers, metric_fn))
        for name, (logits, exit_layer) in early.items():
            metrics.update(
                early_exit_metrics(
                    config,
                    np.concatenate(logits),
                    np.concatenate(exit_layer),
                    lengths_np,
                    labels_np,
                    metric_fn,
                    prefix=f"{name}_",
                )
            )
        metrics.update(speed_metrics("x", start, num_samples=len(labels_np)))
        metrics = {
            (f"{metric_key_prefix}_{k[2:]}" if k.startswith("x_") else f"{metric_key_prefix}_{k}"): v
            for k, v in metrics.items()
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _eval_policies(self) -> list[tuple[str, dict]]:
        config = self.model.config
        if self.eval_exit_thresholds:
            criterion = self.eval_exit_criterion
            patience = self.eval_exit_patience if self.eval_exit_patience is not None else config.exit_patience
            return [
                (f"{criterion}_{t:g}", {"exit_criterion": criterion, "exit_threshold": t, "exit_patience": patience})
                for t in self.eval_exit_thresholds
            ]
        if config.exit_criterion != "none":
            c = config.exit_criterion
            value = config.exit_patience if c == "patience" else config.exit_threshold
            return [
                (
                    f"{c}_{value:g}",
                    {
                        "exit_criterion": c,
                        "exit_threshold": config.exit_threshold,
                        "exit_patience": config.exit_patience,
                    },
                )
            ]
        return []


__all__ = ["MultiExitTrainer", "PROJECTIONS_NAME"]
