"""CPU serving on SST-2 dev: teacher and CostEff student, in PyTorch and in ONNX Runtime, one interleaved run.

Variants (all on the same tokenized dev set, same thread count):
  (a) ``teacher_pytorch``: the fine-tuned ``BertForSequenceClassification``;
  (b) ``teacher_ort``: the same teacher exported the way a user would (``torch.onnx.export`` of the whole model, the
      default dynamo exporter; optimum's ONNX Runtime part does not support transformers 5, see docs/serve.md), run by
      an ``onnxruntime.InferenceSession``; ``teacher_ort_int8``: that graph with dynamic int8 quantization (the
      baseline of the int8 student);
  (c) ``costeff_pytorch``: the CostEff student with its configured exit policy (batched early exit);
  (d) ``costeff_ort_fp32`` / ``costeff_ort_int8``: the student exported with ``hf_costeff.serving.export_onnx``
      (float32, and dynamic int8) and run by ``ORTCostEffForSequenceClassification`` with the same policy.

Measured: dev accuracy, exit layers and FLOPs over the whole dev set (batch 32, one untimed pass), batch-32
throughput on the first ``--timing_examples`` sentences (dataset order, each batch padded to its longest sentence),
batch-1 latency on the first ``--latency_examples``; each timed repeat runs every variant once, so that the load of a
shared machine hits them alike (medians reported, load averages recorded). FLOPs per
example come from the shapes (``hf_costeff.cost``) at each sentence's real length and exit. Goals: (d) beats (c), and
(d)'s batch-32 gain over (b) is at least 0.8 x the FLOPs reduction. Where it is missed, an ONNX Runtime profile of
one batch-32 pass of (b) and (d) splits the time by operator and shows the time spent outside the sessions.

Usage: python benchmarks/onnx_serving.py --teacher TEACHER_DIR --student COSTEFF_DIR
           [--output results.json] [--plot results.png] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertForSequenceClassification

from hf_costeff import CostEffConfig, average_flops
from hf_costeff.data import load_glue
from hf_costeff.serving import ORTCostEffForSequenceClassification, export_onnx, load_costeff

REPO = Path(__file__).resolve().parents[1]
MATMUL_OPS = ("MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "FusedMatMul", "MatMulNBits")


def session_options(threads: int, profile_prefix: str | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def export_teacher(teacher, path: Path) -> None:
    """What a user does with a transformers classifier: export the whole model with dynamic batch and length."""
    from torch.export import Dim  # noqa: PLC0415

    example = {k: torch.ones(2, 8, dtype=torch.long) for k in ("input_ids", "token_type_ids", "attention_mask")}
    axes = {0: Dim("batch"), 1: Dim("sequence", max=teacher.config.max_position_embeddings)}
    torch.onnx.export(
        teacher,
        (),
        str(path),
        kwargs=example,
        input_names=list(example),
        output_names=["logits"],
        dynamic_shapes={k: axes for k in example},
        dynamo=True,
    )


class TeacherORT:
    """The exported teacher as a callable returning logits (numpy)."""

    def __init__(self, path: Path, options: ort.SessionOptions):
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"logits": self.session.run(None, {k: batch[k] for k in self.inputs})[0]}


def make_runners(teacher, teacher_sessions, student, ort_students) -> dict:
    """Each variant as ``batch (numpy dict) -> (logits, exit_layer or None)``: torch inputs built outside the timer."""

    def torch_runner(model, early_exit: bool):
        def run(batch):
            with torch.inference_mode():
                out = model(**batch["torch"])
            return out.logits.numpy(), out.exit_layer.numpy() if early_exit else None

        return run

    runners = {"teacher_pytorch": torch_runner(teacher, False)}
    for name, session in teacher_sessions.items():
        runners[name] = lambda batch, session=session: (session(batch["numpy"])["logits"], None)
    runners["costeff_pytorch"] = torch_runner(student, True)
    for name, model in ort_students.items():
        runners[name] = lambda batch, model=model: (lambda out: (out.logits, out.exit_layer))(model(**batch["numpy"]))
    return runners


def batches_of(tokenizer, sentences: list[str], batch_size: int, max_length: int) -> list[dict]:
    out = []
    for start in range(0, len(sentences), batch_size):
        enc = tokenizer(
            sentences[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        numpy_batch = {k: enc[k].astype(np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
        out.append({"numpy": numpy_batch, "torch": {k: torch.from_numpy(v) for k, v in numpy_batch.items()}})
    return out


def timed_pass(run, batches) -> tuple[float, list[float], np.ndarray, np.ndarray | None]:
    """Wall time of the whole pass, per-batch times, and the predictions and exit layers it made."""
    times, predictions, exits = [], [], []
    start = time.perf_counter()
    for batch in batches:
        t0 = time.perf_counter()
        logits, exit_layer = run(batch)
        times.append(time.perf_counter() - t0)
        predictions.append(logits.argmax(-1))
        if exit_layer is not None:
            exits.append(exit_layer)
    total = time.perf_counter() - start
    return total, times, np.concatenate(predictions), np.concatenate(exits) if exits else None


def ort_profile(make_profiled, batches, folder: Path, name: str) -> dict:
    """One profiled batch-32 pass (fresh sessions): kernel time per operator type summed over the sessions, the
    share of matrix products, and the share of the wall time spent outside ``session.run`` (Python and numpy)."""
    model, sessions = make_profiled(str(folder / f"profile_{name}"))
    wall_start = time.perf_counter()
    for batch in batches:
        model(batch)
    wall = time.perf_counter() - wall_start
    per_op: dict[str, float] = defaultdict(float)
    session_runs = 0.0
    for session in sessions:
        events = json.loads(Path(session.end_profiling()).read_text())
        session_runs += sum(e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run") / 1e6
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_op[e["args"]["op_name"]] += e["dur"] / 1e6
    kernels = sum(per_op.values())
    matmul = sum(v for k, v in per_op.items() if k in MATMUL_OPS)
    return {
        "wall_seconds": wall,
        "session_run_seconds": session_runs,
        "outside_sessions_share": max(0.0, 1 - session_runs / wall),
        "kernel_seconds": kernels,
        "matmul_share_of_kernels": matmul / kernels if kernels else None,
        "top_ops": sorted(({"op": k, "seconds": v} for k, v in per_op.items()), key=lambda r: -r["seconds"])[:10],
    }


def teacher_flops(teacher_config, exit_lengths: list[int]) -> float:
    config = CostEffConfig.from_bert_config(
        teacher_config, exit_layers=[teacher_config.num_hidden_layers], exit_pooler="dense"
    )
    return average_flops(config, [config.num_hidden_layers] * len(exit_lengths), exit_lengths)


def plot(report: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(report["variants"])
    rows = [report["variants"][n] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(names, [r["batch32_sentences_per_second"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("sentences / s (batch 32, median)")
    axes[1].bar(names, [r["batch1_median_ms"] for r in rows], color="tab:orange")
    axes[1].set_ylabel("ms / sentence (batch 1, median)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    load = report["machine"]["load_average_start"]
    fig.suptitle(
        f"SST-2 dev, {report['machine']['threads']} thread(s), load avg {load[0]:.1f} at start; "
        f"FLOPs reduction {report['ratios']['flops_reduction']:.1f}x"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="fine-tuned BertForSequenceClassification folder")
    parser.add_argument("--student", required=True, help="CostEff folder (its config's exit policy is used)")
    parser.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "data" / "glue"), help="GLUE folder")
    parser.add_argument("--max_length", type=int, default=64, help="tokenizer truncation length")
    parser.add_argument("--batch_size", type=int, default=32, help="batch size of the throughput runs")
    parser.add_argument("--max_examples", type=int, help="first N dev sentences only (a smoke run; default: all)")
    parser.add_argument(
        "--timing_examples", type=int, default=320, help="first N dev sentences of the timed batch-32 passes"
    )
    parser.add_argument("--latency_examples", type=int, default=100, help="dev sentences timed one at a time")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians reported)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and onnxruntime")
    parser.add_argument("--work_dir", help="where the ONNX exports go (default: a temporary folder)")
    parser.add_argument("--output", help="write the JSON report here (an existing file is replaced)")
    parser.add_argument("--plot", help="write a PNG bar chart here (an existing file is replaced)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    load_start = os.getloadavg()

    tokenizer = AutoTokenizer.from_pretrained(args.student)
    dev = load_glue("sst2", args.glue_dir)["validation"]
    sentences, labels = list(dev["sentence"])[: args.max_examples], np.array(dev["label"])[: args.max_examples]
    teacher = BertForSequenceClassification.from_pretrained(args.teacher).eval()
    student = load_costeff(args.student).eval()
    policy = {
        "criterion": student.config.exit_criterion,
        "threshold": student.config.exit_threshold,
        "patience": student.config.exit_patience,
    }
    print(f"student exit policy: {policy}")

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="onnx_serving_"))
    work.mkdir(parents=True, exist_ok=True)
    export_seconds = {}  # None: reused from an earlier run's --work_dir
    teacher_path, teacher_int8_path = work / "teacher.onnx", work / "teacher_int8.onnx"
    with tqdm(total=4, desc="export") as bar:
        t0 = time.perf_counter()
        if not teacher_path.exists():
            export_teacher(teacher, teacher_path)
        export_seconds["teacher_ort"] = time.perf_counter() - t0
        bar.update()
        t0 = time.perf_counter()
        if not teacher_int8_path.exists():
            # The int8 baseline for the int8 student: the same dynamic quantization of every matrix product.
            quantize_dynamic(
                teacher_path, teacher_int8_path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
            )
        export_seconds["teacher_ort_int8"] = time.perf_counter() - t0
        bar.update()
        for quantize in (None, "int8"):
            name = f"costeff_ort_{quantize or 'fp32'}"
            t0 = time.perf_counter()
            if not (work / name / "onnx_manifest.json").exists():
                export_onnx(student, work / name, quantize=quantize, tokenizer=tokenizer)
            export_seconds[name] = time.perf_counter() - t0
            bar.update()
    options = session_options(args.threads)
    ort_students = {
        name: ORTCostEffForSequenceClassification.from_pretrained(work / name, session_options=options)
        for name in ("costeff_ort_fp32", "costeff_ort_int8")
    }
    teacher_sessions = {
        "teacher_ort": TeacherORT(teacher_path, options),
        "teacher_ort_int8": TeacherORT(teacher_int8_path, options),
    }
    runners = make_runners(teacher, teacher_sessions, student, ort_students)

    batches = batches_of(tokenizer, sentences, args.batch_size, args.max_length)
    timed = batches[: -(-args.timing_examples // args.batch_size)]
    num_timed = sum(len(b["numpy"]["input_ids"]) for b in timed)
    singles = batches_of(tokenizer, sentences[: args.latency_examples], 1, args.max_length)
    lengths = [int(b["numpy"]["attention_mask"][i].sum()) for b in batches for i in range(len(b["numpy"]["input_ids"]))]

    # Accuracy, exits and FLOPs: one untimed pass over the whole dev set per variant.
    predictions, exits = {}, {}
    for name, run in tqdm(runners.items(), desc="accuracy pass"):
        _, _, predictions[name], exits[name] = timed_pass(run, batches)
    for run in runners.values():  # warm-up: first-call allocations and ORT's first-run optimizations
        timed_pass(run, timed[:2])
        timed_pass(run, singles[:5])
    throughput, latency = defaultdict(list), defaultdict(list)
    for _ in tqdm(range(args.repeats), desc="timed repeats"):
        for name, run in runners.items():
            total, _, _, _ = timed_pass(run, timed)
            throughput[name].append(num_timed / total)
            _, times, _, _ = timed_pass(run, singles)
            latency[name].append(statistics.median(times) * 1e3)

    def flops_of(name: str, rows: slice) -> float:
        if exits[name] is None:
            return teacher_flops(teacher.config, lengths[rows])
        return average_flops(student.config, exits[name][rows].tolist(), lengths[rows])

    variants = {}
    for name in runners:
        variants[name] = {
            "accuracy": float((predictions[name] == labels).mean()),
            "batch32_sentences_per_second": statistics.median(throughput[name]),
            "batch32_runs": throughput[name],
            "batch1_median_ms": statistics.median(latency[name]),
            "batch1_runs_ms": latency[name],
            "average_flops": flops_of(name, slice(None)),
            "average_flops_timed_examples": flops_of(name, slice(0, num_timed)),
            "avg_exit_layer": float(exits[name].mean()) if exits[name] is not None else None,
        }
    agree = {
        name: float((predictions[name] == predictions["costeff_pytorch"]).mean())
        for name in ("costeff_ort_fp32", "costeff_ort_int8")
    }
    exits_agree = float((exits["costeff_ort_fp32"] == exits["costeff_pytorch"]).mean())

    def tput(name: str) -> float:
        return variants[name]["batch32_sentences_per_second"]

    # The gain is measured on the timed sentences: compare it with the FLOPs reduction on the same sentences.
    flops_reduction = (
        variants["teacher_ort"]["average_flops_timed_examples"]
        / variants["costeff_ort_fp32"]["average_flops_timed_examples"]
    )
    ratios = {
        "flops_reduction": flops_reduction,
        "flops_reduction_full_dev": variants["teacher_ort"]["average_flops"]
        / variants["costeff_ort_fp32"]["average_flops"],
    }
    for name in ("costeff_ort_fp32", "costeff_ort_int8"):
        gain = tput(name) / tput("teacher_ort")
        ratios[f"{name}_over_costeff_pytorch_batch32"] = tput(name) / tput("costeff_pytorch")
        ratios[f"{name}_over_costeff_pytorch_batch1"] = (
            variants["costeff_pytorch"]["batch1_median_ms"] / variants[name]["batch1_median_ms"]
        )
        ratios[f"{name}_over_teacher_ort_batch32"] = gain
        ratios[f"{name}_gain_over_flops_reduction"] = gain / flops_reduction
    ratios["costeff_ort_int8_over_teacher_ort_int8_batch32"] = tput("costeff_ort_int8") / tput("teacher_ort_int8")
    ratios["teacher_ort_over_teacher_pytorch_batch32"] = tput("teacher_ort") / tput("teacher_pytorch")
    goals = {
        "ort_fp32_beats_pytorch_student": ratios["costeff_ort_fp32_over_costeff_pytorch_batch32"] > 1,
        "ort_fp32_gain_at_least_0.8x_flops_reduction": ratios["costeff_ort_fp32_gain_over_flops_reduction"] >= 0.8,
        "ort_int8_gain_at_least_0.8x_flops_reduction": ratios["costeff_ort_int8_gain_over_flops_reduction"] >= 0.8,
    }

    # Where the time goes: one profiled batch-32 pass of the exported teacher and of the exported student.
    def teacher_profiled(prefix):
        model = TeacherORT(teacher_path, session_options(args.threads, prefix))
        return model, [model.session]

    def student_profiled(prefix):
        model = ORTCostEffForSequenceClassification.from_pretrained(
            work / "costeff_ort_fp32", session_options=session_options(args.threads, prefix)
        )
        return (lambda batch: model(**batch)), [model.embeddings_session, *model.block_sessions]

    numpy_batches = [b["numpy"] for b in timed]
    profiles = {
        "teacher_ort": ort_profile(teacher_profiled, numpy_batches, work, "teacher"),
        "costeff_ort_fp32": ort_profile(student_profiled, numpy_batches, work, "costeff"),
    }
    report = {
        "command": "python benchmarks/onnx_serving.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "note": "shared machine: other jobs ran during the measurement; the variants are interleaved",
        },
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "teacher": str(args.teacher),
        "student": str(args.student),
        "student_policy": policy,
        "num_dev_examples": len(sentences),
        "batch_size": args.batch_size,
        "timing_examples": num_timed,
        "latency_examples": args.latency_examples,
        "repeats": args.repeats,
        "export_seconds": export_seconds,
        "variants": variants,
        "ratios": ratios,
        "goals": goals,
        "ort_student_prediction_agreement_with_pytorch": agree,
        "ort_fp32_exit_layer_agreement_with_pytorch": exits_agree,
        "ort_profiles_batch32": profiles,
        "wall_seconds": time.time() - started,
    }
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, Path(args.plot))

    print(f"\nSST-2 dev ({len(sentences)} sentences), {args.threads} thread(s), load {load_start[0]:.1f}")
    print(f"{'variant':<18} {'accuracy':>8} {'b32 sent/s':>11} {'b1 ms':>8} {'MFLOPs':>8} {'exit':>5}")
    for name, row in variants.items():
        exit_text = f"{row['avg_exit_layer']:.2f}" if row["avg_exit_layer"] is not None else "-"
        print(
            f"{name:<18} {row['accuracy']:8.4f} {row['batch32_sentences_per_second']:11.1f} "
            f"{row['batch1_median_ms']:8.2f} {row['average_flops'] / 1e6:8.1f} {exit_text:>5}"
        )
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")
    print(f"goals: {goals}")
    for name, prof in profiles.items():
        print(
            f"{name} profile: {100 * prof['outside_sessions_share']:.0f}% of the wall time outside ORT sessions, "
            f"matrix products {100 * (prof['matmul_share_of_kernels'] or 0):.0f}% of kernel time"
        )


if __name__ == "__main__":
    main()
