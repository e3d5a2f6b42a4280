"""Write benchmarks/splits/nih_{train,holdout}.csv: a patient-disjoint split of the shared NIH films.

65 % of the patients train (their normal films are the bank; `quality_protocol.py` uses label 0 only), 35 %
are held out with all their films. Stratified by whether a patient has any abnormal film, seeded, so the
split is the same on every machine. Run once; the CSVs are committed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih-cxr"
OUT = REPO / "benchmarks" / "splits"
HELD_OUT = 0.35
SEED = 0


def main() -> None:
    with open(NIH / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    patients: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        patients.setdefault(r["patient_id"], []).append(r)
    rng = np.random.default_rng(SEED)
    held: set[str] = set()
    for group in (True, False):  # patients with an abnormal film, then the others: both split 65/35
        ids = sorted(p for p, rs in patients.items() if any(r["label"] == "1" for r in rs) == group)
        held |= set(rng.permutation(ids)[: round(len(ids) * HELD_OUT)].tolist())
    rel = Path("../../../shared/data/nih-cxr")
    for name, keep in (("nih_train.csv", lambda p: p not in held), ("nih_holdout.csv", lambda p: p in held)):
        with open(OUT / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "patient_id", "view_position"])
            for r in rows:
                if keep(r["patient_id"]):
                    w.writerow([(rel / r["path"]).as_posix(), r["label"], r["patient_id"], r["view_position"]])


if __name__ == "__main__":
    main()
