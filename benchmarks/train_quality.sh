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
# One table of every method's figures, from the JSON files above.
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = ["| method | operating score | AUC | AUPRC | AUC of `score` | AUC of `knn_angle` | normal / abnormal films | train wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|"]
for f in sorted(out.glob("*.json")):
    d = json.loads(f.read_text())
    o = d.get("outputs", {})
    rows.append(f"| {d['method']} | `{d['score']}` | {d['auc']:.4f} | {d['auprc']:.4f} | {o.get('score', {}).get('auc', float('nan')):.4f} "
                f"| {o.get('knn_angle', {}).get('auc', float('nan')):.4f} | {d['n_normal']} / {d['n_abnormal']} | {d['train_wall_seconds'] / 60:.1f} min |")
head = ("# Detector quality on held-out Kermany patients\n\nCPU preset, trained on the normal films of "
        "`benchmarks/splits/kermany_train.csv`, evaluated on `benchmarks/splits/kermany_holdout.csv` "
        "(patient-disjoint). Written by `bash benchmarks/train_quality.sh`.\n\n")
(out / "summary.md").write_text(head + "\n".join(rows) + "\n")
print("\n".join(rows))
PY
