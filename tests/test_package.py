"""The package's public surface: every exported name resolves, and importing registers the Auto classes and task."""

import pytest

import hf_costeff


@pytest.mark.parametrize("name", hf_costeff.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(hf_costeff, name) is not None


def test_lazy_exports_are_the_submodule_objects():
    from hf_costeff import training

    assert hf_costeff.MultiExitTrainer is training.MultiExitTrainer
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        hf_costeff.NotAThing  # noqa: B018


def test_import_registers_auto_classes_and_pipeline_task():
    from transformers import AutoConfig
    from transformers.pipelines import PIPELINE_REGISTRY

    assert type(AutoConfig.for_model("costeff")) is hf_costeff.CostEffConfig
    assert "costeff-text-classification" in PIPELINE_REGISTRY.get_supported_tasks()
