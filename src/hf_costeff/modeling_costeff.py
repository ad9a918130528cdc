"""PyTorch CostEff model: a BERT encoder whose layers may each have their own width, with an exit classifier after
every configured layer and a batched per-example early exit at inference.

The file reads top to bottom like ``transformers/models/bert/modeling_bert.py``: embeddings, attention, FFN, layer,
encoder, exits, pretrained-model base, outputs, ``CostEffModel``, ``CostEffForSequenceClassification``.
It travels to the Hub (``trust_remote_code``), so it imports only torch, transformers, its configuration and ``choices``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_costeff import (
    INPUT_ID_BOUNDS,
    CostEffConfig,
    resolve_exit_policy,
    sentence_transformers_pooling,
)

logger = logging.get_logger(__name__)


class CostEffEmbeddings(nn.Module):
    """Word (optionally factorized), position and token-type embeddings, summed, normalized.

    With ``config.embedding_rank = r`` the word embedding is a ``(vocab_size, r)`` table followed by a bias-free
    ``Linear(r, hidden_size)`` (``word_embeddings_proj``), as COST-EFF factorizes it by truncated SVD.
    """

    def __init__(self, config: CostEffConfig):
        super().__init__()
        rank = config.embedding_rank
        self.word_embeddings = nn.Embedding(
            config.vocab_size, rank or config.hidden_size, padding_idx=config.pad_token_id
        )
        # Registered even when absent so that factorizing later puts it where the checkpoint order expects it.
        self.register_module("word_embeddings_proj", nn.Linear(rank, config.hidden_size, bias=False) if rank else None)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_ids = nn.Buffer(torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Returns embeddings of shape ``(batch_size, sequence_length, hidden_size)``."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
            if self.word_embeddings_proj is not None:
                inputs_embeds = self.word_embeddings_proj(inputs_embeds)
        batch_size, seq_length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = self.position_ids[:, :seq_length]
        if token_type_ids is None:
            token_type_ids = torch.zeros((batch_size, seq_length), dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention. q/k/v: ``(batch, heads, seq, head_dim)``; returns ``(batch, seq, heads, head_dim)``."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros_like(attention_mask, dtype=query.dtype).masked_fill(
                ~attention_mask, torch.finfo(query.dtype).min
            )
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class CostEffSelfAttention(nn.Module):
    """Multi-head self-attention with ``layer_num_heads[layer_idx]`` heads of the unpruned head size.

    ``query``/``key``/``value``: ``Linear(hidden, heads * head_dim)``; zero heads give empty projections.
    """

    def __init__(self, config: CostEffConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.num_heads = config.layer_num_heads[layer_idx]
        self.head_dim = config.head_dim
        inner = self.num_heads * self.head_dim
        self.scaling = self.head_dim**-0.5
        self.query = nn.Linear(config.hidden_size, inner)
        self.key = nn.Linear(config.hidden_size, inner)
        self.value = nn.Linear(config.hidden_size, inner)
        self.dropout_prob = config.attention_probs_dropout_prob
        # transformers' sdpa integration treats a module without this flag as causal.
        self.is_causal = False

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        """hidden_states ``(batch, seq, hidden)`` -> context ``(batch, seq, heads * head_dim)``."""
        batch_size, seq_length = hidden_states.shape[:2]
        if self.num_heads == 0:
            return hidden_states.new_zeros(batch_size, seq_length, 0)
        shape = (batch_size, seq_length, self.num_heads, self.head_dim)
        query = self.query(hidden_states).view(shape).transpose(1, 2)
        key = self.key(hidden_states).view(shape).transpose(1, 2)
        value = self.value(hidden_states).view(shape).transpose(1, 2)
        # transformers' attention-backend switch: the config attribute is how its own models read it (no public name).
        backend = self.config._attn_implementation  # noqa: SLF001
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(backend, eager_attention_forward)
        context, _ = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout_prob if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return context.reshape(batch_size, seq_length, -1)


class CostEffSelfOutput(nn.Module):
    """Attention output projection ``Linear(heads * head_dim, hidden)``, dropout, residual and LayerNorm."""

    def __init__(self, config: CostEffConfig, layer_idx: int):
        super().__init__()
        self.dense = nn.Linear(config.layer_num_heads[layer_idx] * config.head_dim, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        # With zero heads, dense() of the empty context is its bias: the block keeps that exact term.
        return self.LayerNorm(self.dropout(self.dense(context)) + input_tensor)


class CostEffAttention(nn.Module):
    def __init__(self, config: CostEffConfig, layer_idx: int):
        super().__init__()
        self.self = CostEffSelfAttention(config, layer_idx)
        self.output = CostEffSelfOutput(config, layer_idx)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        return self.output(self.self(hidden_states, attention_mask, **kwargs), hidden_states)


class CostEffIntermediate(nn.Module):
    """FFN input ``Linear(hidden, layer_intermediate_sizes[layer_idx])`` and activation."""

    def __init__(self, config: CostEffConfig, layer_idx: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.layer_intermediate_sizes[layer_idx])
        self.intermediate_act_fn = (
            ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class CostEffOutput(nn.Module):
    """FFN output ``Linear(layer_intermediate_sizes[layer_idx], hidden)``, dropout, residual and LayerNorm."""

    def __init__(self, config: CostEffConfig, layer_idx: int):
        super().__init__()
        self.dense = nn.Linear(config.layer_intermediate_sizes[layer_idx], config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class CostEffLayer(GradientCheckpointingLayer):
    """One transformer layer; its widths come from the configuration's per-layer lists."""

    def __init__(self, config: CostEffConfig, layer_idx: int):
        super().__init__()
        self.attention = CostEffAttention(config, layer_idx)
        self.intermediate = CostEffIntermediate(config, layer_idx)
        self.output = CostEffOutput(config, layer_idx)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        """``(batch, seq, hidden)`` -> ``(batch, seq, hidden)``."""
        attention_output = self.attention(hidden_states, attention_mask, **kwargs)
        return self.output(self.intermediate(attention_output), attention_output)


