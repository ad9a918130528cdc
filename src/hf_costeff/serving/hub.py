"""Saving, loading and pushing CostEff checkpoints so that they work with and without ``hf_costeff`` installed.

* ``prepare_for_hub`` makes ``save_pretrained`` copy ``configuration_costeff.py`` / ``modeling_costeff.py`` beside the
  weights and write ``auto_map``, so ``trust_remote_code=True`` loads the model where hf_costeff is not installed.
  Where it is installed, ``import hf_costeff`` registers the classes and transformers 5 uses them (local code wins
  over ``auto_map``), with no remote code at all.
* ``save_pretrained_atomic`` writes the model's files into a staging folder inside the target, fsyncs them, commits
  with one rename and then moves them in: a save killed at any point leaves the previous model loadable (or, past the
  commit, the new one once the commit is finished), and no file it did not write is touched.
* ``load_costeff`` refuses what ``from_pretrained`` would only warn about (a non-CostEff checkpoint, missing weights,
  weights whose shapes disagree with the configuration) with a ``ValueError`` naming the problem.
* ``push_costeff_to_hub`` saves model, tokenizer, code and model card in one Hub commit.
* ``costeff_device_map`` builds a ``device_map`` for big-model inference that keeps every exit on its layer's device.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers import PreTrainedModel

from ..checkpoints import is_complete_model_folder
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
    transformers copy the code files (and their relative imports) beside the weights, and writes the full ``auto_map`` (AutoConfig, AutoModel,
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


# Inside the target folder: a save stages its files in ``.costeff-staging-*`` and commits by renaming that folder to
# ``.costeff-commit`` (one atomic rename), whose manifest lists the files to move in and the stale ones to remove.
_STAGING_PREFIX = ".costeff-staging-"
_COMMIT_DIR = ".costeff-commit"
_MANIFEST = "costeff-manifest.json"
# Weight files of an earlier save that the new one does not rewrite are removed, as save_pretrained itself removes
# stale shards: a stale model.safetensors beside new shards would be the one loaded.
_STALE_WEIGHTS = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")


def _restore_legacy_swap(target: Path) -> None:
    """Clean up after saves of hf_costeff <= 0.1, which swapped whole folders beside the target.

    A kill between that version's two renames left the old model in ``.<name>.old-*``: the newest *complete* one is
    put back (a partly deleted one never is); every other ``.<name>.old-*`` / ``.<name>.tmp-*`` folder is removed.
    """
    leftovers = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not target.exists():
        complete = next((p for p in leftovers if is_complete_model_folder(p)), None)
        if complete is not None:
            os.rename(complete, target)
    for folder in [*target.parent.glob(f".{target.name}.old-*"), *target.parent.glob(f".{target.name}.tmp-*")]:
        shutil.rmtree(folder, ignore_errors=True)


def _finish_commit(target: Path) -> None:
    """Move a committed save's files into ``target`` (idempotent: a file already moved is no longer staged)."""
    commit = target / _COMMIT_DIR
    manifest_path = commit / _MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for name in manifest["remove"]:
            (target / name).unlink(missing_ok=True)
        for name in manifest["files"]:  # config.json last: whoever reads it sees the weights it describes
            staged = commit / name
            if staged.exists():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target / name)
        _fsync_dir(target)
    # No manifest: every file was moved and the cleanup below was under way when the process died.
    shutil.rmtree(commit)


def recover_interrupted_save(path: str | os.PathLike) -> None:
    """Bring a folder left by a killed ``save_pretrained_atomic`` back to one complete model.

    A save killed after its commit is finished (its files were all written and synced before the commit); a save
    killed before it is discarded with its staging folder. Called by every save and by ``load_costeff``; a no-op on a
    folder without such leftovers. Saves to one folder must not run concurrently.
    """
    target = Path(path).absolute()
    _restore_legacy_swap(target)
    if not target.is_dir():
        return
    if (target / _COMMIT_DIR).exists():
        _finish_commit(target)
    for staging in target.glob(f"{_STAGING_PREFIX}*"):
        shutil.rmtree(staging, ignore_errors=True)


