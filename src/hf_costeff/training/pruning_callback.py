"""``SlenderizeCallback``: iterative structured pruning inside one ``Trainer.train()`` run (COST-EFF's stage 2).

The callback holds the schedule and the recipe of an event; ``MultiExitTrainer`` owns it (it finds it among its
``callbacks`` and runs each event right after its optimizer step, then rebuilds what pruning made stale: optimizer,
LR scheduler and the distributed wrapper). The dependency runs one way: the trainer calls the callback, the callback
never touches the trainer.

An event (:meth:`SlenderizeCallback.prune`) scores heads and FFN neurons on a few training batches (every exit's loss,
soft labels from the teacher), sums the scores over all processes, prunes the model in place to widths interpolated
linearly from the unpruned widths towards the target, and optionally factorizes the word embedding at the last event.
Under ``torchrun`` / ``accelerate launch`` every process therefore keeps exactly the same units.

The schedule is a pure function of ``(global_step, max_steps)`` and of the configuration's *unpruned* widths
(``num_attention_heads``, ``intermediate_size``), so a run resumed from a checkpoint continues it without saved state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import torch
from accelerate.utils import broadcast, reduce
from torch import nn
from transformers import TrainerCallback

from ..cost import count_parameters

logger = logging.getLogger(__name__)


def _interpolate(start: int, end: int, k: int, total: int) -> int:
    """Width after event ``k`` of ``total`` on the straight line from ``start`` to ``end``."""
    return end if k >= total else int(round(start - (start - end) * k / total))


class SlenderizeCallback(TrainerCallback):
    """Prune a CostEff model during training on a schedule: pass it in ``MultiExitTrainer(callbacks=[...])``.

    The trainer runs each event right after its optimizer step (:meth:`prune`), before any other callback sees the
    step, and then rebuilds its optimizer, LR scheduler and distributed wrapper. A plain ``Trainer`` cannot (it does
    not know what pruning makes stale): the callback then raises at the first event instead of silently not pruning.

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
        self.history: list[dict] = []

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

    def event_at(self, global_step: int, max_steps: int) -> int | None:
        """The 1-based event that fires after optimizer step ``global_step``, or ``None``."""
        steps = self.event_steps(max_steps)
        return steps.index(global_step) + 1 if global_step in steps else None

    def last_event_step(self, global_step: int, max_steps: int) -> int:
        """Step of the latest event at or before ``global_step`` (0 if none): where the LR schedule restarted."""
        done = [s for s in self.event_steps(max_steps) if s <= global_step]
        return done[-1] if done else 0

    def widths_at(self, config, event: int, importance):
        """Per-layer ``(heads, ffn)`` after event ``event`` (1-based) of ``self.num_events``."""
        from ..slenderize import PruningConfig, plan_widths, unpruned_config  # noqa: PLC0415

        pc = self.pruning_config
        layers = config.num_hidden_layers
        current_heads, current_ffn = list(config.layer_num_heads), list(config.layer_intermediate_sizes)
        if pc.encoder_keep_fraction is not None:
            full = count_parameters(unpruned_config(config))["encoder"]
            target = full * (1.0 - (1.0 - pc.encoder_keep_fraction) * event / self.num_events)
            # PruningConfig.encoder_keep_fraction is relative to the unpruned encoder, as the interpolation is.
            fraction = min(1.0, target / full)
            plan = PruningConfig(encoder_keep_fraction=fraction, keep_min_heads=pc.keep_min_heads)
            heads, ffn = plan_widths(config, importance, plan)
        else:
            heads_target = pc.heads(layers) if pc.layer_num_heads is not None else [config.num_attention_heads] * layers
            ffn_target = (
                pc.ffn(layers) if pc.layer_intermediate_sizes is not None else [config.intermediate_size] * layers
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
        steps = self.event_steps(state.max_steps)
        if any(s <= state.global_step for s in steps):
            logger.info(
                "Resumed at step %d: pruning events %s already applied",
                state.global_step,
                [s for s in steps if s <= state.global_step],
            )

    def on_step_end(self, args, state, control, **kwargs):
        # MultiExitTrainer runs the event before any callback sees the step; a plain Trainer never does.
        if self.event_at(state.global_step, state.max_steps) is not None and not any(
            record["step"] == state.global_step for record in self.history
        ):
            raise ValueError("SlenderizeCallback prunes inside hf_costeff.training.MultiExitTrainer only")
        return control

    def prune(
        self,
        model: nn.Module,
        calibration_batches: Iterable[Mapping[str, torch.Tensor]],
        event: int,
        step: int,
        teacher: nn.Module | None = None,
    ) -> dict:
        """Run event ``event`` on ``model`` in place: importance, interpolated widths, pruning, embedding SVD.

        Every process of a distributed run must call it (it communicates): the head and neuron scores of each
        process's ``calibration_batches`` are summed over processes before the widths are planned, so all processes
        keep the same units; the factorized embedding is the main process's, broadcast. Single-process runs skip both.
        Returns the event's record (also appended to ``history``). The caller rebuilds the optimizer.
        """
        from ..slenderize import Importance, compute_importance, factorize_embeddings, prune_model  # noqa: PLC0415

        before = count_parameters(model.config)
        local = compute_importance(
            model,
            calibration_batches,
            exit_weighting=self.exit_weighting,
            teacher=teacher,
            temperature=self.temperature,
            max_batches=self.calibration_batches,
        )
        layers = len(local.heads)
        device = next(model.parameters()).device  # NCCL reduces device tensors only
        summed = _sum_over_processes([*local.heads, *local.neurons, torch.tensor([float(local.num_batches)])], device)
        importance = Importance(
            summed[:layers],
            summed[layers : 2 * layers],
            num_batches=int(summed[-1].item()),
            exit_weighting=local.exit_weighting,
        )
        heads, ffn = self.widths_at(model.config, event, importance)
        prune_model(model, importance, heads, ffn)
        record = {"step": step, "event": event, "heads": heads, "ffn": ffn}
        rank = self.pruning_config.embedding_rank
        if self.factorize_embedding and rank is not None and event == self.num_events:
            if model.config.embedding_rank is None or model.config.embedding_rank > rank:
                record["embedding_error"] = factorize_embeddings(model, rank)
                record["embedding_rank"] = rank
                _broadcast_embedding_factors(model)
        # compute_importance left no gradient on the Parameters, but the prune replaced many of them: start clean.
        model.zero_grad(set_to_none=True)
        model.train()
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
        return record


def _sum_over_processes(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Element-wise sums over all processes (one all-reduce), made bit-identical everywhere.

    The planner ranks units by these scores, so every process must see the same bits; an all-reduce need not return
    bit-identical sums on every rank, so the main process's sums are broadcast. Single process: the tensors as given.
    """
    sizes = [t.numel() for t in tensors]
    flat = torch.cat([t.reshape(-1).float() for t in tensors]).to(device)
    flat = broadcast(reduce(flat, reduction="sum"), from_process=0).cpu()
    return list(torch.split(flat, sizes))


@torch.no_grad()
def _broadcast_embedding_factors(model: nn.Module) -> None:
    """Every process computed the SVD from the same weights; keep the main process's factors, bit for bit."""
    embeddings = getattr(model, "costeff", model).embeddings
    for module in (embeddings.word_embeddings, embeddings.word_embeddings_proj):
        module.weight.copy_(broadcast(module.weight.detach().clone(), from_process=0))


__all__ = ["SlenderizeCallback"]
