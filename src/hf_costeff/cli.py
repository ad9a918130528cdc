"""hf-costeff: convert a BERT checkpoint to a multi-exit CostEff model, slenderize it, sweep its exit threshold on
GLUE and push it to the Hub.

  hf-costeff convert BERT_DIR OUT_DIR
  hf-costeff slenderize MODEL_DIR OUT_DIR --glue_dir DIR --task sst2 --encoder_keep_fraction 0.5
  hf-costeff evaluate MODEL_DIR --glue_dir DIR --task sst2 --thresholds 0.1,0.3 --output report.json
  hf-costeff trim-vocab MODEL_DIR OUT_DIR --glue_dir DIR --task sst2
  hf-costeff push MODEL_DIR org/name --eval_json report.json --threshold 0.3
  hf-costeff export-onnx MODEL_DIR OUTPUT_DIR --quantize int8

Every command prints its result as JSON on stdout; progress goes to stderr. `hf-costeff COMMAND --help` lists a
command's options with their defaults.
"""

from __future__ import annotations

# Only the standard library at module level: `hf-costeff --help` must not wait for torch (seconds). Each command
# imports what it needs (see hf_costeff_cli.py, the console entry point).
import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .choices import EARLY_EXIT_CRITERIA, EXIT_CRITERIA, EXIT_POOLERS, EXIT_POOLINGS, EXIT_WEIGHTINGS, QUANTIZATIONS


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless it has none) and keeps the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _tqdm(*args: Any, **kwargs: Any):
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(*args, **kwargs)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


