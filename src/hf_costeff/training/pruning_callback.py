"""``SlenderizeCallback``: iterative structured pruning inside one ``Trainer.train()`` run (COST-EFF's stage 2).

At each scheduled optimizer step the callback computes head/neuron importance on a few training batches (every exit's
loss, soft labels from the trainer's teacher), prunes the model in place to widths interpolated linearly from the
unpruned widths towards the target, optionally factorizes the word embedding at the last event, then rebuilds the
trainer's optimizer and LR scheduler (the old ones hold the replaced Parameters).

The schedule is a pure function of ``(global_step, max_steps)`` and of the configuration's *unpruned* widths
(``num_attention_heads``, ``intermediate_size``), so a run resumed from a checkpoint continues it without saved state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from transformers import TrainerCallback

from ..cost import count_parameters

logger = logging.getLogger(__name__)


def _per_layer(value: int | Sequence[int], num_layers: int, name: str) -> list[int]:
    values = [value] * num_layers if isinstance(value, int) else list(value)
    if len(values) != num_layers or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(f"{name} must be an int >= 0 or {num_layers} of them, got {value!r}")
    return values


def _interpolate(start: int, end: int, k: int, total: int) -> int:
    """Width after event ``k`` of ``total`` on the straight line from ``start`` to ``end``."""
    return end if k >= total else int(round(start - (start - end) * k / total))


class SlenderizeCallback(TrainerCallback):
    """Prune a CostEff model during training on a schedule; use with ``MultiExitTrainer`` (it binds itself).

    Args:
        pruning_config: ``hf_costeff.slenderize.PruningConfig`` holding the *final* target: ``layer_num_heads`` /
            ``layer_intermediate_sizes`` or ``encoder_keep_fraction`` (of the unpruned encoder's parameters), plus
            ``keep_min_heads`` and ``embedding_rank`` (factorized at the last event when ``factorize_embedding``).
        num_events: number of pruning events (COST-EFF removes one head per layer per event).
        prune_steps: explicit optimizer steps (1-based ``global_step`` values) of the events; default: ``num_events``
            steps evenly spaced over the first ``prune_fraction`` of training (the last at ``prune_fraction*max_steps``).
        calibration_batches: training batches used to compute importance at each event.
        exit_weighting: importance loss over ``"all"`` exits (COST-EFF) or the ``"final"`` one.
        temperature: temperature of the teacher's soft labels in the importance loss.
    """

    def __init__(
        self,
        pruning_config,
        num_events: int = 1,
        prune_steps: Sequence[int] | None = None,
        prune_fraction: float = 0.5,
        calibration_batches: int = 4,
        exit_weighting: str = "all",
        temperature: float = 1.0,
        factorize_embedding: bool = True,
    ):
        if prune_steps is not None:
            prune_steps = [int(s) for s in prune_steps]
            if (
                not prune_steps
                or any(s < 1 for s in prune_steps)
                or any(b <= a for a, b in zip(prune_steps, prune_steps[1:], strict=False))
            ):
                raise ValueError(f"prune_steps must be strictly increasing steps >= 1, got {prune_steps}")
            num_events = len(prune_steps)
        if isinstance(num_events, bool) or not isinstance(num_events, int) or num_events < 1:
            raise ValueError(f"num_events must be an integer >= 1, got {num_events!r}")
        if not 0.0 < prune_fraction <= 1.0:
            raise ValueError(f"prune_fraction must lie in (0, 1], got {prune_fraction!r}")
        if not isinstance(calibration_batches, int) or calibration_batches < 1:
            raise ValueError(f"calibration_batches must be an integer >= 1, got {calibration_batches!r}")
        has_widths = pruning_config.layer_num_heads is not None or pruning_config.layer_intermediate_sizes is not None
        has_fraction = pruning_config.encoder_keep_fraction is not None
        if has_widths and has_fraction:
            raise ValueError(
                "pruning_config: give layer_num_heads/layer_intermediate_sizes or encoder_keep_fraction, not both"
            )
        if not (has_widths or has_fraction or pruning_config.embedding_rank is not None):
            raise ValueError(
                "pruning_config needs a target: layer_num_heads/layer_intermediate_sizes, encoder_keep_fraction or embedding_rank"
            )
        self.pruning_config = pruning_config
        self.num_events = num_events
        self.prune_steps = prune_steps
        self.prune_fraction = prune_fraction
        self.calibration_batches = calibration_batches
        self.exit_weighting = exit_weighting
        self.temperature = temperature
        self.factorize_embedding = factorize_embedding
        self.trainer = None
        self.history: list[dict] = []

    def bind_trainer(self, trainer) -> None:
        """Called by ``MultiExitTrainer``: the callback needs the trainer to rebuild its optimizer and scheduler."""
        self.trainer = trainer
        trainer._slenderize_callback = self

    # ---- schedule ----

    def event_steps(self, max_steps: int) -> list[int]:
        """The ``global_step`` values after which the events fire."""
        if self.prune_steps is not None:
            if self.prune_steps[-1] > max_steps:
                raise ValueError(f"prune_steps {self.prune_steps} go beyond max_steps={max_steps}")
            return list(self.prune_steps)
        steps = [
            max(1, int(round(max_steps * self.prune_fraction * k / self.num_events)))
            for k in range(1, self.num_events + 1)
        ]
        if len(set(steps)) != len(steps):
            raise ValueError(
                f"{self.num_events} pruning events do not fit in {self.prune_fraction:g} of "
                f"{max_steps} steps; use fewer events or more steps"
            )
        return steps

    def last_event_step(self, global_step: int, max_steps: int) -> int:
        """Step of the latest event at or before ``global_step`` (0 if none): where the LR schedule restarted."""
        done = [s for s in self.event_steps(max_steps) if s <= global_step]
        return done[-1] if done else 0

    def widths_at(self, config, event: int, importance):
        """Per-layer ``(heads, ffn)`` after event ``event`` (1-based) of ``self.num_events``."""
        from ..slenderize import PruningConfig, plan_widths  # noqa: PLC0415

        pc = self.pruning_config
        layers = config.num_hidden_layers
        current_heads, current_ffn = list(config.layer_num_heads), list(config.layer_intermediate_sizes)
        if pc.encoder_keep_fraction is not None:
            full = count_parameters(_unpruned(config))["encoder"]
            target = full * (1.0 - (1.0 - pc.encoder_keep_fraction) * event / self.num_events)
            # PruningConfig.encoder_keep_fraction is relative to the unpruned encoder, as the interpolation is.
            fraction = min(1.0, target / full)
            plan = PruningConfig(encoder_keep_fraction=fraction, keep_min_heads=pc.keep_min_heads)
            heads, ffn = plan_widths(config, importance, plan)
        else:
            heads_target = _per_layer(
                pc.layer_num_heads if pc.layer_num_heads is not None else config.num_attention_heads,
                layers,
                "layer_num_heads",
            )
            ffn_target = _per_layer(
                pc.layer_intermediate_sizes if pc.layer_intermediate_sizes is not None else config.intermediate_size,
                layers,
                "layer_intermediate_sizes",
            )
            heads = [_interpolate(config.num_attention_heads, t, event, self.num_events) for t in heads_target]
            ffn = [_interpolate(config.intermediate_size, t, event, self.num_events) for t in ffn_target]
            heads, ffn = plan_widths(
                config,
                importance,
                PruningConfig(layer_num_heads=heads, layer_intermediate_sizes=ffn, keep_min_heads=pc.keep_min_heads),
            )
        # Widths never grow back: a width already below the line stays where it is.
        return (
            [min(h, c) for h, c in zip(heads, current_heads, strict=True)],
            [min(f, c) for f, c in zip(ffn, current_ffn, strict=True)],
        )

    # ---- events ----

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            raise ValueError("SlenderizeCallback needs a MultiExitTrainer (pass it in callbacks=[...])")
        steps = self.event_steps(state.max_steps)
        if any(s <= state.global_step for s in steps):
            logger.info(
                "Resumed at step %d: pruning events %s already applied",
                state.global_step,
                [s for s in steps if s <= state.global_step],
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        steps = self.event_steps(state.max_steps)
        if state.global_step not in steps:
            return control
        self.prune(event=steps.index(state.global_step) + 1, step=state.global_step)
        return control

    def prune(self, event: int, step: int) -> dict:
        """Run event ``event``: importance, interpolated widths, pruning, embedding factorization, new optimizer."""
        from ..slenderize import compute_importance, factorize_embeddings, prune_model  # noqa: PLC0415

        trainer = self.trainer
        model = trainer.model
        before = count_parameters(model.config)
        importance = compute_importance(
            model,
            _take(trainer.get_train_dataloader(), self.calibration_batches),
            exit_weighting=self.exit_weighting,
            teacher=trainer.teacher,
            temperature=self.temperature,
            max_batches=self.calibration_batches,
        )
        heads, ffn = self.widths_at(model.config, event, importance)
        prune_model(model, importance, heads, ffn)
        record = {"step": step, "event": event, "heads": heads, "ffn": ffn}
        rank = self.pruning_config.embedding_rank
        if self.factorize_embedding and rank is not None and event == self.num_events:
            if model.config.embedding_rank is None or model.config.embedding_rank > rank:
                record["embedding_error"] = factorize_embeddings(model, rank)
                record["embedding_rank"] = rank
        # compute_importance left gradients on the surviving Parameters; the next step must not add them.
        model.zero_grad(set_to_none=True)
        model.train()
        trainer.rebuild_optimizer_and_scheduler()
        after = count_parameters(model.config)
        record["encoder_params"] = after["encoder"]
        record["total_params"] = after["total"]
        self.history.append(record)
        logger.info(
            "Pruning event %d/%d at step %d: encoder %d -> %d parameters, heads %s, FFN %s",
            event,
            self.num_events,
            step,
            before["encoder"],
            after["encoder"],
            heads,
            ffn,
        )
        # Not trainer.log(): logging from on_step_end would reset control.should_log and drop the step's loss log.
        trainer.pending_logs.update(
            {
                "prune_event": float(event),
                "encoder_params": float(after["encoder"]),
                "total_params": float(after["total"]),
            }
        )
        return record


def _unpruned(config):
    """A copy of ``config`` with every layer at the unpruned widths (for the full model's parameter count)."""
    full = config.__class__.from_dict(config.to_dict())
    full.layer_num_heads = [config.num_attention_heads] * config.num_hidden_layers
    full.layer_intermediate_sizes = [config.intermediate_size] * config.num_hidden_layers
    return full


def _take(iterable, n: int):
    """The first ``n`` items of ``iterable`` as a list (a few calibration batches)."""
    out = []
    for item in iterable:
        out.append(item)
        if len(out) >= n:
            break
    return out


__all__ = ["SlenderizeCallback"]
