"""Backend options on the command line: one flag per option a runner declares (Runner.options).

`salad score`, `parity` and `bench` take the same flags; each runtime receives only the options it
declares, and a flag that no chosen runtime takes is refused naming the runtimes that do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from salad.errors import ConfigError

from .base import runner_class, runner_names

F = TypeVar("F", bound=Callable[..., Any])

#: Runner option → the click option that sets it (documented in each runner's `options`).
FLAGS: dict[str, Callable[[F], F]] = {
    "threads": click.option("--threads", type=click.IntRange(min=1), default=None,
                            help="Inference threads of the runtime (torch, ONNX Runtime, OpenVINO).  [default: its own]"),
    "cache_dir": click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                              help="Cache folder: TensorRT engines and timing caches, ONNX Runtime's optimised models, "
                                   "OpenVINO's compiled blobs ($SALAD_NO_CACHE=1: no start-up cache).  "
                                   "[default: $SALAD_CACHE_DIR or ~/.cache/salad-edge]"),
    "rebuild": click.option("--rebuild", is_flag=True, default=None, help="TensorRT: build the engine even if cached."),
    "workspace_mb": click.option("--workspace-mb", type=click.IntRange(min=1), default=None,
                                 help="TensorRT builder workspace limit (MiB)."),
    "opt_batch": click.option("--opt-batch", type=click.IntRange(min=1), default=None,
                              help="TensorRT optimisation profile's optimum batch.  [default: the largest batch]"),
    "allow_tf32": click.option("--allow-tf32", is_flag=True, default=None,
                               help="TensorRT: let float32 layers use TF32 (breaks the fp32 parity tolerance)."),
}


def runner_option_flags(names: Sequence[str] = tuple(FLAGS)) -> Callable[[F], F]:
    """Add the flags of `names` (runner option names) to a command; each arrives as a keyword of that name."""

    def decorate(fn: F) -> F:
        for name in reversed(list(names)):
            fn = FLAGS[name](fn)
        return fn

    return decorate


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The backend options the user set (flags left at None or off are not options)."""
    return {k: v for k, v in values.items() if k in FLAGS and v not in (None, False)}


def options_for(runtime: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `options` that `runtime` declares (Runner.options)."""
    declared = runner_class(runtime).options
    return {k: v for k, v in options.items() if k in declared}


def check_taken(runtimes: Sequence[str], options: Mapping[str, Any]) -> None:
    """A ConfigError for a flag that none of `runtimes` takes, naming the runtimes that do."""
    for name in options:
        if any(name in runner_class(r).options for r in runtimes):
            continue
        takers = [r for r in runner_names() if name in runner_class(r).options]
        flag = "--" + name.replace("_", "-")
        raise ConfigError(
            f"{flag} is an option of the {' and '.join(takers) or 'no'} runtime(s); the chosen runtime(s) "
            f"{list(runtimes)} do not take it. Drop {flag} or choose --runtime {takers[0] if takers else '…'}."
        )
