#!/usr/bin/env bash
# Create .venv with salad-edge and everything the tests need (CPU only). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of PyTorch: pip takes a local wheel when one is on the machine's find-links,
# otherwise PyPI's build. Installed first so that nothing later pulls a CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# Type stubs only: tensorrt-stubs declares TensorRT itself as a dependency, which needs a GPU driver.
python -m pip install -q --no-deps "tensorrt-stubs>=10.0"
python -c "import salad, torch, onnxruntime; print('salad-edge', salad.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
