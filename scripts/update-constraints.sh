#!/usr/bin/env bash
# Make the newest allowed versions the tested set: run after scripts/test-latest.sh passed, commit the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-latest/bin/python ] || { echo "error: no .venv-latest; run scripts/test-latest.sh first." >&2; exit 2; }
{
  sed -n '1,3p' requirements/constraints.txt
  .venv-latest/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$//'
} > requirements/constraints.txt.new
mv requirements/constraints.txt.new requirements/constraints.txt
git diff --stat requirements/constraints.txt
