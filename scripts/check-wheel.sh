#!/usr/bin/env bash
# The console install as a user meets it: build the wheel, install it with `pip install "salad-edge[runtime]"`
# (the README's line) and with [runtime,dicom] into clean virtual environments — no PyTorch, no onnx — and
# run `salad inspect`, `salad score`, `salad parity` and a short `salad serve` exchange from there.
# CI runs it before the tests (.ci/run). Needs .venv (scripts/setup.sh): it builds the test bundle and is the
# DICOM sender, from outside the console's environment.
#
#   bash scripts/check-wheel.sh                            # trains and exports a tiny bundle first (about a minute)
#   SALAD_BUNDLE=bundles/cxr bash scripts/check-wheel.sh   # checks with that bundle instead
#   KEEP=1 bash scripts/check-wheel.sh                     # keep the work folder (wheel, venvs, logs) for a look
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
DEV=$ROOT/.venv/bin
[ -x "$DEV/python" ] || { echo "check-wheel: $DEV/python missing; run bash scripts/setup.sh first." >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/salad-wheel.XXXXXX")
SERVE_PID=
cleanup() {
  if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then kill -KILL "$SERVE_PID" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "check-wheel: work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() { echo "check-wheel: FAILED: $*" >&2; exit 1; }
step() { echo "check-wheel: $*"; }
START=$SECONDS

# 1. The wheel, built in isolation (setuptools from the index, as `python -m build` would) from a copy of the tree.
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard -- pyproject.toml setup.py README.md LICENSE \
    salad train export calibration runtime serve similarity onsite cli \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$WORK/src"
step "building the wheel"
"$DEV/python" -m pip wheel -v --no-deps -w "$WORK/dist" "$WORK/src" > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "the wheel did not build"; }
if grep -n -i -E "deprecat|would be ignored|absent from the .packages" "$WORK/build.log"; then fail "setuptools warned while building (above)"; fi
WHEEL=$(ls "$WORK"/dist/salad_edge-*.whl)
step "built $(basename "$WHEEL")"

# 2. A bundle to check with (made by the training environment: the console cannot make one).
BUNDLE=${SALAD_BUNDLE:-}
if [ -z "$BUNDLE" ]; then
  step "training and exporting a tiny bundle with .venv"
  "$DEV/salad" -q train --data salad/sample/train/normal --val salad/sample/eval --out "$WORK/run" --method salad \
    --size 64 --width 0.125 --pretrain-epochs 1 --rounds 2 --round-epochs 1 --batch-size 16 --k 20 --threads 2 \
    > "$WORK/train.log" 2>&1 || { tail -20 "$WORK/train.log"; fail "training the tiny run"; }
  "$DEV/salad-export" "$WORK/run" --out "$WORK/bundle" --reference-films 16 > "$WORK/export.log" 2>&1 \
    || { tail -20 "$WORK/export.log"; fail "exporting the tiny bundle"; }
  BUNDLE=$WORK/bundle
fi
FILM=$("$DEV/python" -c "from pydicom.data import get_testdata_file; print(get_testdata_file('RG1_UNCR.dcm'))")
FILMS=(salad/sample/eval/normal/IM-0158-0001.jpeg salad/sample/eval/pneumonia/"$(ls salad/sample/eval/pneumonia | head -1)" "$FILM")

# 3. Clean environments from the wheel, with the README's install line (the wheel's folder as the place to find it).
console() {  # console VENV EXTRAS: a fresh venv with salad-edge[EXTRAS] from the wheel, checked to be torch- and onnx-free
  "$PY" -m venv "$1"
  "$1/bin/python" -m pip install -q -c "$ROOT/requirements/constraints.txt" --find-links "$WORK/dist" "salad-edge[$2]" \
    > "$1.log" 2>&1 || { tail -20 "$1.log"; fail "pip install \"salad-edge[$2]\" from the wheel"; }
  "$1/bin/python" - "$ROOT" "$2" <<'EOF' || fail "the [$2] environment is not a console install (above)"
import hashlib, importlib.util, pathlib, sys
root, extras = pathlib.Path(sys.argv[1]), sys.argv[2]
present = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is not None]
if present:
    sys.exit(f"{', '.join(present)} importable after pip install salad-edge[{extras}]: the console install must not need them")
import salad, salad.runtime, salad.runtime.parity, salad.runtime.bench  # noqa: E401 - the subpackages a console runs
installed = pathlib.Path(salad.__file__).parent
if root in installed.parents or installed == root / "salad":
    sys.exit(f"salad was imported from the source tree {installed}, not from the installed wheel")
same = hashlib.sha256((installed / "manifest.py").read_bytes()).digest() == hashlib.sha256((root / "salad/manifest.py").read_bytes()).digest()
if not same:
    sys.exit(f"{installed} is not the wheel just built (salad/manifest.py differs): pip took another salad-edge")
print(f"check-wheel: [{extras}] from the wheel at {installed}; torch and onnx not importable")
EOF
}
cd "$WORK"  # nothing below may import the source tree
console "$WORK/runtime" runtime
console "$WORK/dicom" runtime,dicom
cd "$ROOT"

