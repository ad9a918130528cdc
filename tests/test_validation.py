"""Strict validation (issue #14 items 6-9, 12): every bad configuration, exit policy or input is refused with a
ValueError/TypeError naming the field, and the checks stay out of the graph of a traced all-layers forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

from hf_costeff import CostEffConfig, CostEffForSequenceClassification, CostEffModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CostEffForSequenceClassification(tiny_config()).eval()


# ---------------------------------------------------------------- configuration (item 6)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("layer_num_heads", 4),
        ("layer_intermediate_sizes", 48),
        ("exit_layers", 4),
        ("exit_loss_weights", 1.0),
        ("layer_num_heads", {0: 4, 1: 2, 2: 0, 3: 3}),  # list(dict) would silently be its keys [0, 1, 2, 3]
        ("layer_intermediate_sizes", "48"),
        ("num_attention_heads", 0),
        ("hidden_act", "no_such_activation"),
        ("pad_token_id", 120),
        ("pad_token_id", -1),
        ("layer_norm_eps", -1e-12),
        ("layer_norm_eps", float("nan")),
        ("num_labels", 0),
        ("num_labels", -2),
        ("gradient_equilibrium", "yes"),
        ("exit_loss_weights", [1.0, True, 1.0, 1.0]),
    ],
)
def test_bad_config_field_named(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        tiny_config(**{field: value})


def test_tuples_accepted_as_lists():
    config = tiny_config(layer_num_heads=(4, 2, 0, 3), exit_layers=(2, 4))
    assert config.layer_num_heads == [4, 2, 0, 3] and config.exit_layers == [2, 4]


@pytest.mark.parametrize("content", ["[1, 2, 3]", '"costeff"', "{not json"])
def test_config_json_not_an_object(tmp_path, content):
    from hf_costeff.serving import load_costeff

    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ValueError, match="config.json"):
        CostEffConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="config.json"):
        load_costeff(tmp_path)


def test_huge_vocab_in_config_json_refused_before_allocation(tmp_path, model):
    """A config.json edited to a 10**9-word vocabulary is refused from the weights' header, not by allocating
    128 GB (load_costeff compares shapes on the meta device first)."""
    from hf_costeff.serving import load_costeff, save_pretrained_atomic

    save_pretrained_atomic(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    config["vocab_size"] = 10**9
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vocab_size"):
        load_costeff(tmp_path / "m")


# ---------------------------------------------------------------- policy set after construction (item 7)


@pytest.mark.parametrize(
    ("edits", "field"),
    [
        ({"exit_criterion": "Entropy"}, "exit_criterion"),  # fell into the confidence branch: every row left at layer 1
        ({"exit_threshold": 50.0}, "exit_threshold"),
        ({"exit_threshold": None}, "exit_threshold"),
        ({"exit_criterion": "patience", "exit_patience": 0}, "exit_patience"),
    ],
)
def test_policy_edited_on_built_model_is_checked_at_use(edits, field):
    model = CostEffForSequenceClassification(tiny_config(exit_criterion="entropy", exit_threshold=0.3)).eval()
    for name, value in edits.items():
        setattr(model.config, name, value)
    with pytest.raises(ValueError, match=field):
        model(input_ids=torch.tensor([[1, 2, 3]]))


# ---------------------------------------------------------------- per-call policy (item 8)


def test_threshold_with_criterion_none_is_refused(model):
    assert model.config.exit_criterion == "none"
    with pytest.raises(ValueError, match="exit_criterion is 'none'"):
        model(input_ids=torch.tensor([[1, 2, 3]]), exit_threshold=0.0001)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"exit_criterion": "entropy", "exit_threshold": np.float32(0.3)}, {"exit_threshold": 0.3}),
        ({"exit_criterion": "confidence", "exit_threshold": torch.tensor(0.3)}, {"exit_threshold": 0.3}),
        ({"exit_criterion": "patience", "exit_patience": np.int64(2)}, {"exit_patience": 2}),
        ({"exit_criterion": "patience", "exit_patience": torch.tensor(2)}, {"exit_patience": 2}),
    ],
)
def test_numpy_and_zero_dim_tensor_scalars_accepted(model, kwargs, expected):
    ids = torch.randint(1, 120, (4, 6))
    with torch.no_grad():
        got = model(input_ids=ids, **kwargs)
        plain = {k: (float(v) if k == "exit_threshold" else int(v)) for k, v in kwargs.items() if k != "exit_criterion"}
        want = model(input_ids=ids, exit_criterion=kwargs["exit_criterion"], **plain)
    assert torch.equal(got.exit_layer, want.exit_layer)
    torch.testing.assert_close(got.logits, want.logits)


def test_non_scalar_threshold_refused(model):
    with pytest.raises(ValueError, match="exit_threshold"):
        model(input_ids=torch.tensor([[1, 2]]), exit_criterion="entropy", exit_threshold=torch.tensor([0.1, 0.2]))


# ---------------------------------------------------------------- inputs (item 9)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"token_type_ids": torch.tensor([[0, 2, 0]])}, ValueError, "token_type_ids"),
        ({"token_type_ids": torch.tensor([[0, -1, 0]])}, ValueError, "token_type_ids"),
        ({"position_ids": torch.tensor([[0, 1, 64]])}, ValueError, "position_ids"),
        ({"position_ids": torch.tensor([[0, 1]])}, ValueError, "position_ids"),
        ({"attention_mask": torch.tensor([[1, 2, 1]])}, ValueError, "attention_mask"),
        ({"attention_mask": torch.tensor([[1.0, 0.5, 1.0]])}, ValueError, "attention_mask"),
        ({"output_attentions": True}, ValueError, "output_attentions"),
        ({"output_attention": True}, TypeError, "output_attention"),
        ({"head_mask": torch.ones(4)}, TypeError, "head_mask"),
    ],
)
def test_bad_inputs_named(model, kwargs, error, field):
    with pytest.raises(error, match=field):
        model(input_ids=torch.tensor([[1, 2, 3]]), **kwargs)


@pytest.mark.parametrize(
    "ids",
    [
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[True, False]]),
        torch.tensor([[1, 2]], dtype=torch.uint8),  # integers the embedding cannot index with (found by test_fuzz)
        torch.tensor([[1, 2]], dtype=torch.int16),
    ],
)
def test_non_integer_input_ids(model, ids):
    with pytest.raises(TypeError, match="input_ids"):
        model(input_ids=ids)
    with pytest.raises(TypeError, match="input_ids"):
        model.costeff(input_ids=ids)


def test_int32_ids_accepted(model):
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids.int()).logits, model(input_ids=ids).logits)


def test_valid_optional_inputs_still_work(model):
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        explicit = model(
            input_ids=ids,
            token_type_ids=torch.zeros_like(ids),
            position_ids=torch.arange(3).unsqueeze(0),
            attention_mask=torch.ones_like(ids, dtype=torch.bool),
            output_attentions=False,
        ).logits
    torch.testing.assert_close(plain, explicit)


# ---------------------------------------------------------------- traceable all-layers forward (item 12)


def _small_model(cls=CostEffForSequenceClassification):
    torch.manual_seed(0)
    config = tiny_config(num_hidden_layers=2, layer_num_heads=[4, 2], layer_intermediate_sizes=[48, 7])
    return cls(config).eval()


def _batch():
    ids = torch.randint(1, 120, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_torch_compile_fullgraph():
    model, batch = _small_model(), _batch()
    with torch.no_grad():
        expected = model(**batch).all_exit_logits
        compiled = torch.compile(model, fullgraph=True, backend="eager")  # eager backend: the graph capture is tested
        torch.testing.assert_close(compiled(**batch).all_exit_logits, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [CostEffForSequenceClassification, CostEffModel])
def test_torch_export(cls):
    model, batch = _small_model(cls), _batch()
    with torch.no_grad():
        expected = model(**batch)[0]
        program = torch.export.export(model, (), batch, strict=False)
        torch.testing.assert_close(program.module()(**batch)[0], expected, atol=1e-6, rtol=1e-5)
