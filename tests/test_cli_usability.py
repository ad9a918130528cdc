"""The command line as a new user meets it: fast and complete help, the right pooling for the packaged MiniLM, quiet."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import save_tiny_bert

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def _subprocess(code_or_args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *code_or_args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def test_console_script_is_the_fast_entry_point():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hf-costeff"] == "hf_costeff_cli:main"


def test_help_is_fast_and_imports_neither_torch_nor_transformers(tmp_path):
    probe = (
        "import sys, hf_costeff_cli\n"
        "try:\n    hf_costeff_cli.main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy), 'CODE=' + str(code))\n"
    )
    done = _subprocess(["-c", probe], tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY= CODE=0" in done.stdout  # nothing heavy imported: the time below is the interpreter's start-up
    start = time.perf_counter()
    done = _subprocess(["-m", "hf_costeff_cli", "--help"], tmp_path, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "usage: hf-costeff" in done.stdout
    # The bound (importing torch alone takes 2-5 s on this machine; this takes ~0.1 s of CPU).
    assert elapsed < 2.0, f"hf-costeff --help took {elapsed:.2f} s"


def test_every_option_is_documented_and_help_has_no_markup():
    from hf_costeff.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) >= {"convert", "slenderize", "evaluate", "push"}
    for name, command in [("hf-costeff", parser), *subparsers.choices.items()]:
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name}: {action.dest} has no help text"
        text = command.format_help()
        assert "``" not in text, f"{name} --help shows reStructuredText markup"
        for action in command._actions:  # a real default is shown
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and action.help:
                assert f"(default: {action.default})" in " ".join(text.split()), f"{name}: {action.dest}"


def test_bad_usage_exits_2_before_any_import(tmp_path):
    done = _subprocess(["-m", "hf_costeff_cli", "convert"], tmp_path, timeout=60)
    assert done.returncode == 2 and "required: bert, output_dir" in done.stderr


def test_convert_through_the_entry_point_is_quiet_and_registers_the_model(tmp_path, minilm_tokenizer):

    save_tiny_bert(tmp_path / "bert", minilm_tokenizer)
    done = _subprocess(["-m", "hf_costeff_cli", "--quiet", "convert", "bert", "out"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["num_exits"] == 2
    # --quiet: no progress bar (tqdm draws "|" bars with "it/s"), only the one-line pooling choice.
    assert "it/s" not in done.stderr and "%|" not in done.stderr, done.stderr
    assert "exit_pooling=cls" in done.stderr  # a plain BERT: its [CLS] pooling, and said so
    assert json.loads((tmp_path / "out" / "config.json").read_text())["exit_pooling"] == "cls"


def test_convert_picks_mean_pooling_for_the_packaged_minilm(tmp_path, minilm_path, capsys):
    from hf_costeff.cli import main

    assert main(["--quiet", "convert", minilm_path, str(tmp_path / "out")]) == 0
    assert "exit_pooling=mean" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "config.json").read_text())["exit_pooling"] == "mean"
    # An explicit choice wins.
    assert main(["convert", minilm_path, str(tmp_path / "cls"), "--exit_pooling", "cls", "--quiet"]) == 0
    assert json.loads((tmp_path / "cls" / "config.json").read_text())["exit_pooling"] == "cls"


def test_from_bert_reads_the_sentence_transformers_pooling(tmp_path, minilm_path):
    from hf_costeff import CostEffForSequenceClassification
    from hf_costeff.configuration_costeff import sentence_transformers_pooling

    assert sentence_transformers_pooling(minilm_path) == "mean"
    assert CostEffForSequenceClassification.from_bert(minilm_path).config.exit_pooling == "mean"
    assert CostEffForSequenceClassification.from_bert(minilm_path, exit_pooling="cls").config.exit_pooling == "cls"
    # Other pooling configurations: [CLS] is read as such, max pooling (no exit equivalent) and no config as None.
    for mode, expected in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", None)):
        folder = tmp_path / mode
        (folder / "1_Pooling").mkdir(parents=True)
        (folder / "modules.json").write_text(
            json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
        )
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({mode: True}))
        assert sentence_transformers_pooling(folder) == expected
    assert sentence_transformers_pooling(tmp_path) is None


@pytest.mark.parametrize("argv", [["--quiet", "evaluate", "--help"], ["evaluate", "--quiet", "--help"]])
def test_quiet_is_accepted_before_and_after_the_command(argv, capsys):
    from hf_costeff.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 0
    parsed = build_parser().parse_args(["evaluate", "m", "--quiet"])
    assert parsed.quiet is True and build_parser().parse_args(["evaluate", "m"]).quiet is False
