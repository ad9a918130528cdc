"""Early exit outside PyTorch: a CostEff model as ONNX segment graphs, and an ONNX Runtime model that chains them.

One ONNX graph cannot stop early, so :func:`export_onnx` writes one graph per segment, each with dynamic batch and
sequence axes:

* ``embeddings.onnx``: ``input_ids``, ``token_type_ids`` -> ``hidden_states``;
* ``block_k.onnx`` for exit ``k``: the layers after exit ``k - 1`` up to exit ``k``'s layer, then exit ``k``'s
  classifier: ``hidden_states``, ``attention_mask`` -> ``hidden_states_out``, ``logits``;

plus ``config.json``, the tokenizer and ``onnx_manifest.json`` (the files, their layers and inputs, the versions that
wrote them). :class:`ORTCostEffForSequenceClassification` runs the same batched early exit as
``CostEffForSequenceClassification``: rows that exit leave the batch and padding columns no remaining row needs are
cut, under the same exit policies and per-call overrides. Its run path needs only numpy and onnxruntime (torch is
imported only to hand torch tensors back to a caller that passed torch tensors, as transformers' pipelines do), so a
serving image needs no torch. The segments come from the model's own submodules (``model.costeff.embeddings``,
``model.costeff.encoder.layer``, ``model.exits``), not from a traced ``forward``: the exit decisions stay in Python.

>>> export_onnx(model, "costeff-onnx", tokenizer=tokenizer)            # or quantize="int8"
>>> ort_model = ORTCostEffForSequenceClassification.from_pretrained("costeff-onnx")
>>> pipeline("text-classification", model=ort_model, tokenizer=tokenizer)("a gorgeous film")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from transformers.utils import ModelOutput

from ..choices import QUANTIZATIONS
from ..configuration_costeff import CostEffConfig, resolve_exit_policy

MANIFEST_NAME = "onnx_manifest.json"
FORMAT_NAME = "hf-costeff-onnx"
FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.onnx"


def _block_file(k: int) -> str:
    return f"block_{k}.onnx"


# --------------------------------------------------------------------------------------------------------- export


def _segment_modules(model):
    """The torch modules of the segments, built from the model's public submodules (imported lazily: torch)."""
    from torch import nn  # noqa: PLC0415

    class EmbeddingSegment(nn.Module):
        def __init__(self, embeddings: nn.Module):
            super().__init__()
            self.embeddings = embeddings

        def forward(self, input_ids, token_type_ids):
            return self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    class BlockSegment(nn.Module):
        """Layers, then one exit. The 2-D padding mask becomes a boolean ``(batch, 1, 1, seq)`` mask, which both the
        eager and the sdpa attention read (the model's own mask builder is a Python-level dispatcher, not a graph)."""

        def __init__(self, layers: list[nn.Module], exit_head: nn.Module):
            super().__init__()
            self.layers = nn.ModuleList(layers)
            self.exit_head = exit_head

        def forward(self, hidden_states, attention_mask):
            mask = (attention_mask != 0)[:, None, None, :]
            for layer in self.layers:
                hidden_states = layer(hidden_states, mask)
            return hidden_states, self.exit_head(hidden_states, attention_mask)

    layers = list(model.costeff.encoder.layer)
    blocks, start = [], 0
    for k, exit_layer in enumerate(model.config.exit_layers):
        blocks.append((list(range(start + 1, exit_layer + 1)), BlockSegment(layers[start:exit_layer], model.exits[k])))
        start = exit_layer
    return EmbeddingSegment(model.costeff.embeddings).eval(), [(layers, block.eval()) for layers, block in blocks]


def _check_export_arguments(model: Any, output_dir: Any, quantize: str | None):
    from ..modeling_costeff import CostEffForSequenceClassification  # noqa: PLC0415

    if not isinstance(model, (CostEffForSequenceClassification, str, os.PathLike)):
        raise TypeError(
            f"model must be a CostEffForSequenceClassification or the folder of one, got {type(model).__name__}"
        )
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"output_dir must be a path, got {type(output_dir).__name__}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or one of {QUANTIZATIONS}, got {quantize!r}")
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not an empty folder; pick a new one")
    return output_dir


