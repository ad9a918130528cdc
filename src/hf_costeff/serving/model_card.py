"""Model cards for CostEff checkpoints: Hub metadata (``huggingface_hub.ModelCardData`` / ``EvalResult``) plus per-layer
shapes, parameters and FLOPs against the teacher, per-exit accuracy and the chosen exit threshold.

The Jinja template is package data (``hf_costeff/templates/model_card.md``), the single source of truth.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..configuration_costeff import CostEffConfig, ExitPolicy
from ..cost import count_parameters, forward_flops

TEMPLATE_NAME = "model_card.md"


def card_template() -> str:
    """The model card's Jinja template, read from the installed package."""
    return resources.files("hf_costeff").joinpath("templates", TEMPLATE_NAME).read_text(encoding="utf-8")


def _teacher_cost(teacher_config: Any, seq_length: int) -> dict[str, int] | None:
    """Parameters and FLOPs of a teacher: a CostEffConfig or a BERT configuration (read as an unpruned CostEff)."""
    if teacher_config is None:
        return None
    if getattr(teacher_config, "model_type", None) != "costeff":
        # A BERT classifier has one pooler + classifier: the same cost as a single dense exit after the last layer.
        teacher_config = CostEffConfig.from_bert_config(
            teacher_config, exit_layers=[teacher_config.num_hidden_layers], exit_pooler="dense"
        )
    params = count_parameters(teacher_config)
    return {**params, "flops": forward_flops(teacher_config, seq_length)}


def _dataset_ids(dataset: str) -> tuple[str, str | None, str]:
    """``"glue/sst2"`` -> (Hub id ``"nyu-mll/glue"``, config ``"sst2"``, pretty name); other ids are taken as is."""
    if dataset.startswith("glue/"):
        task = dataset.split("/", 1)[1]
        return "nyu-mll/glue", task, f"GLUE {task.upper()}"
    return dataset, None, dataset


def _fmt(value: float | int) -> str:
    """A count or FLOPs figure with a unit and three significant digits (``31526265.54`` -> ``"31.5M"``)."""
    v = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return str(int(v)) if v.is_integer() else f"{v:.4g}"


def _vocabulary_note(config: Any) -> str | None:
    """The sentence stating how the vocabulary was trimmed (``hf_costeff.slenderize.trim_vocabulary``), if it was."""
    trim = getattr(config, "vocabulary_trimming", None)
    if not trim:
        return None
    corpus = trim.get("corpus") or "an unnamed corpus"
    kept = "every token seen at least {} time{} there".format(trim["min_count"], "" if trim["min_count"] == 1 else "s")
    kept += ", every special token" + (" and every single-character piece" if trim.get("keep_characters") else "")
    return (
        f"Vocabulary trimmed from {trim['original_vocab_size']:,} to {trim['vocab_size']:,} tokens on {corpus} "
        f"({trim['num_texts']:,} texts): {kept}. Words outside that corpus split into the kept pieces"
        + (" (a character without a piece becomes `[UNK]`)." if trim.get("keep_characters") else " or `[UNK]`.")
    )


