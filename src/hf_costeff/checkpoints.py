"""Is a saved folder complete? Checks for model folders and Trainer checkpoints that a killed write may have left.

A process killed while writing leaves files that exist but are cut short (a safetensors file whose header promises
more bytes than it holds, a JSON file that stops mid-object) or missing. ``transformers.trainer_utils.
get_last_checkpoint`` picks the newest ``checkpoint-N`` by name only, so a resume after such a kill dies on the
half-written one; [`last_complete_checkpoint`] takes the newest one that passes [`is_complete_checkpoint`].

The checks read only headers and small JSON files: no tensor is loaded.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

# Trainer writes, in this order: the model (config.json, weights), optimizer/scheduler/RNG state, trainer_state.json.
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "adapter_model.safetensors")
_INDEX = "model.safetensors.index.json"


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def is_complete_safetensors(path: str | os.PathLike) -> bool:
    """True if ``path`` is a whole safetensors file: its JSON header parses and its tensors end exactly at the end of
    the file (a truncated write is shorter; the header is written first)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                return False
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(header, dict):
        return False
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return 8 + header_len + max(ends, default=0) == size


def is_complete_model_folder(folder: str | os.PathLike) -> bool:
    """True if ``folder`` holds a parseable ``config.json`` (or an adapter's) and whole safetensors weights (a single
    file, or every shard its index names)."""
    folder = Path(folder)
    if _json_object(folder / "config.json") is None and _json_object(folder / "adapter_config.json") is None:
        return False
    for name in _WEIGHTS:
        if (folder / name).exists():
            return is_complete_safetensors(folder / name)
    index = _json_object(folder / _INDEX)
    if index is None or not isinstance(index.get("weight_map"), dict):
        return False
    shards = set(index["weight_map"].values())
    return bool(shards) and all(is_complete_safetensors(folder / shard) for shard in shards)


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """True if the Trainer checkpoint ``folder`` was written to the end: whole model files and a parseable
    ``trainer_state.json`` (Trainer writes it last, after the optimizer, scheduler and RNG states)."""
    folder = Path(folder)
    state = _json_object(folder / TRAINER_STATE_NAME)
    return state is not None and "global_step" in state and is_complete_model_folder(folder)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` under ``output_dir`` (highest N) that is complete, or ``None``.

    The drop-in for ``transformers.trainer_utils.get_last_checkpoint`` when resuming: half-written checkpoints (a run
    killed while saving) are skipped with a warning instead of failing the resume.
    """
    from transformers.utils import logging  # noqa: PLC0415

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = sorted(
        ((int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()),
        reverse=True,
    )
    for _, folder in steps:
        if is_complete_checkpoint(folder):
            return str(folder)
        logging.get_logger(__name__).warning(f"Skipping incomplete checkpoint {folder} (a write was interrupted)")
    return None


__all__ = [
    "is_complete_checkpoint",
    "is_complete_model_folder",
    "is_complete_safetensors",
    "last_complete_checkpoint",
]
