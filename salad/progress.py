"""Progress bars and log verbosity for every command, set once by `salad -v / -q` (docs/architecture.md §8).

The setting travels in the environment (SALAD_QUIET, SALAD_VERBOSITY) so that worker processes (bench's
workers, torchrun's ranks) honour it too; TQDM_DISABLE silences third-party bars as well.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

QUIET_ENV = "SALAD_QUIET"
VERBOSITY_ENV = "SALAD_VERBOSITY"
#: -q → errors only, default → warnings, -v → info, -vv → debug.
LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def set_verbosity(verbose: int, quiet: bool) -> int:
    """Apply `salad -v…/-q` to this process and its children: the log level, and progress bars off when quiet."""
    level = -1 if quiet else min(verbose, 2)
    os.environ[VERBOSITY_ENV] = str(level)
    if quiet:
        os.environ[QUIET_ENV] = "1"
        os.environ["TQDM_DISABLE"] = "1"  # tqdm ≥ 4.66 reads its defaults from TQDM_* variables
    elif os.environ.pop(QUIET_ENV, None) is not None:  # a later command in the same process (tests, the demo)
        os.environ.pop("TQDM_DISABLE", None)
    logging.basicConfig(level=LEVELS[level], format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("salad").setLevel(LEVELS[level])
    return level


def quiet() -> bool:
    """True under `salad -q` (in this process or the command that started it)."""
    return os.environ.get(QUIET_ENV) == "1"


def progress(iterable: Iterable[T] | None = None, *, desc: str, unit: str = "it", total: float | None = None,
             disable: bool = False, leave: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, shown only on a terminal; `salad -q` turns it off, `disable` adds the caller's reason.

    Off when stderr is not a terminal (tqdm's disable=None), so logs and captured output hold no bar.
    """
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=True if disable or quiet() else None,
                leave=leave, **kwargs)
