"""Parameters and FLOPs of a CostEff model, computed from its configuration's shapes.

FLOPs follow ``torch.utils.flop_counter.FlopCounterMode``: 2 * M * N * K for every matrix product (linear layers,
attention scores and context); element-wise work (softmax, GELU, LayerNorm, embedding look-up) counts 0. A tested
invariant (tests/test_cost.py) holds these formulas within 2% of FlopCounterMode on real forwards.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PretrainedConfig

from .configuration_costeff import CostEffConfig


def layer_flops(config: CostEffConfig, layer_idx: int, seq_length: int) -> int:
    """FLOPs of layer ``layer_idx`` (0-based) for one example of ``seq_length`` tokens."""
    hidden, t = config.hidden_size, seq_length
    inner = config.layer_num_heads[layer_idx] * config.head_dim
    ffn = config.layer_intermediate_sizes[layer_idx]
    projections = 2 * t * hidden * inner * 4  # query, key, value, output
    attention = 2 * 2 * t * t * inner  # scores and context, summed over heads
    return projections + attention + 2 * 2 * t * hidden * ffn


def exit_flops(config: CostEffConfig) -> int:
    """FLOPs of one exit classifier (it reads the [CLS] vector only)."""
    pooler = 2 * config.hidden_size**2 if config.exit_pooler == "dense" else 0
    return pooler + 2 * config.hidden_size * config.num_labels


def embedding_flops(config: CostEffConfig, seq_length: int) -> int:
    """FLOPs of the embeddings: only the factorized projection multiplies."""
    return 2 * seq_length * config.embedding_rank * config.hidden_size if config.embedding_rank else 0


def forward_flops(config: CostEffConfig, seq_length: int, exit_layer: int | None = None) -> int:
    """FLOPs of one example of ``seq_length`` tokens that leaves after ``exit_layer`` (1-based; default: the last).

    Every exit at or before ``exit_layer`` is paid for, since each was evaluated before the example left.
    """
    exit_layer = config.num_hidden_layers if exit_layer is None else exit_layer
    if exit_layer not in config.exit_layers:
        raise ValueError(f"exit_layer={exit_layer} is not one of the exit layers {config.exit_layers}")
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    exits_paid = sum(1 for layer in config.exit_layers if layer <= exit_layer)
    return (
        embedding_flops(config, seq_length)
        + sum(layer_flops(config, i, seq_length) for i in range(exit_layer))
        + exits_paid * exit_flops(config)
    )


def average_flops(config: CostEffConfig, exit_layers: Sequence[int], seq_lengths: int | Sequence[int]) -> float:
    """Mean FLOPs per example of a run, given each example's exit layer and its (unpadded) length."""
    if len(exit_layers) == 0:
        raise ValueError("average_flops needs at least one example")
    lengths = [seq_lengths] * len(exit_layers) if isinstance(seq_lengths, int) else list(seq_lengths)
    if len(lengths) != len(exit_layers):
        raise ValueError(f"{len(exit_layers)} exit layers but {len(lengths)} sequence lengths")
    return sum(forward_flops(config, int(t), int(e)) for e, t in zip(exit_layers, lengths, strict=True)) / len(lengths)


def count_parameters(config: CostEffConfig, with_exits: bool = True) -> dict[str, int]:
    """Parameters by part (``embeddings``, ``encoder``, ``exits``, ``total``) from the configuration's shapes."""
    h, v = config.hidden_size, config.vocab_size
    words = v * config.embedding_rank + config.embedding_rank * h if config.embedding_rank else v * h
    embeddings = words + (config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    encoder = 0
    for i in range(config.num_hidden_layers):
        inner = config.layer_num_heads[i] * config.head_dim
        ffn = config.layer_intermediate_sizes[i]
        encoder += 3 * (h * inner + inner) + (inner * h + h) + 2 * h  # q, k, v, output, LayerNorm
        encoder += (h * ffn + ffn) + (ffn * h + h) + 2 * h  # FFN in, out, LayerNorm
    per_exit = (h * h + h if config.exit_pooler == "dense" else 0) + h * config.num_labels + config.num_labels
    exits = per_exit * config.num_exits if with_exits else 0
    return {"embeddings": embeddings, "encoder": encoder, "exits": exits, "total": embeddings + encoder + exits}


def _as_config(obj) -> CostEffConfig:
    if isinstance(obj, PretrainedConfig):
        return obj
    config = getattr(obj, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise ValueError(f"summary expects CostEff models or configs, got {type(obj).__name__}")
    return config


def summary(before, after, seq_length: int = 128) -> str:
    """Markdown tables of per-layer widths, parameters by part and FLOPs (all layers, ``seq_length`` tokens)."""
    a, b = _as_config(before), _as_config(after)
    if a.num_hidden_layers != b.num_hidden_layers:
        raise ValueError(f"before has {a.num_hidden_layers} layers, after {b.num_hidden_layers}")
    lines = ["| layer | heads | FFN |", "|---|---|---|"]
    for i in range(a.num_hidden_layers):
        lines.append(
            f"| {i + 1} | {a.layer_num_heads[i]} → {b.layer_num_heads[i]} "
            f"| {a.layer_intermediate_sizes[i]} → {b.layer_intermediate_sizes[i]} |"
        )
    pa, pb = count_parameters(a), count_parameters(b)
    fa, fb = forward_flops(a, seq_length), forward_flops(b, seq_length)
    lines += ["", "| | before | after | after/before |", "|---|---|---|---|"]
    rank = f"embedding rank {a.embedding_rank or '-'} → {b.embedding_rank or '-'}"
    for name in ("embeddings", "encoder", "exits", "total"):
        ratio = pb[name] / pa[name] if pa[name] else float("nan")
        label = f"{name} params" + (f" ({rank})" if name == "embeddings" else "")
        lines.append(f"| {label} | {pa[name]:,} | {pb[name]:,} | {ratio:.3f} |")
    lines.append(f"| GFLOPs @{seq_length} tokens, all layers | {fa / 1e9:.3f} | {fb / 1e9:.3f} | {fb / fa:.3f} |")
    return "\n".join(lines)


__all__ = [
    "average_flops",
    "count_parameters",
    "embedding_flops",
    "exit_flops",
    "forward_flops",
    "layer_flops",
    "summary",
]
