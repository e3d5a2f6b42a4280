#!/usr/bin/env bash
# Detector quality of the CPU preset by the protocol of docs/quality.md: 3 seeds on the development split
# (where recipes are chosen) and on the held-out Kermany patients, both under the acquisition shifts, and
# on the NIH second site; floors beside every figure. Results: benchmarks/results/quality/protocol/.
# The held-out runs are kept in runs/quality/ for benchmarks/deploy_quality.sh.
# Usage: bash benchmarks/train_quality.sh [THREADS]   (default 1: two scripts can share a 2-core machine)
set -euo pipefail
cd "$(dirname "$0")/.."
P=(.venv/bin/python benchmarks/quality_protocol.py --recipe cpu --threads "${1:-1}" --seeds 0,1,2)
"${P[@]}" --split dev --robustness
"${P[@]}" --split holdout --robustness --keep-runs runs/quality
"${P[@]}" --split nih
