"""Hub packaging: remote code, offline Hub-cache loading (with and without hf_costeff), push commits, atomic saves,
model cards and device maps."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import HUB_MODEL_FILES, run_without_hf_costeff, tiny_config

import hf_costeff
from hf_costeff import CostEffForSequenceClassification, count_parameters, forward_flops
from hf_costeff.serving import (
    AUTO_MAP,
    build_model_card,
    costeff_device_map,
    load_costeff,
    push_costeff_to_hub,
    save_pretrained_atomic,
    write_model_card,
)

REPO_ID = "org/costeff-sst2"
SHA = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a gripping, beautifully shot film", "dull and far too long", "it is fine"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No Hub requests from this process (the machine has no Hub access; lookups would wait for network timeouts)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def minilm_costeff(minilm_path):
    """MiniLM converted to CostEff (6 layers, an exit after each), eval mode."""
    torch.manual_seed(0)
    return CostEffForSequenceClassification.from_bert(minilm_path, num_labels=2).eval()


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, minilm_costeff, minilm_tokenizer) -> Path:
    """An HF cache holding ``org/costeff-sst2`` laid out as huggingface_hub does (snapshots/<sha> + refs/main)."""
    root = tmp_path_factory.mktemp("hf_home")
    repo = root / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    save_pretrained_atomic(minilm_costeff, repo / "snapshots" / SHA, tokenizer=minilm_tokenizer)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return root


def _reference_logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


def test_saved_folder_is_self_contained(hub_cache):
    snapshot = hub_cache / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / SHA
    names = {p.name for p in snapshot.iterdir()}
    assert HUB_MODEL_FILES <= names
    assert json.loads((snapshot / "config.json").read_text())["auto_map"] == AUTO_MAP
    # No leftover temporary folders beside the target.
    assert [p.name for p in snapshot.parent.iterdir()] == [SHA]
    # The shipped modeling file imports only the standard library, torch, transformers and its configuration (module level), and from_bert
    # imports only transformers lazily: nothing that a user without hf_costeff lacks.
    tree = ast.parse((snapshot / "modeling_costeff.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add("." + node.module if node.level else node.module.split(".")[0])
    assert roots <= {
        "__future__",
        "json",
        "os",
        "shutil",
        "collections",
        "dataclasses",
        "torch",
        "transformers",
        ".configuration_costeff",
    }


def test_remote_code_load_without_hf_costeff(hub_cache, minilm_costeff, minilm_tokenizer, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
        model = AutoModelForSequenceClassification.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained({REPO_ID!r}, trust_remote_code=True)
        with torch.no_grad():
            logits = model(**tok({TEXTS!r}, padding=True, return_tensors="pt")).logits
        clf = pipeline("text-classification", model={REPO_ID!r}, trust_remote_code=True)
        out = clf({TEXTS!r}, batch_size=2)
        assert not any(name.split(".")[0] == "hf_costeff" for name in sys.modules), "hf_costeff was imported"
        print("RESULT=" + json.dumps({{"module": type(model).__module__, "logits": logits.tolist(),
                          "pipeline_module": type(clf.model).__module__, "scores": [r["score"] for r in out]}}))
    """)
    done = run_without_hf_costeff(script, hub_cache, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Do you wish" not in done.stdout + done.stderr  # no interactive prompt
    result = json.loads(done.stdout.split("RESULT=")[-1])
    assert result["module"].startswith("transformers_modules.")
    assert result["pipeline_module"].startswith("transformers_modules.")
    expected = _reference_logits(minilm_costeff, minilm_tokenizer)
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=1e-5, rtol=0)
    expected_scores = expected.softmax(-1).max(-1).values
    torch.testing.assert_close(torch.tensor(result["scores"]), expected_scores, atol=1e-5, rtol=0)


