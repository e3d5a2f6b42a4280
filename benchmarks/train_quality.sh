#!/usr/bin/env bash
# Detector quality on real chest X-rays: train the CPU preset on the training patients' normal films
# of the patient-disjoint Kermany split, evaluate on the held-out patients (normal + pneumonia).
# Usage: bash benchmarks/train_quality.sh [METHOD...]   (default: salad memdae salad-no-agg)
# Extra `salad train` flags can be passed in TRAIN_FLAGS (e.g. TRAIN_FLAGS="--threads 1").
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/quality
mkdir -p "$out" runs
for method in "${@:-salad memdae salad-no-agg}"; do
  for m in $method; do
    start=$(date +%s)
    .venv/bin/salad train --data benchmarks/splits/kermany_train.csv --preset cpu --method "$m" --out "runs/quality-$m" --force ${TRAIN_FLAGS:-}
    end=$(date +%s)
    .venv/bin/salad evaluate "runs/quality-$m" --data benchmarks/splits/kermany_holdout.csv \
      --json "$out/$m.json" --plots "$out/plots-$m"
    python3 - "$out/$m.json" "$((end - start))" "runs/quality-$m" <<'PY'
import json, sys
path, seconds, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = json.load(open(path))
d.update(method=run.split("quality-")[1], train_wall_seconds=seconds,
         train="benchmarks/splits/kermany_train.csv (label 0 only)", test="benchmarks/splits/kermany_holdout.csv")
json.dump(d, open(path, "w"), indent=2)
print(json.dumps(d))
PY
  done
done
