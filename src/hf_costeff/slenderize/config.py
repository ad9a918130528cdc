"""``PruningConfig``: the target of a slenderization step (structured pruning and embedding factorization)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PruningConfig:
    """What to prune to.

    Give either a global budget (``encoder_keep_fraction``) or explicit widths (``heads_per_layer`` and/or
    ``ffn_per_layer``), not both; ``embedding_rank`` may come with either or alone.

    Args:
        encoder_keep_fraction: fraction in ``(0, 1]`` of the *unpruned* encoder's parameters to keep (the encoder of
            ``num_attention_heads`` heads and ``intermediate_size`` neurons in every layer, see
            ``KEEP_FRACTION_OF_UNPRUNED``). Heads and neurons of all layers are ranked together by importance per
            parameter; the least important are removed until the encoder is at or below the budget.
        heads_per_layer: heads to keep in each layer: one int for every layer, or a list of ``num_hidden_layers``.
        ffn_per_layer: FFN neurons to keep in each layer: one int for every layer, or a list.
        keep_min_heads: a global budget never takes a layer below this many heads (or below its current count if
            that is smaller); 0 lets whole attention blocks go. Explicit ``heads_per_layer`` below it are refused.
        embedding_rank: rank of the factorized word embedding (``factorize_embeddings``); ``None`` leaves it alone.
    """

    encoder_keep_fraction: float | None = None
    heads_per_layer: list[int] | int | None = None
    ffn_per_layer: list[int] | int | None = None
    keep_min_heads: int = 1
    embedding_rank: int | None = None

    def __post_init__(self) -> None:
        fraction = self.encoder_keep_fraction
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
                raise ValueError(f"encoder_keep_fraction must be a number in (0, 1], got {fraction!r}")
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"encoder_keep_fraction must lie in (0, 1], got {fraction!r}")
            if self.heads_per_layer is not None or self.ffn_per_layer is not None:
                raise ValueError(
                    "encoder_keep_fraction cannot be combined with heads_per_layer/ffn_per_layer: give a global "
                    "budget or explicit widths"
                )
        _check_count("keep_min_heads", self.keep_min_heads)
        for name in ("heads_per_layer", "ffn_per_layer"):
            value = getattr(self, name)
            if value is None:
                continue
            values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"{name} must be an int >= 0 or a non-empty list of them, got {value!r}")
            for i, v in enumerate(values):
                _check_count(f"{name}[{i}]" if values is value else name, v)
            if isinstance(value, tuple):
                setattr(self, name, list(value))
        if self.heads_per_layer is not None:
            heads = [self.heads_per_layer] if isinstance(self.heads_per_layer, int) else self.heads_per_layer
            low = min(heads)
            if low < self.keep_min_heads:
                raise ValueError(
                    f"heads_per_layer asks for {low} heads in a layer, below keep_min_heads={self.keep_min_heads}; "
                    "set keep_min_heads=0 to allow it"
                )
        if self.embedding_rank is not None:
            if isinstance(self.embedding_rank, bool) or not isinstance(self.embedding_rank, int):
                raise ValueError(f"embedding_rank must be an integer >= 1, got {self.embedding_rank!r}")
            if self.embedding_rank < 1:
                raise ValueError(f"embedding_rank must be an integer >= 1, got {self.embedding_rank!r}")

    def per_layer(self, name: str, num_layers: int) -> list[int] | None:
        """``heads_per_layer`` or ``ffn_per_layer`` as one int per layer (``None`` when not set)."""
        value = getattr(self, name)
        if value is None:
            return None
        values = [value] * num_layers if isinstance(value, int) else list(value)
        if len(values) != num_layers:
            raise ValueError(f"{name} has {len(values)} entries but the model has {num_layers} layers")
        return values


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


__all__ = ["PruningConfig"]