ExitHook = Callable[[int, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


class CostEffEncoder(nn.Module):
    """The stack of layers. Owns the one layer loop of the package (as ``BertEncoder`` owns BERT's), with an exit hook.

    ``exit_hook(layer_idx, hidden_states, attention_mask)`` runs after every layer (``layer_idx`` 0-based) on the rows
    still in the batch and their 2D mask. It returns the hidden states to go on with (the same tensor, or e.g. one
    rescaled for gradient equilibrium) and ``keep``: ``None`` (every row goes on) or a bool ``(rows,)`` tensor. Rows
    with ``keep == False`` leave the batch, the padding columns no remaining row uses are cut, and the loop stops
    when no row is left: that is the batched early exit.
    """

    def __init__(self, config: CostEffConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([CostEffLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        exit_hook: ExitHook | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """``(batch, seq, hidden)`` embeddings and a ``(batch, seq)`` mask -> the last layer's output (of the rows
        still in the batch) and, with ``output_hidden_states``, the input and every layer's output."""
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        all_hidden = [hidden_states] if output_hidden_states else None
        for i, layer in enumerate(self.layer):
            hidden_states = layer(hidden_states, mask, **kwargs)
            keep = None
            if exit_hook is not None:
                hidden_states, keep = exit_hook(i, hidden_states, attention_mask)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            if keep is None or bool(keep.all()):
                continue
            if not bool(keep.any()):
                break
            hidden_states = hidden_states[keep]
            if attention_mask is not None:
                attention_mask, hidden_states = _trim_padding(attention_mask[keep], hidden_states)
            mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
            )
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=tuple(all_hidden) if all_hidden is not None else None
        )


class CostEffExit(nn.Module):
    """An exit classifier: pool the sequence ([CLS] or the mean of real tokens, ``config.exit_pooling``), then
    ``dense`` + tanh as BERT's pooler or tanh alone as COST-EFF (``config.exit_pooler``), dropout, classify.

    Named ``exits.N.classifier`` so that PEFT's sequence-classification default ``modules_to_save`` finds every exit.
    """

    def __init__(self, config: CostEffConfig):
        super().__init__()
        self.mean_pooling = config.exit_pooling == "mean"
        self.dense = nn.Linear(config.hidden_size, config.hidden_size) if config.exit_pooler == "dense" else None
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states ``(batch, seq, hidden)``, attention_mask ``(batch, seq)`` -> logits ``(batch, num_labels)``."""
        if not self.mean_pooling:
            pooled = hidden_states[:, 0]
        elif attention_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            weights = (attention_mask != 0).to(hidden_states.dtype).unsqueeze(-1)
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        if self.dense is not None:
            pooled = self.dense(pooled)
        return self.classifier(self.dropout(torch.tanh(pooled)))


class _GradientRescale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` (gradient equilibrium, Li et al. 2019)."""

    @staticmethod
    def forward(ctx, hidden_states: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return hidden_states.view_as(hidden_states)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output * ctx.scale, None


# Modules ``device_map="auto"`` must keep on one device (accelerate reads ``_no_split_modules``; serving.hub this).
NO_SPLIT_MODULES = ["CostEffEmbeddings", "CostEffLayer"]


class CostEffPreTrainedModel(PreTrainedModel):
    config: CostEffConfig
    config_class = CostEffConfig
    base_model_prefix = "costeff"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = NO_SPLIT_MODULES
    # forward takes **kwargs for attention backends; it does not take Trainer's num_items_in_batch.
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained`` that refuses a checkpoint of another architecture.

        transformers would load a BERT folder into a CostEff class with freshly initialised exits and only a logged
        load report: a model that runs and answers at random. Such a checkpoint is converted with
        [`CostEffForSequenceClassification.from_bert`] instead.
        """
        if pretrained_model_name_or_path is not None and not isinstance(kwargs.get("config"), PretrainedConfig):
            hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
            config_dict, _ = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            check_costeff_checkpoint(config_dict, pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """``PreTrainedModel.save_pretrained`` that never writes an ``auto_map`` without the code it points to.

        A configuration loaded from a Hub-ready folder keeps its ``auto_map``, but transformers copies the code files
        only for classes registered with ``register_for_auto_class``; any save of such a model (``Trainer.save_model``,
        checkpoints) would write a folder that ``trust_remote_code=True`` cannot load. The code files are copied here
        whenever the saved config.json has an ``auto_map``.
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        config_path = os.path.join(save_directory, "config.json")
        if not os.path.isfile(config_path):  # not the main process of a distributed save
            return
        with open(config_path, encoding="utf-8") as f:
            if not json.load(f).get("auto_map"):
                return
        # This file and what it imports relatively, as transformers' own ``custom_object_save`` finds them.
        for source in (__file__, *get_relative_import_files(__file__)):
            target = os.path.join(save_directory, os.path.basename(source))
            if not os.path.isfile(target):
                shutil.copyfile(source, target)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CostEffEmbeddings):
            # Non-persistent buffers are not in the checkpoint and must be filled here (transformers 5).
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))


@dataclass
class CostEffSequenceClassifierOutput(ModelOutput):
    r"""Output of [`CostEffForSequenceClassification`].

    Args:
        loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` is given):
            Weighted sum of every exit's loss when all layers run (training, or criterion ``"none"``); the loss of
            the logits each example exited with otherwise.
        logits (`torch.Tensor` of shape `(batch_size, num_labels)`):
            Logits of the exit each example left at (the last exit when no early exit happens).
        all_exit_logits (`torch.Tensor` of shape `(batch_size, num_exits, num_labels)`, *optional*):
            Logits of every exit; only when every layer ran for every example.
        exit_layer (`torch.LongTensor` of shape `(batch_size,)`):
            1-based layer after which each example exited.
        hidden_states (`tuple(torch.Tensor)`, *optional*, returned with `output_hidden_states=True`):
            Embedding output and every layer's output, each `(batch_size, sequence_length, hidden_size)`; only when
            every layer ran for every example.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    all_exit_logits: torch.Tensor | None = None
    exit_layer: torch.LongTensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


# Keyword arguments forward passes on to the attention backend (transformers' FlashAttentionKwargs); any other
# keyword is refused rather than swallowed by **kwargs.
_ATTENTION_KWARGS = frozenset({"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"})


def _is_tracing() -> bool:
    """True under torch.compile / torch.export / ONNX export / jit tracing, where tensor *values* are not known."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _check_kwargs(kwargs: dict) -> None:
    """Refuse keywords the model would otherwise ignore silently (a misspelled argument, attentions it cannot give)."""
    for name, value in kwargs.items():
        if name == "output_attentions":
            if value:
                raise ValueError(
                    "output_attentions=True is not supported: CostEff layers do not return attention weights"
                )
        elif name not in _ATTENTION_KWARGS:
            raise TypeError(f"forward() got an unexpected keyword argument {name!r}")


def _check_inputs(
    config: CostEffConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> None:
    """Refuse inputs that would otherwise fail deep inside torch or give a silently wrong answer.

    Shapes and dtypes are checked always (static under tracing: no graph break). Values (id ranges, a 0/1 mask) are
    checked in eager mode only, with one host sync for all of them; under torch.compile / export the caller's edge
    (pipeline, CLI, data collator) is responsible for them.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        _check_ids("input_ids", input_ids)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch_size, sequence_length), got shape {tuple(input_ids.shape)}")
        batch_size, seq_length = input_ids.shape
    else:
        if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
            raise TypeError(f"inputs_embeds must be a floating-point tensor, got {_describe(inputs_embeds)}")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must be (batch_size, sequence_length, hidden_size={config.hidden_size}), "
                f"got shape {tuple(inputs_embeds.shape)}"
            )
        batch_size, seq_length = inputs_embeds.shape[:2]
    for name, ids in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        if ids is not None:
            _check_ids(name, ids)
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.is_complex()):
        raise TypeError(f"attention_mask must be a tensor of 0s and 1s, got {_describe(attention_mask)}")
    config.check_input_shapes(
        (batch_size, seq_length),
        attention_mask=_shape(attention_mask),
        token_type_ids=_shape(token_type_ids),
        position_ids=_shape(position_ids),
    )
    if not _is_tracing():
        _check_input_values(config, input_ids, attention_mask, token_type_ids, position_ids)


def _describe(value) -> str:
    return f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def _check_ids(name: str, ids) -> None:
    # nn.Embedding indexes with int64/int32 only: uint8/int8/int16 ids would fail deep inside torch.
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.long, torch.int32):
        raise TypeError(f"{name} must be an integer tensor (torch.long or torch.int32), got {_describe(ids)}")


def _shape(tensor: torch.Tensor | None) -> tuple[int, ...] | None:
    return None if tensor is None else tuple(tensor.shape)


def _check_input_values(
    config: CostEffConfig,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> None:
    """Every value check at the cost of one host sync; the details (and the message) only when one fails."""
    ids = {"input_ids": input_ids, "token_type_ids": token_type_ids, "position_ids": position_ids}
    ids = {name: value for name, value in ids.items() if value is not None}
    failures = [((value < 0) | (value >= getattr(config, INPUT_ID_BOUNDS[name]))).any() for name, value in ids.items()]
    if attention_mask is not None:
        failures.append(((attention_mask != 0) & (attention_mask != 1)).any())
        failures.append(~(attention_mask != 0).any(dim=1).all())
    if not failures or not bool(torch.stack([f.cpu() for f in failures]).any()):
        return
    mask = attention_mask if attention_mask is not None else torch.ones(1, 1)
    config.check_input_values(
        {name: (int(value.min()), int(value.max())) for name, value in ids.items()},
        mask_values=mask[(mask != 0) & (mask != 1)].unique()[:8].tolist(),
        empty_rows=not bool((mask != 0).any(dim=1).all()),
    )


class CostEffModel(CostEffPreTrainedModel):
    """The bare CostEff encoder: embeddings and layers of heterogeneous widths, no exits (``AutoModel``)."""

    def __init__(self, config: CostEffConfig):
        super().__init__(config)
        config.validate_costeff()
        self.embeddings = CostEffEmbeddings(config)
        self.encoder = CostEffEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        exit_hook: ExitHook | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        """Embeddings, then every layer (see [`CostEffEncoder`] for ``exit_hook``). Returns ``last_hidden_state``
        ``(batch, seq, hidden)`` and optionally all hidden states."""
        _check_kwargs(kwargs)
        _check_inputs(self.config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids)
        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        output = self.encoder(
            hidden_states, attention_mask, exit_hook=exit_hook, output_hidden_states=output_hidden_states, **kwargs
        )
        return output if return_dict is not False else output.to_tuple()


class CostEffForSequenceClassification(CostEffPreTrainedModel):
    """CostEff encoder with an exit classifier after each of ``config.exit_layers``.

    In training mode, or with the criterion ``"none"``, every layer runs for every example and ``logits`` are the last
    exit's. In eval mode with a criterion, each example leaves at the first exit that satisfies it, and the examples
    that left are removed from the batch so later layers run only on those still going.
    """

    def __init__(self, config: CostEffConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.costeff = CostEffModel(config)
        self.exits = nn.ModuleList([CostEffExit(config) for _ in config.exit_layers])
        self.post_init()

    @classmethod
    def from_bert(
        cls, model_or_path: PreTrainedModel | str, init_exits_from_final: bool = True, **config_overrides
    ) -> CostEffForSequenceClassification:
        """Convert a BERT checkpoint into a CostEff model with every weight carried over.

        Args:
            model_or_path: a ``BertModel`` / ``BertForSequenceClassification`` instance, or a folder or Hub id of any
                BERT-architecture checkpoint (its classifier is used when it has one).
            init_exits_from_final: copy the final pooler and classifier into every exit (DeeBERT initialises its
                exits' poolers this way); otherwise only the last exit gets them and the others start random.
            **config_overrides: ``CostEffConfig`` fields, e.g. ``num_labels``, ``exit_layers``, ``exit_pooler``.
                Without ``exit_pooling``, a sentence-transformers checkpoint given by path or Hub id gets the pooling
                it was trained with (``"mean"`` for all-MiniLM-L6-v2, read from its ``1_Pooling/config.json``);
                anything else (and any model instance) ``"cls"``.
        """
        bert = _load_bert(model_or_path, config_overrides.get("num_labels"))
        # Only for a checkpoint given by name: a model instance (e.g. a fine-tuned BertForSequenceClassification)
        # has a classifier trained on its [CLS] pooler, which the default conversion reproduces exactly.
        if "exit_pooling" not in config_overrides and isinstance(model_or_path, (str, os.PathLike)):
            detected = sentence_transformers_pooling(model_or_path)
            if detected is not None:
                config_overrides["exit_pooling"] = detected
                logger.info("exit_pooling=%r: the pooling %s was trained with", detected, model_or_path)
        model = cls(CostEffConfig.from_bert_config(bert.config, **config_overrides))
        state = convert_bert_state_dict(bert.state_dict(), model.config, init_exits_from_final)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith("exits.")]  # exits may start random
        if missing or unexpected:
            raise ValueError(
                f"BERT checkpoint does not match the CostEff layout: missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        return model.to(next(bert.parameters()).dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        exit_criterion: str | None = None,
        exit_threshold: float | None = None,
        exit_patience: int | None = None,
        **kwargs,
    ) -> CostEffSequenceClassifierOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*): 1 for real tokens.
            labels (`torch.Tensor` of shape `(batch_size,)`, *optional*): class ids, or floats when `num_labels == 1`.
            exit_criterion / exit_threshold / exit_patience (*optional*): override the configuration's exit policy for
                this call only, e.g. to sweep thresholds on one loaded model.
        """
        _check_kwargs(kwargs)
        _check_inputs(self.config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids)
        criterion, threshold, patience = self._exit_policy(exit_criterion, exit_threshold, exit_patience)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
        }
        if self.training or criterion == "none":
            output = self._forward_all_exits(inputs, output_hidden_states, **kwargs)
            if labels is not None:
                output.loss = self._weighted_exit_loss(output.all_exit_logits, labels)
        else:
            output = self._forward_early_exit(inputs, ExitDecision(criterion, threshold, patience), **kwargs)
            if labels is not None:
                output.loss = self.classification_loss(output.logits, labels)
        return output if return_dict is not False else output.to_tuple()

    def _exit_policy(self, criterion: str | None, threshold: float | None, patience: int | None):
        return resolve_exit_policy(self.config, criterion, threshold, patience)

    def _forward_all_exits(
        self, inputs: dict[str, torch.Tensor | None], output_hidden_states: bool | None, **kwargs
    ) -> CostEffSequenceClassifierOutput:
        """Every layer and every exit for every example (training, criterion ``"none"``)."""
        equilibrium = self.training and self.config.gradient_equilibrium and torch.is_grad_enabled()
        exit_index = {layer - 1: k for k, layer in enumerate(self.config.exit_layers)}
        exit_logits = []

        def record_exit(layer_idx: int, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None):
            k = exit_index.get(layer_idx)
            if k is None:
                return hidden_states, None
            remaining = len(self.exits) - k
            if equilibrium:
                hidden_states = _GradientRescale.apply(hidden_states, 1.0 / remaining)
            exit_logits.append(self.exits[k](hidden_states, attention_mask))
            if equilibrium and remaining > 1:
                hidden_states = _GradientRescale.apply(hidden_states, float(remaining - 1))
            return hidden_states, None

        base = self.costeff(**inputs, output_hidden_states=output_hidden_states, exit_hook=record_exit, **kwargs)
        stacked = torch.stack(exit_logits, dim=1)
        batch_size = stacked.shape[0]
        return CostEffSequenceClassifierOutput(
            logits=stacked[:, -1],
            all_exit_logits=stacked,
            exit_layer=torch.full(
                (batch_size,), self.config.num_hidden_layers, dtype=torch.long, device=stacked.device
            ),
            hidden_states=base.hidden_states,
        )

    def _forward_early_exit(
        self, inputs: dict[str, torch.Tensor | None], decision: ExitDecision, **kwargs
    ) -> CostEffSequenceClassifierOutput:
        """Batched early exit: each row leaves the batch at the first exit ``decision`` accepts (or the last one)."""
        tokens = inputs["input_ids"] if inputs["input_ids"] is not None else inputs["inputs_embeds"]
        batch_size, device = tokens.shape[0], tokens.device
        if inputs["attention_mask"] is None:
            inputs["attention_mask"] = torch.ones(tokens.shape[:2], dtype=torch.long, device=device)
        # Columns that are padding in every row go before the embeddings: they cannot change a real token.
        names = [name for name in inputs if name != "attention_mask" and inputs[name] is not None]
        mask, *trimmed = _trim_padding(inputs["attention_mask"], *(inputs[name] for name in names))
        inputs.update(zip(names, trimmed, strict=True), attention_mask=mask)
        logits = torch.zeros(batch_size, self.num_labels, dtype=self.dtype, device=device)
        exit_layer = torch.zeros(batch_size, dtype=torch.long, device=device)
        active = torch.arange(batch_size, device=device)  # original row of each row still in the batch
        exit_index = {layer - 1: k for k, layer in enumerate(self.config.exit_layers)}

        def leave_if_done(layer_idx: int, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None):
            nonlocal active
            k = exit_index.get(layer_idx)
            if k is None:
                return hidden_states, None
            exit_logits = self.exits[k](hidden_states, attention_mask)
            done = decision.update(exit_logits)
            if k == len(self.exits) - 1:
                done = torch.ones_like(done)
            logits[active[done]] = exit_logits[done].to(logits.dtype)
            exit_layer[active[done]] = layer_idx + 1
            if bool(done.any()):
                active = active[~done]
                decision.select(~done)
            return hidden_states, ~done

        self.costeff(**inputs, exit_hook=leave_if_done, **kwargs)
        return CostEffSequenceClassifierOutput(logits=logits, exit_layer=exit_layer)

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BERT's head loss: MSE for one label, cross-entropy for class ids, BCE for multi-label targets."""
        if self.num_labels == 1 or self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
        if self.config.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        if labels.dtype.is_floating_point or (
            not _is_tracing() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_labels)
        ):
            raise ValueError(
                f"labels must be class ids in [0, num_labels={self.num_labels}), got dtype {labels.dtype} "
                f"and values in [{labels.min().item()}, {labels.max().item()}]"
            )
        return F.cross_entropy(logits.float(), labels.view(-1))

    def _weighted_exit_loss(self, all_exit_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over exits of ``exit_loss_weights[k] * loss(exit k)`` (plain sum by default)."""
        weights = self.config.exit_loss_weights or [1.0] * all_exit_logits.shape[1]
        return sum(w * self.classification_loss(all_exit_logits[:, k], labels) for k, w in enumerate(weights) if w)


def _load_bert(model_or_path, num_labels: int | None) -> PreTrainedModel:
    """A BERT ``PreTrainedModel`` from an instance or a path; refuses other architectures by name."""
    from transformers import AutoConfig, BertForSequenceClassification, BertModel  # noqa: PLC0415

    if isinstance(model_or_path, PreTrainedModel):
        model = model_or_path
    else:
        bert_config = AutoConfig.from_pretrained(model_or_path)
        if bert_config.model_type != "bert":
            raise ValueError(f"{model_or_path!r} is a {bert_config.model_type!r} checkpoint, not a BERT one")
        architectures = bert_config.architectures or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            kwargs = {"num_labels": num_labels} if num_labels is not None else {}
            model = BertForSequenceClassification.from_pretrained(model_or_path, **kwargs)
        else:
            model = BertModel.from_pretrained(model_or_path, add_pooling_layer=True)
    if getattr(model.config, "model_type", None) != "bert":
        raise ValueError(f"from_bert expects a BERT model, got {type(model).__name__}")
    return model


def convert_bert_state_dict(
    bert_state: dict[str, torch.Tensor], config: CostEffConfig, init_exits_from_final: bool = True
) -> dict[str, torch.Tensor]:
    """Rename a BERT state dict (``bert.*`` + ``classifier.*``, or a bare ``BertModel``'s) to CostEff keys.

    The encoder keys are the same below ``encoder.layer.N``; BERT's pooler dense becomes the exits' pooler dense and its
    classifier the last exit's (or every exit's, with ``init_exits_from_final``).
    """
    bare = {key.removeprefix("bert."): value for key, value in bert_state.items()}
    state = {
        f"costeff.{key}": value
        for key, value in bare.items()
        if key.startswith(("embeddings.", "encoder.")) and not key.endswith(("position_ids", "token_type_ids"))
    }
    last = config.num_exits - 1
    for k in range(config.num_exits) if init_exits_from_final else [last]:
        if config.exit_pooler == "dense" and "pooler.dense.weight" in bare:
            state[f"exits.{k}.dense.weight"] = bare["pooler.dense.weight"]
            state[f"exits.{k}.dense.bias"] = bare["pooler.dense.bias"]
        if "classifier.weight" in bare and bare["classifier.weight"].shape[0] == config.num_labels:
            state[f"exits.{k}.classifier.weight"] = bare["classifier.weight"]
            state[f"exits.{k}.classifier.bias"] = bare["classifier.bias"]
    return state


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "token", "revision", "subfolder")


def check_costeff_checkpoint(config_dict: dict, name: str | os.PathLike) -> None:
    """Raise a ``ValueError`` unless ``config_dict`` (a checkpoint's config.json) describes a CostEff model."""
    if not isinstance(config_dict, dict):
        raise ValueError(f"config.json of {str(name)!r} must hold a JSON object, got a {type(config_dict).__name__}")
    model_type = config_dict.get("model_type")
    if model_type != "costeff":
        raise ValueError(
            f"{str(name)!r} is a {model_type!r} checkpoint, not a CostEff one (model_type 'costeff'); "
            "convert it with CostEffForSequenceClassification.from_bert(...)"
        )


def exit_score(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """What an ``entropy`` or ``confidence`` criterion compares with its threshold, per row.

    ``logits`` ``(..., num_labels)`` -> ``(...)`` float32: the entropy of the softmax in nats, or its largest
    probability.
    """
    if criterion not in ("entropy", "confidence"):
        raise ValueError(f"exit_confident decides 'entropy' or 'confidence', got exit_criterion={criterion!r}")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    if criterion == "entropy":
        # -sum p log p from log-probabilities: finite even where p underflows to 0 (a NaN in the reference code).
        return -(log_probs.exp() * log_probs).sum(-1)
    if criterion == "confidence":
        return log_probs.max(-1).values.exp()
    raise ValueError(f"exit_score has no score for criterion {criterion!r}: use 'entropy' or 'confidence'")


def exit_confident(logits: torch.Tensor, criterion: str, threshold: float) -> torch.Tensor:
    """Per-row exit decision for ``entropy`` (exit below the threshold) or ``confidence`` (exit at or above it).

    ``logits`` ``(rows, num_labels)`` -> bool ``(rows,)``. ``patience`` depends on consecutive exits: see
    [`ExitDecision`].
    """
    score = exit_score(logits, criterion)
    return score < threshold if criterion == "entropy" else score >= threshold


def patience_update(
    counter: torch.Tensor, previous: torch.Tensor | None, logits: torch.Tensor, regression_threshold: float | None
) -> torch.Tensor:
    """PABEE's counter: +1 where this exit agrees with the previous one, reset to 0 elsewhere (unchanged at the first
    exit, ``previous is None``). Two exits agree when their argmax is the same or, for regression (one label), when
    they differ by less than ``regression_threshold``."""
    if previous is None:
        return counter
    if logits.shape[-1] == 1:
        same = (logits - previous).abs().squeeze(-1) < regression_threshold
    else:
        same = logits.argmax(-1) == previous.argmax(-1)
    return torch.where(same, counter + 1, torch.zeros_like(counter))


class ExitDecision:
    """The exit decision of a batch of rows, one exit after the other: the only implementation of the exit criteria.

    The model's batched early exit and ``hf_costeff.evaluation.simulate_early_exit`` both feed it each exit's logits
    in order, so a simulated exit is the exit the model takes. ``threshold`` is the entropy/confidence threshold, or,
    with ``"patience"``, the regression agreement threshold; ``"none"`` never exits early. The caller makes the last
    exit final.
    """

    def __init__(self, criterion: str, threshold: float | None = None, patience: int | None = None):
        self.criterion, self.threshold, self.patience = criterion, threshold, patience
        self.counter: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None

    def update(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(rows, num_labels)`` of the next exit -> bool ``(rows,)``: which rows leave here."""
        if self.criterion == "patience":
            if self.counter is None:
                self.counter = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            self.counter = patience_update(self.counter, self.previous, logits, self.threshold)
            self.previous = logits
            return self.counter >= self.patience
        if self.criterion == "none":
            return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        return exit_confident(logits, self.criterion, self.threshold)

    def select(self, keep: torch.Tensor) -> None:
        """Keep the state of the rows ``keep`` (bool ``(rows,)``) only: the others left the batch."""
        if self.counter is not None:
            self.counter, self.previous = self.counter[keep], self.previous[keep]


def _trim_padding(attention_mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the trailing columns that are padding in every row (they cannot change a real token) from
    ``attention_mask`` ``(rows, seq)`` and from each of ``tensors`` (cut alike along dim 1)."""
    length = int((attention_mask != 0).any(dim=0).nonzero().max()) + 1
    if length == attention_mask.shape[1]:
        return (attention_mask, *tensors)
    return (attention_mask[:, :length], *(t[:, :length] for t in tensors))


__all__ = [
    "CostEffEmbeddings",
    "CostEffEncoder",
    "CostEffExit",
    "CostEffForSequenceClassification",
    "CostEffLayer",
    "CostEffModel",
    "CostEffPreTrainedModel",
    "CostEffSequenceClassifierOutput",
    "ExitDecision",
    "check_costeff_checkpoint",
    "convert_bert_state_dict",
    "exit_confident",
    "exit_score",
    "patience_update",
]
