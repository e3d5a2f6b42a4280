"""Evaluate a run directory on labelled data: AUC and AUPRC (abnormal = positive), optional plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salad import metrics
from salad.data import Sample, read_samples
from salad.errors import DataError, RunError
from salad.metrics import has_both_classes
from salad.preprocess import PreprocessConfig
from salad.renames import renamed_keywords
from salad.scoring import (
    DEFAULT_SCORE,
    SCORE_DEFINITIONS,
    SCORE_NAMES,
    by_name,
    check_score_name,
    score_torch,
)
from salad.train.datasets import preload
from salad.train.models import ModelConfig, SaladAutoencoder
from salad.train.trainer import embed_all, load_checkpoint, scoring_bank


@dataclass
class LoadedRun:
    """A trained run rebuilt from checkpoint.pt alone: model (eval mode), normal bank rows, configs."""

    model: SaladAutoencoder
    bank: torch.Tensor
    bank_labels: torch.Tensor
    score_k: int
    score_name: str  # the run's operating score (config train.score)
    preprocessing: PreprocessConfig
    config: dict[str, Any]


def load_run(run: str | Path) -> LoadedRun:
    """Rebuild the model and memory bank from a run directory (or a bundle's checkpoint.pt)."""
    path = Path(run)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    state = load_checkpoint(ckpt)
    cfg = state["config"]
    model = SaladAutoencoder(ModelConfig.from_dict(cfg["model"]))
    model.load_state_dict(state["model"])
    model.eval()
    labels = state["bank_labels"]
    return LoadedRun(
        model=model,
        bank=scoring_bank(model, state["bank"][labels == 0].contiguous()),
        bank_labels=labels,
        score_k=int(cfg["train"]["score_k"]),
        score_name=check_score_name(str(cfg["train"].get("score", DEFAULT_SCORE))),
        preprocessing=PreprocessConfig.from_dict(cfg["preprocessing"]),
        config=cfg,
    )


def score_samples(run: LoadedRun, samples: list[Sample]) -> dict[str, np.ndarray]:
    """Embeddings, score and knn_angle of each sample under the run's model and bank."""
    images = preload(samples, run.preprocessing, "reading evaluation films")
    if not bool(torch.isfinite(run.bank).all()):
        raise RunError(f"{run.config.get('data', {}).get('train_source', 'the run')}: the run's memory bank holds "
                       "non-finite values; the model is unusable. Retrain it (check the training films and --lr).")
    z = embed_all(run.model, images)
    scores = by_name(score_torch(z, run.bank, run.score_k))
    out = {"embedding": z.numpy(), **{name: value.numpy() for name, value in scores.items()}}
    bad = sorted({i for values in out.values() for i in np.flatnonzero(~np.isfinite(values).reshape(len(samples), -1).all(axis=1))})
    if bad:
        shown = ", ".join(str(samples[i].path) for i in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise RunError(f"non-finite embedding or score for {len(bad)} film(s): {shown}. The model or these films are "
                       "unusable: check the films' pixel values and retrain a run whose loss stayed finite.")
    return out


def detection_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUC and AUPRC with abnormal (label 1) as the positive class."""
    if not has_both_classes(labels):
        raise DataError("evaluation needs both normal (label 0) and abnormal (label 1) images.")
    auc, auprc = metrics.detection_metrics(labels, scores)
    return {"auc": auc, "auprc": auprc}


#: The shape of `salad evaluate --json` (salad/schemas/evaluation.json).
EVALUATION_SCHEMA = "salad-evaluation/1"


@renamed_keywords(data="labelled")
def evaluate_run(
    run: str | Path, labelled: str | Path, json_out: str | Path | None = None, plots: str | Path | None = None
) -> dict[str, Any]:
    """Score the `labelled` films (`salad evaluate --labelled`; data= warns) with a run; write the metrics JSON and,
    optionally, ROC/PR/histogram PNGs."""
    loaded = load_run(run)
    samples = read_samples(labelled)
    labels = np.array([s.label for s in samples])
    if len(np.unique(labels)) != 2:
        raise DataError(f"{labelled}: evaluation needs both normal and abnormal images; found labels {sorted(set(labels.tolist()))}.")
    out = score_samples(loaded, samples)
    name = loaded.score_name
    # Every output of the bundle, so the operating score can be compared with the other.
    outputs = {n: detection_metrics(labels, out[n]) for n in SCORE_NAMES}
    result: dict[str, Any] = {"schema": EVALUATION_SCHEMA, **outputs[name]}
    result.update(
        n_normal=int((labels == 0).sum()),
        n_abnormal=int((labels == 1).sum()),
        score=name,
        score_definition=SCORE_DEFINITIONS[name],
        outputs=outputs,
    )
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2))
    if plots:
        from salad.train.plots import write_detection_plots

        write_detection_plots(labels, out[name], Path(plots), score_name=name)
    return result
