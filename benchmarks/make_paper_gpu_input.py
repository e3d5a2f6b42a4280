"""The input of benchmarks/paper_gpu.sh: Kermany films pre-resized to 256² in one xz-compressed array, and its unpacking.

    python benchmarks/make_paper_gpu_input.py pack                # → benchmarks/paper_gpu/kermany256.npz.xz (56.2 MB)
    python benchmarks/make_paper_gpu_input.py unpack ARCHIVE DIR  # → DIR/train.csv, DIR/test.csv and PNG films
    python benchmarks/make_paper_gpu_input.py report WORK OUT.json  # paper_gpu.sh's result JSON from its run folders

The archive travels with the source tree to a GPU machine (git-ignored, not committed: regenerate it with `pack`).
`pack` reads benchmarks/splits/kermany_train.csv — every training normal, and `--abnormal` pneumonia films of training
patients that supply the known anomalies (AR 10 % draws ≈ 105 of them; those of a tenth of the patients label the
run's validation) — and `--test` normal plus as many pneumonia films of kermany_holdout.csv for a held-out AUC.
Films are stretched to 256² with area interpolation (the paper preset's size and resize mode), stored as uint8;
xz at preset 6 keeps ≈ 36 KB a film where numpy's zip keeps ≈ 48 KB. Measured: 1,049 normals + 250 pneumonia +
292 held-out films (146 + 146) → 56,228,640 bytes; unpacking takes ≈ 20 s on 2 busy cores.
"""

from __future__ import annotations

import csv
import io
import json
import lzma
import os
import random
from pathlib import Path
from typing import Any

import click
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "benchmarks" / "splits"
DEFAULT_ARCHIVE = REPO / "benchmarks" / "paper_gpu" / "kermany256.npz.xz"
SIZE = 256


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return [dict(r, path=str((csv_path.parent / r["path"]).resolve())) for r in csv.DictReader(fh)]


def _resized(path: str) -> np.ndarray:
    """One film as 8-bit grey on its own [0, 1] scale, stretched to SIZE² (salad.imageio: the trainer's reader)."""
    from salad.imageio import cv2, read_image

    img = read_image(path).astype(np.float32) * 255.0
    return np.asarray(cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA).round().clip(0, 255), dtype=np.uint8)