class _ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``hf-costeff <command>: error: ...``) and exit status 2, and
    whose help shows every default (the parser of the command and of every subcommand)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _require(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{option} {message}")


def _check_writable_file(option: str, path: str | None) -> None:
    """Refuse an output file that could not be written, before the work that produces it starts."""
    if path is None:
        return
    target = Path(path).absolute()
    _require(not target.is_dir(), option, f"{path} is a folder, expected a file path")
    _require(target.parent.is_dir(), option, f"{path}: folder {target.parent} does not exist")
    _require(os.access(target.parent, os.W_OK), option, f"{path}: folder {target.parent} is not writable")


def _check_output_dir(option: str, path: str) -> None:
    target = Path(path).absolute()
    _require(not target.exists() or target.is_dir(), option, f"{path} exists and is not a folder")
    existing = next(p for p in (target, *target.parents) if p.exists())
    _require(os.access(existing, os.W_OK), option, f"{path}: {existing} is not writable")


def _check_model_dir(path: str) -> None:
    _require(Path(path, "config.json").is_file(), "model_dir", f"{path} holds no config.json (not a saved model)")


def _check_task(task: str, glue_dir: str | None) -> None:
    from .data import TASKS  # noqa: PLC0415

    _require(task in TASKS, "--task", f"must be one of {sorted(TASKS)}, got {task!r}")
    if glue_dir is not None:
        _require(Path(glue_dir, task).is_dir(), "--glue_dir", f"{glue_dir} has no {task}/ folder of GLUE files")


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        _require(value is None or value >= 1, f"--{name}", f"must be >= 1, got {value}")


def check_convert(args: argparse.Namespace) -> None:
    _check_output_dir("output_dir", args.output_dir)
    _check_positive(args, "num_labels")
    if args.exit_layers:
        try:
            [int(v) for v in args.exit_layers.split(",")]
        except ValueError:
            raise ValueError(f"--exit_layers expects comma-separated integers, got {args.exit_layers!r}") from None
    if args.exit_threshold is not None:
        _require(math.isfinite(args.exit_threshold), "--exit_threshold", f"must be finite, got {args.exit_threshold}")


def check_slenderize(args: argparse.Namespace) -> None:
    _check_model_dir(args.model_dir)
    _check_output_dir("output_dir", args.output_dir)
    _check_task(args.task, args.glue_dir)
    fraction = args.encoder_keep_fraction
    _require(0.0 < fraction <= 1.0, "--encoder_keep_fraction", f"must lie in (0, 1], got {fraction}")
    _check_positive(args, "embedding_rank", "batch_size", "max_batches", "max_length")


def check_evaluate(args: argparse.Namespace) -> None:
    _check_model_dir(args.model_dir)
    _check_task(args.task, args.glue_dir)
    _check_writable_file("--output", args.output)
    _require(bool(args.thresholds), "--thresholds", "must list at least one threshold")
    _check_positive(args, "patience", "batch_size", "max_length", "max_examples")


def check_push(args: argparse.Namespace) -> None:
    _check_model_dir(args.model_dir)
    _require(args.repo_id.count("/") <= 1 and bool(args.repo_id.strip("/")), "repo_id", f"invalid: {args.repo_id!r}")
    if args.eval_json:
        try:
            json.loads(Path(args.eval_json).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"--eval_json {args.eval_json}: not a readable JSON report ({err})") from None


def _check_task_matches_model(task: str, config) -> None:
    """A 2-label model scored on STS-B (regression) would report a correlation of argmax class ids."""
    from .data import get_task  # noqa: PLC0415

    expected = get_task(task).num_labels
    if config.num_labels != expected:
        kind = "a regression (1 output)" if expected == 1 else f"a {expected}-class"
        raise ValueError(
            f"--task {task} is {kind} task but the model has num_labels={config.num_labels}; "
            "evaluate it on a task with as many labels"
        )


def _load_model_and_tokenizer(folder: str):
    from .serving.hub import load_costeff, load_folder_tokenizer  # noqa: PLC0415

    model = load_costeff(folder)
    tokenizer = load_folder_tokenizer(folder)
    return model, tokenizer


def _dataloader(
    tokenizer, task: str, glue_dir: str | None, split: str, batch_size: int, max_length: int, max_examples: int | None
):
    import datasets  # noqa: PLC0415
    from transformers import DataCollatorWithPadding  # noqa: PLC0415

    from .data import load_glue, tokenize_glue  # noqa: PLC0415

    split_data = load_glue(task, glue_dir)[split]
    if max_examples is not None:
        split_data = split_data.select(range(min(max_examples, len(split_data))))
    data = datasets.DatasetDict({split: split_data})  # tokenize only the split used (SST-2 train is 67k sentences)
    encoded = tokenize_glue(data, tokenizer, task, max_length=max_length)[split]
    encoded = encoded.remove_columns(
        [c for c in encoded.column_names if c not in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    )
    from torch.utils.data import DataLoader  # noqa: PLC0415

    return DataLoader(encoded, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))


def cmd_convert(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer  # noqa: PLC0415

    from .modeling_costeff import CostEffForSequenceClassification  # noqa: PLC0415
    from .serving.hub import save_pretrained_atomic  # noqa: PLC0415

    overrides: dict[str, Any] = {
        "num_labels": args.num_labels,
        "exit_pooler": args.exit_pooler,
        "exit_pooling": args.exit_pooling,
        "exit_criterion": args.exit_criterion,
        "exit_threshold": args.exit_threshold,
    }
    if args.exit_layers:
        overrides["exit_layers"] = [int(v) for v in args.exit_layers.split(",")]
    if args.exit_pooling is None:
        from .configuration_costeff import sentence_transformers_pooling  # noqa: PLC0415

        detected = sentence_transformers_pooling(args.bert)
        overrides["exit_pooling"] = detected or "cls"
        reason = (
            "the pooling this sentence-transformers checkpoint was trained with (1_Pooling/config.json)"
            if detected
            else "BERT's [CLS] pooling (no sentence-transformers pooling config found)"
        )
    with _tqdm(total=2, desc="convert", disable=args.quiet) as bar:
        model = CostEffForSequenceClassification.from_bert(args.bert, **overrides)
        bar.update()
        if args.exit_pooling is None:  # said once the checkpoint loaded: a bad path gets one error line only
            print(f"hf-costeff convert: exit_pooling={overrides['exit_pooling']}: {reason}", file=sys.stderr)
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.bert)
        except (OSError, ValueError):  # a weights-only folder: the model is still usable with its own tokenizer
            tokenizer = None
        save_pretrained_atomic(model, args.output_dir, tokenizer=tokenizer)
        bar.update()
    return {
        "output_dir": str(args.output_dir),
        "num_exits": model.config.num_exits,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def cmd_slenderize(args: argparse.Namespace) -> dict[str, Any]:
    from .cost import count_parameters, summary  # noqa: PLC0415
    from .serving.hub import save_pretrained_atomic  # noqa: PLC0415
    from .slenderize import PruningConfig, apply_pruning_config, compute_importance  # noqa: PLC0415

    pruning_config = PruningConfig(encoder_keep_fraction=args.encoder_keep_fraction, embedding_rank=args.embedding_rank)
    model, tokenizer = _load_model_and_tokenizer(args.model_dir)
    if tokenizer is None:
        raise ValueError(f"{args.model_dir} holds no tokenizer; save one beside the model (hf-costeff convert does)")
    before = model.config.__class__.from_dict(model.config.to_dict())
    loader = _dataloader(
        tokenizer,
        args.task,
        args.glue_dir,
        "train",
        args.batch_size,
        args.max_length,
        args.max_batches * args.batch_size,
    )
    importance = compute_importance(
        model,
        _tqdm(loader, desc="importance", disable=args.quiet),
        exit_weighting=args.exit_weighting,
        max_batches=args.max_batches,
    )
    applied = apply_pruning_config(model, importance, pruning_config)
    save_pretrained_atomic(model, args.output_dir, tokenizer=tokenizer)
    pruning_config.save_pretrained(args.output_dir)  # what the artifact was slenderized to, beside it
    if not args.quiet:
        print(summary(before, model.config), file=sys.stderr)
    return {
        "output_dir": str(args.output_dir),
        **applied,
        "parameters": count_parameters(model.config),
    }


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from .configuration_costeff import validate_exit_policy  # noqa: PLC0415
    from .evaluation import (  # noqa: PLC0415
        collect_exit_logits,
        evaluate_policy,
        per_exit_flops,
        per_exit_metrics,
        sweep_thresholds,
    )

    model, tokenizer = _load_model_and_tokenizer(args.model_dir)
    if tokenizer is None:
        raise ValueError(f"{args.model_dir} holds no tokenizer; save one beside the model (hf-costeff convert does)")
    config = model.config
    _check_task_matches_model(args.task, config)
    patience = args.patience or config.exit_patience
    for threshold in args.thresholds:  # refuse a bad sweep before any data is read
        validate_exit_policy(args.criterion, threshold, patience, config.num_exits, config.num_labels)
    loader = _dataloader(
        tokenizer, args.task, args.glue_dir, "validation", args.batch_size, args.max_length, args.max_examples
    )
    # One pass records every exit's logits; each threshold's early exit is then simulated with the model's own rule.
    preds = collect_exit_logits(model, _tqdm(loader, desc="exit logits", disable=args.quiet, leave=False))
    if args.criterion == "patience":  # the thresholds are the regression agreement thresholds at a fixed patience
        sweep = [evaluate_policy(preds, config, args.task, "patience", patience, t) for t in args.thresholds]
    else:
        sweep = sweep_thresholds(preds, config, args.task, args.criterion, args.thresholds)
    result = {
        "model_dir": str(args.model_dir),
        "task": args.task,
        "criterion": args.criterion,
        "num_examples": len(preds.labels),
        "full": evaluate_policy(preds, config, args.task, "none", None),
        "per_exit": [
            {**row, "avg_flops": flops}
            for row, flops in zip(
                per_exit_metrics(preds, args.task, config), per_exit_flops(preds, config), strict=True
            )
        ],
        "sweep": sweep,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _read_lines(path: str, option: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ValueError(f"{option}: cannot read {path!r}: {err.strerror}") from err
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"{option}: {path!r} holds no text (one text per line)")
    return texts


def _trim_corpus(args: argparse.Namespace) -> tuple[list[str], list[str] | None, str]:
    """The texts to keep the vocabulary of, the held-out texts (or ``None``) and the corpus name for the card."""
    if (args.texts is None) == (args.task is None):
        raise ValueError("give either --texts FILE or --task (with --glue_dir, else GLUE is read from the Hub)")
    if args.texts is not None:
        heldout = _read_lines(args.heldout, "--heldout") if args.heldout else None
        texts, corpus = _read_lines(args.texts, "--texts"), Path(args.texts).name
    else:
        from .data import glue_texts, load_glue  # noqa: PLC0415

        if args.heldout:
            raise ValueError("--heldout goes with --texts; with --task the held-out texts are the task's dev set")
        data = load_glue(args.task, args.glue_dir)
        texts, heldout = glue_texts(data["train"], args.task), glue_texts(data["validation"], args.task)
        corpus = f"glue/{args.task} train"
    if args.max_texts is not None:
        if args.max_texts < 1:
            raise ValueError(f"--max_texts must be >= 1, got {args.max_texts}")
        texts = texts[: args.max_texts]
        corpus += f" (first {len(texts)})"
    return texts, heldout, corpus


def cmd_trim_vocab(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoConfig, AutoModelForSequenceClassification  # noqa: PLC0415

    from .serving.hub import load_costeff, load_folder_tokenizer, save_pretrained_atomic  # noqa: PLC0415
    from .slenderize.vocabulary import compare_tokenizations, trim_vocabulary, write_vocab_file  # noqa: PLC0415

    texts, heldout, corpus = _trim_corpus(args)
    is_costeff = getattr(AutoConfig.from_pretrained(args.model_dir), "model_type", None) == "costeff"
    model = (
        load_costeff(args.model_dir)
        if is_costeff
        else AutoModelForSequenceClassification.from_pretrained(args.model_dir)
    )
    tokenizer = load_folder_tokenizer(args.model_dir)
    if tokenizer is None:
        raise ValueError(f"{args.model_dir} holds no tokenizer; save one beside the model (hf-costeff convert does)")
    parameters_before, vocab_before = sum(p.numel() for p in model.parameters()), model.config.vocab_size
    model, trimmed = trim_vocabulary(
        model,
        tokenizer,
        texts,
        min_count=args.min_count,
        keep_tokens=_read_lines(args.keep_tokens, "--keep_tokens") if args.keep_tokens else None,
        keep_characters=not args.no_keep_characters,
        corpus=corpus,
        show_progress=not args.quiet,
    )
    save_pretrained_atomic(model, args.output_dir, tokenizer=trimmed, for_hub=is_costeff)
    write_vocab_file(trimmed, args.output_dir)
    result: dict[str, Any] = {
        "output_dir": str(args.output_dir),
        "corpus": corpus,
        "num_texts": len(texts),
        "vocab_size_before": vocab_before,
        "vocab_size_after": model.config.vocab_size,
        "parameters_before": parameters_before,
        "parameters_after": sum(p.numel() for p in model.parameters()),
        "heldout": compare_tokenizations(tokenizer, trimmed, heldout) if heldout else None,
    }
    if not args.quiet:
        line = (
            f"kept {result['vocab_size_after']:,} of {vocab_before:,} tokens; parameters "
            f"{parameters_before:,} -> {result['parameters_after']:,}"
        )
        if heldout:
            h = result["heldout"]
            line += (
                f"; held-out tokens that are [UNK]: {h['unknown_rate_after']:.3%} (before {h['unknown_rate_before']:.3%}),"
                f" held-out texts split differently: {h['texts_resplit']:.2%}"
            )
        print(line, file=sys.stderr)
    return result


def cmd_push(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoConfig  # noqa: PLC0415

    from .serving.hub import push_costeff_to_hub  # noqa: PLC0415

    model, tokenizer = _load_model_and_tokenizer(args.model_dir)
    card: dict[str, Any] = {"dataset": args.dataset, "base_model": args.base_model}
    if args.threshold is not None:
        model.config.exit_threshold = args.threshold
        model.config.exit_criterion = args.criterion or model.config.exit_criterion
        model.config.validate_costeff()
    if args.teacher:
        card["teacher_config"] = AutoConfig.from_pretrained(args.teacher)
    if args.eval_json:
        report = json.loads(Path(args.eval_json).read_text(encoding="utf-8"))
        if all("accuracy" in row for row in report.get("per_exit", [])):
            card["per_exit_accuracy"] = [row["accuracy"] for row in report["per_exit"]]
        rows = [r for r in report.get("sweep", []) if r["threshold"] == model.config.exit_threshold]
        if rows:
            card.update(eval_results=rows[0]["metrics"], average_flops=rows[0]["avg_flops"])
    commit = push_costeff_to_hub(model, args.repo_id, tokenizer, private=args.private or None, token=args.token, **card)
    return {"repo_id": args.repo_id, "commit": getattr(commit, "commit_url", str(commit))}


def check_export_onnx(args: argparse.Namespace) -> None:
    _check_model_dir(args.model_dir)
    _check_output_dir("output_dir", args.output_dir)
    _check_positive(args, "opset")


def cmd_export_onnx(args: argparse.Namespace) -> dict[str, Any]:
    from .serving.onnx import export_onnx  # noqa: PLC0415

    manifest = export_onnx(
        args.model_dir,
        args.output_dir,
        quantize=args.quantize,
        opset_version=args.opset,
        validate=not args.no_validate,
    )
    files = [manifest["embeddings"]["file"]] + [block["file"] for block in manifest["blocks"]]
    return {
        "output_dir": str(args.output_dir),
        "quantization": manifest["quantization"],
        "files": files,
        "megabytes": round(sum((Path(args.output_dir) / f).stat().st_size for f in files) / 2**20, 3),
    }


def _add_glue_args(p: argparse.ArgumentParser, *, split: str, task_help: str, batch_size: int, batch: str) -> None:
    """The GLUE data options of a command that reads one split: where, which task, batch size, tokens per example."""
    p.add_argument("--glue_dir", help=f"folder with <task>/{split}.tsv (default: read GLUE from the Hub)")
    p.add_argument("--task", default="sst2", help=task_help)
    p.add_argument("--batch_size", type=int, default=batch_size, help=f"{batch} batch size")
    p.add_argument("--max_length", type=int, default=128, help="tokens per example (longer ones are truncated)")


def _add_command(
    sub: argparse._SubParsersAction,
    run: Any,
    check: Any = None,
    *,
    help: str,
    description: str | None = None,
    **positionals: str | tuple[str, str],
) -> argparse.ArgumentParser:
    """The subcommand that ``run`` (``cmd_<name>``) carries out, named after it, with its positional arguments:
    ``dest=help`` or ``dest=(help, metavar)``; ``check`` validates the arguments before any work."""
    name = run.__name__.removeprefix("cmd_").replace("_", "-")
    p = sub.add_parser(name, help=help, description=description)
    for dest, text in positionals.items():
        text, metavar = text if isinstance(text, tuple) else (text, None)
        p.add_argument(dest, metavar=metavar, help=text)
    p.set_defaults(func=run, check=check)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-costeff`` parser. A new command: a ``cmd_<name>`` function and one ``_add_command`` block here."""
    parser = _ArgumentParser(prog="hf-costeff", description=__doc__)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or informational messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_ArgumentParser)

    p = _add_command(
        sub,
        cmd_convert,
        check=check_convert,
        help="BERT checkpoint -> CostEff folder (every weight carried over, an exit after each layer)",
        description="Convert a BERT checkpoint (folder or Hub id) into a CostEff model saved with its tokenizer, "
        "code files and auto_map.",
        bert="BERT checkpoint: a folder or a Hub id",
        output_dir="folder to write (replaced atomically if it exists)",
    )
    p.add_argument("--num_labels", type=int, default=2, help="number of classes (1 = regression)")
    p.add_argument("--exit_pooler", choices=EXIT_POOLERS, default="dense", help="exit head: BERT pooler or tanh")
    p.add_argument(
        "--exit_pooling",
        choices=EXIT_POOLINGS,
        help="token(s) each exit reads: [CLS] or the mean of real tokens (default: what a sentence-transformers "
        "checkpoint was trained with, read from 1_Pooling/config.json, else cls)",
    )
    p.add_argument("--exit_layers", help="comma-separated 1-based layers with an exit (default: every layer)")
    p.add_argument(
        "--exit_criterion",
        default="none",
        choices=EXIT_CRITERIA,
        help="exit policy saved in config.json",
    )
    p.add_argument("--exit_threshold", type=float, help="threshold of --exit_criterion entropy/confidence")

    p = _add_command(
        sub,
        cmd_slenderize,
        check=check_slenderize,
        help="prune heads/FFN neurons (and factorize the word embedding) with GLUE training batches",
        description="Estimate every head's and FFN neuron's exit-aware importance on GLUE training batches, prune "
        "to a global parameter budget and save the smaller model.",
        model_dir="CostEff folder (e.g. written by `hf-costeff convert`)",
        output_dir="folder to write (replaced atomically if it exists)",
    )
    _add_glue_args(
        p, split="train", task_help="GLUE task of the calibration batches", batch_size=16, batch="calibration"
    )
    p.add_argument(
        "--encoder_keep_fraction", type=float, required=True, help="fraction of the encoder's parameters kept"
    )
    p.add_argument("--embedding_rank", type=int, help="truncated-SVD rank of the word embedding (default: keep it)")
    p.add_argument(
        "--exit_weighting",
        choices=EXIT_WEIGHTINGS,
        default="all",
        help="importance from every exit's loss (COST-EFF) or the last exit's",
    )
    p.add_argument("--max_batches", type=int, default=8, help="calibration batches")

    p = _add_command(
        sub,
        cmd_evaluate,
        check=check_evaluate,
        help="exit-threshold sweep on a GLUE dev set: metrics + average FLOPs (JSON)",
        description="Every exit's dev metrics, then the real early-exit forward at each threshold: metrics, mean "
        "FLOPs per example and mean exit layer.",
        model_dir="CostEff folder with its tokenizer",
    )
    _add_glue_args(p, split="dev", task_help="GLUE task", batch_size=32, batch="evaluation")
    p.add_argument("--criterion", default="entropy", choices=EARLY_EXIT_CRITERIA, help="exit rule")
    p.add_argument(
        "--thresholds", type=_floats, default=[0.1, 0.2, 0.3, 0.4, 0.5], help="comma-separated thresholds to sweep"
    )
    p.add_argument("--patience", type=int, help="patience of --criterion patience (default: the model's)")
    p.add_argument("--max_examples", type=int, help="evaluate only the first N dev examples (default: all)")
    p.add_argument("--output", help="also write the JSON report to this file (default: stdout only)")

    p = _add_command(
        sub,
        cmd_trim_vocab,
        help="keep only the tokens a task's texts use: word-embedding rows, tokenizer.json and vocab.txt together",
        model_dir="CostEff or BERT sequence-classification folder with its tokenizer",
        output_dir="folder to write the trimmed model, tokenizer.json and vocab.txt into",
    )
    p.add_argument("--glue_dir", help="folder with <task>/{train,dev}.tsv (default: GLUE from the Hub)")
    p.add_argument("--task", help="GLUE task whose training texts are kept; its dev texts are the held-out set")
    p.add_argument("--texts", help="instead of --task: a file with one text per line whose tokens are kept")
    p.add_argument("--heldout", help="with --texts: a file of held-out texts (one per line) to report [UNK] on")
    p.add_argument("--max_texts", type=int, help="use only the first N texts of the corpus")
    p.add_argument("--min_count", type=int, default=1, help="keep a token seen at least this many times")
    p.add_argument("--keep_tokens", help="a file of extra tokens (one per line) to keep whatever their count")
    p.add_argument(
        "--no_keep_characters",
        action="store_true",
        help="drop unseen single-character pieces too (then unseen words become [UNK] instead of splitting)",
    )

    p = _add_command(
        sub,
        cmd_push,
        check=check_push,
        help="folder -> Hub repo, with code for trust_remote_code and a model card",
        description="Push a CostEff folder to the Hub in one commit: weights, tokenizer, code files and a model card.",
        model_dir="CostEff folder",
        repo_id="Hub repository, e.g. org/name (created if missing)",
    )
    p.add_argument("--eval_json", help="report of `hf-costeff evaluate` for the card's tables")
    p.add_argument("--threshold", type=float, help="exit threshold to ship (written into config.json)")
    p.add_argument("--criterion", choices=EARLY_EXIT_CRITERIA, help="exit rule of --threshold")
    p.add_argument("--teacher", help="BERT folder or Hub id it was compressed from, for the card's comparison")
    p.add_argument("--dataset", default="glue/sst2", help="dataset named in the card's metadata")
    p.add_argument("--base_model", help="Hub id of the base model, for the card's metadata")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--token", help="Hub token (default: the logged-in one)")

    p = _add_command(
        sub,
        cmd_export_onnx,
        check=check_export_onnx,
        help="CostEff folder -> ONNX segment graphs + manifest, served by ORTCostEffForSequenceClassification",
        model_dir=("folder of a saved CostEff model (with its tokenizer)", "MODEL"),
        output_dir=("new (or empty) folder to write the ONNX export into", "OUTPUT"),
    )
    p.add_argument(
        "--quantize", choices=QUANTIZATIONS, help="dynamic int8 quantization of the weights (default: float32 graphs)"
    )
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the torch exporter's)")
    p.add_argument(
        "--no_validate", action="store_true", help="skip comparing each float32 segment with PyTorch in ONNX Runtime"
    )

    # --quiet is also accepted after the command (SUPPRESS: an omitted one keeps the top-level value).
    for command in sub.choices.values():
        command.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="as hf-costeff --quiet")
    return parser


def _silence_progress():
    """--quiet: no progress bars from datasets / transformers / the Hub client, and only errors logged. Returns the
    function that restores them (main() may run in a longer process, e.g. the tests)."""
    import datasets  # noqa: PLC0415
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    state = (
        datasets.is_progress_bar_enabled(),
        datasets.logging.get_verbosity(),
        are_progress_bars_disabled(),
        hf_logging.is_progress_bar_enabled(),
        hf_logging.get_verbosity(),
    )
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    def restore() -> None:
        datasets_bars, datasets_level, hub_disabled, hf_bars, hf_level = state
        if datasets_bars:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(datasets_level)
        if not hub_disabled:
            enable_progress_bars()
        if hf_bars:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(hf_level)

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-costeff``; prints the command's JSON result on stdout. Returns the exit status."""
    args = build_parser().parse_args(argv)
    import hf_costeff.serving  # noqa: F401, PLC0415  (registers the model type and the pipeline task)

    restore = _silence_progress() if args.quiet else None
    try:
        check = getattr(args, "check", None)
        if check is not None:
            check(args)  # every argument before any model or data is read
        result = args.func(args)
    except (ValueError, TypeError, OSError) as err:  # bad input; a bug elsewhere still shows its traceback
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        print(f"hf-costeff {args.command}: error: {message or type(err).__name__}", file=sys.stderr)
        return 2
    finally:
        if restore is not None:
            restore()
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
