"""What the node checks and repairs before it takes a film: overlapping folders, the store's repairs, missing SRs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset

from salad.errors import ConfigError, SaladError
from salad.runtime import Result
from salad.runtime.scorer import Timings
from salad.scoring import KNN_ANGLE, SCORE

from .ledger import film_key
from .store import Store

if TYPE_CHECKING:
    from .config import NodeConfig

log = logging.getLogger("salad.serve")

#: Writes one SR: (file stem, source header, result, collision) → its path relative to RESULTS.
WriteSR = Callable[..., str]


def check_folders(config: NodeConfig) -> None:
    """Refuse --out and --watch that overlap: the node would take in its own inbox, SRs and rows without end."""
    if config.watch is None:
        return
    out, watch = Path(config.out).resolve(), Path(config.watch).resolve()
    if out == watch or out.is_relative_to(watch) or watch.is_relative_to(out):
        where = "is the same folder as" if out == watch else "is inside" if out.is_relative_to(watch) else "contains"
        raise ConfigError(
            f"--out {config.out} {where} --watch {config.watch}: the node would take in its own output (inbox, SRs, rows) "
            "without end. Choose a results folder outside the watch folder."
        )


def log_recovered(store: Store) -> None:
    """One log line for what opening the store repaired (torn rows, dead writers' temporaries, finished inbox entries)."""
    rec = store.recovered
    if any(rec.values()):
        log.warning("recovered %s: moved %d torn or damaged row line(s) (%d bytes) to scores.jsonl.damaged-*, removed %d "
                    "temporary file(s) and %d inbox entr(ies) that already had a row", store.root, rec["damaged_lines"],
                    rec["cut_bytes"], rec["temporaries"], rec["already_scored"])


def regenerate_srs(store: Store, write_sr: WriteSR) -> int:
    """Make the SR of every scored film whose SR could not be written (its file waits in nosr/); return how many."""
    waiting = store.waiting_for_sr()
    if not waiting:
        return 0
    rows = {film_key(str(r["sop_instance_uid"]), r.get("pixel_sha256")): r for r in store.rows()
            if r.get("label") is not None and "refused" not in r}
    made = 0
    for path in waiting:
        row = rows.get(path.stem)
        try:
            if row is None:
                raise SaladError("no scored row names it")
            header: Dataset = pydicom.dcmread(path, stop_before_pixels=True)
            result = Result(str(path), float(row[SCORE]), float(row[KNN_ANGLE]), int(row["label"]), Timings(0.0, 0.0, 1))
            sr = write_sr(path.stem, header, result, collision="collision" in row)
        except Exception as exc:  # noqa: BLE001 - one film's SR must not stop the node; it stays in nosr/
            log.error("no SR for %s yet (%s: %s); it stays in %s for the next start", path.name, type(exc).__name__, exc, store.no_sr)
            continue
        path.unlink(missing_ok=True)
        made += 1
        log.info("made the missing SR of %s: %s", path.stem, sr)
    return made
