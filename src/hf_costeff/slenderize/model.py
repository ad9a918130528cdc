"""Exit-aware importance, width planning, structured pruning, embedding factorization and a before/after summary."""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig
from transformers.pytorch_utils import prune_linear_layer

from ..configuration_costeff import CostEffConfig
from ..cost import count_parameters, forward_flops
from .config import PruningConfig
from .layer import encoder_layers, unit_masks

logger = logging.getLogger(__name__)

# ``PruningConfig.encoder_keep_fraction`` is a fraction of the *unpruned* encoder (``num_attention_heads`` heads and
# ``intermediate_size`` neurons per layer), so an iterative schedule can name its final target from the start.
KEEP_FRACTION_OF_UNPRUNED = True

EXIT_WEIGHTINGS = ("all", "final")
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
    meta: dict = field(default_factory=dict)

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


# ---------------------------------------------------------------- importance


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
                    else model._loss(logits[:, k], labels)
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


# ---------------------------------------------------------------- planning


def head_cost(config: CostEffConfig) -> int:
    """Encoder parameters of one attention head: its query/key/value rows and biases, and output-dense columns."""
    return 4 * config.hidden_size * config.head_dim + 3 * config.head_dim


def neuron_cost(config: CostEffConfig) -> int:
    """Encoder parameters of one FFN neuron: its intermediate row and bias, and output-dense column."""
    return 2 * config.hidden_size + 1


def unpruned_config(config: CostEffConfig) -> CostEffConfig:
    """A copy of ``config`` with ``num_attention_heads`` heads and ``intermediate_size`` neurons in every layer."""
    full = config.__class__.from_dict(config.to_dict())
    full.layer_num_heads = [config.num_attention_heads] * config.num_hidden_layers
    full.layer_intermediate_sizes = [config.intermediate_size] * config.num_hidden_layers
    return full


