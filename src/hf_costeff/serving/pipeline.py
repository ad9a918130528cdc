"""Early-exit text classification pipeline: the stock ``text-classification`` output plus, for each input, the layer
it left at and its FLOPs.

``import hf_costeff.serving`` registers it as the task ``"costeff-text-classification"``:

>>> clf = pipeline("costeff-text-classification", model=model, tokenizer=tokenizer)
>>> clf(["great film", "dull"], exit_criterion="entropy", exit_threshold=0.2, batch_size=8)
[{'label': 'LABEL_1', 'score': 0.93, 'exit_layer': 2, 'flops': ..., 'full_flops': ..., 'flops_speedup': 2.6}, ...]
>>> clf.last_call_stats   # {'num_inputs': 2, 'avg_exit_layer': ..., 'avg_flops': ..., 'flops_speedup': ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, TextClassificationPipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from ..cost import forward_flops

logger = logging.get_logger(__name__)

TASK = "costeff-text-classification"


def _texts(inputs: Any) -> list[str]:
    """Every text of one pipeline input (a string or a ``{"text", "text_pair"}`` dict)."""
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, dict):
        return [v for k, v in inputs.items() if k in ("text", "text_pair")]
    return []


def _as_pairs(inputs: Any) -> Any:
    """``[[a, b], ...]`` (a batch of sentence pairs, as GLUE's pair tasks give them) as the dicts transformers 5
    accepts; any other input unchanged."""
    if (
        isinstance(inputs, list)
        and inputs
        and all(isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(t, str) for t in x) for x in inputs)
    ):
        return [{"text": a, "text_pair": b} for a, b in inputs]
    return inputs


def summarize_results(results: Sequence[Any]) -> dict[str, float]:
    """Aggregate the per-input outputs of one call, under ``hf_costeff.evaluation``'s names: ``avg_exit_layer``,
    ``avg_flops`` and ``flops_speedup`` over the whole call (``sum(full_flops) / sum(flops)``, i.e. weighted by each
    input's length)."""
    rows = [r[0] if isinstance(r, list) else r for r in results]
    if not rows:
        raise ValueError("summarize_results needs at least one result")
    flops, full = sum(r["flops"] for r in rows), sum(r["full_flops"] for r in rows)
    return {
        "num_inputs": len(rows),
        "avg_exit_layer": sum(r["exit_layer"] for r in rows) / len(rows),
        "avg_flops": flops / len(rows),
        "flops_speedup": full / flops,
    }


class EarlyExitTextClassificationPipeline(TextClassificationPipeline):
    """``TextClassificationPipeline`` for CostEff models that also reports early-exit statistics.

    Call parameters beyond the stock ones: ``exit_criterion``, ``exit_threshold``, ``exit_patience`` (override the
    model configuration's exit policy for this call; validated by the model), ``truncation`` (default ``True``:
    inputs longer than the model accepts are cut with a warning; ``False`` refuses them with a ``ValueError``).

    Each result dict gains ``exit_layer`` (1-based), ``flops`` and ``full_flops`` (FLOPs of this input's forward with
    its unpadded length, see ``hf_costeff.cost.forward_flops``) and ``flops_speedup = full_flops / flops``.
    After a call, ``last_call_stats`` holds :func:`summarize_results` of it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.model.config, "model_type", None) != "costeff":
            raise ValueError(
                f"{TASK} needs a CostEff model (model_type 'costeff'), got {self.model.config.model_type!r}"
            )
        self.model.eval()  # early exit only happens in eval mode
        self.last_call_stats: dict[str, float] | None = None

    def check_model_type(self, supported_models: Any) -> None:
        # __init__ accepts only model_type 'costeff': the PyTorch model and the ONNX Runtime one
        # (serving.onnx.ORTCostEffForSequenceClassification), which the stock class-name check does not know.
        if getattr(self.model.config, "model_type", None) != "costeff":
            super().check_model_type(supported_models)

    def _sanitize_parameters(
        self,
        exit_criterion: str | None = None,
        exit_threshold: float | None = None,
        exit_patience: int | None = None,
        **kwargs: Any,
    ):
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        for name, value in (
            ("exit_criterion", exit_criterion),
            ("exit_threshold", exit_threshold),
            ("exit_patience", exit_patience),
        ):
            if value is not None:
                forward[name] = value
        return preprocess, forward, postprocess

    def __call__(self, inputs: Any, **kwargs: Any):
        """Classify a string, a ``{"text", "text_pair"}`` dict, or a list of either (or of ``[text, text_pair]``
        pairs). An empty list gives an empty list."""
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            self.last_call_stats = None
            return []
        results = super().__call__(_as_pairs(inputs), **kwargs)
        flat = [results] if isinstance(results, dict) else results
        self.last_call_stats = summarize_results(flat) if flat else None
        return results

    def _max_length(self) -> int:
        limit = self.model.config.max_position_embeddings
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        return min(limit, tokenizer_limit) if isinstance(tokenizer_limit, int) and tokenizer_limit > 0 else limit

    def preprocess(
        self, inputs: Any, truncation: bool | str = True, **tokenizer_kwargs: Any
    ) -> dict[str, torch.Tensor]:
        texts = _texts(inputs)
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"Inputs must be strings, got {type(text).__name__}")
            # Control characters and the like tokenize to nothing: the model would classify [CLS] [SEP] alone.
            if not text.strip() or not self.tokenizer(text, add_special_tokens=False)["input_ids"]:
                raise ValueError(f"empty text: every input must contain at least one token, got {text!r}")
        max_length = tokenizer_kwargs.pop("max_length", None) or self._max_length()
        full = super().preprocess(inputs, **tokenizer_kwargs)
        length = full["input_ids"].shape[-1]
        if length <= max_length:
            return full
        if not truncation:
            raise ValueError(
                f"Input of {length} tokens exceeds the model's maximum of {max_length}; shorten it or pass "
                "truncation=True"
            )
        logger.warning(f"Input of {length} tokens truncated to the model's maximum of {max_length} tokens")
        strategy = truncation if isinstance(truncation, str) else "longest_first"
        return super().preprocess(inputs, truncation=strategy, max_length=max_length, **tokenizer_kwargs)

    def _forward(self, model_inputs: dict[str, torch.Tensor], **exit_kwargs: Any) -> dict[str, torch.Tensor]:
        lengths = (
            model_inputs["attention_mask"].sum(-1)
            if "attention_mask" in model_inputs
            else torch.full((model_inputs["input_ids"].shape[0],), model_inputs["input_ids"].shape[1])
        )
        outputs = self.model(**model_inputs, **exit_kwargs)
        # Only per-example tensors: the pipeline's batch iterator slices every field by row (pt_utils trap).
        return {"logits": outputs.logits, "exit_layer": outputs.exit_layer, "seq_length": lengths}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], **kwargs: Any):
        result = super().postprocess(model_outputs, **kwargs)
        exit_layer = int(model_outputs["exit_layer"].reshape(-1)[0])
        length = int(model_outputs["seq_length"].reshape(-1)[0])
        config = self.model.config
        flops, full = forward_flops(config, length, exit_layer), forward_flops(config, length)
        extra = {"exit_layer": exit_layer, "flops": flops, "full_flops": full, "flops_speedup": full / flops}
        for row in result if isinstance(result, list) else [result]:
            row.update(extra)
        return result


def register_pipeline() -> None:
    """Register ``"costeff-text-classification"`` with transformers' ``pipeline()`` (idempotent)."""
    if TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            TASK,
            pipeline_class=EarlyExitTextClassificationPipeline,
            pt_model=AutoModelForSequenceClassification,
            type="text",
        )


__all__ = ["EarlyExitTextClassificationPipeline", "TASK", "register_pipeline", "summarize_results"]
