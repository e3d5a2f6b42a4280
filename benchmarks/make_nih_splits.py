"""Write benchmarks/splits/nih_{train,holdout}.csv: a patient-disjoint split of the shared NIH films.

65 % of the patients train (their normal films are the bank; `quality_protocol.py` uses label 0 only), 35 %
are held out with all their films. Stratified by whether a patient has any abnormal film, seeded, so the
split is the same on every machine. Run once; the CSVs are committed.

The training patients are split once more, the same way, into nih_dev_{train,val}.csv (70 / 30 %): the NIH
development split, the only NIH data recipes may be chosen on; nih_dev_train_pa.csv keeps its PA films only.
The held-out patients are never looked at while choosing.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih-cxr"
OUT = REPO / "benchmarks" / "splits"
HELD_OUT = 0.35
DEV_VAL = 0.30
SEED = 0


def held_out(rows: list[dict[str, str]], fraction: float, rng: np.random.Generator) -> set[str]:
    """Patients drawn for the held-out side, stratified by whether a patient has any abnormal film."""
    patients: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        patients.setdefault(r["patient_id"], []).append(r)
    held: set[str] = set()
    for group in (True, False):  # patients with an abnormal film, then the others
        ids = sorted(p for p, rs in patients.items() if any(r["label"] == "1" for r in rs) == group)
        held |= set(rng.permutation(ids)[: round(len(ids) * fraction)].tolist())
    return held


def write(name: str, rows: list[dict[str, str]]) -> None:
    rel = Path("../../../shared/data/nih-cxr")
    with open(OUT / name, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id", "view_position"])
        for r in rows:
            w.writerow([(rel / r["path"]).as_posix(), r["label"], r["patient_id"], r["view_position"]])


def main() -> None:
    with open(NIH / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(SEED)
    held = held_out(rows, HELD_OUT, rng)
    train = [r for r in rows if r["patient_id"] not in held]
    write("nih_train.csv", train)
    write("nih_holdout.csv", [r for r in rows if r["patient_id"] in held])
    dev_val = held_out(train, DEV_VAL, np.random.default_rng(SEED + 1))
    write("nih_dev_train.csv", [r for r in train if r["patient_id"] not in dev_val])
    write("nih_dev_train_pa.csv", [r for r in train if r["patient_id"] not in dev_val and r["view_position"] == "PA"])
    write("nih_dev_val.csv", [r for r in train if r["patient_id"] in dev_val])


if __name__ == "__main__":
    main()