def plan_widths(
    config: CostEffConfig,
    importance: Importance | None,
    pruning_config: PruningConfig,
    normalize: str = "layer",
) -> tuple[list[int], list[int]]:
    """Per-layer widths ``(heads_per_layer, ffn_per_layer)`` that meet ``pruning_config``.

    Explicit widths are taken as given (a layer is never widened: a target above the current width keeps the current
    one; unset lists keep the current widths). A global budget removes the heads and neurons of lowest score across
    all layers until the encoder has at most ``encoder_keep_fraction * encoder parameters of the unpruned model``; it
    stops within one unit's cost of the budget, and never takes a layer below ``keep_min_heads`` heads.
    ``importance`` is needed only for a budget.

    ``normalize`` sets the score, always an importance per parameter removed:

    * ``"layer"`` (default): each unit's importance divided by the mean importance of its group (the heads of its
      layer, or the FFN neurons of its layer), as Molchanov et al. (2017) and Michel et al. (2019) normalise per layer.
      Within a group every unit costs the same, so this is the unit's importance per parameter in units of its
      group's average per parameter: heads and neurons are compared on one relative scale.
    * ``"kind"``: the same with one group for all heads and one for all neurons (keeps differences between layers).
    * ``"none"``: raw ``importance / parameter cost``. First-order Taylor scores are not on one scale across unit
      sizes (removing a head removes ~64x the parameters of a neuron at once and its score underestimates that), so
      this cuts heads first: MiniLM at ``encoder_keep_fraction=0.5`` kept 1 head of 12 in every layer.

    ``benchmarks/width_planning.py`` measures the three against uniform widths of equal size (docs/slenderization.md).
    """
    if not isinstance(pruning_config, PruningConfig):
        raise ValueError(f"pruning_config must be a PruningConfig, got {type(pruning_config).__name__}")
    layers = config.num_hidden_layers
    current_heads, current_ffn = list(config.layer_num_heads), list(config.layer_intermediate_sizes)
    if pruning_config.encoder_keep_fraction is None:
        heads = pruning_config.per_layer("heads_per_layer", layers) or current_heads
        ffn = pruning_config.per_layer("ffn_per_layer", layers) or current_ffn
        return (
            [min(t, c) for t, c in zip(heads, current_heads, strict=True)],
            [min(t, c) for t, c in zip(ffn, current_ffn, strict=True)],
        )

    if normalize not in ("layer", "kind", "none"):
        raise ValueError(f"normalize must be 'layer', 'kind' or 'none', got {normalize!r}")
    if importance is None:
        raise ValueError("a global budget (encoder_keep_fraction) needs importance scores")
    importance.check(config)
    target = pruning_config.encoder_keep_fraction * count_parameters(unpruned_config(config))["encoder"]
    params = count_parameters(config)["encoder"]
    h_cost, n_cost = head_cost(config), neuron_cost(config)

    def relative(groups: list[torch.Tensor]) -> list[torch.Tensor]:
        # An all-zero group (nothing measured) stays at 0: it is removed first, as the raw scores would have it.
        mean = torch.cat(groups).mean() if normalize == "kind" else None
        out = []
        for g in groups:
            m = mean if mean is not None else (g.mean() if g.numel() else torch.tensor(0.0))
            out.append(g / m if m > 0 else torch.zeros_like(g))
        return out

    # One candidate per unit: (score, kind, layer); removed lowest score first, each taking its parameter cost away.
    if normalize == "none":
        scores = torch.cat([h / h_cost for h in importance.heads] + [n / n_cost for n in importance.neurons])
    else:
        scores = torch.cat([*relative(importance.heads), *relative(importance.neurons)])
    kinds = [(0, i) for i in range(layers) for _ in range(current_heads[i])]
    kinds += [(1, i) for i in range(layers) for _ in range(current_ffn[i])]
    heads, ffn = list(current_heads), list(current_ffn)
    floor = [min(pruning_config.keep_min_heads, h) for h in current_heads]
    for unit in torch.argsort(scores, stable=True).tolist():
        if params <= target:
            break
        kind, layer = kinds[unit]
        if kind == 0:
            if heads[layer] <= floor[layer]:
                continue
            heads[layer] -= 1
            params -= h_cost
        else:
            ffn[layer] -= 1
            params -= n_cost
    if params > target:
        logger.warning(
            "encoder_keep_fraction=%g is out of reach with keep_min_heads=%d: the encoder keeps %d parameters "
            "(budget %d)",
            pruning_config.encoder_keep_fraction,
            pruning_config.keep_min_heads,
            params,
            int(target),
        )
    return heads, ffn


# ---------------------------------------------------------------- pruning


