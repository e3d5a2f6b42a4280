"""The SALAD anomaly score: the one definition used by the torch reference and the ONNX scorer.

For a unit embedding z and normal bank rows m_1..m_N:
    a_j = arccos(clip(z·m_j, -1, 1)),   knn = the K smallest a_j,
    score     = mean(knn) / mean_j(a_j)   (the paper's Eq. 4 scaled by N, in [0, 1])
    knn_angle = mean(knn) / π             (the reference code's score, in [0, 1])
`knn_arccos_scores` is written once against a tiny array-ops adapter, so numpy and torch run the
same lines; the exported scorer.onnx is a trace of the torch entry point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from salad.errors import ConfigError
from salad.registry import Registry


@dataclass(frozen=True)
class ScoreDef:
    """One score every bundle outputs: its name, its definition, and the parity figures kept on it.

    The registry `SCORES` is the one list of scores: graph contracts (export/spec.py), the parity
    metrics with their default tolerances and table columns (salad/verdict.py), export validation
    and Result rows derive from it. Adding a score is an entry here plus its maths in
    `knn_arccos_scores` (docs/architecture.md §7).
    """

    name: str
    definition: str
    #: Parity statistic of |Δ| on this score → precision → its default tolerance (salad/verdict.py); the
    #: statistics listed are checked by default. fp16/int8 figures: calibration/TOLERANCES.md.
    tolerances: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: {"max": {"fp32": 1e-5, "fp16": 0.005, "int8": 0.05}})
    #: Parity statistics of |Δ| on this score shown as columns of the parity table.
    columns: tuple[str, ...] = ("max",)
    #: For a score computed from the graphs' outputs rather than output by them (a plug-in's rescaling, say):
    #: outputs by name → this score. None: every graph outputs it (the built-in scores).
    derive: Callable[[Mapping[str, Any]], Any] | None = None

    @property
    def toleranced(self) -> tuple[str, ...]:
        """Parity statistics of |Δ| on this score that are checked against a tolerance by default."""
        return tuple(self.tolerances)

    def diff_metric(self, statistic: str) -> str:
        """The parity metric of |Δ| on this score: "max" → "max_abs_score_diff", "p99" → "p99_abs_score_diff"."""
        return f"{statistic}_abs_{self.name}_diff"


#: Statistics of |Δ| parity measures on every score, in report order.
DIFF_STATISTICS = ("max", "p99")
#: Every score a bundle outputs, by name (salad.registry): `--score` choices, parity metrics and columns.
SCORES: Registry[ScoreDef] = Registry("score")
#: The registered scores' names as constants: code names a score through these, never as a literal.
SCORE = "score"
KNN_ANGLE = "knn_angle"


def register_score(score: ScoreDef) -> ScoreDef:
    """Make `score` one of the bundle's scores (a second one of a name is refused)."""
    return SCORES.register(score.name, score)


for _score in (
    ScoreDef(
        SCORE, "mean of the K smallest arccos(z·m_j) / mean over all N bank rows of arccos(z·m_j)",
        tolerances={"max": {"fp32": 1e-5, "fp16": 0.005, "int8": 0.05}, "p99": {"fp32": 1e-5, "fp16": 0.003, "int8": 0.04}},
        columns=("max", "p99"),
    ),
    ScoreDef(
        KNN_ANGLE, "mean of the K smallest arccos(z·m_j) / pi",
        tolerances={"max": {"fp32": 1e-5, "fp16": 0.001, "int8": 0.03}},
    ),
):
    register_score(_score)
#: The built-in scores every bundle's graphs output, in order (the graph contract).
SCORE_NAMES = tuple(SCORES)
DEFAULT_SCORE = SCORE
SCORE_DEFINITIONS = {name: s.definition for name, s in SCORES.items()}


def check_score_name(name: str) -> str:
    """`name` if it is one of the scorer's outputs (the run's operating score), else a clear error."""
    if name not in SCORES:
        raise ConfigError(f"operating score {name!r}; expected one of {tuple(SCORES.names())} (every bundle outputs each of them).")
    return name


