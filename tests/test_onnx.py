"""ONNX export and the ONNX Runtime early-exit model: same exits and logits as PyTorch, pipelines, CLI, no torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import tiny_config

pytest.importorskip("onnxruntime", reason="pip install -e '.[onnx]' (onnxruntime is in the [dev] extra too)")
pytest.importorskip("onnxscript", reason="torch's default ONNX exporter needs onnxscript ([onnx] extra)")

from hf_costeff import CostEffForSequenceClassification  # noqa: E402
from hf_costeff.evaluation import ExitPredictions, simulate_early_exit  # noqa: E402
from hf_costeff.modeling_costeff import exit_confident  # noqa: E402
from hf_costeff.serving.onnx import (  # noqa: E402
    MANIFEST_NAME,
    ORTCostEffForSequenceClassification,
    exit_confident_np,
    export_onnx,
    patience_update_np,
)


@pytest.fixture(scope="module")
def model(minilm_tokenizer):
    """Tiny random CostEff: heterogeneous widths with a 0-head and a 0-FFN layer, 3 labels, mean-pooling exits."""
    torch.manual_seed(0)
    config = tiny_config(vocab_size=minilm_tokenizer.vocab_size, exit_pooling="mean")
    model = CostEffForSequenceClassification(config).eval()
    with torch.no_grad():  # random exits predict near-uniformly: spread their logits so that thresholds separate rows
        for exit_head in model.exits:
            exit_head.classifier.weight.mul_(40.0)
    return model


@pytest.fixture(scope="module")
def exported(model, minilm_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx") / "export"
    manifest = export_onnx(model, folder, tokenizer=minilm_tokenizer)
    return folder, manifest


@pytest.fixture(scope="module")
def ort_model(exported):
    return ORTCostEffForSequenceClassification.from_pretrained(exported[0])


@pytest.fixture(scope="module")
def batch(minilm_tokenizer, sst2_sentences):
    """32 real SST-2 sentences, padded to the longest (ragged padding)."""
    return minilm_tokenizer(sst2_sentences[:32], padding=True, return_tensors="pt")


def _separating_threshold(values: np.ndarray) -> float:
    """A threshold near the median of ``values`` that no value lies within 1e-4 of (no borderline row)."""
    v = np.unique(values.round(7))
    gaps = np.flatnonzero(np.diff(v) > 2e-4)
    middle = gaps[np.argmin(np.abs(gaps - len(v) / 2))]
    return float((v[middle] + v[middle + 1]) / 2)


def _policies(model, batch) -> list[dict]:
    """An entropy, a confidence and a patience policy under which the 32 rows leave at several exits."""
    with torch.no_grad():
        all_logits = model(**batch, exit_criterion="none").all_exit_logits[:, :-1]
    log_probs = all_logits.log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1).numpy()
    confidence = log_probs.max(-1).values.exp().numpy()
    return [
        {"exit_criterion": "entropy", "exit_threshold": _separating_threshold(entropy)},
        {"exit_criterion": "confidence", "exit_threshold": _separating_threshold(confidence)},
        {"exit_criterion": "patience", "exit_patience": 1},
    ]


def test_export_writes_segments_config_tokenizer_manifest(exported, model):
    folder, manifest = exported
    assert json.loads((folder / MANIFEST_NAME).read_text()) == manifest
    assert manifest["quantization"] is None
    assert [b["exit_layer"] for b in manifest["blocks"]] == model.config.exit_layers
    assert [layer for b in manifest["blocks"] for layer in b["layers"]] == list(range(1, 5))
    for name in [manifest["embeddings"]["file"]] + [b["file"] for b in manifest["blocks"]]:
        assert (folder / name).stat().st_size > 0
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "the staging folder was left behind"


@pytest.mark.parametrize("criterion", ["entropy", "confidence", "patience"])
def test_batch_32_same_exits_and_logits_as_pytorch(model, ort_model, batch, criterion):
    policy = next(p for p in _policies(model, batch) if p["exit_criterion"] == criterion)
    with torch.no_grad():
        expected = model(**batch, **policy)
    got = ort_model(**{k: v.numpy() for k, v in batch.items()}, **policy)
    assert isinstance(got.logits, np.ndarray)
    np.testing.assert_array_equal(got.exit_layer, expected.exit_layer.numpy())
    np.testing.assert_allclose(got.logits, expected.logits.numpy(), rtol=0, atol=1e-4)
    assert len(set(got.exit_layer.tolist())) > 1, f"{policy} should spread the rows over exits"


@pytest.mark.parametrize("criterion", ["entropy", "confidence", "patience"])
def test_batch_1_same_exits_and_logits_as_pytorch(model, ort_model, batch, minilm_tokenizer, sst2_sentences, criterion):
    policy = next(p for p in _policies(model, batch) if p["exit_criterion"] == criterion)
    layers = []
    for text in sst2_sentences[:8]:
        inputs = minilm_tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            expected = model(**inputs, **policy)
        got = ort_model(**inputs, **policy)  # torch tensors in, torch tensors out (as in a pipeline)
        assert isinstance(got.logits, torch.Tensor)
        assert int(got.exit_layer[0]) == int(expected.exit_layer[0])
        torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-4)
        layers.append(int(got.exit_layer[0]))
    assert len(set(layers)) > 1 or criterion == "patience", layers


def test_criterion_none_returns_every_exit(model, ort_model, batch):
    with torch.no_grad():
        expected = model(**batch, exit_criterion="none")
    got = ort_model(**{k: v.numpy() for k, v in batch.items()}, exit_criterion="none")
    np.testing.assert_allclose(got.all_exit_logits, expected.all_exit_logits.numpy(), rtol=0, atol=1e-4)
    assert (got.exit_layer == 4).all()


class _Recorder:
    """Wraps an ONNX Runtime session and records the (rows, length) of every call."""

    def __init__(self, session):
        self.session, self.shapes = session, []

    def run(self, outputs, feeds):
        self.shapes.append(feeds["attention_mask"].shape)
        return self.session.run(outputs, feeds)


def test_exited_rows_leave_the_batch_and_padding_is_cut(exported, model, batch):
    ort_model = ORTCostEffForSequenceClassification.from_pretrained(exported[0])
    recorders = [_Recorder(s) for s in ort_model.block_sessions]
    ort_model.block_sessions = recorders
    policy = _policies(model, batch)[0]
    got = ort_model(**{k: v.numpy() for k, v in batch.items()}, **policy)
    lengths = batch["attention_mask"].sum(-1).numpy()
    for k, recorder in enumerate(recorders):
        still = got.exit_layer > k  # rows that had not left before block k (exit k is after layer k + 1)
        if still.any():
            assert recorder.shapes == [(int(still.sum()), int(lengths[still].max()))]
        else:
            assert recorder.shapes == []


def test_numpy_exit_decisions_equal_the_torch_ones():
    generator = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.randn(500, 3, generator=generator) * 3, torch.tensor([[300.0, -300.0, 0.0]])])
    for criterion, thresholds in (("entropy", [0.05, 0.3, 0.9]), ("confidence", [0.4, 0.7, 0.99])):
        for threshold in thresholds:
            expected = exit_confident(logits, criterion, threshold).numpy()
            np.testing.assert_array_equal(exit_confident_np(logits.numpy(), criterion, threshold), expected)
    # Patience: the counters, chained over 4 exits, give the exits simulate_early_exit (the model's rule) gives.
    all_logits = torch.randn(300, 4, 3, generator=generator)
    config = tiny_config()
    preds = ExitPredictions(all_logits, torch.zeros(300, dtype=torch.long), torch.full((300,), 5), config)
    for patience in (1, 2, 3):
        expected, _ = simulate_early_exit(preds, config, "patience", patience)
        agree, previous, layers = np.zeros(300, dtype=np.int64), None, np.full(300, 4)
        for k in range(3):
            agree = patience_update_np(agree, previous, all_logits[:, k].numpy(), None)
            previous = all_logits[:, k].numpy()
            layers = np.where((layers == 4) & (agree >= patience), k + 1, layers)
        np.testing.assert_array_equal(layers, expected.numpy())


def test_stock_and_early_exit_pipelines(model, ort_model, minilm_tokenizer, sst2_sentences, batch):
    from transformers import pipeline

    texts = sst2_sentences[:12]
    for task in ("text-classification", "costeff-text-classification"):
        kwargs = _policies(model, batch)[0] if task != "text-classification" else {}
        expected = pipeline(task, model=model, tokenizer=minilm_tokenizer)(texts, batch_size=4, **kwargs)
        got = pipeline(task, model=ort_model, tokenizer=minilm_tokenizer)(texts, batch_size=4, **kwargs)
        for g, e in zip(got, expected, strict=True):
            assert g["label"] == e["label"] and math.isclose(g["score"], e["score"], abs_tol=1e-5)
            assert g.get("exit_layer") == e.get("exit_layer") and g.get("flops") == e.get("flops")


BLOCK_TORCH = """
import importlib.abc, json, sys
def hidden(name):
    return name.split(".")[0] == "torch"
