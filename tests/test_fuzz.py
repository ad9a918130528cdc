"""Fuzz tests (issue #14): configurations given as keywords and as config.json files on disk, forward inputs and
pipeline inputs. Every case either works or raises ValueError/TypeError naming the field or argument; nothing
crashes elsewhere (IndexError, KeyError, ZeroDivisionError, AttributeError, torch RuntimeError...)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hf_costeff import CostEffConfig, CostEffForSequenceClassification  # noqa: E402
from hf_costeff.configuration_costeff import BERT_CONFIG_FIELDS, COSTEFF_FIELDS  # noqa: E402

BASE = dict(
    vocab_size=50,
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=8,
    max_position_embeddings=16,
    type_vocab_size=2,
    num_labels=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
FIELDS = sorted(set(BASE) | set(COSTEFF_FIELDS) | set(BERT_CONFIG_FIELDS) - {"id2label", "label2id"})
FIELD_NAMES = FIELDS + ["num_labels", "model_type", "config.json", "config_dict"]
# database=None: no .hypothesis/ folder in the repo (tests write only under tmp_path).
SETTINGS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Any value a user (or a hand-edited config.json) might put in a field; sizes stay small so that a *valid* draw
# builds a model in milliseconds.
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 12),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(
        [
            "",
            "gelu",
            "relu",
            "entropy",
            "confidence",
            "patience",
            "none",
            "Entropy",
            "dense",
            "tanh",
            "mean",
            "cls",
            "max",
            "3",
        ]
    ),
)
json_value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
python_only = st.one_of(
    st.builds(np.float32, st.floats(0, 1, width=32)),
    st.builds(np.int64, st.integers(-2, 6)),
    st.builds(torch.tensor, st.floats(0, 1)),
    st.tuples(st.integers(0, 4), st.integers(0, 4)),
)


def _names_a_field(err: Exception) -> bool:
    return any(name in str(err) for name in FIELD_NAMES)


def _run_tiny(config: CostEffConfig) -> None:
    model = CostEffForSequenceClassification(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, min(5, config.max_position_embeddings)))
    with torch.no_grad():
        out = model(input_ids=ids)
    assert out.logits.shape == (2, config.num_labels)
    assert torch.isfinite(out.logits).all()


def _small(config: CostEffConfig) -> bool:
    """Valid configurations the fuzz builds for real (the others only need to be refused or accepted)."""
    return (
        config.vocab_size * config.hidden_size <= 10_000
        and config.hidden_size <= 64
        and config.num_hidden_layers <= 12
        and max(config.layer_intermediate_sizes, default=0) <= 64
    )


@SETTINGS
@given(st.dictionaries(st.sampled_from(FIELDS), json_value | python_only, min_size=1, max_size=3))
def test_fuzz_config_keywords(mutations):
    try:
        config = CostEffConfig(**{**BASE, **mutations})
    except (ValueError, TypeError) as err:
        assert _names_a_field(err), f"{type(err).__name__} names no field: {err}"
        return
    if _small(config):
        _run_tiny(config)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fuzz") / "m"
    CostEffForSequenceClassification(CostEffConfig(**BASE)).save_pretrained(folder)
    return folder


@SETTINGS
@given(
    st.one_of(
        st.dictionaries(st.sampled_from(FIELDS), json_value, min_size=1, max_size=3).map(lambda m: ("mutate", m)),
        st.one_of(json_value.map(json.dumps), st.text(max_size=40)).map(lambda text: ("raw", text)),
    )
)
def test_fuzz_config_json_on_disk(saved_model, case):
    from hf_costeff.serving import load_costeff

    kind, payload = case
    original = json.loads((saved_model / "config.json").read_text())
    text = json.dumps({**original, **payload}, allow_nan=True) if kind == "mutate" else payload
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(saved_model / "model.safetensors", folder / "model.safetensors")
        (folder / "config.json").write_text(text, encoding="utf-8")
        for load in (CostEffConfig.from_pretrained, load_costeff):
            try:
                loaded = load(folder)
            except (ValueError, TypeError) as err:
                assert _names_a_field(err), f"{load.__name__}: {type(err).__name__} names no field: {err}"
                continue
            if load is load_costeff:  # the weights are the saved ones: a loaded model must run
                _run_tiny_model(loaded)


def _run_tiny_model(model) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, 4))
    with torch.no_grad():
        assert model.eval()(input_ids=ids).logits.shape == (2, model.config.num_labels)


# ---------------------------------------------------------------- forward inputs

ARGUMENTS = ("input_ids", "inputs_embeds", "attention_mask", "token_type_ids", "position_ids", "exit_")


@st.composite
def forward_inputs(draw):
    batch, seq = (
        draw(st.integers(0, 3)),
        draw(st.sampled_from([0, 1, 3, 7, 16, 17])),
    )  # 17 > max_position_embeddings  # 20 > max_position_embeddings=16

    def tensor(low, high, dtype, shape=None):
        """Mostly valid values; sometimes one step out of range on either side."""
        low, high = draw(st.sampled_from([(low + 1, high - 1)] * 3 + [(low, high)]))
        shape = shape or (batch, seq)
        values = draw(st.lists(st.integers(low, high), min_size=math.prod(shape), max_size=math.prod(shape)))
        return torch.tensor(values, dtype=torch.long).view(shape).to(dtype)

    dtypes = st.sampled_from([torch.long, torch.int32, torch.float32, torch.bool, torch.uint8])
    kwargs = {}
    if draw(st.booleans()):
        kwargs["input_ids"] = tensor(-1, 50, draw(dtypes))
    if draw(st.booleans()):
        kwargs["inputs_embeds"] = torch.randn(batch, seq, draw(st.sampled_from([8, 9])))
    if draw(st.booleans()):
        kwargs["attention_mask"] = tensor(
            -1, 2, draw(dtypes), shape=draw(st.sampled_from([(batch, seq), (batch, seq + 1)]))
        )
    if draw(st.booleans()):
        kwargs["token_type_ids"] = tensor(-1, 2, draw(dtypes))
    if draw(st.booleans()):
        kwargs["position_ids"] = tensor(
            -1, 16, torch.long, shape=draw(st.sampled_from([(1, seq), (batch, seq), (seq,)]))
        )
    if draw(st.booleans()):
        kwargs["exit_criterion"] = draw(st.sampled_from(["entropy", "confidence", "patience", "none", "Entropy"]))
    if draw(st.booleans()):
        kwargs["exit_threshold"] = draw(st.floats(-1, 2) | st.just(float("nan")) | python_only)
    if draw(st.booleans()):
        kwargs["exit_patience"] = draw(st.integers(-1, 3) | python_only)
    if draw(st.booleans()):
        kwargs[draw(st.sampled_from(["output_attentions", "head_mask", "use_cache"]))] = True
    return kwargs


@pytest.fixture(scope="module")
def fuzz_model():
    torch.manual_seed(0)
    return CostEffForSequenceClassification(CostEffConfig(**BASE, layer_num_heads=[2, 1])).eval()


@SETTINGS
@given(forward_inputs(), st.booleans())
def test_fuzz_forward_inputs(fuzz_model, kwargs, train):
    fuzz_model.train(train)
    try:
        with torch.no_grad():
            out = fuzz_model(**kwargs)
    except (ValueError, TypeError) as err:
        assert any(
            name in str(err)
            for name in (*ARGUMENTS, "output_attentions", "head_mask", "use_cache", "Empty", "Sequence length")
        ), err
        return
    finally:
        fuzz_model.eval()
    batch = (kwargs.get("input_ids") if "input_ids" in kwargs else kwargs["inputs_embeds"]).shape[0]
    assert out.logits.shape == (batch, 2) and torch.isfinite(out.logits).all()
    assert bool(((out.exit_layer >= 1) & (out.exit_layer <= 2)).all())


# ---------------------------------------------------------------- pipeline inputs

text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["a fine film", "\x00", " ", "dull"])
pipeline_input = st.one_of(
    text,
    st.lists(text, max_size=3),
    st.fixed_dictionaries({"text": text}, optional={"text_pair": text}),
    st.lists(st.tuples(text, text).map(list), max_size=2),
    scalar,
    st.lists(scalar, max_size=2),
)


@pytest.fixture(scope="module")
def fuzz_pipeline(minilm_tokenizer):
    from transformers import pipeline

    import hf_costeff.serving  # noqa: F401

    torch.manual_seed(0)
    config = CostEffConfig(**{**BASE, "vocab_size": minilm_tokenizer.vocab_size, "max_position_embeddings": 32})
    return pipeline(
        "costeff-text-classification", model=CostEffForSequenceClassification(config), tokenizer=minilm_tokenizer
    )


@SETTINGS
@given(pipeline_input, st.sampled_from([None, 0.1, 0.5]))
def test_fuzz_pipeline_inputs(fuzz_pipeline, inputs, threshold):
    kwargs = {"exit_criterion": "entropy", "exit_threshold": threshold} if threshold is not None else {}
    try:
        results = fuzz_pipeline(inputs, **kwargs)
    except (ValueError, TypeError):
        return
    rows = [results] if isinstance(results, dict) else results
    for row in rows:
        row = row[0] if isinstance(row, list) else row
        assert 0.0 <= row["score"] <= 1.0 and row["exit_layer"] in (1, 2)