def test_registered_load_without_remote_code(hub_cache, minilm_costeff, minilm_tokenizer):
    from transformers import AutoModelForSequenceClassification, pipeline

    cache = hub_cache / "hub"
    model = AutoModelForSequenceClassification.from_pretrained(REPO_ID, cache_dir=cache, local_files_only=True).eval()
    assert type(model) is hf_costeff.CostEffForSequenceClassification  # local registration wins over auto_map
    torch.testing.assert_close(
        _reference_logits(model, minilm_tokenizer),
        _reference_logits(minilm_costeff, minilm_tokenizer),
        atol=1e-5,
        rtol=0,
    )
    strict = load_costeff(REPO_ID, cache_dir=cache, local_files_only=True)
    torch.testing.assert_close(strict.exits[2].classifier.weight, minilm_costeff.exits[2].classifier.weight)
    clf = pipeline("costeff-text-classification", model=model, tokenizer=minilm_tokenizer)
    assert [r["exit_layer"] for r in clf(TEXTS)] == [6, 6, 6]  # criterion "none": every layer runs


def test_push_commit_contents(monkeypatch, minilm_tokenizer):
    from huggingface_hub import HfApi
    from huggingface_hub.repocard import ModelCard

    captured = {}

    class Repo:
        repo_id = REPO_ID

    def fake_create_repo(self, repo_id, **kwargs):
        captured["create_repo"] = (repo_id, kwargs)
        return Repo()

    def fake_create_commit(self, repo_id, operations, **kwargs):
        # The files only exist during the call (a temporary folder): read what would be uploaded now.
        captured["files"] = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        captured["commit"] = (repo_id, kwargs)
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    model = CostEffForSequenceClassification(tiny_config(vocab_size=minilm_tokenizer.vocab_size)).eval()
    result = push_costeff_to_hub(
        model, REPO_ID, minilm_tokenizer, eval_results={"accuracy": 0.875}, per_exit_accuracy=[0.6, 0.7, 0.8, 0.875]
    )
    assert result == "commit-info"
    files = captured["files"]
    assert HUB_MODEL_FILES | {"README.md", "tokenizer.json"} <= set(files)
    assert json.loads(files["config.json"])["auto_map"] == AUTO_MAP
    card = ModelCard(files["README.md"].decode())
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.eval_results[0].metric_value == 0.875
    assert captured["create_repo"][1]["exist_ok"] is True


