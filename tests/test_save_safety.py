"""Nothing lost (issue #14 items 2-5): atomic saves touch only the model's files, killed saves and checkpoint writes
leave the previous state loadable and no litter, resume takes the newest complete checkpoint, and every folder with
an ``auto_map`` carries the code it names.

The kill tests SIGKILL real subprocesses at random moments (a bounded number of times, seeded)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import HUB_MODEL_FILES, run_without_hf_costeff, tiny_config

import hf_costeff  # noqa: F401  (registers the Auto classes)
from hf_costeff import CostEffForSequenceClassification
from hf_costeff.checkpoints import is_complete_checkpoint, is_complete_model_folder, last_complete_checkpoint
from hf_costeff.serving import load_costeff, prepare_for_hub, recover_interrupted_save, save_pretrained_atomic

IDS = torch.tensor([[1, 5, 7, 9], [3, 4, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def _model(seed: int = 0, **overrides) -> CostEffForSequenceClassification:
    torch.manual_seed(seed)
    return CostEffForSequenceClassification(tiny_config(**overrides)).eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def _tree(folder: Path) -> dict[str, tuple[bytes, float]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime) for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- item 2: only the model's files change


def test_atomic_save_touches_no_other_file_and_keeps_save_pretrained_permissions(tmp_path):
    target = tmp_path / "project"
    (target / "src").mkdir(parents=True)
    (target / "src" / "code.py").write_text("x = 1\n")
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text("{}")
    (target / "notes.txt").write_text("mine")
    before = _tree(target)
    save_pretrained_atomic(_model(), target)
    after = _tree(target)
    assert {name: after[name] for name in before} == before  # same bytes, never rewritten
    assert HUB_MODEL_FILES <= after.keys()
    assert not [p for p in target.iterdir() if p.name.startswith(".costeff")]

    fresh, plain = tmp_path / "fresh", tmp_path / "plain"
    save_pretrained_atomic(_model(), fresh)
    _model().save_pretrained(plain)
    assert stat.S_IMODE(fresh.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((fresh / name).stat().st_mode) == stat.S_IMODE((plain / name).stat().st_mode)


def test_convert_into_the_bert_folder_keeps_its_other_files(tmp_path, minilm_path):
    from hf_costeff.cli import main

    folder = tmp_path / "bert"
    shutil.copytree(minilm_path, folder)
    others = {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()} - {
        Path("config.json"),
        Path("model.safetensors"),
    }
    assert main(["--quiet", "convert", str(folder), str(folder)]) == 0
    assert others <= {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}  # 1_Pooling/ etc. kept
    assert load_costeff(folder).config.model_type == "costeff"


def test_stale_weights_of_a_sharded_save_are_removed(tmp_path):
    """A later single-file save must not leave old shards or index behind (from_pretrained could pick them)."""
    target = tmp_path / "m"
    save_pretrained_atomic(_model(), target, max_shard_size="20KB")
    assert (target / "model.safetensors.index.json").exists()
    second = _model(seed=1)
    save_pretrained_atomic(second, target)
    assert not list(target.glob("model-*-of-*.safetensors")) and not (target / "model.safetensors.index.json").exists()
    torch.testing.assert_close(_logits(load_costeff(target)), _logits(second))


# ---------------------------------------------------------------- item 3: interrupted saves


def test_save_interrupted_during_commit_is_finished_by_the_next_load(tmp_path, monkeypatch):
    import hf_costeff.serving.hub as hub

    target = tmp_path / "m"
    save_pretrained_atomic(_model(), target)
    second = _model(seed=1, layer_num_heads=[1, 1, 1, 1])
    calls = []
    real_replace = os.replace

    def die_after_two(src, dst):
        calls.append(dst)
        if len(calls) > 2:
            raise KeyboardInterrupt("killed between renames")
        real_replace(src, dst)

    monkeypatch.setattr(hub.os, "replace", die_after_two)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained_atomic(second, target)
    monkeypatch.undo()
    assert (target / ".costeff-commit").exists()  # committed, not finished
    loaded = load_costeff(target)  # finishes the commit first
    assert loaded.config.layer_num_heads == [1, 1, 1, 1]
    torch.testing.assert_close(_logits(loaded), _logits(second))
    assert not [p for p in target.iterdir() if p.name.startswith(".costeff")]


def test_legacy_swap_restores_only_a_complete_old_folder(tmp_path):
    """Folders left by the previous whole-folder swap: the restore takes the newest *complete* one."""
    complete, partial = tmp_path / ".m.old-aaaa", tmp_path / ".m.old-bbbb"
    first = _model()
    first.save_pretrained(complete)
    _model(seed=1).save_pretrained(partial)
    (partial / "model.safetensors").unlink()  # a partly deleted copy, newer
    os.utime(complete, (1, 1))
    (tmp_path / ".m.tmp-cccc").mkdir()
    recover_interrupted_save(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    torch.testing.assert_close(_logits(load_costeff(tmp_path / "m")), _logits(first))


_SAVE_CHILD = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import HUB_MODEL_FILES, run_without_hf_costeff, tiny_config
    from hf_costeff import CostEffForSequenceClassification
    from hf_costeff.serving import save_pretrained_atomic
    torch.manual_seed(1)
    big = dict(vocab_size=4000, hidden_size=64, intermediate_size=128, layer_intermediate_sizes=[128, 64, 7, 0])
    models = [CostEffForSequenceClassification(tiny_config(**big, layer_num_heads=heads)) for heads in ([4, 2, 0, 3], [1, 1, 1, 1])]
    print("READY", flush=True)
    i = 0
    while True:
        save_pretrained_atomic(models[i % 2], {target!r})
        i += 1
""")


