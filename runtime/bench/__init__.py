"""`salad bench`: latency a console vendor can trust, every runtime × precision × batch against PyTorch eager.

How it measures (docs/architecture.md §10), and why:
- Films are decoded once, up front, by this process and handed to the workers as grey float arrays,
  so no timed loop reads or decodes a file. End to end is `Scorer.score` on those decoded arrays:
  input checks, the shared preprocessing, the runner, the threshold, the Result objects. Inference
  alone is `runner.infer` on preprocessed batches.
- Each configuration (runtime × precision × batch) runs in a fresh Python process of its own, so its
  cold start (bundle verification → engine ready → first score, library import included) and its
  peak resident memory belong to that configuration alone. A runtime with a start-up cache (ONNX
  Runtime's optimised model, OpenVINO's compiled blob) gets a first start on an empty private cache
  folder and a cached start in the next fresh process on what it left (`--starts N`: medians of N).
  Peak RSS is the kernel's high-water mark (VmHWM), reset after the films are loaded, so it counts
  the interpreter, the films and the runtime but nothing an earlier configuration did.
- PyTorch eager fp32 (the `torch` runtime) on the same films with the same thread count is always
  measured in the same invocation, and every row carries its ratio to it at the same batch size.
- Timings use time.perf_counter_ns; on a GPU the inference calls are also timed with CUDA events.
  Every figure is a median over `iters` timed runs after `warmup` untimed ones, with its spread.

Only click and the core are imported at module level: torch, onnx, onnxruntime and matplotlib are
imported by the worker or the function that needs them.

Modules: settings (defaults), stats (timed-loop statistics, memory), worker (one
configuration in its own process), floor (MACs and GEMM peaks), report (rows, table, markdown, plot),
command (orchestration and the CLI).
"""

from __future__ import annotations

from salad.machine import library_versions, machine_info

from .command import bench_command, configurations, run_bench, write_outputs
from .floor import count_macs, gemm_peaks, measure_floor
from .report import BenchReport, BenchRow, Speedup, machine_busy
from .settings import (
    BASELINE_PRECISION,
    BASELINE_RUNTIME,
    DEFAULT_BATCHES,
    DEFAULT_DATA,
    DEFAULT_FILMS,
    DEFAULT_ITERS,
    DEFAULT_WARMUP,
    SCHEMA,
)
from .stats import Stats, current_rss_mb, peak_rss_mb, reset_peak_rss
from .worker import Job, measure_configuration

__all__ = [
    "BASELINE_PRECISION", "BASELINE_RUNTIME", "DEFAULT_BATCHES", "DEFAULT_DATA", "DEFAULT_FILMS", "DEFAULT_ITERS",
    "DEFAULT_WARMUP", "SCHEMA", "BenchReport", "BenchRow", "Job", "Speedup", "Stats", "configurations",
    "bench_command", "count_macs", "current_rss_mb", "gemm_peaks", "library_versions",
    "machine_busy", "machine_info", "measure_configuration", "measure_floor", "peak_rss_mb", "reset_peak_rss",
    "run_bench", "write_outputs",
]