def test_atomic_save_keeps_previous_model_on_failure(tmp_path, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    target = tmp_path / "model"
    first = CostEffForSequenceClassification(tiny_config()).eval()
    save_pretrained_atomic(first, target)
    ids = torch.tensor([[1, 5, 7, 9]])
    expected = first(input_ids=ids).logits

    def write_half_then_die(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 64)  # a partial file, then the process "dies"
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(modeling_utils, "safe_save_file", write_half_then_die)
    second = CostEffForSequenceClassification(tiny_config(layer_num_heads=[1, 1, 1, 1])).eval()
    with pytest.raises(KeyboardInterrupt):
        save_pretrained_atomic(second, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # temporary folder cleaned up
    torch.testing.assert_close(load_costeff(target)(input_ids=ids).logits, expected)

    monkeypatch.undo()
    save_pretrained_atomic(second, target)  # a successful save replaces it
    assert load_costeff(target).config.layer_num_heads == [1, 1, 1, 1]
    # A save killed between its two renames leaves the old folder aside; the next save puts it back first.
    target.rename(tmp_path / ".model.old-deadbeef")
    save_pretrained_atomic(first, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_model_card_metadata_and_tables(tmp_path, minilm_path):
    from huggingface_hub import ModelCard
    from transformers import AutoConfig

    config = tiny_config(exit_criterion="entropy", exit_threshold=0.4, embedding_rank=8)
    path = write_model_card(
        CostEffForSequenceClassification(config),
        tmp_path,
        teacher_config=AutoConfig.from_pretrained(minilm_path),
        eval_results={"accuracy": 0.9},
        per_exit_accuracy=[0.7, 0.75, 0.8, 0.9],
        average_flops=123456.0,
        model_name="costeff-sst2",
    )
    card = ModelCard.load(path)
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["datasets"] == ["nyu-mll/glue"] and meta["metrics"] == ["accuracy"]
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["config"] == "sst2" and result["metrics"][0] == {"type": "accuracy", "value": 0.9}
    text = card.text
    assert "| 2 | 2 | 20 | yes |" in text and "| 3 | 0 | 7 | yes |" in text  # heterogeneous shapes
    assert "0.7500" in text and 'exit_criterion="entropy"' in text and "exit_threshold=0.4" in text
    total = count_parameters(config)["total"]
    assert f"{total / 1e3:.3g}k" in text  # three significant digits and a unit
    assert "| 22.7M |" in text  # MiniLM teacher parameters are in the comparison column
    assert "| average FLOPs with early exit (evaluation set) | 123k |" in text  # not 123456.0000
    assert f'model="{tmp_path}"' in text  # the snippets load the folder the card was written into
    with pytest.raises(ValueError, match="one value per exit"):
        build_model_card(config, per_exit_accuracy=[0.5])
    assert forward_flops(config, 128) > 0
    assert "## Training" not in text  # no recipe given: no section

    recipe = ["teacher: fine-tuned", "teaching assistant: distilled from the teacher", "pruning: from the TA"]
    text = build_model_card(config, training_recipe=recipe).text
    training = text.split("## Training\n", 1)[1].split("\n## ", 1)[0]
    assert (
        training.split()
        == "1. teacher: fine-tuned 2. teaching assistant: distilled from the teacher 3. pruning: from the TA".split()
    )
    with pytest.raises(TypeError, match="training_recipe"):
        build_model_card(config, training_recipe="teacher, then TA")  # a string is not one line per stage


def test_device_map_forced_cpu_disk_split_keeps_exits_with_layers(tmp_path):
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoModelForSequenceClassification

    config = tiny_config(
        hidden_size=64,
        vocab_size=500,
        intermediate_size=256,
        layer_intermediate_sizes=[256] * 4,
        layer_num_heads=[4, 2, 4, 1],
    )
    model = CostEffForSequenceClassification(config).eval()
    save_pretrained_atomic(model, tmp_path / "m")
    ids = torch.randint(1, 500, (3, 9))
    expected = model(input_ids=ids).logits

    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m", device_map="auto").eval()
    torch.testing.assert_close(auto(input_ids=ids).logits, expected)

    with init_empty_weights():
        empty = CostEffForSequenceClassification(config)
    # accelerate keeps room for the largest layer: this budget fits the embeddings and layer 0 on the CPU only.
    size = lambda module: sum(p.numel() * 4 for p in module.parameters())  # noqa: E731
    budget = size(model.costeff.embeddings) + 2 * max(size(layer) for layer in model.costeff.encoder.layer) + 5_000
    max_memory = {"cpu": budget, "disk": 10**9}
    plain = infer_auto_device_map(empty, max_memory=max_memory, no_split_module_classes=empty._no_split_modules)
    assert plain["costeff.encoder.layer.0"] == "cpu" and plain["exits"] == "disk"  # exit 1 lands far from layer 1
    device_map = costeff_device_map(empty, max_memory=max_memory)
    assert device_map["costeff.encoder.layer.0"] == "cpu" and device_map["exits.0"] == "cpu"
    for k, layer in enumerate(config.exit_layers):
        assert device_map[f"exits.{k}"] == device_map.get(f"costeff.encoder.layer.{layer - 1}", "disk")
    split = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "m", device_map=device_map, offload_folder=str(tmp_path / "offload")
    ).eval()
    assert getattr(split, "hf_device_map", None)
    torch.testing.assert_close(split(input_ids=ids).logits, expected)
    torch.testing.assert_close(
        split(input_ids=ids, exit_criterion="entropy", exit_threshold=1.09).logits,
        model(input_ids=ids, exit_criterion="entropy", exit_threshold=1.09).logits,
    )
