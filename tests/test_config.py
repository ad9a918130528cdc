"""CostEffConfig: defaults, serialization, and a clear ValueError for every invalid field."""

from __future__ import annotations

import math

import pytest
from transformers import AutoConfig

from hf_costeff import CostEffConfig


def test_defaults_fill_per_layer_lists():
    config = CostEffConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=32, intermediate_size=40)
    assert config.layer_num_heads == [4, 4, 4]
    assert config.layer_intermediate_sizes == [40, 40, 40]
    assert config.exit_layers == [1, 2, 3]
    assert config.head_dim == 8 and config.num_exits == 3
    assert config.exit_criterion == "none"


def test_json_round_trip_through_autoconfig(tmp_path):
    config = CostEffConfig(
        num_hidden_layers=6,
        hidden_size=384,
        num_attention_heads=12,
        intermediate_size=1536,
        layer_num_heads=[12, 7, 3, 0, 5, 12],
        layer_intermediate_sizes=[1536, 800, 0, 64, 1536, 300],
        embedding_rank=64,
        exit_layers=[2, 4, 6],
        exit_criterion="entropy",
        exit_threshold=0.25,
        exit_pooling="mean",
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CostEffConfig)
    for field in (
        "layer_num_heads",
        "layer_intermediate_sizes",
        "embedding_rank",
        "exit_layers",
        "exit_criterion",
        "exit_threshold",
        "exit_pooling",
    ):
        assert getattr(loaded, field) == getattr(config, field), field


BASE = dict(num_hidden_layers=3, num_attention_heads=4, hidden_size=32, intermediate_size=40, num_labels=2)

INVALID = [
    ("hidden_size", dict(hidden_size=30), "does not divide"),
    ("num_hidden_layers", dict(num_hidden_layers=0), "num_hidden_layers"),
    ("vocab_size", dict(vocab_size=-5), "vocab_size"),
    ("hidden_dropout_prob", dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
    ("layer_num_heads length", dict(layer_num_heads=[4, 4]), "layer_num_heads"),
    ("layer_num_heads negative", dict(layer_num_heads=[4, -1, 4]), r"layer_num_heads\[1\]"),
    ("layer_num_heads too many", dict(layer_num_heads=[4, 5, 4]), "exceeds num_attention_heads"),
    ("layer_num_heads float", dict(layer_num_heads=[4, 2.5, 4]), r"layer_num_heads\[1\]"),
    ("layer_intermediate_sizes", dict(layer_intermediate_sizes=[40, 40, -3]), r"layer_intermediate_sizes\[2\]"),
    ("embedding_rank", dict(embedding_rank=0), "embedding_rank"),
    ("exit_layers order", dict(exit_layers=[2, 1, 3]), "exit_layers"),
    ("exit_layers last", dict(exit_layers=[1, 2]), "exit_layers"),
    ("exit_layers empty", dict(exit_layers=[]), "exit_layers"),
    ("exit_pooler", dict(exit_pooler="mean"), "exit_pooler"),
    ("exit_pooling", dict(exit_pooling="max"), "exit_pooling must be one of"),
    ("exit_criterion", dict(exit_criterion="margin"), "exit_criterion"),
    ("entropy threshold missing", dict(exit_criterion="entropy"), "exit_threshold"),
    ("entropy threshold range", dict(exit_criterion="entropy", exit_threshold=0.9), "out of range"),
    ("entropy threshold negative", dict(exit_criterion="entropy", exit_threshold=-0.1), "out of range"),
    ("entropy threshold nan", dict(exit_criterion="entropy", exit_threshold=math.nan), "finite"),
    ("confidence threshold", dict(exit_criterion="confidence", exit_threshold=1.2), "out of range"),
    ("patience", dict(exit_criterion="patience", exit_patience=0), "exit_patience"),
    ("patience too large", dict(exit_criterion="patience", exit_patience=4), "exit_patience"),
    ("regression entropy", dict(num_labels=1, exit_criterion="entropy", exit_threshold=0.1), "regression"),
    ("exit_loss_weights length", dict(exit_loss_weights=[1.0, 1.0]), "exit_loss_weights"),
    ("exit_loss_weights negative", dict(exit_loss_weights=[1.0, -1.0, 1.0]), "exit_loss_weights"),
]


@pytest.mark.parametrize("name,overrides,message", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_field_raises_value_error_naming_it(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        CostEffConfig(**{**BASE, **overrides})


@pytest.mark.parametrize(
    "key,field",
    [
        ("heads_per_layer", "layer_num_heads"),
        ("exit_treshold", "exit_threshold"),
        ("intermediate_sizes", "layer_intermediate_sizes"),
    ],
)
def test_misspelled_field_is_refused_not_ignored(key, field):
    # PretrainedConfig keeps unknown keywords as attributes: without the check this builds the unpruned model.
    with pytest.raises(ValueError, match=f"no field '{key}'; did you mean '{field}'"):
        CostEffConfig(**{**BASE, key: [1, 1, 1]})


def test_unrelated_pretrained_config_keywords_still_pass():
    config = CostEffConfig(**BASE, problem_type="single_label_classification", tokenizer_class="BertTokenizer")
    assert config.problem_type == "single_label_classification"


def test_valid_edge_cases_are_accepted():
    config = CostEffConfig(
        **{
            **BASE,
            "layer_num_heads": [0, 0, 4],
            "layer_intermediate_sizes": [0, 1, 0],
            "exit_criterion": "entropy",
            "exit_threshold": math.log(2),
        }
    )
    assert config.layer_num_heads == [0, 0, 4]
    regression = CostEffConfig(
        **{**BASE, "num_labels": 1, "exit_criterion": "patience", "exit_patience": 2, "exit_threshold": 0.05}
    )
    assert regression.exit_criterion == "patience"
