"""The node's counters and health: what the status line and RESULTS/health.json say.

Health is "ok" unless something is failing now: the watch folder's last pass, a row that could not be
written (a full disk), or a thread that stopped. Counters (watch errors, disk errors, UID collisions)
keep counting after the problem clears, so a failure that came and went still shows.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salad.fsutil import write_atomic

#: Latencies kept for the status line's percentiles (a window, so memory stays flat however long it runs).
LATENCY_WINDOW = 2000


@dataclass
class Stats:
    """Counters since start, a window of acceptance-to-score latencies (ms), and what is failing now."""

    received: int = 0
    duplicates: int = 0
    refused: int = 0
    scored: int = 0
    failed: int = 0
    collisions: int = 0
    watch_errors: int = 0
    disk_errors: int = 0
    forward_dead: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    #: name → why, for each problem that holds now ("watch", "disk", "thread"); empty when healthy.
    failing: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def fail(self, what: str, why: str, counter: str | None = None) -> None:
        """Mark `what` as failing (and count it in `counter`)."""
        with self.lock:
            self.failing[what] = why
            if counter is not None:
                setattr(self, counter, getattr(self, counter) + 1)

    def clear(self, what: str) -> None:
        with self.lock:
            self.failing.pop(what, None)

    def percentiles(self) -> tuple[float, float]:
        with self.lock:
            values = np.asarray(self.latencies, dtype=np.float64)
        if values.size == 0:
            return float("nan"), float("nan")
        p50, p95 = np.percentile(values, [50, 95])
        return float(p50), float(p95)

    def health(self) -> dict[str, Any]:
        """{"health": "ok" | "degraded", "failing": {...}, counters}: what RESULTS/health.json holds."""
        with self.lock:
            return {
                "health": "degraded" if self.failing else "ok", "failing": dict(self.failing),
                **{k: getattr(self, k) for k in ("received", "scored", "failed", "refused", "duplicates", "collisions",
                                                 "watch_errors", "disk_errors", "forward_dead")},
            }

    def write(self, path: Path, **extra: Any) -> None:
        """Write health() and `extra` to `path` (RESULTS/health.json) atomically; best effort on a full disk."""
        with contextlib.suppress(OSError):  # the status line says the same
            write_atomic(path, (json.dumps({**self.health(), **extra}, indent=2) + "\n").encode("utf-8"))

    def health_text(self) -> str:
        """', health ok' or ', health DEGRADED (watch: …; disk: …), watch errors N, disk errors M' for the status line."""
        h = self.health()
        counts = f", UID collisions {h['collisions']}, watch errors {h['watch_errors']}, disk errors {h['disk_errors']}"
        counts += f", SRs dead-lettered {h['forward_dead']}"
        if h["health"] == "ok":
            return f"{counts}, health ok"
        return f"{counts}, health DEGRADED ({'; '.join(f'{k}: {v}' for k, v in h['failing'].items())})"
