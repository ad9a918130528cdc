"""COST-EFF's training recipe as ``MultiExitTrainer`` loss weights, one set per stage.

The paper trains in stages (see docs/training.md, "The recipe"); each is a ``MultiExitTrainer`` run whose loss is
``alpha * hard labels + beta * per-exit prediction KD + gamma * hidden-state KD``:

- ``"ta"``: the teaching assistant, the teacher converted to a multi-exit model and distilled from it: half hard
  labels, half prediction KD at every exit, plus hidden-state KD;
- ``"prune"``: a copy of the TA pruned iteratively (``SlenderizeCallback``) while distilled from the TA: per-exit
  predictions and hidden states, no labels;
- ``"recover_hidden"``: recovery from the TA, hidden states only;
- ``"recover_pred"``: recovery from the TA, per-exit predictions and hidden states.

``MultiExitTrainer(..., teacher=ta, **stage_loss_weights("prune"))`` runs a stage with the paper's weights.
"""

from __future__ import annotations

from types import MappingProxyType

COSTEFF_STAGE_LOSS_WEIGHTS = MappingProxyType(
    {
        "ta": MappingProxyType({"alpha": 0.5, "beta": 0.5, "gamma": 1.0}),
        "prune": MappingProxyType({"alpha": 0.0, "beta": 1.0, "gamma": 1.0}),
        "recover_hidden": MappingProxyType({"alpha": 0.0, "beta": 0.0, "gamma": 1.0}),
        "recover_pred": MappingProxyType({"alpha": 0.0, "beta": 1.0, "gamma": 1.0}),
    }
)


def stage_loss_weights(stage: str) -> dict[str, float]:
    """``{"alpha", "beta", "gamma"}`` of COST-EFF's ``stage`` (a key of ``COSTEFF_STAGE_LOSS_WEIGHTS``), to pass to
    ``MultiExitTrainer``."""
    if stage not in COSTEFF_STAGE_LOSS_WEIGHTS:
        raise ValueError(f"stage must be one of {sorted(COSTEFF_STAGE_LOSS_WEIGHTS)}, got {stage!r}")
    return dict(COSTEFF_STAGE_LOSS_WEIGHTS[stage])


__all__ = ["COSTEFF_STAGE_LOSS_WEIGHTS", "stage_loss_weights"]
