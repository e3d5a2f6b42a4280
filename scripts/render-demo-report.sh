#!/usr/bin/env bash
# Regenerate docs/demo-report.png (the README's "what it looks like") from a real demo run, and the report's
# structure fingerprint beside it (docs/demo-report.structure.json; tests/test_demo.py fails when the
# report's structure changes and this script was not re-run).
#
#   bash scripts/render-demo-report.sh [DEMO_DIR]      # default runs/demo; runs `salad demo` there first if it has no report
#
# Needs headless Chromium (Debian/Ubuntu: apt-get update && apt-get install -y chromium). The page is
# rendered at 1280 px wide, as a newcomer's browser would show it, then cut below its last content row.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-runs/demo}
PY=.venv/bin/python
if [ ! -f "$DIR/report.html" ]; then
    .venv/bin/salad demo --out "$DIR" --force
fi
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$CHROME" ]; then
    echo "render-demo-report: needs headless Chromium (apt-get install -y chromium)" >&2
    exit 1
fi
RAW=$(mktemp --suffix=.png)
trap 'rm -f "$RAW"' EXIT
"$CHROME" --headless --no-sandbox --disable-gpu --disable-background-networking --hide-scrollbars \
    --force-device-scale-factor=1 --window-size=1280,9000 --screenshot="$RAW" "file://$(realpath "$DIR/report.html")" 2>/dev/null
"$PY" - "$RAW" "$DIR/report.html" <<'PY'
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from salad.cli.demo_report import structure, structure_fingerprint

raw, report = sys.argv[1], Path(sys.argv[2])
img = cv2.imread(raw)
if img is None:
    sys.exit(f"render-demo-report: Chromium wrote no screenshot ({raw})")
rows = np.flatnonzero((img < 250).any(axis=(1, 2)))  # rows holding anything but the white page
img = img[: int(rows[-1]) + 40] if rows.size else img
cv2.imwrite("docs/demo-report.png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
html = report.read_text(encoding="utf-8")
Path("docs/demo-report.structure.json").write_text(
    json.dumps({"fingerprint": structure_fingerprint(html), "structure": structure(html),
                "rendered": "scripts/render-demo-report.sh, headless Chromium at 1280 px"}, indent=1) + "\n",
    encoding="utf-8")
print(f"wrote docs/demo-report.png ({img.shape[1]}×{img.shape[0]} px) and docs/demo-report.structure.json")
PY