def _kill_saves(tmp_path: Path, kills: int, seed: int) -> None:
    target = tmp_path / "m"
    (tmp_path / "keep.txt").write_text("user file beside the model")
    target.mkdir()
    (target / "user_code.py").write_text("keep me\n")
    save_pretrained_atomic(_model(), target)  # a previous model exists from the start
    rng = random.Random(seed)
    script = _SAVE_CHILD.format(tests=str(Path(__file__).parent), target=str(target))
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert child.stdout.readline().strip() == b"READY"
        time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        model = load_costeff(target)  # previous or new, complete either way
        assert model.config.layer_num_heads in ([4, 2, 0, 3], [1, 1, 1, 1])
        assert (target / "user_code.py").read_text() == "keep me\n"
    save_pretrained_atomic(_model(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "m"]
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no staging or commit folder left
    torch.testing.assert_close(_logits(load_costeff(target)), _logits(_model()))


def test_killed_saves_keep_a_loadable_model_and_leave_no_litter(tmp_path):
    _kill_saves(tmp_path, kills=4, seed=0)


@pytest.mark.slow
def test_killed_saves_many_times(tmp_path):
    _kill_saves(tmp_path, kills=25, seed=1)


# ---------------------------------------------------------------- item 4: resume from the newest complete checkpoint

_TRAIN_CHILD = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_save_safety import train_args, train_dataset, collate, trainer_model
    from hf_costeff.training import MultiExitTrainer
    trainer = MultiExitTrainer(model=trainer_model(), args=train_args({out!r}, max_steps=10_000, save_steps=1),
                               train_dataset=train_dataset(), data_collator=collate)
    trainer.train()
""")


def train_args(output_dir: str, **overrides):
    from transformers import TrainingArguments

    fields = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        logging_steps=1,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**fields, **overrides})


def train_dataset(n: int = 32):
    import datasets

    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 120, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g) for _ in range(n)]
    return datasets.Dataset.from_dict(
        {"input_ids": [r.tolist() for r in rows], "labels": [int(r[0]) % 3 for r in rows]}
    )


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    seq = max(len(f["input_ids"]) for f in features)
    ids = torch.tensor([list(f["input_ids"]) + [0] * (seq - len(f["input_ids"])) for f in features])
    return {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "labels": torch.tensor([f["labels"] for f in features]),
    }


def trainer_model() -> CostEffForSequenceClassification:
    torch.manual_seed(0)
    return CostEffForSequenceClassification(tiny_config(hidden_dropout_prob=0.1)).train()


def _resume(output_dir: Path, steps: int):
    from hf_costeff.training import MultiExitTrainer

    trainer = MultiExitTrainer(
        model=trainer_model(),
        args=train_args(str(output_dir), max_steps=steps, save_steps=1000),
        train_dataset=train_dataset(),
        data_collator=collate,
    )
    trainer.train(resume_from_checkpoint=True)
    return trainer


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    from hf_costeff.training import MultiExitTrainer

    out = tmp_path / "out"
    MultiExitTrainer(
        model=trainer_model(), args=train_args(str(out)), train_dataset=train_dataset(), data_collator=collate
    ).train()
    assert is_complete_checkpoint(out / "checkpoint-4")
    # What a kill during the next checkpoint write left: config.json and a temporary file (the report).
    half = out / "checkpoint-8"
    half.mkdir()
    shutil.copy(out / "checkpoint-4" / "config.json", half / "config.json")
    (half / "tmpabc123").write_bytes(b"\x00" * 100)
    assert not is_complete_checkpoint(half)
    assert last_complete_checkpoint(out) == str(out / "checkpoint-4")
    trainer = _resume(out, steps=6)
    assert trainer.state.global_step == 6
    # A truncated weights file or trainer_state.json is incomplete too.
    cut = out / "checkpoint-5"
    shutil.copytree(out / "checkpoint-4", cut)
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert not is_complete_checkpoint(cut) and not is_complete_model_folder(cut)


def _kill_training(tmp_path: Path, kills: int, seed: int) -> int:
    """Returns how many kills left a newest checkpoint that was incomplete (the case resume must skip)."""
    out = tmp_path / "out"
    rng = random.Random(seed)
    script = _TRAIN_CHILD.format(tests=str(Path(__file__).parent), out=str(out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    half_written = 0
    for _ in range(kills):
        shutil.rmtree(out, ignore_errors=True)
        child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not (out / "checkpoint-1" / "trainer_state.json").exists():
            assert child.poll() is None and time.monotonic() < deadline, "training child did not start"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        child.send_signal(signal.SIGKILL)
        child.wait()
        newest = max((p for p in out.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
        half_written += not is_complete_checkpoint(newest)
        resume_from = last_complete_checkpoint(out)
        assert resume_from is not None
        step = json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"]
        trainer = _resume(out, steps=step + 1)
        assert trainer.state.global_step == step + 1
    return half_written


def test_killed_checkpoint_writes_resume(tmp_path):
    _kill_training(tmp_path, kills=2, seed=0)


@pytest.mark.slow
def test_killed_checkpoint_writes_resume_many_times(tmp_path):
    _kill_training(tmp_path, kills=10, seed=1)


# ---------------------------------------------------------------- item 5: auto_map always with its code


_REMOTE_LOAD = textwrap.dedent("""
    import sys
    sys.modules["hf_costeff"] = None  # hf_costeff cannot be imported in this process
    import json, torch
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained({name!r}, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor({ids!r}), attention_mask=torch.tensor({mask!r})).logits
    print("RESULT=" + json.dumps({{"module": type(model).__module__, "logits": logits.tolist()}}))
""")


def _load_without_hf_costeff(name: str, tmp_path: Path, hf_home: Path) -> dict:
    done = run_without_hf_costeff(
        _REMOTE_LOAD.format(name=name, ids=IDS.tolist(), mask=MASK.tolist()), hf_home, tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT=")[-1])
    assert result["module"].startswith("transformers_modules.")
    return result


def test_trainer_saves_with_auto_map_carry_the_code(tmp_path, monkeypatch):
    """A model loaded from a Hub-ready folder keeps ``auto_map``; Trainer's save_model and checkpoints of it (classes
    not registered in this process) must ship the code files too."""
    from transformers import AutoModelForSequenceClassification

    from hf_costeff.training import MultiExitTrainer

    hub_ready = tmp_path / "hub_ready"
    prepare_for_hub(_model()).save_pretrained(hub_ready)
    model = AutoModelForSequenceClassification.from_pretrained(hub_ready)
    assert model.config.auto_map
    # As in a fresh process: nothing registered for the Auto classes (prepare_for_hub's flag is class-level).
    monkeypatch.setattr(type(model), "_auto_class", None)
    monkeypatch.setattr(type(model.config), "_auto_class", None)
    out = tmp_path / "out"
    trainer = MultiExitTrainer(
        model=model, args=train_args(str(out), max_steps=2), train_dataset=train_dataset(), data_collator=collate
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    for folder in (out / "checkpoint-2", tmp_path / "final"):
        assert json.loads((folder / "config.json").read_text())["auto_map"]
        assert (folder / "configuration_costeff.py").exists() and (folder / "modeling_costeff.py").exists()
    expected = _logits(trainer.model.eval())
    result = _load_without_hf_costeff(str(tmp_path / "final"), tmp_path, hf_home=tmp_path / "hf_home")
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=1e-5, rtol=1e-5)

    # The same folder from a hand-made Hub cache (snapshots/<sha> + refs/main), offline.
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf_home" / "hub" / "models--org--trained"
    shutil.copytree(tmp_path / "final", repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    result = _load_without_hf_costeff("org/trained", tmp_path, hf_home=tmp_path / "hf_home")
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=1e-5, rtol=1e-5)
