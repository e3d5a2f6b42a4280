"""ROC curve, PR curve and score histogram as PNG files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_detection_plots(labels: np.ndarray, scores: np.ndarray, out: Path, threshold: float | None = None,
                          score_name: str = "anomaly score") -> dict[str, Path]:
    """Write roc.png, pr.png and histogram.png into `out`; return their paths. score_name labels the plotted score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc(fpr, tpr):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)", title=f"ROC of {score_name}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths["roc"] = out / "roc.png"
    fig.savefig(paths["roc"])
    plt.close(fig)
    prec, rec, _ = precision_recall_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot(rec, prec, lw=2, label=f"AUPRC {auc(rec, prec):.3f}")
    ax.axhline(float(np.mean(labels)), ls="--", color="grey", lw=1, label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision–recall of {score_name}", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    fig.tight_layout()
    paths["pr"] = out / "pr.png"
    fig.savefig(paths["pr"])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=110)
    bins = np.linspace(float(scores.min()), float(scores.max()), 40).tolist()
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="abnormal")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.4f}")
    ax.set(xlabel=f"{score_name} (higher: more abnormal)", ylabel="films", title=f"Distribution of {score_name}")
    ax.legend()
    fig.tight_layout()
    paths["histogram"] = out / "histogram.png"
    fig.savefig(paths["histogram"])
    plt.close(fig)
    return paths
