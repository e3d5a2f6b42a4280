"""Write the known-anomaly training splits: a split's normals plus pneumonia films of patients outside its test set.

For the paper's "known anomalies" setting (--known-anomaly-ratio, its Table 1): the trainer draws the requested
share of abnormal films from these; none belongs to a patient of the split's test set. `dev_train_ar.csv` (dev_train
→ dev_val) and, for the transfer protocol, `site_{dark,bright,contrast}_train_ar.csv` (each pseudo-site's training
normals → its held-out acquisition group; benchmarks/pseudo_sites.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

SPLITS = Path(__file__).resolve().parent / "splits"


def main() -> None:
    def rows(name: str) -> list[dict[str, str]]:
        with open(SPLITS / name, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    abnormal = [r for r in rows("kermany_train.csv") if r["label"] == "1"]
    pairs = [("dev_train.csv", "dev_val.csv", "dev_train_ar.csv")]
    pairs += [(f"site_{g}_train.csv", f"site_{g}_test.csv", f"site_{g}_train_ar.csv") for g in ("dark", "bright", "contrast")]
    for train_csv, test_csv, out_csv in pairs:
        held = {r["patient_id"] for r in rows(test_csv)}
        train = rows(train_csv)
        with open(SPLITS / out_csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["path", "label", "patient_id"])
            w.writeheader()
            known = [a for a in abnormal if a["patient_id"] not in held]
            w.writerows({k: r[k] for k in ("path", "label", "patient_id")} for r in train + known)

if __name__ == "__main__":
    main()
