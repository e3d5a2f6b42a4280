"""What `salad train` prints beside its progress bar: one line per epoch and the validation figure at the end.

Lightning and anomalib users expect a line per epoch (loss, learning rate, time); the lines go to stderr
through tqdm.write so they sit above the bar, and `salad -q` silences them (salad.progress.quiet).
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from salad.progress import quiet


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """'epoch  3/80  loss 0.0123  lr 9.97e-04  1.2 s  val_auc 0.812' from a metrics.jsonl row."""
    text = f"epoch {row['epoch'] + 1:>{len(str(epochs))}}/{epochs}"
    if row.get("round"):
        text += f"  round {row['round']}"
    text += f"  loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f} s"
    if "val_auc" in row:
        text += f"  val_auc {row['val_auc']:.3f}"
    elif "val_score_mean" in row:
        text += f"  val mean score {row['val_score_mean']:.4f}"
    return text


def validation_line(summary: dict[str, Any], score: str, n_val: int) -> str:
    """The figure training ends on: the validation AUC beside its floors, or why there is none."""
    seconds = f"trained {summary['epochs']} epochs in {summary['train_seconds'] / 60:.1f} min"
    v = summary.get("validation")
    if v is None:
        why = "no validation films" if not n_val else "validation films of one class only (an AUC needs normal and abnormal)"
        return f"{seconds}; no validation AUC: {why}."
    best = max(((n, a) for n, a in v["floors"].items() if a is not None), key=lambda x: x[1], default=None)
    floor = f"; best training-free floor {best[0]} {best[1]:.3f}" if best else ""
    verdict = "beats every floor" if v["beats_floors"] else "does NOT beat every floor by the margin"
    return (f"{seconds}; validation AUC {v['auc']:.3f} on {v['n_normal']} normal + {v['n_abnormal']} abnormal films "
            f"({score}){floor}: {verdict}.")


def say(line: str) -> None:
    """Print above the progress bar on stderr, unless `salad -q`."""
    if not quiet():
        tqdm.write(line, file=sys.stderr)