def with_derived(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """`outputs` plus every registered score derived from them (ScoreDef.derive) that they lack."""
    out = dict(outputs)
    for name, score in SCORES.items():
        if name not in out and score.derive is not None:
            out[name] = score.derive(out)
    return out


def by_name(outputs: tuple[Any, Any]) -> dict[str, Any]:
    """A (score, knn_angle) pair from score_numpy / score_torch, keyed by output name."""
    return dict(zip(SCORE_NAMES, outputs, strict=True))


#: TensorRT's TopK handles K up to this value.
MAX_K = 3840
#: Epsilon of every L2 normalisation (encoder output, scorer input, memory bank).
NORM_EPS = 1e-8


class _Ops(Protocol):
    def normalize(self, x: Any) -> Any: ...
    def matmul_t(self, z: Any, bank: Any) -> Any: ...
    def clip(self, x: Any, lo: float, hi: float) -> Any: ...
    def arccos(self, x: Any) -> Any: ...
    def smallest_k(self, x: Any, k: int) -> Any: ...
    def mean_last(self, x: Any) -> Any: ...


class _NumpyOps:
    def normalize(self, x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)

    def matmul_t(self, z: np.ndarray, bank: np.ndarray) -> np.ndarray:
        return z @ bank.T

    def clip(self, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return np.clip(x, lo, hi)

    def arccos(self, x: np.ndarray) -> np.ndarray:
        return np.arccos(x)

    def smallest_k(self, x: np.ndarray, k: int) -> np.ndarray:
        return np.partition(x, k - 1, axis=-1)[..., :k] if k < x.shape[-1] else x

    def mean_last(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=-1)


class _TorchOps:
    def __init__(self) -> None:
        import torch

        self.torch = torch

    def normalize(self, x: Any) -> Any:
        return self.torch.nn.functional.normalize(x, dim=-1, eps=NORM_EPS)

    def matmul_t(self, z: Any, bank: Any) -> Any:
        return z @ bank.t()

    def clip(self, x: Any, lo: float, hi: float) -> Any:
        return self.torch.clamp(x, lo, hi)

    def arccos(self, x: Any) -> Any:
        return self.torch.acos(x)

    def smallest_k(self, x: Any, k: int) -> Any:
        return self.torch.topk(x, k, dim=-1, largest=False, sorted=False).values

    def mean_last(self, x: Any) -> Any:
        return x.mean(dim=-1)


def check_k(k: int, bank_rows: int) -> None:
    """K must be 1..min(N, 3840): more neighbours than bank rows, or than TensorRT's TopK, is an error."""
    if k < 1:
        raise ConfigError(f"K={k}: the score needs at least one nearest neighbour (K ≥ 1).")
    if k > bank_rows:
        raise ConfigError(
            f"K={k} is larger than the memory bank ({bank_rows} normal rows). "
            f"Use K ≤ {bank_rows} (e.g. --k {min(100, bank_rows)}) or train on more normal images."
        )
    if k > MAX_K:
        raise ConfigError(f"K={k} exceeds TensorRT's TopK limit of {MAX_K}; use K ≤ {MAX_K}.")


def knn_arccos_scores(z: Any, bank: Any, k: int, ops: _Ops) -> tuple[Any, Any]:
    """(score, knn_angle) for embeddings z [B, D] against bank [N, D]; see the module docstring."""
    z = ops.normalize(z)
    angles = ops.arccos(ops.clip(ops.matmul_t(z, bank), -1.0, 1.0))
    knn_mean = ops.mean_last(ops.smallest_k(angles, k))
    return knn_mean / ops.mean_last(angles), knn_mean / math.pi


def score_numpy(z: np.ndarray, bank: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Numpy entry point (float32 in, float32 out): {"score": [B], "knn_angle": [B]}."""
    check_k(k, bank.shape[0])
    z32 = np.asarray(z, dtype=np.float32)
    score, knn_angle = knn_arccos_scores(z32, np.asarray(bank, dtype=np.float32), k, _NumpyOps())
    return {"score": score.astype(np.float32), "knn_angle": knn_angle.astype(np.float32)}


def score_torch(z: Any, bank: Any, k: int) -> tuple[Any, Any]:
    """Torch entry point (traceable, so it is also the body of scorer.onnx): (score, knn_angle)."""
    check_k(k, int(bank.shape[0]))
    return knn_arccos_scores(z, bank, k, _TorchOps())


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The label at a threshold: 1 (abnormal) where score > threshold, else 0. The one decision rule."""
    return (np.asarray(scores) > threshold).astype(np.int64)
