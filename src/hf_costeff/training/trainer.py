"""``MultiExitTrainer``: a ``transformers.Trainer`` that trains every exit of a CostEff model, optionally distils a
teacher into it (predictions per exit and hidden states per layer), evaluates every exit and any early-exit policy
from one gathered pass (``hf_costeff.evaluation``), runs in-training slenderization (``SlenderizeCallback``) and
resumes from pruned checkpoints, on one process or many (``torchrun`` / ``accelerate launch``, DDP).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Sequence

import torch
from accelerate.utils import reduce
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import speed_metrics

from ..checkpoints import last_complete_checkpoint
from ..configuration_costeff import COSTEFF_ARCHITECTURE_FIELDS, validate_exit_policy
from ..evaluation import ExitPredictions, evaluate_exit_logits
from ..modeling_costeff import CostEffForSequenceClassification
from .distillation import (
    PRED_KD_LOSSES,
    build_hidden_projections,
    hard_label_loss,
    hidden_distillation_loss,
    prediction_distillation_loss,
)
from .pruning_callback import SlenderizeCallback

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
            in addition to every exit, each simulated from one pass (for ``"patience"`` the thresholds are patience
            values, or ``eval_exit_patience``). With none given and a model whose configured criterion is not
            ``"none"``, the configured policy is measured.
        callbacks: ``Trainer``'s; a ``SlenderizeCallback`` among them (at most one) is owned by the trainer, which
            runs its pruning events (:meth:`apply_pruning_schedule`). Refused under FSDP and DeepSpeed.
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
        # Checked now, not at the first evaluation after hours of training (e.g. entropy on a regression model).
        config = self.model.config
        for name, policy in self._eval_policies().items():
            try:
                validate_exit_policy(*policy, config.num_exits, config.num_labels)
            except ValueError as err:
                raise ValueError(f"eval_exit_criterion / eval_exit_thresholds: policy {name}: {err}") from err

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
        self._event_logs: dict[str, float] = {}  # merged into the next training log (pruning events)
        self.slenderize_callback: SlenderizeCallback | None = None
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, SlenderizeCallback):
                self._own_schedule(callback)
        # First in the list: the pruned model is what every other callback, the log, the evaluation and the
        # checkpoint of that step see.
        self.callback_handler.callbacks.insert(0, _AfterOptimizerStep(self))

    def add_callback(self, callback) -> None:
        super().add_callback(callback)
        if isinstance(callback, SlenderizeCallback):
            self._own_schedule(callback)

    def _own_schedule(self, callback: SlenderizeCallback) -> None:
        if self.slenderize_callback is not None and self.slenderize_callback is not callback:
            raise ValueError("MultiExitTrainer takes at most one SlenderizeCallback")
        # Sharded engines own the Parameters (FSDP flattens them, DeepSpeed partitions them and its optimizer state):
        # slicing them in place mid-run would leave the engine with stale shards, silently wrong. Refused, not faked.
        # The engine (accelerate launch --use_fsdp / --use_deepspeed) or the arguments (--fsdp / --deepspeed) ask for it.
        fsdp = self.is_fsdp_enabled or bool(self.args.fsdp)
        if fsdp or self.is_deepspeed_enabled or self.args.deepspeed:
            engine = "FSDP" if fsdp else "DeepSpeed"
            raise ValueError(
                f"SlenderizeCallback (in-training pruning) does not run under {engine}: train with DDP "
                "(torchrun / accelerate launch without fsdp/deepspeed), or prune before or after the sharded run "
                "(hf_costeff.slenderize); see docs/distributed.md"
            )
        self.slenderize_callback = callback

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
        """Adds the mean of each loss term since the last training log (``loss_hard``, ``loss_pred_kd``...), averaged
        over processes as ``Trainer`` averages ``loss``."""
        if "loss" in logs and self._loss_parts_count:
            names = sorted(self._loss_parts)
            means = torch.tensor([self._loss_parts[n] / self._loss_parts_count for n in names], device=self.args.device)
            for name, value in zip(names, reduce(means, reduction="mean").tolist(), strict=True):
                logs[name] = round(value, 4)
            self._loss_parts, self._loss_parts_count = {}, 0
        if "loss" in logs and self._event_logs:
            logs.update(self._event_logs)
            self._event_logs = {}
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
        if self.slenderize_callback is not None:
            offset = self.slenderize_callback.last_event_step(self.state.global_step, num_training_steps)
        return super().create_scheduler(max(1, num_training_steps - offset), optimizer)

    # ---- in-training pruning ----

    def apply_pruning_schedule(self) -> dict | None:
        """Run the pruning event scheduled at the current optimizer step, if any; the trainer calls it right after
        each optimizer step (with gradient accumulation: once per optimizer step, never per micro-batch).

        Every process scores heads and neurons on its own ``calibration_batches`` training batches; the scores are
        summed over processes, so all prune the same units (``SlenderizeCallback.prune``). Then the trainer rebuilds
        what the prune made stale: the optimizer and the LR scheduler (they hold replaced Parameters) and the
        distributed wrapper (DDP registered the old Parameters for gradient averaging). Returns the event's record.
        """
        schedule = self.slenderize_callback
        if schedule is None:
            return None
        event = schedule.event_at(self.state.global_step, self.state.max_steps)
        if event is None:
            return None
        batches = _take(self.get_train_dataloader(), schedule.calibration_batches)
        record = schedule.prune(self.model, batches, event=event, step=self.state.global_step, teacher=self.teacher)
        self._prepare_pruned_model()
        # Not self.log(): logging from inside the step would reset control.should_log and drop the step's loss log.
        self._event_logs.update(
            {
                "prune_event": float(event),
                "encoder_params": float(record["encoder_params"]),
                "total_params": float(record["total_params"]),
            }
        )
        return record

    def _prepare_pruned_model(self) -> None:
        """New optimizer, LR scheduler and distributed wrapper over the model's current Parameters.

        As ``Trainer`` prepares them at the start of training: ``accelerator.prepare(model, optimizer)`` (a new DDP
        wrapper, which registers the new Parameters for gradient averaging), then ``create_scheduler``. The scheduler
        is not passed to ``prepare``, as ``Trainer`` does not either: accelerate's wrapper would step it once per
        process. ``accelerator.free_memory()`` (public, "between two trainings with different models/optimizers")
        first drops accelerate's references to the stale wrapper and optimizer; accelerate has no call to forget
        one object. Trainer's loop reads ``self.optimizer`` / ``self.lr_scheduler`` at every step, and
        :meth:`training_step` switches to ``self.model_wrapped``, so all take effect at the next micro-batch.
        """
        canonicalize_parameter_order(self.model)
        self.optimizer, self.lr_scheduler = None, None
        self.accelerator.free_memory()
        self.create_optimizer()
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.create_scheduler(num_training_steps=self.state.max_steps, optimizer=self.optimizer)
        for attr in ("model", "optimizer", "lr_scheduler"):
            setattr(self.callback_handler, attr, getattr(self, attr))

    def training_step(self, model: nn.Module, inputs, num_items_in_batch=None) -> torch.Tensor:
        """``Trainer.training_step`` on the current distributed wrapper, and hidden-KD projections averaged over
        processes at each optimizer step (they are the trainer's, outside the DDP-wrapped model).

        Trainer's loop holds the wrapper it built at the start of training in a local variable: after a pruning
        event that one still holds the replaced Parameters, so the wrapper rebuilt by the event is used instead, with
        the loop's gradient-accumulation rule (no gradient sync before the last micro-batch of a step).
        """
        if model is not self.model_wrapped:
            model = self.model_wrapped
            sync = contextlib.nullcontext() if self.accelerator.sync_gradients else self.accelerator.no_sync(model)
        else:
            sync = contextlib.nullcontext()
        with sync:
            loss = super().training_step(model, inputs, num_items_in_batch)
        if (
            self.hidden_projections is not None
            and self.accelerator.num_processes > 1
            and self.accelerator.sync_gradients
        ):
            for param in self.hidden_projections.parameters():
                if param.grad is not None:
                    param.grad.copy_(reduce(param.grad, reduction="mean"))
        return loss

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.hidden_projections is not None and self.args.should_save:
            torch.save(self.hidden_projections.state_dict(), os.path.join(output_dir, PROJECTIONS_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, PROJECTIONS_NAME) if checkpoint else None
        if self.hidden_projections is not None and path and os.path.isfile(path):
            # load_state_dict copies into the projections where they live; "cpu" because a gloo process's device
            # reads "cpu:0", which torch.load cannot map to.
            self.hidden_projections.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

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
        # The trainer's model configuration (attention implementation and all) at the checkpoint's shapes.
        shaped = copy.deepcopy(current)
        for name in _SHAPE_FIELDS:
            setattr(shaped, name, copy.deepcopy(getattr(config, name, None)))
        model = type(self.model)(shaped).to(device=reference.device, dtype=reference.dtype)
        self.model = self.model_wrapped = model
        self.callback_handler.model = model
        self.optimizer, self.lr_scheduler = None, None
        return True

    # ---- evaluation: every exit + early exit, from one gathered pass ----

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Every exit's logits ``(batch, exits, labels)`` and the unpadded lengths ``(batch,)``, for
        ``evaluation_loop`` to gather across processes. No loss: :meth:`evaluate` computes it from the gathered
        logits, exactly over the eval set (the loop's per-batch means would weigh the padded last batch wrong)."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            out = model(**model_inputs, exit_criterion="none")
        mask = model_inputs.get("attention_mask")
        ids = model_inputs["input_ids"]
        lengths = (mask != 0).sum(-1) if mask is not None else torch.full((ids.shape[0],), ids.shape[1])
        return None, (out.all_exit_logits.float(), lengths.to(out.all_exit_logits.device)), labels

    def collect_exit_logits(self, eval_dataset=None) -> ExitPredictions:
        """Every exit's logits, labels and lengths on ``eval_dataset`` (default: the trainer's), from ONE run of
        ``Trainer.evaluation_loop``: gathered over all processes with ``gather_for_metrics`` (each example once, in
        dataset order), so every process gets the whole eval set. The distributed counterpart of
        ``hf_costeff.evaluation.collect_exit_logits``; hand the result to ``hf_costeff.evaluation``."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("collect_exit_logits needs an eval_dataset (argument or the trainer's)")
        output = self.evaluation_loop(
            self.get_eval_dataloader(dataset), description="Evaluation", prediction_loss_only=False
        )
        if output.label_ids is None:
            raise ValueError("the eval dataset has no labels: MultiExitTrainer evaluates labelled sets")
        logits, lengths = output.predictions
        return ExitPredictions(
            torch.as_tensor(logits),
            torch.as_tensor(output.label_ids),
            torch.as_tensor(lengths).long(),
            self.model.config,
        )

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Metrics of every exit and of each configured early-exit policy, logged and returned with
        ``metric_key_prefix``: ``eval_loss``, ``eval_exit{L}_{metric}``, ``eval_mean_exit_{metric}``, and per policy
        ``eval_{criterion}_{threshold}_{metric|avg_flops|flops_speedup|avg_exit_layer|layer_speedup|
        exit_fraction_L{L}}`` (the names of ``hf_costeff.evaluation.sweep_thresholds``).

        The model runs once (every exit, :meth:`collect_exit_logits`); each policy is simulated from those logits,
        which gives the same exits and predictions as running it (tested in tests/test_evaluation.py). Every process
        computes the same numbers over the whole eval set."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            metrics: dict[str, float] = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        start = time.time()
        preds = self.collect_exit_logits(dataset)
        config = self.model.config
        weights = list(config.exit_loss_weights or [1.0] * config.num_exits)
        loss = sum(
            w * float(hard_label_loss(preds.logits[:, k], preds.labels, config.num_labels))
            for k, w in enumerate(weights)
            if w
        )
        metrics = {"loss": loss, **evaluate_exit_logits(preds, self.task_name, self._eval_policies(), config)}
        metrics.update(speed_metrics("x", start, num_samples=len(preds.labels)))
        metrics = {
            (f"{metric_key_prefix}_{k[2:]}" if k.startswith("x_") else f"{metric_key_prefix}_{k}"): v
            for k, v in metrics.items()
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _eval_policies(self) -> dict[str, tuple[str, float | None, int | None]]:
        """``{name: (criterion, threshold, patience)}`` of each early-exit policy to measure: the trainer's
        ``eval_exit_criterion`` at each of ``eval_exit_thresholds`` (patience values for ``"patience"``, or
        ``eval_exit_patience``), else the model's configured policy, else none. Names: ``{criterion}_{value:g}``."""
        config = self.model.config
        criterion = self.eval_exit_criterion
        if criterion == "patience":
            values = [int(v) for v in self.eval_exit_thresholds] or (
                [self.eval_exit_patience] if self.eval_exit_patience else []
            )
            return {f"patience_{p}": ("patience", config.exit_threshold, p) for p in values}
        if self.eval_exit_thresholds:
            return {f"{criterion}_{t:g}": (criterion, t, None) for t in self.eval_exit_thresholds}
        if config.exit_criterion == "patience":
            return {f"patience_{config.exit_patience}": ("patience", config.exit_threshold, config.exit_patience)}
        if config.exit_criterion != "none":
            return {
                f"{config.exit_criterion}_{config.exit_threshold:g}": (
                    config.exit_criterion,
                    config.exit_threshold,
                    None,
                )
            }
        return {}


class _AfterOptimizerStep(TrainerCallback):
    """Runs the trainer's pruning schedule right after each optimizer step. ``Trainer`` offers no overridable method
    at that point of its loop, so the trainer registers this, first in its callback list."""

    def __init__(self, trainer: MultiExitTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.apply_pruning_schedule()
        return control


def _take(iterable, n: int) -> list:
    """The first ``n`` items of ``iterable`` (a few calibration batches)."""
    out = []
    for item in iterable:
        out.append(item)
        if len(out) >= n:
            break
    return out


__all__ = ["MultiExitTrainer", "PROJECTIONS_NAME"]
