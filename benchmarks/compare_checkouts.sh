#!/usr/bin/env bash
# The same training run exported, calibrated, compared with PyTorch and benchmarked by two checkouts of this
# repository (e.g. before and after a refactoring), so that "behaviour and figures unchanged" is measured.
# Each checkout uses its own .venv (VENV=.venv bash scripts/setup.sh inside it).
# Usage: bash benchmarks/compare_checkouts.sh BEFORE_CHECKOUT AFTER_CHECKOUT RUN OUT
# Writes OUT/{before,after}/ (bundle, export.txt, calibration/, parity.json/.md, bench.json/.md); run on a quiet machine.
set -euo pipefail
before=$(realpath "$1"); after=$(realpath "$2"); run=$(realpath "$3"); out=$(realpath -m "$4")
for side in before after; do
  checkout=${!side}; dir="$out/$side"; mkdir -p "$dir"
  (
    cd "$checkout"
    holdout=benchmarks/splits/kermany_holdout.csv
    .venv/bin/salad-export "$run" --out "$dir/bundle" --force > "$dir/export.txt" 2>&1
    .venv/bin/salad calibrate "$dir/bundle" --precision fp16 --labelled "$holdout" --report-dir "$dir/calibration" --force
    .venv/bin/salad calibrate "$dir/bundle" --precision int8 --data benchmarks/splits/kermany_train.csv \
      --labelled "$holdout" --report-dir "$dir/calibration" --force
    .venv/bin/salad parity "$dir/bundle" --runtime onnxruntime --runtime torch --data "$holdout" \
      --json "$dir/parity.json" --markdown "$dir/parity.md"
  )
done
for side in before after; do  # benchmarks last and back to back, so that both see the same machine
  checkout=${!side}; dir="$out/$side"
  (cd "$checkout" && .venv/bin/salad bench "$dir/bundle" --runtime onnxruntime --precision fp32 --precision int8 \
    --batch 1,8,32 --iters 100 --warmup 10 --threads 2 --json "$dir/bench.json" --markdown "$dir/bench.md")
done
for f in encoder.onnx scorer.onnx model.onnx model.fp16.onnx model.int8.onnx; do
  echo "$f: $(sha256sum < "$out/before/bundle/$f" | cut -c1-16) before, $(sha256sum < "$out/after/bundle/$f" | cut -c1-16) after"
done
