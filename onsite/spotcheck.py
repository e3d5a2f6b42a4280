"""The confirmed-normal spot check of `salad score --drift --confirmed-normal FILMS` (the maths: salad/spotcheck.py).

Scores films a radiologist read as normal with the call's own scorer, counts those the bundle flags, and keeps a
running tally across calls in a small JSON state file beside the results (the --json file's folder, or the current
folder). The tally is keyed by the sha256 of the bundle's manifest.json — which lists every file's sha256, so a
re-exported or recalibrated bundle starts its own count — and by precision; each film is counted once, by the sha256
of its bytes, however often it is passed again. Read-modify-write runs under salad.fsutil's writer lock and the file
is replaced atomically (write_atomic), so two calls never lose each other's films and a kill leaves the old tally.
Never changes a score or a label.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from salad.data import Unreadable, scan_images
from salad.errors import DataError
from salad.fsutil import parse_json, write_atomic, writer_lock
from salad.manifest import MANIFEST, sha256_file
from salad.runtime.scorer import Result, Scorer
from salad.spotcheck import WARN_MULTIPLE, Estimate, SpotReport, design_rate

#: The state file's shape ("bundles": key → {"films": {film sha256[:16]: label}, "calls", …}).
STATE_SCHEMA = "salad-spot-check-state/1"
#: The state file's name beside the results when --confirmed-state does not name one.
STATE_FILE = "salad-spot-check.json"
#: Hex digits of a film's sha256 kept in the state file (64 bits: a collision among a site's films is not a concern).
FILM_DIGEST_CHARS = 16


def default_state_path(json_out: Path | None) -> Path:
    """Beside the results: the folder of the --json file, or the current folder when the results go to the terminal."""
    if json_out is None or str(json_out) == "-":
        return Path(STATE_FILE)
    return json_out.parent / STATE_FILE


def bundle_key(bundle: Path, precision: str) -> str:
    """The state file's key of a bundle: its manifest's sha256 (and the precision, when not fp32)."""
    digest = sha256_file(bundle / MANIFEST)
    return digest if precision == "fp32" else f"{digest}+{precision}"


def _fresh() -> dict[str, Any]:
    return {"schema": STATE_SCHEMA, "bundles": {}}


def read_state(path: Path) -> dict[str, Any]:
    """The state file's content (a fresh one when it does not exist); a DataError naming the fix when it is damaged."""
    fix = "Delete it to start a new running estimate, or give --confirmed-state another file."
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _fresh()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the spot-check state file ({exc.strerror}). {fix}") from exc
    state = parse_json(raw, path, DataError, fix)
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA or not isinstance(state.get("bundles"), dict):
        raise DataError(f"{path}: not a spot-check state file (expected schema {STATE_SCHEMA!r}). {fix}")
    return state


def record(path: Path, key: str, films: dict[str, int], meta: dict[str, Any]) -> tuple[int, int, int, int]:
    """Add one call's films (digest → label) to the tally of `key`; (films, flagged, calls, repeated) after it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path, what="spot-check state file"):
        state = read_state(path)
        entry = state["bundles"].setdefault(key, {**meta, "calls": 0, "films": {}, "since": meta["updated"]})
        seen = entry["films"]
        if not isinstance(seen, dict):
            raise DataError(f"{path}: bundle {key}: 'films' is not a table of film digests. Delete the file to start again.")
        repeated = sum(1 for d in films if d in seen)
        seen.update(films)
        entry.update(meta)
        entry["calls"] = int(entry.get("calls", 0)) + 1
        write_atomic(path, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())
    labels = [int(v) for v in seen.values()]
    return len(labels), sum(labels), entry["calls"], repeated


def spot_check(scorer: Scorer, confirmed: Sequence[Path], state: Path | None) -> tuple[SpotReport, list[Result]]:
    """Score the confirmed normals (files or folders) with an open scorer → (the report, error rows of films not scored).

    A film that cannot be scored gets no label and is not counted; state None keeps no running estimate.
    """
    entries = scan_images(confirmed)
    files = [e for e in entries if isinstance(e, Path)]
    results = scorer.score(files, on_error="record") if files else []
    failed = [Result.failure(str(e.path), e.error) for e in entries if isinstance(e, Unreadable)] + [r for r in results if not r.ok]
    ok = [r for r in results if r.ok and r.label is not None]
    design, source = design_rate(scorer.manifest.threshold.to_json())
    line = WARN_MULTIPLE * design
    key = bundle_key(scorer.bundle, scorer.precision)
    report = SpotReport(design, source, Estimate.of(sum(int(r.label or 0) for r in ok), len(ok), line) if ok else None,
                        bundle_sha256=key.split("+")[0], skipped=[str(r.error) for r in failed],
                        flagged_files=[str(r.path) for r in ok if r.label == 1])
    if state is not None:
        films = {sha256_file(str(r.path))[:FILM_DIGEST_CHARS]: int(r.label or 0) for r in ok}
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        meta = {"bundle": str(scorer.bundle), "precision": scorer.precision, "design_fpr": design, "threshold": scorer.threshold,
                "updated": now}
        n, flagged, calls, report.repeated = record(state, key, films, meta)
        report.state_file, report.running_calls = str(state), calls
        report.running = Estimate.of(flagged, n, line) if n else None
    return report, failed
