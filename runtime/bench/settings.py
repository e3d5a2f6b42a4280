"""The defaults and fixed choices of `salad bench` (docs/architecture.md §10)."""

from __future__ import annotations

from pathlib import Path

import salad
from salad import machine

SCHEMA = "salad-bench/1"
#: The baseline every row is compared with: PyTorch eager at fp32.
BASELINE_RUNTIME, BASELINE_PRECISION = "torch", "fp32"
DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_ITERS = 100
DEFAULT_WARMUP = 10
#: Below this many timed runs a median is not trusted; the report says so.
MIN_RUNS = 50
#: Films decoded for the timed loops (evenly spread over --data); enough that batch 32 sees distinct films.
DEFAULT_FILMS = 64
DEFAULT_DATA = Path(salad.__file__).parent / "sample" / "eval"
#: Square matrix size of the measured GEMM peaks (large enough to leave every cache).
GEMM_SIZE = 2048
#: Distributions whose versions go into the header (absent ones are left out).
LIBRARIES = machine.LIBRARIES
#: Thread-count variables set in every worker, so numpy/BLAS/OpenMP use the same count as the runtimes.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
