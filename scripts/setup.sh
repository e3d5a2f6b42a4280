#!/usr/bin/env bash
# Create a virtual environment with salad-edge and everything the tests need (CPU only). Safe to re-run.
#
#   bash scripts/setup.sh                      # .venv, the tested set in requirements/constraints.txt
#   SALAD_DEPS=latest VENV=.venv-latest bash scripts/setup.sh   # the newest versions pyproject.toml allows
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}
DEPS=${SALAD_DEPS:-pinned}
case "$DEPS" in
  pinned) PIN=(-c requirements/constraints.txt); UPGRADE=() ;;
  latest) PIN=(); UPGRADE=(--upgrade --upgrade-strategy eager) ;;
  *) echo "error: SALAD_DEPS=$DEPS; expected 'pinned' (requirements/constraints.txt) or 'latest'." >&2; exit 2 ;;
esac
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# The CPU build of PyTorch: pip takes a local wheel when one is on the machine's find-links,
# otherwise PyPI's build. Installed first so that nothing later pulls a CUDA build.
python -m pip install -q "${PIN[@]}" "${UPGRADE[@]}" "torch>=2.3"
python -m pip install -q "${PIN[@]}" "${UPGRADE[@]}" -e ".[dev]"
# Type stubs only: tensorrt-stubs declares TensorRT itself as a dependency, which needs a GPU driver.
python -m pip install -q "${PIN[@]}" "${UPGRADE[@]}" --no-deps "tensorrt-stubs>=10.0"
python -c "import salad, torch, onnxruntime; print('salad-edge', salad.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__, '| deps: $DEPS')"
