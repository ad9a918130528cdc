"""CostEff configuration: a BERT configuration plus the per-layer widths of a slenderized model and its exits.

This file travels to the Hub (``trust_remote_code``) with ``choices.py``: it imports nothing else outside
``transformers``.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
from typing import NamedTuple

from transformers import PretrainedConfig
from transformers.utils import is_torch_available

from .choices import EXIT_CRITERIA, EXIT_POOLERS, EXIT_POOLINGS

# CostEff's fields that decide the weight shapes: two configs that differ in one hold different state dicts.
COSTEFF_ARCHITECTURE_FIELDS = (
    "layer_num_heads",
    "layer_intermediate_sizes",
    "embedding_rank",
    "exit_layers",
    "exit_pooler",
    "exit_pooling",
)
# All of CostEff's own fields, and names users reach for instead: PretrainedConfig keeps any unknown keyword as an
# attribute, so a misspelled width or exit field would otherwise be ignored silently and build the unpruned model.
COSTEFF_FIELDS = COSTEFF_ARCHITECTURE_FIELDS + (
    "exit_criterion",
    "exit_threshold",
    "exit_patience",
    "exit_loss_weights",
    "gradient_equilibrium",
)
FIELD_ALIASES = {
    "heads_per_layer": "layer_num_heads",
    "num_heads_per_layer": "layer_num_heads",
    "layer_heads": "layer_num_heads",
    "ffn_per_layer": "layer_intermediate_sizes",
    "ffn_sizes": "layer_intermediate_sizes",
    "intermediate_sizes": "layer_intermediate_sizes",
    "embedding_size": "embedding_rank",
}

# The configuration field that bounds each id input's values.
INPUT_ID_BOUNDS = {
    "input_ids": "vocab_size",
    "token_type_ids": "type_vocab_size",
    "position_ids": "max_position_embeddings",
}

# What a CostEff configuration takes over from a BERT one.
BERT_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "classifier_dropout",
    "id2label",
    "label2id",
    "problem_type",
)


def plain_number(name: str, value, integer: bool = False):
    """``value`` as a Python ``int``/``float`` when it is one number (numpy scalar, 0-d tensor included), else as is.

    Bools are never numbers here (``True`` as a threshold is a mistake). Anything else is returned unchanged so the
    caller's check names the field.
    """
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar or 0-d tensor (no torch import)
        value = value.item()
    if isinstance(value, bool):
        return value
    if integer and isinstance(value, numbers.Integral):
        return int(value)
    if not integer and isinstance(value, numbers.Real):
        return float(value)
    return value


class ExitPolicy(NamedTuple):
    """An inference exit policy as the configuration stores it (``exit_criterion``, ``exit_threshold``,
    ``exit_patience``), e.g. the result of a calibration; :meth:`apply` makes it a configuration's policy.

    ``threshold`` is the entropy / max-probability threshold, or, for ``"patience"`` on a regression model, the
    agreement threshold of two consecutive exits (``None`` when unused)."""

    criterion: str
    threshold: float | None
    patience: int | None

    @property
    def value(self) -> float | int | None:
        """What the criterion compares against: the patience for ``"patience"``, else the threshold (the
        ``threshold_or_patience`` argument of the evaluation functions)."""
        return self.patience if self.criterion == "patience" else self.threshold

    @property
    def regression_threshold(self) -> float | None:
        """The agreement threshold of patience on a regression model, else ``None`` (their ``regression_threshold``)."""
        return self.threshold if self.criterion == "patience" else None

    def apply(self, config: CostEffConfig) -> None:
        """Make this ``config``'s exit policy (validated against its exits and labels first). The threshold is set
        even when ``None``, so no stale value outlives its criterion; ``exit_patience`` only when the policy has one,
        so that a later call with ``exit_criterion="patience"`` still finds the configuration's patience."""
        validate_exit_policy(*self, config.num_exits, config.num_labels)
        config.exit_criterion, config.exit_threshold = self.criterion, self.threshold
        if self.patience is not None:
            config.exit_patience = self.patience

    def __str__(self) -> str:
        """The policy in words, as run summaries and model cards print it (``entropy < 0.4123``)."""
        if self.criterion == "entropy":
            return f"entropy < {self.threshold:.4f}"
        if self.criterion == "confidence":
            return f"confidence >= {self.threshold:.4f}"
        if self.criterion == "patience":
            agree = f", consecutive exits within {self.threshold:.4g}" if self.threshold is not None else ""
            return f"patience {self.patience}{agree}"
        return "every layer"