def build_model_card(
    model_or_config: Any,
    teacher_config: Any = None,
    eval_results: Mapping[str, float] | None = None,
    dataset: str = "glue/sst2",
    dataset_split: str = "validation",
    per_exit_accuracy: Sequence[float] | None = None,
    average_flops: float | None = None,
    model_name: str = "costeff-model",
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    library_name: str = "transformers",
    seq_length: int = 128,
    training_recipe: Sequence[str] | None = None,
) -> ModelCard:
    """A ``ModelCard`` for a CostEff model (or its config).

    Args:
        eval_results: metric name -> value of the deployed model (its configured exit policy), e.g.
            ``{"accuracy": 0.91}``; each becomes an ``EvalResult`` of the Hub's ``model-index``.
        per_exit_accuracy: accuracy of each exit alone (one per ``config.exit_layers``).
        average_flops: mean FLOPs per example on the evaluation set with early exit (``hf_costeff.average_flops``).
        teacher_config: the model it was compressed from (BERT or CostEff config) for the comparison columns.
        seq_length: sequence length at which the full-depth FLOPs are reported.
        training_recipe: how the model was built, one line per stage (the card's "Training" section, in order).
    """
    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "model_type", None) != "costeff":
        raise ValueError(f"write_model_card expects a CostEff model or config, got {type(config).__name__}")
    if per_exit_accuracy is not None and len(per_exit_accuracy) != config.num_exits:
        raise ValueError(
            f"per_exit_accuracy must hold one value per exit ({config.num_exits}), got {len(per_exit_accuracy)}"
        )
    if training_recipe is not None and (
        isinstance(training_recipe, str) or not all(isinstance(step, str) for step in training_recipe)
    ):
        raise TypeError("training_recipe must be a sequence of strings, one per stage")
    dataset_id, dataset_config, dataset_name = _dataset_ids(dataset)
    results = [
        EvalResult(
            task_type="text-classification",
            task_name="Text Classification",
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_config=dataset_config,
            dataset_split=dataset_split,
            metric_type=name,
            metric_value=float(value),
        )
        for name, value in (eval_results or {}).items()
    ]
    card_data = ModelCardData(
        library_name=library_name,
        pipeline_tag="text-classification",
        license=license,
        datasets=[dataset_id],
        metrics=list(eval_results or {}) or None,
        base_model=base_model,
        tags=["costeff", "early-exit", "pruning", "bert"],
        model_name=model_name,
        eval_results=results or None,
    )
    params = count_parameters(config)
    teacher = _teacher_cost(teacher_config, seq_length)
    exit_index = {layer: k for k, layer in enumerate(config.exit_layers)}
    layers = []
    for i in range(config.num_hidden_layers):
        k = exit_index.get(i + 1)
        layers.append(
            {
                "layer": i + 1,
                "heads": config.layer_num_heads[i],
                "ffn": config.layer_intermediate_sizes[i],
                "exit": "yes" if k is not None else "",
                "flops": _fmt(forward_flops(config, seq_length, i + 1)) if k is not None else "",
                "accuracy": f"{per_exit_accuracy[k]:.4f}" if k is not None and per_exit_accuracy is not None else "",
            }
        )
    dash = "n/a"
    return ModelCard.from_template(
        card_data,
        template_str=card_template(),
        model_name=model_name,
        repo_id=repo_id or model_name,
        task_description=f"{dataset_name} text classification",
        exit_layers=", ".join(map(str, config.exit_layers)),
        exit_policy=str(ExitPolicy(config.exit_criterion, config.exit_threshold, config.exit_patience)),
        exit_criterion=config.exit_criterion,
        exit_threshold=config.exit_threshold,
        exit_patience=config.exit_patience,
        teacher_label="teacher" if teacher else "teacher (not given)",
        params_total=_fmt(params["total"]),
        params_encoder=_fmt(params["encoder"]),
        params_embeddings=_fmt(params["embeddings"]),
        teacher_params_total=_fmt(teacher["total"]) if teacher else dash,
        teacher_params_encoder=_fmt(teacher["encoder"]) if teacher else dash,
        teacher_params_embeddings=_fmt(teacher["embeddings"]) if teacher else dash,
        flops_full=_fmt(forward_flops(config, seq_length)),
        teacher_flops_full=_fmt(teacher["flops"]) if teacher else dash,
        average_flops=_fmt(average_flops) if average_flops else None,
        seq_length=seq_length,
        embedding_rank=config.embedding_rank or "full (not factorized)",
        vocab_size=f"{config.vocab_size:,}",
        teacher_vocab_size=f"{teacher_config.vocab_size:,}" if teacher else dash,
        vocabulary_note=_vocabulary_note(config),
        exit_pooler=config.exit_pooler,
        exit_pooling=config.exit_pooling,
        layers=layers,
        per_exit_accuracy=per_exit_accuracy,
        results=[(name, f"{float(value):.4f}") for name, value in (eval_results or {}).items()],
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        training_recipe=list(training_recipe or []),
    )


def write_model_card(model: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``README.md`` (the model card of :func:`build_model_card`) into folder ``path``; returns its path.

    Without ``repo_id``, the card's snippets load ``path`` itself (the folder they are written into)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("repo_id", str(path))
    card = build_model_card(model, **kwargs)
    target = folder / "README.md"
    card.save(target)
    return target


__all__ = ["build_model_card", "card_template", "write_model_card"]
