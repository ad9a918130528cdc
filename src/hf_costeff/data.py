"""GLUE data and metrics: the Hub's ``nyu-mll/glue`` through ``datasets``, or the original GLUE TSV files offline."""

from __future__ import annotations

import csv
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueTask:
    """What a GLUE task's files hold and how it is scored."""

    name: str
    text_keys: tuple[str, ...]
    num_labels: int
    metric_keys: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...] = ()


TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask("sst2", ("sentence",), 2, ("accuracy",), "accuracy", ("negative", "positive")),
    "mrpc": GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), "f1", ("not_equivalent", "equivalent")),
    "rte": GlueTask("rte", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy", ("entailment", "not_entailment")),
    "qnli": GlueTask("qnli", ("question", "sentence"), 2, ("accuracy",), "accuracy", ("entailment", "not_entailment")),
    "cola": GlueTask(
        "cola", ("sentence",), 2, ("matthews_correlation",), "matthews_correlation", ("unacceptable", "acceptable")
    ),
    "stsb": GlueTask("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"), "pearson"),
}

# Column layout of the original GLUE TSV files: (column of each text key..., label column, has header).
_TSV_LAYOUT = {
    "sst2": ((0,), 1, True),
    "mrpc": ((3, 4), 0, True),
    "rte": ((1, 2), 3, True),
    "qnli": ((1, 2), 3, True),
    "cola": ((3,), 1, False),
    "stsb": ((7, 8), 9, True),
}


def get_task(task: str) -> GlueTask:
    if task not in TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; supported: {sorted(TASKS)}")
    return TASKS[task]


def load_glue(task: str, glue_dir: str | Path | None = None) -> datasets.DatasetDict:
    """Load a GLUE task with splits ``train`` and ``validation`` and the Hub's column names.

    Args:
        task: a key of ``TASKS`` (``"sst2"``, ``"mrpc"``, ...).
        glue_dir: folder holding ``<task>/{train,dev}.tsv`` in the original GLUE format. ``None`` reads
            ``nyu-mll/glue`` from the Hub with ``datasets``.
    """
    spec = get_task(task)
    if glue_dir is None:
        return datasets.load_dataset("nyu-mll/glue", task)
    folder = Path(glue_dir) / task
    splits = {}
    for split, filename in (("train", "train.tsv"), ("validation", "dev.tsv")):
        path = folder / filename
        if path.exists():
            splits[split] = datasets.Dataset.from_dict(_read_tsv(path, spec), features=_features(spec))
    if "validation" not in splits:
        raise FileNotFoundError(f"No GLUE dev file at {folder / 'dev.tsv'}")
    return datasets.DatasetDict(splits)


def _features(spec: GlueTask) -> datasets.Features:
    label = datasets.Value("float32") if spec.num_labels == 1 else datasets.ClassLabel(names=list(spec.label_names))
    return datasets.Features({**{key: datasets.Value("string") for key in spec.text_keys}, "label": label})


def _read_tsv(path: Path, spec: GlueTask) -> dict[str, list]:
    text_columns, label_column, has_header = _TSV_LAYOUT[spec.name]
    # GLUE files hold bare quote characters: csv's default quoting would merge rows (see the data README).
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [row for row in rows[1 if has_header else 0 :] if row]
    columns: dict[str, list] = {
        key: [row[c].strip() for row in rows] for key, c in zip(spec.text_keys, text_columns, strict=True)
    }
    raw_labels = [row[label_column] for row in rows]
    if spec.num_labels == 1:
        columns["label"] = [float(value) for value in raw_labels]
    elif spec.label_names and not raw_labels[0].lstrip("-").isdigit():
        columns["label"] = [spec.label_names.index(value) for value in raw_labels]
    else:
        columns["label"] = [int(value) for value in raw_labels]
    return columns


def glue_texts(split: datasets.Dataset, task: str) -> list[str]:
    """Every text of a GLUE split: its one text column, or both columns of a sentence-pair task, one after the other."""
    return [text for key in get_task(task).text_keys for text in split[key]]


