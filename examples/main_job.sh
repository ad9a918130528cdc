#!/usr/bin/env bash
# The main job: a real, small COST-EFF compression on this repository's offline model and data, with the paper's recipe.
#   teacher:  the packaged MiniLM-L6-H384 (stand-in for bert-base-uncased) fine-tuned on 4000 SST-2 examples;
#   TA:       the teacher converted to a multi-exit CostEff model (an exit after each of the 6 layers, tanh pooler, mean
#             pooling: the backbone is a mean-pooled sentence-transformers model; gradient equilibrium), distilled from
#             the teacher for 1 epoch (0.5 hard labels + 0.5 per-exit prediction KD + hidden-state KD);
#   student:  a copy of the TA pruned iteratively while distilled from the TA (1 epoch; one head per layer per event,
#             8 events in its first half, to 4 of 12 heads and 384 of 1536 FFN neurons per layer, word embedding
#             factorized to rank 128 at the last event; importance over every exit against the TA's soft labels),
#             then recovered from the TA: 0.5 epoch of hidden-state KD, then 2 epochs of per-exit prediction +
#             hidden-state KD;
#   policy:   the entropy threshold losing at most 1 accuracy point (minus a 0.5-point margin) on 2000 held-out
#             training rows drawn with the dev set's lengths, then checked on dev (saved only if it keeps its promise);
#   output:   runs/sst2-minilm/final (model, tokenizer, code files for trust_remote_code, model card with the recipe),
#             runs/sst2-minilm/ta (the TA, reused by a rerun), runs/sst2-minilm/all_results.json (every stage's dev
#             accuracy), and a summary table on the console.
# Measured wall time and machine: README.md ("Set-up"), regenerated from all_results.json by
# examples/readme_figures.py. GLUE files are read from ../shared/data/glue (a folder beside the clone).
# With the Hub: --model_name_or_path bert-base-uncased, and drop --glue_dir to read GLUE with datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE_DIR="${GLUE_DIR:-../shared/data/glue}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/sst2-minilm}"

python examples/run_costeff_glue.py \
  --model_name_or_path minilm \
  --glue_dir "$GLUE_DIR" --task_name sst2 --output_dir "$OUTPUT_DIR" \
  --max_train_samples 4000 --max_seq_length 64 \
  --per_device_train_batch_size 32 --per_device_eval_batch_size 64 \
  --teacher_epochs 1 --teacher_learning_rate 2e-4 --ta_epochs 1 --learning_rate 2e-4 \
  --num_train_epochs 1 --recover_hidden_epochs 0.5 --recover_epochs 2 \
  --target_heads 4 --target_ffn 384 --embedding_rank 128 --calibration_batches 2 \
  --calibration_samples 2000 --max_metric_drop 0.01 --calibration_margin 0.005 \
  --eval_thresholds 0.2,0.3,0.4,0.5,0.6,0.65 \
  --logging_steps 8 --save_strategy no --report_to none --use_cpu "$@"