def export_onnx(
    model: Any,
    output_dir: str | os.PathLike,
    quantize: str | None = None,
    *,
    tokenizer: Any = None,
    opset_version: int | None = None,
    validate: bool = True,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export a CostEff classifier as ONNX segment graphs (see the module docstring) into a new folder.

    Args:
        model: a ``CostEffForSequenceClassification``, or the folder of one (loaded with ``load_costeff``, its tokenizer
            taken from the same folder).
        output_dir: a folder that does not exist yet or is empty; it is written whole or not at all (the export goes to
            a temporary folder beside it, renamed at the end).
        quantize: ``None`` (float32 graphs) or ``"int8"``: dynamic int8 quantization of every segment's weights with
            ``onnxruntime.quantization.quantize_dynamic`` (activations are quantized on the fly; check the accuracy).
        tokenizer: saved beside the graphs so that the folder is self-contained (default: the model folder's one).
        opset_version: ONNX opset (default: the exporter's).
        validate: run every float32 segment in ONNX Runtime on inputs of a shape other than the traced one and compare
            it with PyTorch (needs onnxruntime); a difference over ``atol`` raises ``RuntimeError``.

    Returns the manifest (also written to ``output_dir/onnx_manifest.json``).
    """
    output_dir = _check_export_arguments(model, output_dir, quantize)
    import torch  # noqa: PLC0415

    from .. import __version__  # noqa: PLC0415

    if not isinstance(model, torch.nn.Module):
        from .hub import load_costeff, load_folder_tokenizer  # noqa: PLC0415

        folder = model
        model = load_costeff(folder)
        tokenizer = tokenizer if tokenizer is not None else load_folder_tokenizer(folder)
    config = model.config
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    was_training = model.training
    model.eval()
    try:
        embeddings, blocks = _segment_modules(model)
        fp32_dir = staging / "fp32" if quantize else staging
        fp32_dir.mkdir(exist_ok=True)
        with torch.no_grad():
            _export_segments(model, embeddings, blocks, fp32_dir, opset_version)
            if validate:
                _validate_segments(model, embeddings, blocks, fp32_dir, atol)
        if quantize:
            _quantize_segments(fp32_dir, staging, len(blocks))
            shutil.rmtree(fp32_dir)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "quantization": quantize,
            "embeddings": {
                "file": EMBEDDINGS_FILE,
                "inputs": ["input_ids", "token_type_ids"],
                "outputs": ["hidden_states"],
            },
            "blocks": [
                {
                    "file": _block_file(k),
                    "layers": layers,
                    "exit_layer": config.exit_layers[k],
                    "inputs": ["hidden_states", "attention_mask"],
                    "outputs": ["hidden_states_out", "logits"],
                }
                for k, (layers, _) in enumerate(blocks)
            ],
            "versions": {"hf_costeff": __version__, "torch": torch.__version__, "onnx": _version("onnx")},
        }
        config.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if output_dir.exists():
            output_dir.rmdir()  # checked empty above
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    return manifest


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _example_inputs(model, batch_size: int, seq_length: int, seed: int):
    """Token ids, token types and a padding mask whose rows have different lengths (every row keeps a token)."""
    import torch  # noqa: PLC0415

    config, device = model.config, next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (batch_size, seq_length), generator=generator)
    token_type_ids = torch.zeros_like(input_ids)
    lengths = torch.randint(1, seq_length + 1, (batch_size,), generator=generator)
    lengths[0] = seq_length
    attention_mask = (torch.arange(seq_length)[None, :] < lengths[:, None]).long()
    return input_ids.to(device), token_type_ids.to(device), attention_mask.to(device)


def _export_segments(model, embeddings, blocks, folder: Path, opset_version: int | None) -> None:
    import torch  # noqa: PLC0415
    from torch.export import Dim  # noqa: PLC0415

    config = model.config
    # Traced at batch 2 and length 8 (not 1: torch.export specializes size-1 dimensions).
    input_ids, token_type_ids, attention_mask = _example_inputs(model, 2, min(8, config.max_position_embeddings), 0)
    axes = {0: Dim("batch"), 1: Dim("sequence", max=config.max_position_embeddings)}
    common = {"dynamo": True, "opset_version": opset_version, "verbose": False}
    with warnings.catch_warnings():
        # The inputs share their axes on purpose; the exporter warns that it names each axis once.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        torch.onnx.export(
            embeddings,
            (input_ids, token_type_ids),
            str(folder / EMBEDDINGS_FILE),
            input_names=["input_ids", "token_type_ids"],
            output_names=["hidden_states"],
            dynamic_shapes={"input_ids": axes, "token_type_ids": axes},
            **common,
        )
        hidden_states = embeddings(input_ids, token_type_ids)
        for k, (_, block) in enumerate(blocks):
            torch.onnx.export(
                block,
                (hidden_states, attention_mask),
                str(folder / _block_file(k)),
                input_names=["hidden_states", "attention_mask"],
                output_names=["hidden_states_out", "logits"],
                dynamic_shapes={"hidden_states": axes, "attention_mask": axes},
                **common,
            )
            hidden_states = block(hidden_states, attention_mask)[0]


def _validate_segments(model, embeddings, blocks, folder: Path, atol: float) -> None:
    """Every exported segment against PyTorch on a new shape (batch 3, another length, ragged padding)."""
    import onnxruntime as ort  # noqa: PLC0415

    config = model.config
    seq_length = min(13, config.max_position_embeddings)
    input_ids, token_type_ids, attention_mask = _example_inputs(model, 3, seq_length, seed=1)
    session = ort.InferenceSession(str(folder / EMBEDDINGS_FILE), providers=["CPUExecutionProvider"])
    hidden_states = embeddings(input_ids, token_type_ids)
    got = session.run(None, {"input_ids": _np(input_ids), "token_type_ids": _np(token_type_ids)})[0]
    _compare("embeddings", got, _np(hidden_states), atol)
    for k, (_, block) in enumerate(blocks):
        session = ort.InferenceSession(str(folder / _block_file(k)), providers=["CPUExecutionProvider"])
        feeds = {"hidden_states": _np(hidden_states), "attention_mask": _np(attention_mask)}
        got_hidden, got_logits = session.run(None, feeds)
        hidden_states, logits = block(hidden_states, attention_mask)
        real = _np(attention_mask).astype(bool)  # padded positions carry no meaning
        _compare(f"block {k} hidden states", got_hidden[real], _np(hidden_states)[real], atol)
        _compare(f"block {k} logits", got_logits, _np(logits), atol)


def _np(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _compare(name: str, got: np.ndarray, expected: np.ndarray, atol: float) -> None:
    if got.shape != expected.shape:
        raise RuntimeError(f"ONNX {name}: shape {got.shape}, PyTorch {expected.shape}")
    diff = float(np.abs(got - expected).max()) if got.size else 0.0
    if not diff <= atol:
        raise RuntimeError(f"ONNX {name} differs from PyTorch by {diff:.3g} > atol={atol}")


def _quantize_segments(source: Path, target: Path, num_blocks: int) -> None:
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    for name in [EMBEDDINGS_FILE] + [_block_file(k) for k in range(num_blocks)]:
        graph = onnx.load(str(source / name)).graph
        empty = {t.name for t in graph.initializer if 0 in t.dims}
        # A pruned-away projection (0 heads or 0 FFN neurons) has an empty weight: its int8 scale would be 0/0.
        skip = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and empty.intersection(n.input)]
        # Matrix products only: per-tensor int8 embedding tables cost accuracy and save no time.
        with _quiet_root_warning("pre-processing before quantization"):
            quantize_dynamic(
                source / name,
                target / name,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_exclude=skip,
            )


@contextlib.contextmanager
def _quiet_root_warning(text: str):
    """Drop one root-logger message for the duration: onnxruntime's quantizer recommends its optional pre-processing
    (shape inference + graph optimization, not done here) once per graph, i.e. 1 + num_exits times per export."""

    def drop(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


# ---------------------------------------------------------------------------------------------- exit decisions


def exit_confident_np(logits: np.ndarray, criterion: str, threshold: float) -> np.ndarray:
    """numpy twin of ``modeling_costeff.exit_confident`` (tested equal): ``(rows, num_labels)`` -> bool ``(rows,)``.

    float32 like the torch version; entropy from log-probabilities, so rows whose probabilities underflow stay finite.
    """
    z = logits.astype(np.float32)
    shifted = z - z.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    if criterion == "entropy":
        return -(np.exp(log_probs) * log_probs).sum(axis=-1) < threshold
    return np.exp(log_probs.max(axis=-1)) >= threshold


def patience_update_np(
    agree: np.ndarray, previous: np.ndarray | None, logits: np.ndarray, threshold: float | None
) -> np.ndarray:
    """PABEE's counter as the model keeps it: +1 when this exit agrees with the previous one, else 0."""
    if previous is None:
        return agree
    if logits.shape[-1] == 1:
        same = np.abs(logits - previous)[:, 0] < threshold
    else:
        same = logits.argmax(-1) == previous.argmax(-1)
    return np.where(same, agree + 1, 0)


def _trim_padding_np(*arrays: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cut the trailing columns that are padding in every row (they cannot change a real token)."""
    length = int(np.flatnonzero((attention_mask != 0).any(axis=0)).max()) + 1
    if length == attention_mask.shape[1]:
        return (*arrays, attention_mask)
    return (*(a[:, :length] for a in arrays), attention_mask[:, :length])


# ------------------------------------------------------------------------------------------------- the ORT model


@dataclass
class ORTCostEffSequenceClassifierOutput(ModelOutput):
    """Output of [`ORTCostEffForSequenceClassification`]: the fields of ``CostEffSequenceClassifierOutput`` that an
    inference run has (numpy arrays, or torch tensors when the inputs were torch tensors).

    Args:
        logits: ``(batch_size, num_labels)`` logits of the exit each example left at.
        all_exit_logits: ``(batch_size, num_exits, num_labels)``, only with criterion ``"none"`` (every layer ran).
        exit_layer: ``(batch_size,)`` int64, the 1-based layer each example left after.
    """

    logits: Any = None
    all_exit_logits: Any = None
    exit_layer: Any = None


def _as_numpy(name: str, value: Any, integer: bool) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: no torch import needed to read it
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if integer and not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_inputs(
    config: CostEffConfig, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
) -> None:
    """The PyTorch model's input checks (the configuration's rules, the same messages), on numpy arrays."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch_size, sequence_length), got shape {input_ids.shape}")
    config.check_input_shapes(input_ids.shape, attention_mask=attention_mask.shape, token_type_ids=token_type_ids.shape)
    mask_values = np.unique(attention_mask[(attention_mask != 0) & (attention_mask != 1)])[:8].tolist()
    config.check_input_values(
        {
            name: (int(a.min()), int(a.max()))
            for name, a in (("input_ids", input_ids), ("token_type_ids", token_type_ids))
        },
        mask_values=mask_values,
        empty_rows=not bool((attention_mask != 0).any(axis=1).all()),
    )


@dataclass(repr=False, eq=False)
class ORTCostEffForSequenceClassification:
    """A CostEff classifier exported by :func:`export_onnx`, run by ONNX Runtime with the batched early exit.

    Called like the PyTorch model (``input_ids``, ``attention_mask``, ``token_type_ids``, and ``exit_criterion`` /
    ``exit_threshold`` / ``exit_patience`` to override the configuration's policy for one call), it returns
    ``logits`` and ``exit_layer`` (plus ``all_exit_logits`` with criterion ``"none"``). It works in transformers'
    ``pipeline("text-classification", ...)`` and in ``"costeff-text-classification"`` (CPU only).
    """

    main_input_name: ClassVar[str] = "input_ids"

    config: CostEffConfig
    embeddings_session: Any  # onnxruntime.InferenceSession of the embeddings
    block_sessions: list[Any]  # one InferenceSession per exit: the layers up to it and its classifier
    manifest: dict
    model_dir: Path
    name_or_path: str = field(init=False)  # what pipelines and model cards read
    num_labels: int = field(init=False)

    def __post_init__(self) -> None:
        self.name_or_path, self.num_labels = str(self.model_dir), self.config.num_labels

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        *,
        provider: str = "CPUExecutionProvider",
        session_options: Any = None,
    ) -> ORTCostEffForSequenceClassification:
        """Load a folder written by :func:`export_onnx`.

        Args:
            model_dir: the folder (with ``onnx_manifest.json``, ``config.json`` and the ``.onnx`` segments).
            provider: ONNX Runtime execution provider (only ``"CPUExecutionProvider"`` is tested).
            session_options: an ``onnxruntime.SessionOptions`` for every segment (threads, optimization level).
        """
        import onnxruntime as ort  # noqa: PLC0415

        if not isinstance(model_dir, (str, os.PathLike)):
            raise TypeError(f"model_dir must be a path, got {type(model_dir).__name__}")
        model_dir = Path(model_dir)
        manifest_path = model_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ValueError(
                f"model_dir {str(model_dir)!r} holds no {MANIFEST_NAME}: export the model with "
                "hf_costeff.serving.export_onnx (or `hf-costeff export-onnx`) first"
            )
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path} is not a {FORMAT_NAME} v{FORMAT_VERSION} manifest (format "
                f"{manifest.get('format')!r}, version {manifest.get('format_version')!r})"
            )
        config = CostEffConfig.from_pretrained(model_dir)
        exits = [block["exit_layer"] for block in manifest["blocks"]]
        if exits != config.exit_layers:
            raise ValueError(f"{manifest_path} has exits at {exits} but config.json at {config.exit_layers}")

        def session(name: str):
            return ort.InferenceSession(str(model_dir / name), sess_options=session_options, providers=[provider])

        blocks = [session(block["file"]) for block in manifest["blocks"]]
        return cls(config, session(manifest["embeddings"]["file"]), blocks, manifest, model_dir)

    # transformers' pipelines treat the model as a PyTorch one: a CPU device, eval mode, no generation.
    @property
    def device(self):
        torch = sys.modules.get("torch")  # a pipeline has imported it; the model itself never does
        return torch.device("cpu") if torch is not None else "cpu"

    def to(self, device: Any) -> ORTCostEffForSequenceClassification:
        if str(device) not in ("cpu", "-1"):
            raise ValueError(f"device must be 'cpu' for ORTCostEffForSequenceClassification, got {device!r}")
        return self

    def eval(self) -> ORTCostEffForSequenceClassification:
        return self

    def can_generate(self) -> bool:
        return False

    def __repr__(self) -> str:
        quantization = self.manifest.get("quantization") or "float32"
        return f"{type(self).__name__}({self.name_or_path!r}, exits={self.config.exit_layers}, {quantization})"

    def __call__(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        exit_criterion: str | None = None,
        exit_threshold: float | None = None,
        exit_patience: int | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ORTCostEffSequenceClassifierOutput | tuple:
        """Batched early-exit inference; arguments as ``CostEffForSequenceClassification.forward``.

        Inputs are numpy arrays (or anything ``np.asarray`` reads, torch tensors included). ``inputs_embeds``,
        ``position_ids``, ``labels`` and hidden-state outputs are PyTorch-only and refused.
        """
        unsupported = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unsupported:
            raise ValueError(f"ORTCostEffForSequenceClassification does not take {unsupported}: PyTorch model only")
        if input_ids is None:
            raise ValueError("input_ids is required")
        as_torch = hasattr(input_ids, "detach")
        ids = _as_numpy("input_ids", input_ids, integer=True)
        mask = np.ones_like(ids) if attention_mask is None else _as_numpy("attention_mask", attention_mask, True)
        types = np.zeros_like(ids) if token_type_ids is None else _as_numpy("token_type_ids", token_type_ids, True)
        _check_inputs(self.config, ids, mask, types)
        types = np.ascontiguousarray(np.broadcast_to(types, ids.shape))  # a (1, seq) row serves every example
        criterion, threshold, patience = resolve_exit_policy(self.config, exit_criterion, exit_threshold, exit_patience)
        output = self._early_exit(ids, mask, types, criterion, threshold, patience)
        if as_torch:
            import torch  # noqa: PLC0415  (the caller passed torch tensors, so torch is installed)

            output = ORTCostEffSequenceClassifierOutput(
                **{k: torch.from_numpy(v) for k, v in output.items() if v is not None}
            )
        return output if return_dict is not False else output.to_tuple()

    forward = __call__

    def _early_exit(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
        criterion: str,
        threshold: float | None,
        patience: int,
    ) -> ORTCostEffSequenceClassifierOutput:
        """``CostEffForSequenceClassification._forward_early_exit`` over ONNX segments (criterion ``"none"``: every
        row runs every block, and every exit's logits are kept)."""
        batch_size, num_exits = input_ids.shape[0], len(self.block_sessions)
        logits = np.zeros((batch_size, self.num_labels), dtype=np.float32)
        exit_layer = np.zeros(batch_size, dtype=np.int64)
        all_exit_logits = []
        active = np.arange(batch_size)  # original row of each row still in the batch
        agree = np.zeros(batch_size, dtype=np.int64)  # patience counters
        previous = None
        # Padding no row needs is cut before the embeddings: every token is embedded on its own.
        input_ids, token_type_ids, mask = _trim_padding_np(input_ids, token_type_ids, attention_mask=attention_mask)
        (hidden,) = self.embeddings_session.run(None, {"input_ids": input_ids, "token_type_ids": token_type_ids})
        for k, (session, layer) in enumerate(zip(self.block_sessions, self.config.exit_layers, strict=True)):
            hidden, exit_logits = session.run(None, {"hidden_states": hidden, "attention_mask": mask})
            if k == num_exits - 1:
                done = np.ones(len(active), dtype=bool)
            elif criterion == "none":
                all_exit_logits.append(exit_logits)
                continue
            elif criterion == "patience":
                agree = patience_update_np(agree, previous, exit_logits, threshold)
                done, previous = agree >= patience, exit_logits
            else:
                done = exit_confident_np(exit_logits, criterion, threshold)
            logits[active[done]] = exit_logits[done]
            exit_layer[active[done]] = layer
            if done.all():
                if criterion == "none":
                    all_exit_logits.append(exit_logits)
                break
            if done.any():
                keep = ~done
                active, agree = active[keep], agree[keep]
                previous = previous[keep] if previous is not None else None
                hidden, mask = _trim_padding_np(hidden[keep], attention_mask=mask[keep])
        stacked = np.stack(all_exit_logits, axis=1) if criterion == "none" else None
        return ORTCostEffSequenceClassifierOutput(logits=logits, all_exit_logits=stacked, exit_layer=exit_layer)


__all__ = [
    "MANIFEST_NAME",
    "ORTCostEffForSequenceClassification",
    "ORTCostEffSequenceClassifierOutput",
    "exit_confident_np",
    "export_onnx",
    "patience_update_np",
]