class Hide(importlib.abc.MetaPathFinder):  # torch looks uninstalled: no module, no distribution metadata
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        find = getattr(self.inner, "find_spec", None)
        return None if hidden(name) or find is None else find(name, path, target)
    def find_distributions(self, *args, **kwargs):
        find = getattr(self.inner, "find_distributions", None)
        return [d for d in (find(*args, **kwargs) if find else []) if not hidden((d.metadata["Name"] or "").lower())]
sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
"""


def test_runs_without_torch(exported, model, batch):
    folder = exported[0]
    policy = _policies(model, batch)[0]
    inputs = {k: v.numpy().tolist() for k, v in batch.items()}
    script = BLOCK_TORCH + textwrap.dedent(
        f"""
        import numpy as np
        from hf_costeff.serving.onnx import ORTCostEffForSequenceClassification
        model = ORTCostEffForSequenceClassification.from_pretrained({str(folder)!r})
        inputs = {{k: np.array(v) for k, v in json.loads(sys.stdin.read()).items()}}
        out = model(**inputs, **{policy!r})
        assert "torch" not in sys.modules
        print(json.dumps({{"logits": out.logits.tolist(), "exit_layer": out.exit_layer.tolist()}}))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(inputs), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        expected = model(**batch, **policy)
    assert got["exit_layer"] == expected.exit_layer.tolist()
    np.testing.assert_allclose(np.array(got["logits"]), expected.logits.numpy(), rtol=0, atol=1e-4)


