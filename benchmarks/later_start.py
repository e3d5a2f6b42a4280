"""A console's later start: the cached start once the start-up cache's files have settled (issue 28).

Results: benchmarks/results/console/quiet_xeon/.

`salad bench --starts N` measures the cached start in the process right after the first start, when the files that
start wrote are seconds old: their CRC-32 seals are then checked by reading them. A console restarting later finds
them settled (salad.runtime.cache.SETTLE_NS), and after one start that checks them, a seal vouches for its file by
status. This script measures that start as the bench does (Scorer construction -> first score of one film, each in
a fresh process, the runtime's import included): one first start on an empty cache folder, a pause until its files
settle, one start that checks the seals, then STARTS starts whose median it prints as JSON (wall ms per phase, and
the process's CPU ms for the whole start, which a busy machine disturbs less).

    python benchmarks/later_start.py BUNDLE --runtime onnxruntime --precision int8 [--starts 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

ONE_START = """
import json, sys, time
import numpy as np
from salad.runtime.scorer import Scorer
film = np.random.default_rng(0).random((512, 512), dtype=np.float32) * 0.8 + 0.1
bundle, runtime, precision, cache = sys.argv[1:5]
c0, t0 = time.process_time_ns(), time.perf_counter_ns()
scorer = Scorer.from_bundle(bundle, runtime=runtime, precision=precision, max_batch=1, threads=2, cache_dir=cache)
t1 = time.perf_counter_ns()
scorer.activate()
t2 = time.perf_counter_ns()
result = scorer.score([film])[0]
t3, c3 = time.perf_counter_ns(), time.process_time_ns()
print(json.dumps({"cpu_ms": (c3 - c0) / 1e6, "verify_ms": (t1 - t0) / 1e6, "activate_ms": (t2 - t1) / 1e6,
                  "first_score_ms": (t3 - t2) / 1e6,
                  "total_ms": (t3 - t0) / 1e6, "cache": scorer.runner.start_cache["status"], "score": result.score}))
"""


def one_start(bundle: str, runtime: str, precision: str, cache: str) -> dict[str, float | str]:
    """One start in a fresh Python process; its phases in ms."""
    out = subprocess.run([sys.executable, "-c", ONE_START, bundle, runtime, precision, cache],
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="salad-later-") as cache:
        first = one_start(args.bundle, args.runtime, args.precision, cache)
        time.sleep(2.5)  # salad.runtime.cache.SETTLE_NS (2 s) and a margin
        checking = one_start(args.bundle, args.runtime, args.precision, cache)
        later = [one_start(args.bundle, args.runtime, args.precision, cache) for _ in range(args.starts)]
    keys = ("verify_ms", "activate_ms", "first_score_ms", "total_ms", "cpu_ms")
    median = {k: round(statistics.median(float(s[k]) for s in later), 1) for k in keys}
    totals = [float(s["total_ms"]) for s in later]
    print(json.dumps({"runtime": args.runtime, "precision": args.precision, "first_start_ms": round(float(first["total_ms"]), 1),
                      "seal_checking_start_ms": round(float(checking["total_ms"]), 1),
                      "seal_checking_start_cpu_ms": round(float(checking["cpu_ms"]), 1), "later_start": median,
                      "later_start_range_ms": [round(min(totals), 1), round(max(totals), 1)], "runs": len(later),
                      "cache": sorted({str(s["cache"]) for s in later}), "scores_equal": len({s["score"] for s in [first, *later]}) == 1}))


if __name__ == "__main__":
    main()
