#!/usr/bin/env bash
# Run the suite against the newest versions pyproject.toml allows, in .venv-latest, to see dependency
# drift before users do. Prints what changed against requirements/constraints.txt. Exit code: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
SALAD_DEPS=latest VENV=.venv-latest bash scripts/setup.sh
.venv-latest/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$//' | sort > .venv-latest/freeze.txt
echo "versions that differ from requirements/constraints.txt (< tested, > newest):"
diff <(grep -v '^#' requirements/constraints.txt | sort) .venv-latest/freeze.txt || true
.venv-latest/bin/python -m pytest -q "$@"
