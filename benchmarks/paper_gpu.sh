#!/usr/bin/env bash
# The paper's chest schedule on a GPU: 256², width 1.0, 50 pre-training + 10 rounds × 50 epochs, batch 16, Adam 1e-4
# (`--preset paper`), trained on the Kermany training normals with AR 0 and AR 10 % (the two runs share the GPU, in
# parallel: at batch 16 one run leaves most of an H100 idle), each exported to a verified bundle and evaluated on
# held-out Kermany films; writes $OUT/result.json. Target: under 9 minutes on one H100-class GPU.
#
#   python benchmarks/make_paper_gpu_input.py pack      # once, where the Kermany films are (56.2 MB, git-ignored)
#   benchmarks/paper_gpu.sh                             # on the GPU machine: needs salad-edge[train,export] and CUDA PyTorch
#   SMOKE=1 benchmarks/paper_gpu.sh                     # CPU plumbing check: 64², width 0.125, 2 epochs, K 20
#
# Environment: INPUT (the packed films), OUT (result folder), PYTHON, DEVICE (cuda), and the schedule overrides
# SIZE, WIDTH, PRETRAIN_EPOCHS, ROUNDS, ROUND_EPOCHS, BATCH_SIZE, K, THREADS, CHECKPOINT_EVERY (empty: the paper preset's value).
# Precision: fp32 training with PyTorch's defaults (no autocast); the export and its parity check are fp32.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
INPUT=${INPUT:-benchmarks/paper_gpu/kermany256.npz.xz}
OUT=${OUT:-benchmarks/results/paper_gpu}
if [[ "${SMOKE:-0}" == 1 ]]; then
  DEVICE=${DEVICE:-cpu} SIZE=${SIZE:-64} WIDTH=${WIDTH:-0.125} PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-1} ROUNDS=${ROUNDS:-1}
  ROUND_EPOCHS=${ROUND_EPOCHS:-1} THREADS=${THREADS:-1} K=${K:-20}
fi
DEVICE=${DEVICE:-cuda}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-50}  # once per round: a checkpoint of the width-1.0 model is ~380 MB
if [[ ! -f "$INPUT" ]]; then
  echo "error: $INPUT not found; make it with: python benchmarks/make_paper_gpu_input.py pack" >&2
  exit 1
fi
overrides=()
for pair in size:SIZE width:WIDTH pretrain-epochs:PRETRAIN_EPOCHS rounds:ROUNDS round-epochs:ROUND_EPOCHS \
            batch-size:BATCH_SIZE k:K threads:THREADS checkpoint-every:CHECKPOINT_EVERY; do
  var=${pair#*:}
  value=${!var:-}
  if [[ -n "$value" ]]; then overrides+=("--${pair%%:*}" "$value"); fi
done
work=$(mktemp -d "${TMPDIR:-/tmp}/paper-gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT
SECONDS=0
"$PYTHON" benchmarks/make_paper_gpu_input.py unpack "$INPUT" "$work/films" >/dev/null
pids=()
for ar in 0 0.1; do
  name="ar${ar/./}"
  "$PYTHON" -m salad.cli -q train --data "$work/films/train.csv" --preset paper --device "$DEVICE" \
    --known-anomaly-ratio "$ar" --out "$work/runs/$name" "${overrides[@]}" >"$work/train-$name.json" 2>"$work/train-$name.log" &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "error: training run $i failed:" >&2
    tail -n 20 "$work"/train-*.log >&2
    exit 1
  fi
done
for run in "$work"/runs/*; do
  name=$(basename "$run")
  "$PYTHON" -m salad.cli -q export "$run" --out "$work/bundles/$name" >/dev/null
  "$PYTHON" -m salad.cli -q evaluate "$run" --labelled "$work/films/test.csv" --json "$work/eval-$name.json" >/dev/null
done
smoke=()
if [[ "${SMOKE:-0}" == 1 ]]; then smoke=(--smoke); fi
"$PYTHON" benchmarks/make_paper_gpu_input.py report "$work" "$OUT/result.json" --wall-seconds "$SECONDS" "${smoke[@]}"
