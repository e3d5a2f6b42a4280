#!/usr/bin/env bash
# The same training run exported, calibrated, compared with PyTorch and benchmarked by two checkouts of this
# repository (e.g. before and after a refactoring), so that "behaviour and figures unchanged" is measured.
# Each checkout uses its own .venv (VENV=.venv bash scripts/setup.sh inside it).
# Usage: bash benchmarks/compare_checkouts.sh [--skip-bench] BEFORE_CHECKOUT AFTER_CHECKOUT RUN OUT
# Writes OUT/{before,after}/ (bundle, export.txt, calibration/, parity.json/.md, bench.json/.md); run on a quiet machine.
# Then benchmarks/compare_bundles.py (this checkout's, with the AFTER checkout's Python) compares every file of both
# sides (sha256; graphs also after normalising the BEFORE graph's opset imports; JSON figure by figure) into
# OUT/compare.json and OUT/compare.md. --skip-bench leaves the benchmarks out (a busy machine measures only noise).
set -euo pipefail
bench=1
if [ "${1:-}" = --skip-bench ]; then bench=0; shift; fi
[ $# -eq 4 ] || { echo "usage: $0 [--skip-bench] BEFORE_CHECKOUT AFTER_CHECKOUT RUN OUT" >&2; exit 2; }
here=$(dirname "$(realpath "$0")")
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
    .venv/bin/salad parity "$dir/bundle" --runtime onnxruntime --runtime torch --labelled "$holdout" \
      --json "$dir/parity.json" --markdown "$dir/parity.md"
  )
done
for side in before after; do  # benchmarks last and back to back, so that both see the same machine
  [ "$bench" = 1 ] || break
  checkout=${!side}; dir="$out/$side"
  (cd "$checkout" && .venv/bin/salad bench "$dir/bundle" --runtime onnxruntime --precision fp32 --precision int8 \
    --batch 1,8,32 --iters 100 --warmup 10 --threads 2 --json "$dir/bench.json" --markdown "$dir/bench.md")
done
"$after/.venv/bin/python" "$here/compare_bundles.py" "$out" | tee "$out/compare.md"