def save_pretrained_atomic(
    model: PreTrainedModel, path: str | os.PathLike, tokenizer: Any = None, for_hub: bool = True, **save_kwargs: Any
) -> Path:
    """``model.save_pretrained(path)`` that never leaves a half-written model at ``path`` and touches nothing else.

    The model's (and ``tokenizer``'s) files are written into a staging folder inside ``path`` and fsynced; one rename
    commits them; they are then moved over the previous ones file by file (``config.json`` last) and weight files of
    an earlier save that this one does not rewrite are removed (as ``save_pretrained`` removes stale shards). Other
    files in ``path`` (code, data, another tokenizer's files) are never touched, and the folder gets the permissions
    ``save_pretrained`` gives (the umask's).

    Killed before the commit, ``path`` still holds the previous model and the next save removes the staging folder;
    killed after it, the next save or ``load_costeff`` finishes it. ``for_hub`` calls ``prepare_for_hub`` first so the
    folder also loads with ``trust_remote_code``. Returns the final path.
    """
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder")
    recover_interrupted_save(target)
    target.mkdir(parents=True, exist_ok=True)
    if for_hub:
        prepare_for_hub(model)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=target))
    try:
        model.save_pretrained(staging, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        files = sorted(
            (str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()),
            key=lambda name: (name == "config.json", name),
        )
        stale = [p.name for p in target.iterdir() if _STALE_WEIGHTS.match(p.name) and p.name not in files]
        (staging / _MANIFEST).write_text(json.dumps({"files": files, "remove": stale}), encoding="utf-8")
        _fsync_tree(staging)
        os.rename(staging, target / _COMMIT_DIR)  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(target)
    _finish_commit(target)
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
    if Path(path_or_repo_id).is_dir():
        recover_interrupted_save(path_or_repo_id)
    config_dict, _ = CostEffConfig.get_config_dict(path_or_repo_id, **hub_kwargs)
    check_costeff_checkpoint(config_dict, path_or_repo_id)
    config = CostEffConfig.from_dict(config_dict)  # raises ValueError naming a bad field before any weight is read
    if Path(path_or_repo_id).is_dir() and "subfolder" not in kwargs:
        _check_weight_shapes(Path(path_or_repo_id), config, model_class)
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


def _check_weight_shapes(folder: Path, config: CostEffConfig, model_class: type[PreTrainedModel]) -> None:
    """Compare the safetensors header of a local folder with the shapes ``config`` implies, before anything is
    allocated (a ``vocab_size`` edited to 10**9 must not cost 128 GB to refuse)."""
    from safetensors import safe_open  # noqa: PLC0415
    from torch import device  # noqa: PLC0415

    files = sorted(folder.glob("model*.safetensors"))
    if not (folder / "model.safetensors").exists() or len(files) != 1:
        return  # sharded or other formats: from_pretrained's own checks below
    try:
        with safe_open(str(files[0]), framework="pt") as f:
            stored = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except SafetensorError as err:
        raise ValueError(f"Corrupt or truncated safetensors file in {str(folder)!r}: {err}") from err
    with device("meta"):
        model = model_class(config)
        expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    prefix = f"{model.base_model_prefix}."
    if not any(key.startswith(prefix) for key in expected) and any(key.startswith(prefix) for key in stored):
        # A bare CostEffModel loaded from a classifier's folder: from_pretrained drops the prefix and the exits.
        stored = {key.removeprefix(prefix): shape for key, shape in stored.items() if key.startswith(prefix)}
    mismatched = [f"{k}: checkpoint {stored[k]} vs config {v}" for k, v in expected.items() if stored.get(k, v) != v]
    if mismatched:
        fields = ", ".join(
            f"{name}={getattr(config, name)}"
            for name in ("vocab_size", "hidden_size", "layer_num_heads", "layer_intermediate_sizes", "embedding_rank")
        )
        raise ValueError(
            f"The weights in {str(folder)!r} do not match the shapes its config.json describes ({fields}); "
            f"{len(mismatched)} mismatched tensors, e.g. {mismatched[:3]}"
        )
    missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint {str(folder)!r} does not hold the weights its config describes "
            f"(e.g. exit_layers or num_hidden_layers changed): missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


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
        card_kwargs.setdefault("repo_id", repo_id)  # the card's snippets load the repository they are pushed to
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
    "recover_interrupted_save",
    "save_pretrained_atomic",
]