def normalize_exit_policy(criterion, threshold, patience, num_exits: int, num_labels: int) -> ExitPolicy:
    """Validate an inference exit policy and return it as plain Python values ``(criterion, threshold, patience)``.

    numpy scalars and 0-d tensors are accepted for the threshold and the patience. Raises ``ValueError`` naming the
    field when the policy is unusable. Shared by the configuration and by the per-call arguments of ``forward`` so
    that both refuse the same values.
    """
    threshold = plain_number("exit_threshold", threshold) if threshold is not None else None
    patience = plain_number("exit_patience", patience, integer=True) if patience is not None else None
    if not isinstance(criterion, str) or criterion not in EXIT_CRITERIA:
        raise ValueError(f"exit_criterion must be one of {EXIT_CRITERIA} (lower case), got {criterion!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, float)):
        raise ValueError(f"exit_threshold must be a number, got {threshold!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"exit_patience must be an integer >= 1, got {patience!r}")
    regression = num_labels == 1
    if criterion in ("entropy", "confidence"):
        if regression:
            raise ValueError(
                f"exit_criterion={criterion!r} needs class probabilities; a regression model (num_labels=1) "
                "can only use 'patience' or 'none'"
            )
        if threshold is None:
            raise ValueError(f"exit_threshold must be set when exit_criterion={criterion!r}")
        if not math.isfinite(threshold):
            raise ValueError(f"exit_threshold must be a finite number, got {threshold!r}")
        if criterion == "entropy" and not 0.0 <= threshold <= math.log(max(num_labels, 2)):
            raise ValueError(
                f"exit_threshold={threshold} is out of range for entropy with {num_labels} labels: "
                f"it must lie in [0, ln({num_labels})={math.log(max(num_labels, 2)):.4f}]"
            )
        if criterion == "confidence" and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"exit_threshold={threshold} is out of range for confidence: it must lie in [0, 1]")
    if criterion == "patience":
        if patience is None or not 1 <= patience <= num_exits:
            raise ValueError(
                f"exit_patience must be an integer in [1, {num_exits}] (the number of exits), got {patience!r}"
            )
        if regression and (threshold is None or not math.isfinite(threshold) or threshold < 0):
            raise ValueError(
                "exit_threshold must be a finite number >= 0 for patience on a regression model: two consecutive "
                f"exits agree when their predictions differ by less than it; got {threshold!r}"
            )
    return ExitPolicy(criterion, threshold, patience)


def validate_exit_policy(criterion, threshold, patience, num_exits: int, num_labels: int) -> None:
    """Raise ``ValueError`` naming the field when an inference exit policy is unusable (see `normalize_exit_policy`)."""
    normalize_exit_policy(criterion, threshold, patience, num_exits, num_labels)


def resolve_exit_policy(
    config: CostEffConfig, criterion: str | None, threshold: float | None, patience: int | None
) -> ExitPolicy:
    """The configuration's exit policy with one call's overrides (``None`` keeps the configuration's value), as plain
    Python values. Shared by the PyTorch model and the ONNX Runtime one.

    Validated on every call, overrides or not: the configuration may have been edited after the model was built
    (``model.config.exit_criterion = "Entropy"``). A threshold or patience given for a call whose criterion is
    ``"none"`` is refused: every layer would run and the argument would be ignored silently.
    """
    resolved = normalize_exit_policy(
        criterion if criterion is not None else config.exit_criterion,
        threshold if threshold is not None else config.exit_threshold,
        patience if patience is not None else config.exit_patience,
        config.num_exits,
        config.num_labels,
    )
    if resolved[0] == "none" and (threshold is not None or patience is not None):
        raise ValueError(
            "exit_threshold/exit_patience were given for this call but exit_criterion is 'none' (every layer "
            "runs); pass exit_criterion='entropy', 'confidence' or 'patience' with them"
        )
    return resolved


class CostEffConfig(PretrainedConfig):
    r"""Configuration of a slenderized multi-exit BERT (COST-EFF, Shen et al., EMNLP 2022).

    Every field of ``BertConfig`` keeps its meaning. ``num_attention_heads`` and ``intermediate_size`` are the widths of
    the *unpruned* model: ``hidden_size // num_attention_heads`` fixes the head size, which pruning never changes.

    Args:
        layer_num_heads (`list[int]`, *optional*):
            Attention heads kept in each layer (0 allowed: the layer's attention adds only its output bias).
            Defaults to ``num_attention_heads`` in every layer.
        layer_intermediate_sizes (`list[int]`, *optional*):
            FFN width of each layer (0 allowed). Defaults to ``intermediate_size`` in every layer.
        embedding_rank (`int`, *optional*):
            Rank ``r`` of a factorized word embedding: a ``(vocab_size, r)`` table followed by an ``(r, hidden_size)``
            projection. ``None`` keeps the full ``(vocab_size, hidden_size)`` table.
        exit_layers (`list[int]`, *optional*):
            1-based layers followed by an exit classifier, increasing, ending with ``num_hidden_layers``.
            Defaults to every layer.
        exit_pooler (`str`, defaults to `"dense"`):
            ``"dense"``: each exit pools [CLS] with its own ``Linear(hidden, hidden)`` + tanh, as BERT's pooler (needed to
            reproduce a BERT classifier exactly). ``"tanh"``: tanh of [CLS] with no dense layer, as COST-EFF does
            (saves ``hidden_size**2`` parameters per exit).
        exit_pooling (`str`, defaults to `"cls"`):
            Which token representation each exit reads: ``"cls"``, the first token's (BERT, COST-EFF), or ``"mean"``,
            the mean over the real (unmasked) tokens, for backbones trained with mean pooling such as
            sentence-transformers' MiniLM, whose [CLS] carries no sentence information in its early layers.
        exit_criterion (`str`, defaults to `"none"`):
            Inference policy in eval mode: ``"entropy"`` (exit when the prediction entropy, natural log, is
            ``< exit_threshold``), ``"confidence"`` (exit when the max probability is ``>= exit_threshold``),
            ``"patience"`` (exit when ``exit_patience`` consecutive exits agree, PABEE) or ``"none"`` (run every layer).
        exit_threshold (`float`, *optional*): threshold of the entropy / confidence criterion (or the regression
            tolerance of patience).
        exit_patience (`int`, defaults to 2): consecutive agreeing exits needed by the patience criterion.
        exit_loss_weights (`list[float]`, *optional*): weight of each exit's loss in the training loss (one per exit,
            all >= 0). Defaults to 1 for every exit: the plain sum the paper trains with.
        gradient_equilibrium (`bool`, defaults to `True`): rescale gradients in training so that each layer receives
            ``1/R`` of its gradient from its own exit and ``(R-1)/R`` from the deeper ones (R = exits from here on),
            as COST-EFF and ElasticBERT do. Forward values are unchanged.

    Example:

    ```python
    >>> from hf_costeff import CostEffConfig, CostEffForSequenceClassification
    >>> config = CostEffConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536,
    ...                        layer_num_heads=[12, 7, 3, 0, 5, 12], layer_intermediate_sizes=[1536, 800, 0, 64, 1536, 300])
    >>> model = CostEffForSequenceClassification(config)
    ```
    """

    model_type = "costeff"
    # Trainer drops these output fields from predictions; per-exit logits are read by MultiExitTrainer itself.
    keys_to_ignore_at_inference = ["all_exit_logits", "hidden_states", "attentions"]

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        classifier_dropout: float | None = None,
        layer_num_heads: list[int] | None = None,
        layer_intermediate_sizes: list[int] | None = None,
        embedding_rank: int | None = None,
        exit_layers: list[int] | None = None,
        exit_pooler: str = "dense",
        exit_pooling: str = "cls",
        exit_criterion: str = "none",
        exit_threshold: float | None = None,
        exit_patience: int = 2,
        exit_loss_weights: list[float] | None = None,
        gradient_equilibrium: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.classifier_dropout = classifier_dropout
        self.layer_num_heads = _as_list(layer_num_heads)
        self.layer_intermediate_sizes = _as_list(layer_intermediate_sizes)
        self.embedding_rank = embedding_rank
        self.exit_layers = _as_list(exit_layers)
        self.exit_pooler = exit_pooler
        self.exit_pooling = exit_pooling
        self.exit_criterion = exit_criterion
        self.exit_threshold = plain_number("exit_threshold", exit_threshold) if exit_threshold is not None else None
        self.exit_patience = plain_number("exit_patience", exit_patience, integer=True)
        self.exit_loss_weights = _as_list(exit_loss_weights)
        self.gradient_equilibrium = gradient_equilibrium
        _reject_misspelled_fields(kwargs)
        _check_label_fields(kwargs)
        # Sizes first: PretrainedConfig's own validators read head_dim (a division) and the vocabulary size.
        self._validate_sizes()
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self._fill_defaults()
        self.validate_costeff()

    def _fill_defaults(self) -> None:
        n = self.num_hidden_layers
        if isinstance(n, int) and n > 0:
            if self.layer_num_heads is None:
                self.layer_num_heads = [self.num_attention_heads] * n
            if self.layer_intermediate_sizes is None:
                self.layer_intermediate_sizes = [self.intermediate_size] * n
            if self.exit_layers is None:
                self.exit_layers = list(range(1, n + 1))

    @property
    def head_dim(self) -> int:
        """Size of one attention head, fixed by the unpruned model."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_bert_config(cls, bert_config: PretrainedConfig, **overrides) -> CostEffConfig:
        """The unpruned CostEff configuration of a BERT configuration (every shared field), with ``overrides``.

        Giving ``num_labels`` or ``id2label`` drops BERT's label names, which would contradict them.
        """
        if getattr(bert_config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                "Only absolute position embeddings are supported, got "
                f"position_embedding_type={bert_config.position_embedding_type!r}"
            )
        fields = {name: getattr(bert_config, name) for name in BERT_CONFIG_FIELDS if hasattr(bert_config, name)}
        if "num_labels" in overrides or "id2label" in overrides:
            fields.pop("id2label", None), fields.pop("label2id", None)
        return cls(**{**fields, **overrides})

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """``PretrainedConfig.get_config_dict`` that refuses a config.json which is not a JSON object."""
        local = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "", "config.json")
        if os.path.isfile(local):  # transformers fails on `null` or a list with a TypeError/AttributeError of its own
            try:
                with open(local, encoding="utf-8") as f:
                    content = json.load(f)
            except (UnicodeDecodeError, ValueError) as err:
                raise ValueError(f"config.json of {str(pretrained_model_name_or_path)!r} is not valid JSON") from err
            if not isinstance(content, dict):
                raise ValueError(
                    f"config.json of {str(pretrained_model_name_or_path)!r} must hold a JSON object of "
                    f"configuration fields, got {type(content).__name__}"
                )
        try:
            config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        except OSError as err:
            if "not a valid JSON file" in str(err):
                raise ValueError(f"config.json of {str(pretrained_model_name_or_path)!r} is not valid JSON") from err
            raise
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"config.json of {str(pretrained_model_name_or_path)!r} must hold a JSON object of configuration "
                f"fields, got a {type(config_dict).__name__}"
            )
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> CostEffConfig:
        if not isinstance(config_dict, dict):
            raise ValueError(f"config_dict must be a dict of configuration fields, got a {type(config_dict).__name__}")
        return super().from_dict(config_dict, **kwargs)

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    def validate_costeff(self) -> None:
        """Check every CostEff field; raise ``ValueError`` naming the first bad one.

        Run at construction and by the model at build time. The exit *policy* (criterion, threshold, patience) is
        checked again on every forward, since it may be changed on a built model (``model.config.exit_criterion =``).
        """
        self._validate_sizes()
        _check_int("num_labels", self.num_labels, minimum=1)
        if self.pad_token_id is not None:
            _check_int("pad_token_id", self.pad_token_id, minimum=0)
            if self.pad_token_id >= self.vocab_size:
                raise ValueError(f"pad_token_id={self.pad_token_id} must lie in [0, vocab_size={self.vocab_size})")
        n = self.num_hidden_layers
        self._validate_widths(n)
        if self.embedding_rank is not None:
            _check_int("embedding_rank", self.embedding_rank, minimum=1)
        self._validate_exits(n)
        if not isinstance(self.gradient_equilibrium, bool):
            raise ValueError(f"gradient_equilibrium must be True or False, got {self.gradient_equilibrium!r}")
        self.exit_criterion, self.exit_threshold, self.exit_patience = normalize_exit_policy(
            self.exit_criterion, self.exit_threshold, self.exit_patience, self.num_exits, self.num_labels
        )

    def check_input_shapes(self, input_shape: tuple[int, ...], **shapes: tuple[int, ...] | None) -> None:
        """Refuse a batch whose shapes this model cannot run: the one set of shape rules of every CostEff runtime
        (PyTorch, ONNX Runtime), so both give the same message.

        Args:
            input_shape: ``(batch_size, sequence_length)`` of the ids (or of ``inputs_embeds`` without its last dim).
            **shapes: the shapes of ``attention_mask`` (must equal ``input_shape``), ``token_type_ids`` and
                ``position_ids`` (batch size 1 broadcasts); ``None`` for an input not given.
        """
        batch_size, seq_length = input_shape
        if batch_size == 0 or seq_length == 0:
            raise ValueError(f"Empty input: got batch of shape {(batch_size, seq_length)}")
        if seq_length > self.max_position_embeddings:
            raise ValueError(
                f"Sequence length {seq_length} exceeds max_position_embeddings={self.max_position_embeddings}; "
                "truncate the input (tokenizer(..., truncation=True))"
            )
        for name, shape in shapes.items():
            if shape is None:
                continue
            batches = (batch_size,) if name == "attention_mask" else (1, batch_size)
            if len(shape) != 2 or shape[1] != seq_length or shape[0] not in batches:
                raise ValueError(f"{name} shape {tuple(shape)} does not match the input {(batch_size, seq_length)}")

    def check_input_values(
        self,
        value_ranges: dict[str, tuple[int, int]],
        mask_values: list | None = None,
        empty_rows: bool = False,
    ) -> None:
        """Refuse input values this model would embed wrongly (PyTorch and ONNX Runtime alike, the same messages).

        Args:
            value_ranges: ``name -> (min, max)`` of ``input_ids``, ``token_type_ids``, ``position_ids``.
            mask_values: the ``attention_mask`` values other than 0 and 1, if it holds any.
            empty_rows: whether some row of ``attention_mask`` masks every token.
        """
        for name, (low, high) in value_ranges.items():
            field = INPUT_ID_BOUNDS[name]
            bound = getattr(self, field)
            if low < 0 or high >= bound:
                raise ValueError(f"{name} must lie in [0, {field}={bound}), got values in [{low}, {high}]")
        if mask_values:
            raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (real token), got values {mask_values}")
        if empty_rows:
            raise ValueError("attention_mask masks every token of at least one example (an empty input)")

    def _validate_sizes(self) -> None:
        """The scalar fields that shape the tensors, checked before anything reads them."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} does not divide hidden_size={self.hidden_size}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            _check_probability(name, getattr(self, name))
        if self.classifier_dropout is not None:
            _check_probability("classifier_dropout", self.classifier_dropout)
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"layer_norm_eps must be a finite number > 0, got {eps!r}")
        std = self.initializer_range
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not (math.isfinite(std) and std >= 0):
            raise ValueError(f"initializer_range must be a finite number >= 0, got {std!r}")
        act = self.hidden_act
        if not callable(act) and not isinstance(act, str):
            raise ValueError(f"hidden_act must be the name of an activation, got {act!r}")
        if isinstance(act, str) and is_torch_available():  # the activation table imports torch; ONNX serving has none
            from transformers.activations import ACT2FN  # noqa: PLC0415

            if act not in ACT2FN:
                raise ValueError(f"hidden_act must be one of transformers' activations {sorted(ACT2FN)}, got {act!r}")

    def _validate_widths(self, n: int) -> None:
        for name, bound in (("layer_num_heads", self.num_attention_heads), ("layer_intermediate_sizes", None)):
            values = getattr(self, name)
            if not isinstance(values, list) or len(values) != n:
                raise ValueError(f"{name} must be a list of num_hidden_layers={n} integers, got {values!r}")
            for i, v in enumerate(values):
                _check_int(f"{name}[{i}]", v, minimum=0)
                if bound is not None and v > bound:
                    raise ValueError(f"{name}[{i}]={v} exceeds num_attention_heads={bound}")

    def _validate_exits(self, n: int) -> None:
        layers = self.exit_layers
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"exit_layers must be a non-empty list of 1-based layer numbers, got {layers!r}")
        for i, v in enumerate(layers):
            _check_int(f"exit_layers[{i}]", v, minimum=1)
        if any(b <= a for a, b in zip(layers, layers[1:], strict=False)) or layers[-1] != n:
            raise ValueError(f"exit_layers must be strictly increasing and end with the last layer ({n}), got {layers}")
        if self.exit_pooler not in EXIT_POOLERS:
            raise ValueError(f"exit_pooler must be one of {EXIT_POOLERS}, got {self.exit_pooler!r}")
        if self.exit_pooling not in EXIT_POOLINGS:
            raise ValueError(f"exit_pooling must be one of {EXIT_POOLINGS}, got {self.exit_pooling!r}")
        weights = self.exit_loss_weights
        if weights is not None:
            if not isinstance(weights, list) or len(weights) != len(layers):
                raise ValueError(f"exit_loss_weights must hold one weight per exit ({len(layers)}), got {weights!r}")
            if any(
                isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0 for w in weights
            ):
                raise ValueError(f"exit_loss_weights must be finite and >= 0, got {weights}")
            if sum(weights) == 0:
                raise ValueError("exit_loss_weights must not all be zero")


