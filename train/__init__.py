"""salad.train: PyTorch models, memory bank, losses, trainer, datasets and evaluation of SALAD.

The public API (what the demo, the benchmarks and users call; docs/architecture.md §1):

    from salad.train import CPU, train_run, evaluate_run
    summary = train_run("normals/", "runs/cxr", CPU)
    metrics = evaluate_run("runs/cxr", "labelled/")

Names resolve lazily, so `import salad.train` alone loads no torch; each loads its module when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from salad.lazy import lazy_attribute

if TYPE_CHECKING:
    from salad.train.config import (
        CPU,
        METHOD_REGISTRY,
        METHODS,
        PAPER,
        PRESETS,
        TRAIN_SCHEMA,
        Method,
        TrainConfig,
        method_of,
        register_method,
    )
    from salad.train.distributed import launch, option_args, preflight
    from salad.train.evaluate import LoadedRun, evaluate_run, load_run, score_samples
    from salad.train.models import ACTIVATIONS, ENCODERS
    from salad.train.plots import write_detection_plots
    from salad.train.rundir import split_by_patient, write_list
    from salad.train.trainer import train_run

__all__ = [
    "ACTIVATIONS", "CPU", "ENCODERS", "METHODS", "METHOD_REGISTRY", "PAPER", "PRESETS", "TRAIN_SCHEMA", "LoadedRun", "Method",
    "TrainConfig", "evaluate_run", "launch", "load_run", "method_of", "option_args", "preflight", "register_method",
    "score_samples", "split_by_patient", "train_run", "write_detection_plots", "write_list",
]

_LAZY = {
    **dict.fromkeys(
        ("CPU", "METHODS", "METHOD_REGISTRY", "PAPER", "PRESETS", "TRAIN_SCHEMA", "Method", "TrainConfig", "method_of",
         "register_method"),
        "salad.train.config",
    ),
    **dict.fromkeys(("LoadedRun", "evaluate_run", "load_run", "score_samples"), "salad.train.evaluate"),
    "write_detection_plots": "salad.train.plots",
    **dict.fromkeys(("ACTIVATIONS", "ENCODERS"), "salad.train.models"),
    **dict.fromkeys(("launch", "option_args", "preflight"), "salad.train.distributed"),
    **dict.fromkeys(("split_by_patient", "write_list"), "salad.train.rundir"),
    "train_run": "salad.train.trainer",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted(__all__)