def _keep_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """``prune_linear_layer`` keeping dtype and ``requires_grad`` (it returns float32, trainable layers)."""
    with warnings.catch_warnings():
        # nn.Linear's init warns on a zero-size weight (a fully pruned block); the weight is overwritten anyway.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        new = prune_linear_layer(linear, index, dim)
    new = new.to(dtype=linear.weight.dtype)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if linear.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def _targets(value: Sequence[int] | int, current: list[int], name: str) -> list[int]:
    values = [value] * len(current) if isinstance(value, int) and not isinstance(value, bool) else list(value)
    if len(values) != len(current):
        raise ValueError(f"{name} has {len(values)} entries but the model has {len(current)} layers")
    for i, (v, c) in enumerate(zip(values, current, strict=True)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= c:
            raise ValueError(f"{name}[{i}]={v!r} must be an integer in [0, {c}] (the layer's current width)")
    return values


def _configs(model: nn.Module) -> list[PretrainedConfig]:
    """Every distinct config object the model's modules hold (they share one unless a copy was made)."""
    found = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            found[id(config)] = config
    return list(found.values())


@torch.no_grad()
def prune_model(
    model: nn.Module,
    importance: Importance,
    heads_per_layer: Sequence[int] | int,
    ffn_per_layer: Sequence[int] | int,
) -> nn.Module:
    """Remove, in place, all but the ``heads_per_layer[l]`` most important heads and ``ffn_per_layer[l]`` neurons.

    Slices the query/key/value rows (and biases) of removed heads, the matching input columns of
    ``attention.output.dense``, the rows (and bias) of ``intermediate.dense`` and the input columns of
    ``output.dense``; 0 heads or 0 neurons leave empty projections (the block adds only its output bias). Updates
    ``config.layer_num_heads`` / ``layer_intermediate_sizes`` and ``attention.self.num_heads``. Layers already at
    their target keep their Parameter objects; sliced layers get new ones, so an optimizer must be rebuilt.

    Returns:
        ``model`` itself.
    """
    config = model.config
    importance.check(config)
    heads = _targets(heads_per_layer, list(config.layer_num_heads), "heads_per_layer")
    ffn = _targets(ffn_per_layer, list(config.layer_intermediate_sizes), "ffn_per_layer")
    head_dim = config.head_dim
    for i, layer in enumerate(encoder_layers(model)):
        attention = layer.attention
        if heads[i] != config.layer_num_heads[i]:
            keep = torch.tensor(importance.top_heads(i, heads[i]), dtype=torch.long)
            index = (keep[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
            for name in ("query", "key", "value"):
                setattr(attention.self, name, _keep_linear(getattr(attention.self, name), index, dim=0))
            attention.output.dense = _keep_linear(attention.output.dense, index, dim=1)
            attention.self.num_heads = heads[i]
        if ffn[i] != config.layer_intermediate_sizes[i]:
            keep = torch.tensor(importance.top_neurons(i, ffn[i]), dtype=torch.long)
            layer.intermediate.dense = _keep_linear(layer.intermediate.dense, keep, dim=0)
            layer.output.dense = _keep_linear(layer.output.dense, keep, dim=1)
    for cfg in _configs(model):
        cfg.layer_num_heads = list(heads)
        cfg.layer_intermediate_sizes = list(ffn)
    return model


@torch.no_grad()
def factorize_embeddings(model: nn.Module, rank: int) -> float:
    """Replace the word embedding ``E`` ``(V, H)`` by its rank-``rank`` truncated SVD, in place.

    ``word_embeddings`` becomes ``Embedding(V, rank)`` holding ``U[:, :r] * S[:r]`` (same ``padding_idx``) and
    ``word_embeddings_proj`` ``Linear(r, H, bias=False)`` holding ``Vh[:r].T``. An already factorized embedding is
    refactorized from its product. Sets ``config.embedding_rank = rank``.

    Returns:
        The relative Frobenius reconstruction error ``||E - E_r|| / ||E||`` (0.0 at full rank).
    """
    embeddings = getattr(model, "costeff", model).embeddings
    table, proj = embeddings.word_embeddings, embeddings.word_embeddings_proj
    weight = table.weight.double()
    full = weight if proj is None else weight @ proj.weight.double().T  # (V, H)
    vocab, hidden = full.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(vocab, hidden):
        raise ValueError(
            f"rank must be an integer in [1, {min(vocab, hidden)}] (min of vocab and hidden), got {rank!r}"
        )
    u, s, vh = torch.linalg.svd(full, full_matrices=False)  # thin SVD: U is (V, H), not (V, V)
    total = float((s**2).sum())
    error = math.sqrt(float((s[rank:] ** 2).sum()) / total) if total > 0 else 0.0
    dtype, device = table.weight.dtype, table.weight.device
    new_table = nn.Embedding(vocab, rank, padding_idx=table.padding_idx, dtype=dtype, device=device)
    new_table.weight.copy_((u[:, :rank] * s[:rank]).to(dtype))
    new_proj = nn.Linear(rank, hidden, bias=False, dtype=dtype, device=device)
    new_proj.weight.copy_(vh[:rank].T.to(dtype))
    new_table.weight.requires_grad_(table.weight.requires_grad)
    new_proj.weight.requires_grad_(table.weight.requires_grad)
    embeddings.word_embeddings, embeddings.word_embeddings_proj = new_table, new_proj
    for cfg in _configs(model):
        cfg.embedding_rank = rank
    return error


# ---------------------------------------------------------------- summary


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
    "EXIT_WEIGHTINGS",
    "KEEP_FRACTION_OF_UNPRUNED",
    "Importance",
    "compute_importance",
    "factorize_embeddings",
    "head_cost",
    "neuron_cost",
    "plan_widths",
    "prune_model",
    "summary",
    "unpruned_config",
]