def test_cli_export_int8(model, minilm_tokenizer, batch, tmp_path, capsys):
    from hf_costeff.cli import main
    from hf_costeff.serving import save_pretrained_atomic

    save_pretrained_atomic(model, tmp_path / "model", tokenizer=minilm_tokenizer)
    assert main(["--quiet", "export-onnx", str(tmp_path / "model"), str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quantization"] == "int8" and len(report["files"]) == 5
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8" / "block_0.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, ops
    int8 = ORTCostEffForSequenceClassification.from_pretrained(tmp_path / "int8")
    got = int8(**{k: v.numpy() for k, v in batch.items()}, exit_criterion="none")
    with torch.no_grad():
        expected = model(**batch, exit_criterion="none").logits.numpy()
    # int8 weights move the logits a little, not wholesale (the real accuracy cost: benchmarks/onnx_serving.py).
    assert np.abs(got.logits - expected).max() < 0.05 * max(1.0, float(np.abs(expected).max()))


def test_bad_arguments_name_the_argument(model, exported, ort_model, batch, tmp_path, capsys):
    from hf_costeff.cli import main

    with pytest.raises(ValueError, match="quantize"):
        export_onnx(model, tmp_path / "x", quantize="int4")
    with pytest.raises(ValueError, match="output_dir"):
        export_onnx(model, exported[0])  # not empty: never written over
    with pytest.raises(TypeError, match="model"):
        export_onnx(object(), tmp_path / "y")
    with pytest.raises(ValueError, match="model_dir"):
        ORTCostEffForSequenceClassification.from_pretrained(tmp_path)
    inputs = {k: v.numpy() for k, v in batch.items()}
    with pytest.raises(ValueError, match="exit_threshold"):
        ort_model(**inputs, exit_criterion="entropy", exit_threshold=5.0)
    with pytest.raises(ValueError, match="exit_patience"):
        ort_model(**inputs, exit_criterion="patience", exit_patience=9)
    with pytest.raises(ValueError, match="inputs_embeds"):
        ort_model(**inputs, inputs_embeds=np.zeros((32, 4, 32)))
    with pytest.raises(ValueError, match="input_ids"):
        ort_model(input_ids=inputs["input_ids"] + model.config.vocab_size)
    with pytest.raises(ValueError, match="attention_mask"):
        ort_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"][:, :3])
    with pytest.raises(TypeError, match="input_ids"):
        ort_model(input_ids=inputs["input_ids"].astype(np.float32))
    assert main(["export-onnx", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "model_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export-onnx", str(exported[0]), str(tmp_path / "out"), "--quantize", "int4"])
    assert exit_info.value.code == 2 and "--quantize" in capsys.readouterr().err


def test_bad_inputs_get_the_pytorch_models_message(model, ort_model, batch):
    """Both runtimes apply the configuration's input rules: the same input gets the same message from both."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    long_ids = torch.ones(1, model.config.max_position_embeddings + 1, dtype=torch.long)
    empty_row = mask.clone()
    empty_row[0] = 0
    cases = [
        {"input_ids": ids[:0]},
        {"input_ids": long_ids},
        {"input_ids": ids, "attention_mask": mask[:, :3]},
        {"input_ids": ids, "attention_mask": mask[:2]},
        {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)[:, :2]},
        {"input_ids": ids - 1},
        {"input_ids": ids, "token_type_ids": torch.full_like(ids, model.config.type_vocab_size)},
        {"input_ids": ids, "attention_mask": mask * 2},
        {"input_ids": ids, "attention_mask": empty_row},
    ]
    for case in cases:
        with pytest.raises(ValueError) as torch_error:
            model(**case)
        with pytest.raises(ValueError) as ort_error:
            ort_model(**{k: v.numpy() for k, v in case.items()})
        assert str(ort_error.value) == str(torch_error.value), case


def test_one_token_type_row_serves_the_batch(model, ort_model, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    types = torch.zeros(1, ids.shape[1], dtype=torch.long)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    got = ort_model(input_ids=ids.numpy(), attention_mask=mask.numpy(), token_type_ids=types.numpy())
    np.testing.assert_array_equal(got.exit_layer, expected.exit_layer.numpy())
    np.testing.assert_allclose(got.logits, expected.logits.numpy(), atol=1e-4, rtol=1e-4)