def _as_list(value):
    """A copy of a list/tuple field as a list; anything else unchanged, for validation to refuse by name.

    ``list(value)`` would turn a dict into its keys and a string into characters, silently.
    """
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_label_fields(kwargs: dict) -> None:
    """The label fields PretrainedConfig owns, checked before it uses them (``range(num_labels)``, ``.items()``)."""
    if "num_labels" in kwargs:
        kwargs["num_labels"] = plain_number("num_labels", kwargs["num_labels"], integer=True)
        _check_int("num_labels", kwargs["num_labels"], minimum=1)
    for name in ("id2label", "label2id"):
        if kwargs.get(name) is not None and not isinstance(kwargs[name], dict):
            raise ValueError(f"{name} must be a dict, got {kwargs[name]!r}")


def _reject_misspelled_fields(kwargs: dict) -> None:
    """Raise on a keyword that looks like a CostEff field but is not one (a typo would be ignored otherwise)."""
    for key in kwargs:
        match = FIELD_ALIASES.get(key) or next(
            iter(difflib.get_close_matches(key, COSTEFF_FIELDS, n=1, cutoff=0.6)), None
        )
        if match is not None:
            raise ValueError(f"CostEffConfig has no field {key!r}; did you mean {match!r}?")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_probability(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")


def sentence_transformers_pooling(name_or_path, **hub_kwargs) -> str | None:
    """The ``exit_pooling`` a sentence-transformers checkpoint was trained with, else ``None``.

    Reads the Pooling module's ``config.json`` (located through ``modules.json``, usually ``1_Pooling/``) of a local
    folder or Hub repo: ``"mean"`` for ``pooling_mode_mean_tokens``, ``"cls"`` for ``pooling_mode_cls_token``; ``None``
    for a plain BERT checkpoint, another pooling mode, or a repo that cannot be reached. Exits read the layer's states
    the way the backbone was trained to summarise them: the packaged all-MiniLM-L6-v2 is mean-pooled, and its [CLS]
    state alone carries little sentence information in the early layers (docs/results/pooling_probe_sst2.json).
    """
    from transformers.utils import cached_file  # noqa: PLC0415

    def read(filename: str):
        try:
            path = cached_file(
                str(name_or_path),
                filename,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                **hub_kwargs,
            )
        except (OSError, ValueError):
            return None
        if path is None:
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    modules = read("modules.json")
    if not isinstance(modules, list):
        return None
    folders = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")]
    pooling = read(f"{folders[0]}/config.json") if folders and folders[0] else None
    if not isinstance(pooling, dict):
        return None
    if pooling.get("pooling_mode_mean_tokens"):
        return "mean"
    if pooling.get("pooling_mode_cls_token"):
        return "cls"
    return None


__all__ = [
    "CostEffConfig",
    "ExitPolicy",
    "normalize_exit_policy",
    "plain_number",
    "resolve_exit_policy",
    "INPUT_ID_BOUNDS",
    "sentence_transformers_pooling",
    "validate_exit_policy",
    "EXIT_CRITERIA",
    "EXIT_POOLERS",
    "EXIT_POOLINGS",
]
