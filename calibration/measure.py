"""What a variant costs and gains on this machine's CPU: ONNX Runtime latency at batch 1 and 8, file sizes.

Latency runs every graph round-robin (fp32, variant, fp32, variant, …) so that load from other
processes falls on all of them alike, and reports the median and the minimum of `runs` timed
calls per graph and batch after a warm-up. The median is what a console sees on a busy machine; the
minimum is the cost of the work itself. The CPU's model, core count, int8 dot-product instruction
sets and the load average are recorded with the numbers, because they decide what int8 buys.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salad.bundle import quiet_session
from salad.machine import cpu_model_and_flags

#: Timed calls per graph and batch size (the issue asks for a median of at least 50).
LATENCY_RUNS = 50
WARMUP_RUNS = 5
LATENCY_BATCHES = (1, 8)
#: CPU flags that decide ONNX Runtime's int8 kernels on x86 (dot products of u8×s8 in one instruction).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_fp16", "avx512f", "avx2")


@dataclass
class Timed:
    """Latency of one graph at one batch size, in milliseconds."""

    median_ms: float
    min_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median_ms": round(self.median_ms, 4), "min_ms": round(self.min_ms, 4), "p90_ms": round(self.p90_ms, 4), "runs": self.runs}


def cpu_info() -> dict[str, Any]:
    """CPU model, cores, the int8/fp16 instruction sets ONNX Runtime can use, ORT version, load average."""
    model, flags = cpu_model_and_flags()
    info: dict[str, Any] = {"cpu": model, "cores": os.cpu_count(), "int8_flags": [f for f in INT8_FLAGS if f in flags]}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def latency(
    graphs: Mapping[str, Path],
    images: np.ndarray,
    *,
    static: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    batches: Sequence[int] = LATENCY_BATCHES,
    runs: int = LATENCY_RUNS,
    warmup: int = WARMUP_RUNS,
    threads: int | None = None,
) -> dict[str, dict[int, Timed]]:
    """{label: {batch: Timed}} for ONNX Runtime CPU sessions (default threads, all optimisations) of each graph.

    images: real preprocessed films [n, 1, S, S]; a batch larger than n repeats them.
    static: per label, inputs other than "image" (the bank of a bank-as-input graph).
    threads: ONNX Runtime intra-op threads (default: its own choice, as a console runs it).
    """
    sessions = {label: quiet_session(path, threads=threads, optimize=True) for label, path in graphs.items()}
    out: dict[str, dict[int, Timed]] = {label: {} for label in graphs}
    for batch in batches:
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])), dtype=np.float32)
        feeds = {label: {"image": x, **dict((static or {}).get(label, {}))} for label in graphs}
        for label, s in sessions.items():
            for _ in range(warmup):
                s.run(None, feeds[label])
        times: dict[str, list[int]] = {label: [] for label in graphs}
        for _ in range(runs):
            for label, s in sessions.items():
                start = time.perf_counter_ns()
                s.run(None, feeds[label])
                times[label].append(time.perf_counter_ns() - start)
        for label, t in times.items():
            ms = np.asarray(t, dtype=np.float64) / 1e6
            out[label][batch] = Timed(float(np.median(ms)), float(ms.min()), float(np.percentile(ms, 90)), runs)
    return out


def file_sizes(root: Path, files: Sequence[str]) -> dict[str, int]:
    return {f: (root / f).stat().st_size for f in files if (root / f).is_file()}
