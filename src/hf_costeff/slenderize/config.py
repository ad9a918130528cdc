"""``PruningConfig``: the target of a slenderization step (structured pruning and embedding factorization).

It saves and loads beside the model (``pruning_config.json``), as peft's configs do (``adapter_config.json``), so an
artifact records what it was slenderized to. Its width fields carry ``CostEffConfig``'s names: the pruned model's
config then holds the same lists under the same keys.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PretrainedConfig

PRUNING_CONFIG_NAME = "pruning_config.json"


def per_layer(
    value: int | Sequence[int], num_layers: int, name: str, maximum: Sequence[int] | None = None
) -> list[int]:
    """One width per layer from an int (every layer) or a list of ``num_layers``; each an integer >= 0 and, with
    ``maximum``, at most ``maximum[i]`` (a layer is never widened). Raises ``ValueError`` naming ``name[i]``."""
    values = [value] * num_layers if isinstance(value, int) and not isinstance(value, bool) else list(value)
    if len(values) != num_layers:
        raise ValueError(f"{name} has {len(values)} entries but the model has {num_layers} layers")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}[{i}]={v!r} must be an integer >= 0")
        if maximum is not None and v > maximum[i]:
            raise ValueError(f"{name}[{i}]={v!r} must be an integer in [0, {maximum[i]}] (the layer's current width)")
    return values


def model_configs(model: nn.Module) -> list[PretrainedConfig]:
    """Every distinct config object the model's modules hold (they share one unless a copy was made)."""
    found = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            found[id(config)] = config
    return list(found.values())


def update_model_configs(model: nn.Module, **values: Any) -> None:
    """Set ``values`` on every config object of the model (:func:`model_configs`): a pruned or factorized model's
    config must describe its new shapes wherever it is read."""
    for config in model_configs(model):
        for key, value in values.items():
            setattr(config, key, value)


@dataclass
class PruningConfig:
    """What to prune to.

    Give either a global budget (``encoder_keep_fraction``) or explicit widths (``layer_num_heads`` and/or
    ``layer_intermediate_sizes``), not both; ``embedding_rank`` may come with either or alone.

    Args:
        encoder_keep_fraction: fraction in ``(0, 1]`` of the *unpruned* encoder's parameters to keep (the encoder of
            ``num_attention_heads`` heads and ``intermediate_size`` neurons in every layer, so an iterative schedule
            can name its final target from the start). Heads and neurons of all layers are ranked together by
            importance per parameter; the least important are removed until the encoder is at or below the budget.
        layer_num_heads: heads to keep in each layer: one int for every layer, or a list of ``num_hidden_layers``.
        layer_intermediate_sizes: FFN neurons to keep in each layer: one int for every layer, or a list.
        keep_min_heads: a global budget never takes a layer below this many heads (or below its current count if
            that is smaller); 0 lets whole attention blocks go. Explicit ``layer_num_heads`` below it are refused.
        embedding_rank: rank of the factorized word embedding (``factorize_embeddings``); ``None`` leaves it alone.
            The one place a slenderization asks for a rank (the CLI's ``--embedding_rank`` fills it).
    """

    encoder_keep_fraction: float | None = None
    layer_num_heads: list[int] | int | None = None
    layer_intermediate_sizes: list[int] | int | None = None
    keep_min_heads: int = 1
    embedding_rank: int | None = None

    def __post_init__(self) -> None:
        fraction = self.encoder_keep_fraction
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
                raise ValueError(f"encoder_keep_fraction must be a number in (0, 1], got {fraction!r}")
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"encoder_keep_fraction must lie in (0, 1], got {fraction!r}")
            if self.layer_num_heads is not None or self.layer_intermediate_sizes is not None:
                raise ValueError(
                    "encoder_keep_fraction cannot be combined with layer_num_heads/layer_intermediate_sizes: give a "
                    "global budget or explicit widths"
                )
        _check_count("keep_min_heads", self.keep_min_heads)
        for name in ("layer_num_heads", "layer_intermediate_sizes"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) and (not isinstance(value, (list, tuple)) or not value):
                raise ValueError(f"{name} must be an int >= 0 or a non-empty list of them, got {value!r}")
            checked = per_layer(value, 1 if isinstance(value, int) else len(value), name)
            if not isinstance(value, int):
                setattr(self, name, checked)
        if self.layer_num_heads is not None:
            heads = [self.layer_num_heads] if isinstance(self.layer_num_heads, int) else self.layer_num_heads
            low = min(heads)
            if low < self.keep_min_heads:
                raise ValueError(
                    f"layer_num_heads asks for {low} heads in a layer, below keep_min_heads={self.keep_min_heads}; "
                    "set keep_min_heads=0 to allow it"
                )
        if self.embedding_rank is not None:
            if isinstance(self.embedding_rank, bool) or not isinstance(self.embedding_rank, int):
                raise ValueError(f"embedding_rank must be an integer >= 1, got {self.embedding_rank!r}")
            if self.embedding_rank < 1:
                raise ValueError(f"embedding_rank must be an integer >= 1, got {self.embedding_rank!r}")

    def heads(self, num_layers: int) -> list[int]:
        """``layer_num_heads`` as one int per layer (it must be set)."""
        return per_layer(self.layer_num_heads, num_layers, "layer_num_heads")

    def ffn(self, num_layers: int) -> list[int]:
        """``layer_intermediate_sizes`` as one int per layer (it must be set)."""
        return per_layer(self.layer_intermediate_sizes, num_layers, "layer_intermediate_sizes")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``pruning_config.json`` into ``save_directory`` (created if needed), atomically. Returns its path."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PRUNING_CONFIG_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs: Any) -> PruningConfig:
        """Read ``pruning_config.json`` from a folder, a path to the file itself, or a Hub repo id (``hub_kwargs``
        go to ``huggingface_hub.hf_hub_download``). Unknown keys raise a ``ValueError`` naming them."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir():
            path = path / PRUNING_CONFIG_NAME
        elif not path.is_file():
            from huggingface_hub import hf_hub_download  # noqa: PLC0415

            path = Path(hf_hub_download(str(pretrained_model_name_or_path), PRUNING_CONFIG_NAME, **hub_kwargs))
        if not path.is_file():
            raise ValueError(f"no {PRUNING_CONFIG_NAME} in {str(pretrained_model_name_or_path)!r}")
        data = json.loads(path.read_text(encoding="utf-8"))
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{path} has fields PruningConfig does not know: {unknown}")
        return cls(**data)


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


__all__ = ["PRUNING_CONFIG_NAME", "PruningConfig", "per_layer"]