def pack(train_csv: Path, test_csv: Path, out: Path, normals: int, abnormal: int, test: int, seed: int) -> dict[str, int]:
    """Write the archive atomically; returns the film counts and its size in bytes."""
    rng = random.Random(seed)
    train_rows = _rows(train_csv)
    test_rows = _rows(test_csv)

    def take(rows: list[dict[str, str]], label: str, n: int) -> list[dict[str, str]]:
        chosen = [r for r in rows if r["label"] == label]
        return chosen if n < 0 or n >= len(chosen) else rng.sample(chosen, n)

    picked = [("train", r) for r in take(train_rows, "0", normals) + take(train_rows, "1", abnormal)]
    picked += [("test", r) for r in take(test_rows, "0", test) + take(test_rows, "1", test)]
    from tqdm import tqdm

    images = np.stack([_resized(r["path"]) for _, r in tqdm(picked, desc="resizing films", unit="film")])
    buf = io.BytesIO()
    np.savez(buf, images=images, label=np.array([int(r["label"]) for _, r in picked], dtype=np.int8),
             split=np.array([s for s, _ in picked]), patient=np.array([r.get("patient_id") or "" for _, r in picked]),
             name=np.array([Path(r["path"]).stem for _, r in picked]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(lzma.compress(buf.getvalue(), preset=6))
    os.replace(tmp, out)
    return {"films": len(picked), "train": sum(s == "train" for s, _ in picked), "bytes": out.stat().st_size}


def unpack(archive: Path, folder: Path) -> tuple[Path, Path]:
    """PNG films and two CSVs (path,label,patient_id): train.csv (normals + known-anomaly pool) and test.csv."""
    from salad.imageio import cv2

    with np.load(io.BytesIO(lzma.decompress(archive.read_bytes())), allow_pickle=False) as data:
        images, labels, split, patient, name = (data[k] for k in ("images", "label", "split", "patient", "name"))
    csvs = {}
    for part in ("train", "test"):
        (folder / part).mkdir(parents=True, exist_ok=True)
        csvs[part] = folder / f"{part}.csv"
        with open(csvs[part], "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "patient_id"])
            for i in np.flatnonzero(split == part):
                rel = f"{part}/{name[i]}.png"
                cv2.imwrite(str(folder / rel), images[i])
                w.writerow([rel, int(labels[i]), patient[i]])
    return csvs["train"], csvs["test"]


def report(work: Path, target: Path, wall_seconds: float, smoke: bool) -> dict[str, Any]:
    """The result of paper_gpu.sh: per AR, the training summary, the held-out metrics and the exported bundle's facts."""
    import platform

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    runs: dict[str, Any] = {}
    for train_json in sorted(work.glob("train-*.json")):
        name = train_json.stem.removeprefix("train-")
        config = json.loads((work / "runs" / name / "config.json").read_text())
        manifest = json.loads((work / "bundles" / name / "manifest.json").read_text())
        runs[name] = {
            "known_anomaly_ratio": config["train"]["known_anomaly_ratio"], "n_train": config["n_train"],
            "n_train_anomalous": config["n_train_anomalous"], "train": json.loads(train_json.read_text()),
            "test": json.loads((work / f"eval-{name}.json").read_text()),
            "bundle": {"graphs": sorted(manifest.get("graphs", {})), "bank_rows": manifest.get("bank", {}).get("rows")},
            "schedule": {k: config["train"][k] for k in ("size", "width", "pretrain_epochs", "rounds", "round_epochs",
                                                          "batch_size", "lr", "device")},
        }
    result = {
        "schema": "salad-paper-gpu/1", "smoke": smoke, "device": device, "torch": torch.__version__,
        "precision": "fp32 weights and export; PyTorch's defaults (cuDNN convolutions may use TF32, matmuls fp32)",
        "wall_seconds": wall_seconds, "within_9_minutes": wall_seconds <= 540, "runs": runs,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return result


@click.group()
def main() -> None:
    """Pack the paper-schedule GPU run's input, or unpack it on the GPU machine."""


@main.command("pack")
@click.option("--train-csv", type=click.Path(exists=True, path_type=Path), default=SPLITS / "kermany_train.csv", show_default=True)
@click.option("--test-csv", type=click.Path(exists=True, path_type=Path), default=SPLITS / "kermany_holdout.csv", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_ARCHIVE, show_default=True)
@click.option("--normals", type=int, default=-1, show_default=True, help="Training normals (-1: all).")
@click.option("--abnormal", type=int, default=250, show_default=True, help="Pneumonia films of training patients.")
@click.option("--test", type=int, default=146, show_default=True, help="Held-out films of each class.")
@click.option("--seed", type=int, default=0, show_default=True)
def pack_command(train_csv: Path, test_csv: Path, out: Path, normals: int, abnormal: int, test: int, seed: int) -> None:
    """Resize and pack the films (one xz-compressed npz)."""
    click.echo(pack(train_csv, test_csv, out, normals, abnormal, test, seed))


@main.command("unpack")
@click.argument("archive", type=click.Path(exists=True, path_type=Path))
@click.argument("folder", type=click.Path(path_type=Path))
def unpack_command(archive: Path, folder: Path) -> None:
    """Write the films as PNG with train.csv and test.csv."""
    click.echo(" ".join(str(p) for p in unpack(archive, folder)))


@main.command("report")
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--wall-seconds", type=float, required=True)
@click.option("--smoke", is_flag=True)
def report_command(work: Path, target: Path, wall_seconds: float, smoke: bool) -> None:
    """Write paper_gpu.sh's result JSON."""
    result = report(work, target, wall_seconds, smoke)
    click.echo(json.dumps({k: v for k, v in result.items() if k != "runs"}))


if __name__ == "__main__":
    main()