def tokenize_glue(
    dataset_dict: datasets.DatasetDict, tokenizer, task: str, max_length: int = 128
) -> datasets.DatasetDict:
    """Tokenize every split (truncated to ``max_length``, unpadded) and rename ``label`` to ``labels``."""
    spec = get_task(task)

    def encode(batch):
        return tokenizer(*[batch[key] for key in spec.text_keys], truncation=True, max_length=max_length)

    columns = list(next(iter(dataset_dict.values())).column_names)
    encoded = dataset_dict.map(encode, batched=True, remove_columns=[c for c in columns if c != "label"])
    return encoded.rename_column("label", "labels")


@functools.cache
def _evaluate_metric(task: str):
    """``evaluate``'s GLUE metric, or ``None`` when it cannot be loaded (offline: its script lives on the Hub)."""
    import evaluate  # noqa: PLC0415 (slow import, only needed here)

    try:
        return evaluate.load("glue", task)
    except Exception as error:  # evaluate raises FileNotFoundError/ConnectionError/OSError depending on the cause
        logger.info("evaluate.load('glue', %r) unavailable (%s); using the same formulas (batched_metric)", task, error)
        return None


def compute_glue_metrics(task: str, predictions, references) -> dict[str, float]:
    """The task's GLUE metrics. ``predictions``: class ids (or floats for STS-B); ``references``: gold labels."""
    spec = get_task(task)
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape or predictions.size == 0:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} must be equal, non-empty")
    metric = _evaluate_metric(task)
    if metric is not None:
        return {
            key: float(value) for key, value in metric.compute(predictions=predictions, references=references).items()
        }
    return {key: float(batched_metric(key, predictions[None], references[None])[0]) for key in spec.metric_keys}


def _divide(numerator: np.ndarray, denominator: np.ndarray, undefined: float) -> np.ndarray:
    """``numerator / denominator`` per row, ``undefined`` where the denominator is 0 (no division by zero is done)."""
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), undefined)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    # A constant row has no correlation: nan, as scipy says.
    return _divide((x * y).sum(axis=1), np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1)), np.nan)


def batched_metric(key: str, predictions, references) -> np.ndarray:
    """One GLUE metric for each row of ``predictions`` against the same row of ``references`` (both ``(B, n)``).

    The formulas of the scikit-learn and scipy functions that ``evaluate``'s GLUE metric calls, with their answers in
    the degenerate cases (an F1 or Matthews correlation with a zero denominator is 0; a correlation with a constant
    row is nan), written over rows so that scoring a thousand resamples of a dev set costs one call. F1 and Matthews
    take binary class ids (0/1, 1 the positive class), as every GLUE task scored by them has."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape or predictions.ndim != 2:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} must be equal, (B, n)")
    if key in ("pearson", "spearmanr"):
        x, y = predictions.astype(np.float64), references.astype(np.float64)
        if key == "spearmanr":
            from scipy.stats import rankdata  # noqa: PLC0415

            x, y = rankdata(x, axis=1), rankdata(y, axis=1)  # average ranks for ties, as spearmanr
        return _pearson(x, y)
    if key == "accuracy":
        return (predictions == references).mean(axis=1)
    if key not in ("f1", "matthews_correlation"):
        raise ValueError(
            f"metric key must be one of accuracy, f1, matthews_correlation, pearson, spearmanr; got {key!r}"
        )
    if not (np.isin(predictions, (0, 1)).all() and np.isin(references, (0, 1)).all()):
        raise ValueError(f"{key} takes binary class ids (0/1) in predictions and references")
    p, r = predictions == 1, references == 1
    tp, fp = (p & r).sum(axis=1).astype(np.float64), (p & ~r).sum(axis=1).astype(np.float64)
    fn, tn = (~p & r).sum(axis=1).astype(np.float64), (~p & ~r).sum(axis=1).astype(np.float64)
    if key == "f1":
        return _divide(2 * tp, 2 * tp + fp + fn, 0.0)
    return _divide(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)), 0.0)


__all__ = [
    "GlueTask",
    "TASKS",
    "batched_metric",
    "compute_glue_metrics",
    "get_task",
    "glue_texts",
    "load_glue",
    "tokenize_glue",
]
