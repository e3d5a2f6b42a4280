"""Write benchmarks/splits/dev_train_ar.csv: dev_train's normals plus pneumonia films of patients outside dev_val.

For the paper's "known anomalies" setting (--known-anomaly-ratio, its Table 1) on the development split: the
trainer draws the requested share of abnormal films from these; none belongs to a dev_val patient.
"""

from __future__ import annotations

import csv
from pathlib import Path

SPLITS = Path(__file__).resolve().parent / "splits"


def main() -> None:
    def rows(name: str) -> list[dict[str, str]]:
        with open(SPLITS / name, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    held = {r["patient_id"] for r in rows("dev_val.csv")}
    train = rows("dev_train.csv")
    abnormal = [r for r in rows("kermany_train.csv") if r["label"] == "1" and r["patient_id"] not in held]
    with open(SPLITS / "dev_train_ar.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "patient_id"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("path", "label", "patient_id")} for r in train + abnormal)


if __name__ == "__main__":
    main()
