"""Distributions of timed loops, and the process's resident memory (VmRSS / VmHWM)."""

from __future__ import annotations

import dataclasses
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from salad.errors import ConfigError

# -- statistics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Distribution of one timed loop in milliseconds: the percentiles a vendor asks for, and the spread."""

    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p25_ms: float
    p75_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def from_ms(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            raise ConfigError("no timed runs to summarise; pass --iters ≥ 1.")
        a = np.asarray(samples, dtype=np.float64)
        p25, p50, p75, p95, p99 = np.percentile(a, [25, 50, 75, 95, 99])
        return cls(len(a), float(p50), float(p95), float(p99), float(p25), float(p75), float(a.mean()), float(a.min()), float(a.max()))

    @property
    def iqr_ms(self) -> float:
        """Interquartile range: the spread of the middle half of the runs."""
        return self.p75_ms - self.p25_ms

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "iqr_ms": self.iqr_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


# -- memory ---------------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ≥ 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def current_rss_mb() -> float | None:
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> tuple[float, str]:
    """(peak resident MiB, how it was measured): VmHWM where Linux has it, else getrusage's ru_maxrss."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb / 1024, "VmHWM"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024), "ru_maxrss"
