"""MultiExitTrainer: losses against hand computations, distillation, evaluation metrics, pruning during training,
checkpoints and resumption."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch.nn import functional as F
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

import hf_costeff  # noqa: F401  (registers the Auto classes)
from hf_costeff import CostEffForSequenceClassification, average_flops
from hf_costeff.training import (
    MultiExitTrainer,
    layer_mapping,
    masked_hidden_mse,
    prediction_distillation_loss,
)

VOCAB, LABELS = 120, 3


def _model(**overrides) -> CostEffForSequenceClassification:
    torch.manual_seed(0)
    return CostEffForSequenceClassification(tiny_config(**overrides))


def _batch(batch_size: int = 6, seq: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (batch_size, seq), generator=g)
    lengths = torch.randint(2, seq + 1, (batch_size,), generator=g)
    attention_mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.randint(0, LABELS, (batch_size,), generator=g),
    }


def _dataset(n: int = 24, seed: int = 2):
    import datasets

    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(n):
        length = int(torch.randint(3, 12, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (length,), generator=g)
        rows["input_ids"].append(ids.tolist())
        rows["attention_mask"].append([1] * length)
        # A learnable rule, so that a few steps move the metrics: the label is the first token modulo 3.
        rows["labels"].append(int(ids[0]) % LABELS)
    return datasets.Dataset.from_dict(rows)


def _collate(features: list[dict]) -> dict[str, torch.Tensor]:
    seq = max(len(f["input_ids"]) for f in features)
    pad = lambda v: list(v) + [0] * (seq - len(v))  # noqa: E731
    return {
        "input_ids": torch.tensor([pad(f["input_ids"]) for f in features]),
        "attention_mask": torch.tensor([pad(f["attention_mask"]) for f in features]),
        "labels": torch.tensor([f["labels"] for f in features]),
    }


def _args(tmp_path: Path, **overrides) -> TrainingArguments:
    fields = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    fields.update(overrides)
    return TrainingArguments(**fields)


def _trainer(tmp_path, model, **kwargs) -> MultiExitTrainer:
    args = kwargs.pop("args", None) or _args(tmp_path)
    return MultiExitTrainer(model=model, args=args, data_collator=_collate, **kwargs)


def _tiny_bert(hidden: int = 48, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(3)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=LABELS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval()


# ---- loss functions ----


def test_layer_mapping_is_proportional():
    assert layer_mapping(5, 3) == [0, 1, 1, 2, 2]
    assert layer_mapping(7, 7) == list(range(7))
    assert layer_mapping(3, 13) == [0, 6, 12]


def test_masked_hidden_mse_ignores_padding():
    student, teacher = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    teacher[0, 2] = 100.0  # a padded position: must not count
    teacher[1, 0] = 2.0  # real token of example 2: squared error 4 on one of its 2 tokens
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert masked_hidden_mse(student, teacher, mask).item() == pytest.approx((0.0 + 4.0 / 2) / 2)


def test_prediction_kd_kl_is_ce_minus_teacher_entropy():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    kl = prediction_distillation_loss(s, t, temperature=2.0, loss_type="kl")
    ce = prediction_distillation_loss(s, t, temperature=2.0, loss_type="ce")
    p = F.softmax(t / 2, -1)
    entropy = -(p * p.log()).sum(-1).mean() * 4
    assert (ce - entropy).item() == pytest.approx(kl.item(), abs=1e-5)
    assert prediction_distillation_loss(t, t, 2.0, "kl").item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="temperature"):
        prediction_distillation_loss(s, t, temperature=0.0)


# ---- compute_loss ----


def test_compute_loss_hard_labels_equals_weighted_sum(tmp_path):
    weights = [0.5, 1.0, 0.0, 2.0]
    model = _model(exit_loss_weights=weights)
    trainer = _trainer(tmp_path, model)
    assert trainer.loss_is_scaled_for_ga is False
    assert (trainer.alpha, trainer.beta, trainer.gamma) == (1.0, 0.0, 0.0)
    batch = _batch()
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).all_exit_logits
    expected = sum(w * F.cross_entropy(logits[:, k], batch["labels"]) for k, w in enumerate(weights))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The trainer's own override of the weights wins over the model's.
    trainer = _trainer(tmp_path, model, exit_loss_weights=[1, 1, 1, 1])
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(
        sum(F.cross_entropy(logits[:, k], batch["labels"]) for k in range(4)).item(), rel=1e-5
    )


def test_compute_loss_with_bert_teacher_equals_hand_computation(tmp_path):
    model = _model()
    teacher = _tiny_bert(hidden=48, layers=2)  # other hidden size: learned projections; other depth: mapping
    trainer = _trainer(tmp_path, model, teacher=teacher, alpha=0.3, beta=0.7, gamma=0.2, temperature=2.0)
    assert trainer.teacher is teacher and not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert "teacher" not in dict(model.named_children())
    assert len(trainer.hidden_projections) == 5  # embeddings + 4 layers
    batch = _batch()
    model.train()
    loss = trainer.compute_loss(model, dict(batch))

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        t_out = teacher(**inputs, output_hidden_states=True)
        hard = sum(F.cross_entropy(out.all_exit_logits[:, k], batch["labels"]) for k in range(4))
        pred = 0.0
        for k in range(4):  # the single-exit teacher's final logits teach every exit
            p_t = F.softmax(t_out.logits / 2, -1)
            log_s = F.log_softmax(out.all_exit_logits[:, k] / 2, -1)
            pred = pred + (p_t * (p_t.log() - log_s)).sum(-1).mean() * 4
        hidden = 0.0
        mask = batch["attention_mask"].float()
        for l_s, l_t in enumerate([0, 1, 1, 2, 2]):
            diff = (trainer.hidden_projections[l_s](out.hidden_states[l_s]) - t_out.hidden_states[l_t]) ** 2
            hidden = hidden + ((diff.mean(-1) * mask).sum(-1) / mask.sum(-1)).mean()
    expected = 0.3 * hard + 0.7 * pred + 0.2 * hidden
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_costeff_teacher_teaches_exit_by_exit(tmp_path):
    model, teacher = _model(), _model()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = _trainer(tmp_path, model, teacher=teacher, gamma=0.0)
    assert (trainer.alpha, trainer.beta) == (0.0, 1.0)  # COST-EFF's recipe is the default with a teacher
    batch = _batch()
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s, t = model(**inputs).all_exit_logits, teacher(**inputs).all_exit_logits
    expected = sum(prediction_distillation_loss(s[:, k], t[:, k]) for k in range(4))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_is_zero_when_student_equals_teacher(tmp_path):
    model = _model()
    trainer = _trainer(tmp_path, model, teacher=copy.deepcopy(model))  # alpha 0, beta 1, gamma 1
    assert trainer.hidden_projections is None  # same hidden size: identity
    model.train()
    loss = trainer.compute_loss(model, dict(_batch()))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert trainer._loss_parts["loss_hidden_kd"] == pytest.approx(0.0, abs=1e-10)


def test_bad_arguments_raise(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="no teacher"):
        _trainer(tmp_path, model, beta=1.0)
    with pytest.raises(ValueError, match="exit_loss_weights"):
        _trainer(tmp_path, model, exit_loss_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="num_labels"):
        _trainer(tmp_path, model, teacher=_model(num_labels=2))
    with pytest.raises(ValueError, match="CostEff"):
        MultiExitTrainer(model=_tiny_bert(), args=_args(tmp_path))
    # An evaluation policy the model cannot run is refused before training, not at the first evaluation.
    with pytest.raises(ValueError, match="eval_exit_criterion.*needs class probabilities"):
        _trainer(tmp_path, _model(num_labels=1), eval_exit_thresholds=[0.3])
    with pytest.raises(ValueError, match="eval_exit_criterion.*exit_patience must be an integer in"):
        _trainer(tmp_path, model, eval_exit_criterion="patience", eval_exit_thresholds=[99])


# ---- evaluate ----


def test_evaluate_reports_every_exit_and_early_exit_cost(tmp_path):
    model = _model()
    data = _dataset(20)
    trainer = _trainer(tmp_path, model, eval_dataset=data, eval_exit_thresholds=[0.5, 1.05])
    metrics = trainer.evaluate()
    batch = _collate([data[i] for i in range(len(data))])
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        all_logits = model(**inputs).all_exit_logits
        early = model(**inputs, exit_criterion="entropy", exit_threshold=1.05)
    for k, layer in enumerate(model.config.exit_layers):
        accuracy = (all_logits[:, k].argmax(-1) == batch["labels"]).float().mean().item()
        assert metrics[f"eval_exit{layer}_accuracy"] == pytest.approx(accuracy)
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert metrics["eval_entropy_1.05_avg_flops"] == pytest.approx(
        average_flops(model.config, early.exit_layer.tolist(), lengths)
    )
    assert metrics["eval_entropy_1.05_accuracy"] == pytest.approx(
        (early.logits.argmax(-1) == batch["labels"]).float().mean().item()
    )
    histogram = [metrics[f"eval_entropy_1.05_exit_fraction_L{layer}"] for layer in model.config.exit_layers]
    assert sum(histogram) == pytest.approx(1.0)
    assert metrics["eval_entropy_0.5_flops_speedup"] >= 1.0
    # The loss is the model's own, over the whole set (not a mean of per-batch means).
    with torch.no_grad():
        expected_loss = model(**batch).loss.item()
    assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["eval_mean_exit_accuracy"] == pytest.approx(
        sum(metrics[f"eval_exit{layer}_accuracy"] for layer in model.config.exit_layers) / 4
    )
    assert trainer.state.log_history[-1]["eval_exit4_accuracy"] == metrics["eval_exit4_accuracy"]


def test_short_training_run_logs_loss_terms_and_learns(tmp_path):
    model = _model(num_hidden_layers=2, layer_num_heads=[4, 4], layer_intermediate_sizes=[48, 48])
    teacher = _tiny_bert()
    trainer = _trainer(
        tmp_path,
        model,
        teacher=teacher,
        alpha=1.0,
        train_dataset=_dataset(16),
        args=_args(tmp_path, max_steps=3, gradient_accumulation_steps=2),
    )
    before = [p.detach().clone() for p in trainer.hidden_projections.parameters()]
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and {"loss_hard", "loss_pred_kd", "loss_hidden_kd"} <= set(logged[0])
    # The trainer-owned projections are in the optimizer: they moved.
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.hidden_projections.parameters(), strict=True))


# ---- pruning during training ----


@pytest.fixture
def slenderize():
    from hf_costeff import slenderize as module

    return module


def _full_model():
    return _model(layer_num_heads=[4, 4, 4, 4], layer_intermediate_sizes=[48, 48, 48, 48], exit_pooler="tanh")


def _prune_callback(**kwargs):
    from hf_costeff.slenderize import PruningConfig
    from hf_costeff.training import SlenderizeCallback

    return SlenderizeCallback(
        PruningConfig(layer_num_heads=2, layer_intermediate_sizes=16, embedding_rank=8),
        num_events=2,
        prune_fraction=0.5,
        calibration_batches=2,
        **kwargs,
    )


class _Snapshot(TrainerCallback):
    """Copies a pruned weight right after the last pruning event, to check that later steps update it."""

    def __init__(self, step):
        self.step, self.weight = step, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.weight = model.costeff.encoder.layer[0].intermediate.dense.weight.detach().clone()


def test_training_with_pruning_schedule_reaches_target_and_reloads(tmp_path, slenderize):
    model = _full_model()
    teacher = copy.deepcopy(model)
    callback, snapshot = _prune_callback(), _Snapshot(step=4)
    trainer = _trainer(
        tmp_path,
        model,
        teacher=teacher,
        alpha=0.5,
        train_dataset=_dataset(32),
        callbacks=[callback, snapshot],
        args=_args(tmp_path, max_steps=8),
    )
    trainer.train()
    config = trainer.model.config
    assert [r["step"] for r in callback.history] == [2, 4]
    # Every step's loss is logged (pruning must not swallow it), and the events ride along with it.
    losses = [h for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8 and [h["step"] for h in losses if "prune_event" in h] == [2, 4]
    assert callback.history[0]["heads"] == [3, 3, 3, 3] and callback.history[0]["ffn"] == [32] * 4
    assert config.layer_num_heads == [2] * 4 and config.layer_intermediate_sizes == [16] * 4
    assert config.embedding_rank == 8
    layer = trainer.model.costeff.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (2 * config.head_dim, config.hidden_size)
    assert layer.intermediate.dense.weight.shape == (16, config.hidden_size)
    # The rebuilt optimizer updates the new Parameters.
    assert not torch.equal(snapshot.weight, layer.intermediate.dense.weight)
    optimizer_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimizer_params for p in trainer.model.parameters())
    trainer.save_model(str(tmp_path / "final"))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final").eval()
    assert isinstance(loaded, CostEffForSequenceClassification)
    batch = _batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).all_exit_logits, trainer.model(**inputs).all_exit_logits)


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_killed_run_resumes_from_pruned_checkpoint(tmp_path, slenderize):
    args = _args(tmp_path, max_steps=8, save_strategy="steps", save_steps=5)
    model = _full_model()
    teacher = copy.deepcopy(model)
    first = _trainer(
        tmp_path,
        model,
        teacher=teacher,
        alpha=0.5,
        train_dataset=_dataset(32),
        callbacks=[_prune_callback(), _StopAt(5)],
        args=args,
    )
    first.train()
    checkpoint = Path(args.output_dir) / "checkpoint-5"
    saved = json.loads((checkpoint / "config.json").read_text())
    assert saved["layer_num_heads"] == [2] * 4 and saved["layer_intermediate_sizes"] == [16] * 4
    assert saved["embedding_rank"] == 8

    # A new process: the model is built at full size again; the trainer rebuilds it with the checkpoint's shapes.
    callback = _prune_callback()
    second = _trainer(
        tmp_path,
        _full_model(),
        teacher=teacher,
        alpha=0.5,
        train_dataset=_dataset(32),
        callbacks=[callback],
        args=_args(tmp_path, max_steps=8, save_strategy="steps", save_steps=5),
    )
    second.train(resume_from_checkpoint=True)
    assert second.state.global_step == 8
    assert callback.history == []  # both events were already applied
    assert second.model.config.layer_num_heads == [2] * 4
    assert second.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # schedule restarted at step 4
    assert np.isfinite(second.state.log_history[-1]["train_loss"])


def test_slenderize_callback_rejects_bad_schedules(slenderize):
    from hf_costeff.slenderize import PruningConfig
    from hf_costeff.training import SlenderizeCallback

    # PruningConfig itself may refuse these first: either way a ValueError.
    with pytest.raises(ValueError):
        SlenderizeCallback(PruningConfig(layer_num_heads=2, encoder_keep_fraction=0.5))
    with pytest.raises(ValueError):
        SlenderizeCallback(PruningConfig())
    with pytest.raises(ValueError, match="strictly increasing"):
        SlenderizeCallback(PruningConfig(layer_num_heads=2), prune_steps=[4, 2])
    callback = SlenderizeCallback(PruningConfig(layer_num_heads=2), num_events=3, prune_fraction=0.5)
    assert callback.event_steps(120) == [20, 40, 60]
    assert callback.last_event_step(45, 120) == 40 and callback.last_event_step(10, 120) == 0
    with pytest.raises(ValueError, match="do not fit"):
        callback.event_steps(4)


def test_the_trainer_owns_one_pruning_schedule(tmp_path, slenderize):
    from transformers import Trainer

    with pytest.raises(ValueError, match="at most one SlenderizeCallback"):
        _trainer(tmp_path, _full_model(), callbacks=[_prune_callback(), _prune_callback()])
    # A plain Trainer would not rebuild what the prune makes stale: the callback refuses rather than skip its event.
    trainer = Trainer(
        model=_full_model(),
        args=_args(tmp_path, max_steps=2),
        train_dataset=_dataset(16),
        data_collator=_collate,
        callbacks=[_prune_callback(prune_steps=[1])],
    )
    with pytest.raises(ValueError, match="MultiExitTrainer only"):
        trainer.train()


def test_stage_loss_weights_are_the_recipe_and_refuse_unknown_stages():
    from hf_costeff.training import COSTEFF_STAGE_LOSS_WEIGHTS, stage_loss_weights

    # benchmarks/pareto.py trained its cached TAs with 0.5 / 0.5 / 1 before the weights moved here: the benchmark's
    # stage caches are keyed by settings, not code, so these must not drift.
    assert stage_loss_weights("ta") == {"alpha": 0.5, "beta": 0.5, "gamma": 1.0}
    assert stage_loss_weights("recover_hidden") == {"alpha": 0.0, "beta": 0.0, "gamma": 1.0}
    assert (
        stage_loss_weights("prune") == stage_loss_weights("recover_pred") == {"alpha": 0.0, "beta": 1.0, "gamma": 1.0}
    )
    weights = stage_loss_weights("ta")
    weights["alpha"] = 1.0  # a copy: the recipe itself is read-only
    assert COSTEFF_STAGE_LOSS_WEIGHTS["ta"]["alpha"] == 0.5
    with pytest.raises(TypeError):
        COSTEFF_STAGE_LOSS_WEIGHTS["ta"]["alpha"] = 1.0
    with pytest.raises(ValueError, match="stage must be one of"):
        stage_loss_weights("recover")
