"""CostEff configuration: a BERT configuration plus the per-layer widths of a slenderized model and its exits.

This file travels alone to the Hub (``trust_remote_code``): it imports nothing outside ``transformers``.
"""

from __future__ import annotations

import difflib
import math

from transformers import PretrainedConfig

EXIT_CRITERIA = ("entropy", "confidence", "patience", "none")
EXIT_POOLERS = ("dense", "tanh")
EXIT_POOLINGS = ("cls", "mean")

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


def validate_exit_policy(
    criterion: str, threshold: float | None, patience: int | None, num_exits: int, num_labels: int
) -> None:
    """Raise ``ValueError`` naming the field when an inference exit policy is unusable.

    Shared by the configuration and by the per-call arguments of ``forward`` so that both refuse the same values.
    """
    if criterion not in EXIT_CRITERIA:
        raise ValueError(f"exit_criterion must be one of {EXIT_CRITERIA}, got {criterion!r}")
    regression = num_labels == 1
    if criterion in ("entropy", "confidence"):
        if regression:
            raise ValueError(
                f"exit_criterion={criterion!r} needs class probabilities; a regression model (num_labels=1) "
                "can only use 'patience' or 'none'"
            )
        if threshold is None:
            raise ValueError(f"exit_threshold must be set when exit_criterion={criterion!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"exit_threshold must be a finite number, got {threshold!r}")
        if criterion == "entropy" and not 0.0 <= threshold <= math.log(max(num_labels, 2)):
            raise ValueError(
                f"exit_threshold={threshold} is out of range for entropy with {num_labels} labels: "
                f"it must lie in [0, ln({num_labels})={math.log(max(num_labels, 2)):.4f}]"
            )
        if criterion == "confidence" and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"exit_threshold={threshold} is out of range for confidence: it must lie in [0, 1]")
    if criterion == "patience":
        if isinstance(patience, bool) or not isinstance(patience, int) or not 1 <= patience <= num_exits:
            raise ValueError(
                f"exit_patience must be an integer in [1, {num_exits}] (the number of exits), got {patience!r}"
            )
        if regression and (threshold is None or not math.isfinite(threshold) or threshold < 0):
            raise ValueError(
                "exit_threshold must be a finite number >= 0 for patience on a regression model: two consecutive "
                f"exits agree when their predictions differ by less than it; got {threshold!r}"
            )


def resolve_exit_policy(
    config: CostEffConfig, criterion: str | None, threshold: float | None, patience: int | None
) -> tuple[str, float | None, int | None]:
    """The configuration's exit policy with one call's overrides (``None`` keeps the configuration's value),
    validated when anything is overridden. Shared by the PyTorch model and the ONNX Runtime one."""
    if criterion is None and threshold is None and patience is None:
        return config.exit_criterion, config.exit_threshold, config.exit_patience
    criterion = criterion if criterion is not None else config.exit_criterion
    threshold = threshold if threshold is not None else config.exit_threshold
    patience = patience if patience is not None else config.exit_patience
    validate_exit_policy(criterion, threshold, patience, config.num_exits, config.num_labels)
    return criterion, threshold, patience


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
        self.layer_num_heads = list(layer_num_heads) if layer_num_heads is not None else None
        self.layer_intermediate_sizes = list(layer_intermediate_sizes) if layer_intermediate_sizes is not None else None
        self.embedding_rank = embedding_rank
        self.exit_layers = list(exit_layers) if exit_layers is not None else None
        self.exit_pooler = exit_pooler
        self.exit_pooling = exit_pooling
        self.exit_criterion = exit_criterion
        self.exit_threshold = exit_threshold
        self.exit_patience = exit_patience
        self.exit_loss_weights = list(exit_loss_weights) if exit_loss_weights is not None else None
        self.gradient_equilibrium = gradient_equilibrium
        _reject_misspelled_fields(kwargs)
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

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    def validate_costeff(self) -> None:
        """Check every CostEff field; raise ``ValueError`` naming the first bad one."""
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
        n = self.num_hidden_layers
        self._validate_widths(n)
        if self.embedding_rank is not None:
            _check_int("embedding_rank", self.embedding_rank, minimum=1)
        self._validate_exits(n)
        validate_exit_policy(
            self.exit_criterion, self.exit_threshold, self.exit_patience, self.num_exits, self.num_labels
        )

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
            if any(not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0 for w in weights):
                raise ValueError(f"exit_loss_weights must be finite and >= 0, got {weights}")
            if sum(weights) == 0:
                raise ValueError("exit_loss_weights must not all be zero")


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


__all__ = [
    "CostEffConfig",
    "resolve_exit_policy",
    "validate_exit_policy",
    "EXIT_CRITERIA",
    "EXIT_POOLERS",
    "EXIT_POOLINGS",
]
