"""Saving, loading and pushing CostEff checkpoints so that they work with and without ``hf_costeff`` installed.

* ``prepare_for_hub`` makes ``save_pretrained`` copy ``configuration_costeff.py`` / ``modeling_costeff.py`` beside the
  weights and write ``auto_map``, so ``trust_remote_code=True`` loads the model where hf_costeff is not installed.
  Where it is installed, ``import hf_costeff`` registers the classes and transformers 5 uses them (local code wins
  over ``auto_map``), with no remote code at all.
* ``save_pretrained_atomic`` writes into a temporary folder beside the target, fsyncs it, then swaps it in: a save
  killed half-way leaves the previous checkpoint loadable.
* ``load_costeff`` refuses what ``from_pretrained`` would only warn about (a non-CostEff checkpoint, missing weights,
  weights whose shapes disagree with the configuration) with a ``ValueError`` naming the problem.
* ``push_costeff_to_hub`` saves model, tokenizer, code and model card in one Hub commit.
* ``costeff_device_map`` builds a ``device_map`` for big-model inference that keeps every exit on its layer's device.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers import PreTrainedModel

from ..configuration_costeff import CostEffConfig
from ..modeling_costeff import (
    _HUB_KWARGS,
    NO_SPLIT_MODULES,
    CostEffForSequenceClassification,
    CostEffModel,
    check_costeff_checkpoint,
)

#: ``auto_map`` written into config.json: class paths relative to the code files saved beside the weights.
AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_costeff.CostEffConfig",
    "AutoModel": "modeling_costeff.CostEffModel",
    "AutoModelForSequenceClassification": "modeling_costeff.CostEffForSequenceClassification",
}

# Files a remote-code CostEff repo must hold (README.md is added by push_costeff_to_hub).


def _check_costeff(model: Any) -> None:
    if not isinstance(model, PreTrainedModel) or getattr(model.config, "model_type", None) != "costeff":
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"Expected a CostEff model (model_type 'costeff'), got {kind!r}; convert a BERT model first with "
            "CostEffForSequenceClassification.from_bert(...)"
        )


def prepare_for_hub(model: PreTrainedModel) -> PreTrainedModel:
    """Make the next ``save_pretrained`` / ``push_to_hub`` of ``model`` self-contained for ``trust_remote_code``.

    Registers the model's class and its configuration's class for the Auto classes (``register_for_auto_class``: a
    class-level flag, so every later save of a CostEff model in this process also ships the code), which makes
    transformers copy the two code files beside the weights, and writes the full ``auto_map`` (AutoConfig, AutoModel,
    AutoModelForSequenceClassification) into the configuration. Idempotent; returns ``model``.
    """
    _check_costeff(model)
    type(model).register_for_auto_class(
        "AutoModel" if isinstance(model, CostEffModel) else "AutoModelForSequenceClassification"
    )
    type(model.config).register_for_auto_class("AutoConfig")
    model.config.auto_map = dict(AUTO_MAP)
    return model


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves to disk (the rename must not outrun the data)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the files themselves were synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _restore_interrupted_swap(target: Path) -> None:
    """If a previous swap died between its two renames, the old checkpoint sits in ``.<name>.old-*``: put it back."""
    if target.exists():
        return
    leftovers = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if leftovers:
        os.rename(leftovers[-1], target)


def save_pretrained_atomic(
    model: PreTrainedModel, path: str | os.PathLike, tokenizer: Any = None, for_hub: bool = True, **save_kwargs: Any
) -> Path:
    """``model.save_pretrained(path)`` that never leaves a half-written checkpoint at ``path``.

    Writes into a temporary folder beside ``path`` (same file system, so renames are atomic), fsyncs it, then renames
    the previous folder away, renames the new one in and deletes the old one. If anything fails while writing,
    ``path`` is untouched and the temporary folder is removed. ``tokenizer`` (optional) is saved with the model;
    ``for_hub`` calls ``prepare_for_hub`` first so the folder also loads with ``trust_remote_code``.
    Returns the final path.
    """
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    _restore_interrupted_swap(target)
    if for_hub:
        prepare_for_hub(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_costeff(
    path_or_repo_id: str | os.PathLike,
    model_class: type[PreTrainedModel] = CostEffForSequenceClassification,
    **kwargs: Any,
) -> PreTrainedModel:
    """``model_class.from_pretrained`` that fails with a ``ValueError`` instead of silently re-initialising weights.

    transformers 5 loads a BERT folder into a CostEff class with random exits and only a logged load report, and
    refuses shape mismatches with a ``RuntimeError`` that points to that report. Here each case names its cause:

    * the checkpoint is not a CostEff one (``model_type`` other than ``"costeff"``);
    * the configuration is invalid (``CostEffConfig`` validation);
    * the weights' shapes disagree with the configuration's widths (e.g. ``layer_num_heads`` edited after saving);
    * weights are missing or unexpected;
    * the safetensors file is corrupt or truncated.

    ``kwargs`` go to ``from_pretrained`` (``device_map``, ``dtype``, ``revision``...).
    """
    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    config_dict, _ = CostEffConfig.get_config_dict(path_or_repo_id, **hub_kwargs)
    check_costeff_checkpoint(config_dict, path_or_repo_id)
    CostEffConfig.from_dict(config_dict)  # raises ValueError naming a bad field before any weight is read
    kwargs = {k: v for k, v in kwargs.items() if k not in ("output_loading_info", "ignore_mismatched_sizes")}
    try:
        model, info = model_class.from_pretrained(path_or_repo_id, output_loading_info=True, **kwargs)
    except SafetensorError as err:
        raise ValueError(f"Corrupt or truncated safetensors file in {str(path_or_repo_id)!r}: {err}") from err
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):
            raise
        _, info = model_class.from_pretrained(
            path_or_repo_id, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        shown = [
            f"{key}: checkpoint {tuple(ckpt)} vs config {tuple(cfg)}" for key, ckpt, cfg in info["mismatched_keys"]
        ]
        raise ValueError(
            f"The weights in {str(path_or_repo_id)!r} do not match the shapes its config.json describes "
            f"(layer_num_heads={config_dict.get('layer_num_heads')}, layer_intermediate_sizes="
            f"{config_dict.get('layer_intermediate_sizes')}, embedding_rank={config_dict.get('embedding_rank')}); "
            f"{len(shown)} mismatched tensors, e.g. {shown[:3]}"
        ) from err
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint {str(path_or_repo_id)!r} does not hold the weights its config describes "
            f"(e.g. exit_layers or num_hidden_layers changed): missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model


def _device_of(device_map: Mapping[str, Any], module_name: str) -> Any:
    """Device of ``module_name`` under ``device_map``: the entry of its longest prefix."""
    best = None
    for key, device in device_map.items():
        if key == "" or module_name == key or module_name.startswith(key + "."):
            if best is None or len(key) > len(best[0]):
                best = (key, device)
    if best is None:
        raise ValueError(f"device_map does not place {module_name!r}")
    return best[1]


def costeff_device_map(
    model: CostEffForSequenceClassification, max_memory: Mapping[Any, int | str] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """``accelerate.infer_auto_device_map`` for a CostEff classifier, with every exit on its own layer's device.

    accelerate places ``exits`` (a ModuleList of small heads) wherever memory is left, often far from the layers they
    read; here ``exits.k`` is moved to the device of layer ``exit_layers[k]``, so an early exit never copies the hidden
    states across devices. ``model`` may be on the meta device (``init_empty_weights``). Pass the result as
    ``from_pretrained(..., device_map=...)``.
    """
    from accelerate import infer_auto_device_map  # noqa: PLC0415  (accelerate is optional for plain use)

    no_split = kwargs.pop("no_split_module_classes", None) or NO_SPLIT_MODULES
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, **kwargs)
    placed = {k: v for k, v in device_map.items() if k != "exits" and not k.startswith("exits.")}
    for k, layer in enumerate(model.config.exit_layers):
        placed[f"exits.{k}"] = _device_of(placed, f"costeff.encoder.layer.{layer - 1}")
    return placed


def push_costeff_to_hub(
    model: PreTrainedModel,
    repo_id: str,
    tokenizer: Any = None,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload CostEff model",
    api: Any = None,
    **card_kwargs: Any,
):
    """Push model weights, code (for ``trust_remote_code``), tokenizer and a model card to ``repo_id`` in one commit.

    ``card_kwargs`` go to :func:`hf_costeff.serving.write_model_card` (``teacher_config``, ``eval_results``,
    ``dataset``...). ``api`` defaults to ``huggingface_hub.HfApi``. Returns the ``CommitInfo`` of the commit.
    """
    from huggingface_hub import CommitOperationAdd, HfApi  # noqa: PLC0415

    from .model_card import write_model_card  # noqa: PLC0415

    _check_costeff(model)
    api = api or HfApi(library_name="hf-costeff")
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        prepare_for_hub(model)
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        card_kwargs.setdefault("model_name", repo_id.split("/")[-1])
        write_model_card(model, tmp, **card_kwargs)
        operations = [
            CommitOperationAdd(path_in_repo=str(file.relative_to(tmp)), path_or_fileobj=str(file))
            for file in sorted(Path(tmp).rglob("*"))
            if file.is_file()
        ]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


def load_folder_tokenizer(folder: str | os.PathLike) -> Any:
    """The tokenizer saved in ``folder``, or ``None`` when there is none."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    folder = Path(folder)
    if not any((folder / name).exists() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(folder)


__all__ = [
    "AUTO_MAP",
    "costeff_device_map",
    "load_costeff",
    "load_folder_tokenizer",
    "prepare_for_hub",
    "push_costeff_to_hub",
    "save_pretrained_atomic",
]
