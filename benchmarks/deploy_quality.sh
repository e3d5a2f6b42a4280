#!/usr/bin/env bash
# The deployment checks on a real CPU-preset bundle: export a held-out quality run of train_quality.sh,
# add the fp16 and int8 variants (int8 calibrated on the training patients' normal films), and
# measure every variant against the PyTorch reference on the held-out patients (normal + pneumonia).
# Usage: bash benchmarks/deploy_quality.sh [RUN] [BUNDLE]   (defaults: runs/quality/cpu-holdout-s0 runs/bundle-kermany)
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/quality/cpu-holdout-s0}
bundle=${2:-runs/bundle-kermany}
out=benchmarks/results/deploy
holdout=benchmarks/splits/kermany_holdout.csv
mkdir -p "$out"
.venv/bin/salad-export "$run" --out "$bundle" --force | tee "$out/export.txt"
# ΔAUC measured on the held-out patients (a measurement: no --max-auc-drop, nothing is chosen on them).
.venv/bin/salad calibrate "$bundle" --precision fp16 --labelled "$holdout" --report-dir "$out/calibration" --force
.venv/bin/salad calibrate "$bundle" --precision int8 --data benchmarks/splits/kermany_train.csv \
  --labelled "$holdout" --report-dir "$out/calibration" --force
.venv/bin/salad parity "$bundle" --runtime onnxruntime --runtime torch --labelled "$holdout" \
  --json "$out/parity.json" --markdown "$out/parity.md"