# 4. The console commands, from the [runtime] environment.
C=$WORK/runtime/bin
"$C/salad" inspect "$BUNDLE" --json "$WORK/inspect.json" > "$WORK/inspect.txt" || fail "salad inspect"
"$C/salad" score "$BUNDLE" "${FILMS[@]}" --json "$WORK/score.json" > "$WORK/score.txt" || { cat "$WORK/score.txt"; fail "salad score"; }
"$C/salad" parity "$BUNDLE" --json "$WORK/parity.json" > "$WORK/parity.txt" || { cat "$WORK/parity.txt"; fail "salad parity"; }
"$DEV/python" - "$WORK" "${#FILMS[@]}" <<'EOF' || fail "the console commands' outputs (above)"
import json, pathlib, sys
work, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
inspect = json.loads((work / "inspect.json").read_text())
rows = json.loads((work / "score.json").read_text())["results"]
labelled = [r for r in rows if r.get("label") in (0, 1) and not r.get("error")]
assert len(labelled) == n, f"salad score labelled {len(labelled)} of {n} films: {rows}"
parity = json.loads((work / "parity.json").read_text())
print(f"check-wheel: inspect ({sorted(inspect.get('graphs', {}))}), score ({n} films labelled), parity (passed) from the [runtime] wheel")
EOF

# 5. A short `salad serve` exchange, from the [runtime,dicom] environment; the sender is .venv's pynetdicom.
S=$WORK/dicom/bin
PORT=$("$DEV/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$S/salad" serve "$BUNDLE" --out "$WORK/results" --host 127.0.0.1 --port "$PORT" --status-every 0 > "$WORK/serve.log" 2>&1 &
SERVE_PID=$!
"$DEV/python" - "$PORT" "$FILM" "$WORK/results/scores.jsonl" "$SERVE_PID" <<'EOF' || { tail -30 "$WORK/serve.log"; fail "the salad serve exchange (above)"; }
import json, os, pathlib, sys, time
from pydicom import dcmread
from pynetdicom import AE

port, film, rows, pid = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]), int(sys.argv[4])
ds = dcmread(film)
ae = AE(ae_title="CHECKWHEEL")
ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
deadline = time.monotonic() + 120
while True:  # the node answers once its bundle is loaded
    assoc = ae.associate("127.0.0.1", port, ae_title="SALAD")
    if assoc.is_established:
        break
    if time.monotonic() > deadline:
        sys.exit("salad serve did not accept an association within 120 s")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("salad serve exited before it accepted an association")
    time.sleep(0.5)
status = assoc.send_c_store(ds)
assoc.release()
if getattr(status, "Status", None) != 0:
    sys.exit(f"C-STORE status {status}")
while time.monotonic() < deadline:
    found = [json.loads(line) for line in rows.read_text().splitlines() if line.strip()] if rows.exists() else []
    mine = [r for r in found if r.get("sop_instance_uid") == str(ds.SOPInstanceUID)]
    if mine:
        row = mine[0]
        if row.get("label") not in (0, 1) or row.get("error"):
            sys.exit(f"the film was acknowledged but not scored: {row}")
        print(f"check-wheel: serve: C-STORE acknowledged, row written (label {row['label']}) from the [runtime,dicom] wheel")
        break
    time.sleep(0.2)
else:
    sys.exit(f"no row for {ds.SOPInstanceUID} in {rows} within 120 s")
EOF
kill -TERM "$SERVE_PID"
RC=0; wait "$SERVE_PID" || RC=$?
[ "$RC" = 0 ] || { tail -20 "$WORK/serve.log"; fail "salad serve exited with $RC after SIGTERM (expected 0)"; }
SERVE_PID=
step "passed in $((SECONDS - START)) s"
