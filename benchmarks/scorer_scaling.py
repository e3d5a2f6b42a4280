"""Scorer scaling: the bundle's kNN-arccos scoring graph alone, for bank sizes 1k → 1M, against its peers and the hardware.

For every bank size N and batch B it times, with the same thread count everywhere:
- onnxruntime: scorer.onnx built by the real export code path (salad.export.graphs: export_scorer,
  bank_tensor, bind_bank; bank bound as the transposed initializer bank_t [200, N]) in an
  InferenceSession configured like the onnxruntime runner (ORT_ENABLE_ALL, intra-op threads);
- torch: salad.scoring.score_torch (the reference the graph is traced from), eager, inference_mode;
- numpy: salad.scoring.score_numpy;
- faiss-knn: FAISS exact inner-product search (IndexFlatIP, k = K) then arccos of the K neighbours.
  Largest inner product = smallest angle, so this yields knn_angle, but NOT `score`: the score also
  divides by the mean angle over all N rows, which a kNN index never computes;
- faiss+mean: faiss-knn plus the one full pass that `score` needs (z @ bank_t, clip, arccos, mean
  over N, in numpy). This is the fair FAISS counterpart of the scorer graph; it reads the bank
  twice (FAISS's scan, then the mean), where the graph reads it once;
- floor: the memory-bandwidth floor, bank bytes / measured read bandwidth (an array far larger than
  the last-level cache, read by numpy sums on one thread and split over the threads, by BLAS sdot
  split over the threads and by a BLAS sgemv; the fastest probe sets the floor), and the compute floor 2·B·N·D / measured sgemm peak; the
  roofline floor is the larger of the two.

Banks are synthetic unit vectors; the queries are perturbed bank rows, so there are real near
neighbours as with trained embeddings. Every method's outputs are checked against torch's.
Usage: python benchmarks/scorer_scaling.py [--sizes 1000,...] [--batches 1,32] [--iters 50] [--out PREFIX]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_SIZES = (1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000)
DEFAULT_BATCHES = (1, 32)
METHODS = ("onnxruntime", "torch", "numpy", "faiss-knn", "faiss+mean")
DIM, K, OPSET = 200, 100, 17
#: Acceptance (issue #7): at this N and batch the graph must be within 2× the bandwidth floor and no slower than FAISS.
TARGET_N, TARGET_BATCH, TARGET_FLOOR_RATIO = 100_000, 1, 2.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ints = lambda text: tuple(int(v) for v in text.split(",") if v)  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=ints, default=DEFAULT_SIZES, help="bank rows N, comma-separated")
    p.add_argument("--batches", type=ints, default=DEFAULT_BATCHES, help="batch sizes, comma-separated")
    p.add_argument("--iters", type=int, default=50, help="timed runs per figure (≥ 50 for figures you quote)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    p.add_argument("--threads", type=int, default=None, help="threads for every method (default: all usable CPUs)")
    p.add_argument("--methods", type=lambda t: tuple(t.split(",")), default=METHODS, help=f"subset of {','.join(METHODS)}")
    p.add_argument("--bandwidth-mib", type=int, default=1024, help="array size of the read-bandwidth measurement")
    p.add_argument("--k", type=int, default=K, help="K nearest rows in the score")
    p.add_argument("--cold", action="store_true",
                   help="evict the caches before every timed run (read a 256 MiB buffer, untimed): the bank then comes "
                        "from DRAM even when it fits the last-level cache, as on a console that does other work between films")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scorer_scaling"),
                   help="output prefix: writes PREFIX.json, PREFIX.md, PREFIX.png")
    args = p.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; expected a subset of {list(METHODS)}")
    if args.iters < 1 or args.warmup < 0 or not args.sizes or not args.batches:
        p.error("expected --iters ≥ 1, --warmup ≥ 0 and at least one size and batch")
    if min(args.sizes) < args.k:
        p.error(f"every bank size must hold K={args.k} rows; smallest given is {min(args.sizes)}")
    return args


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def timed(fn: Callable[[], Any], iters: int, warmup: int, before: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Median and spread of `iters` runs of fn after `warmup` untimed ones (salad.runtime.bench.Stats).

    `before`, if given, runs untimed before every timed run (e.g. to evict the caches).
    """
    from salad.runtime.bench import Stats

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if before is not None:
            before()
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return Stats.from_ms(samples).to_dict()


def read_bandwidth(mib: int, threads: int, iters: int) -> dict[str, Any]:
    """Read bandwidth in GB/s from numpy sums over `mib` MiB (far beyond the cache): one thread, and split over `threads`."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(mib * 2**20 // 4, dtype=np.float32)  # written once, so every page is resident
    chunks = np.array_split(data, threads)
    runs = max(10, min(iters, 50))
    probes = {"single_thread": timed(lambda: data.sum(), runs, 2)}
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL inside reductions and BLAS calls
        probes["threaded"] = timed(lambda: list(pool.map(np.sum, chunks)), runs, 2)
        # numpy's pairwise sum is limited by its additions, not by memory, on a fast core: BLAS reads
        # faster. sdot of each chunk with itself reads every byte once, on `threads` threads ...
        probes["blas_dot"] = timed(lambda: list(pool.map(lambda c: np.dot(c, c), chunks)), runs, 2)
    # ... and sgemv (a vector times the array viewed as [200, n], threaded by the BLAS) is the read
    # pattern of the scorer's MatMul in a library that is not the one under test.
    matrix = data[: data.size // 200 * 200].reshape(200, -1)
    vector = np.ones((1, 200), dtype=np.float32)
    probes["blas_gemv"] = timed(lambda: vector @ matrix, runs, 2)
    gbs = {name: data.nbytes / (s["p50_ms"] / 1e3) / 1e9 for name, s in probes.items()}
    return {"array_mib": mib, "runs": runs, "gb_per_s": gbs, "floor_gb_per_s": max(gbs.values()),
            "method": "median of runs of each probe: numpy sum on one thread and split over the threads, BLAS sdot "
                      "split over the threads, BLAS sgemv [1, 200] x [200, n]; the fastest probe sets the floor"}


def sgemm_peak(threads: int) -> float:
    """Best-of-5 numpy sgemm GFLOP/s of a 2048² matrix (the compute side of the roofline)."""
    from salad.runtime.bench import gemm_peaks

    return float(gemm_peaks(threads, ())["fp32_gflops"])


def unit_rows(rng: Any, n: int, dim: int) -> Any:
    import numpy as np

    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build_scorer_session(bank: Any, k: int, threads: int) -> Any:
    """scorer.onnx for this bank exactly as export builds it, in a session configured like OnnxRuntimeRunner."""
    from salad.bundle import quiet_session
    from salad.export.graphs import bank_tensor, bind_bank, export_scorer
    from salad.export.spec import graph_contracts

    n, dim = bank.shape
    contract = graph_contracts(64, dim, n, bank_as_input=False)["scorer"]
    proto = bind_bank(export_scorer(k, dim, n, contract, OPSET), bank_tensor(bank, None))
    payload = proto.SerializeToString()
    del proto
    return quiet_session(payload, threads=threads, optimize=True)


def scorers(bank: Any, k: int, threads: int, methods: Sequence[str]) -> dict[str, Callable[[Any], tuple[Any, Any]]]:
    """method → fn(z) returning (score or None, knn_angle) as numpy arrays."""
    import numpy as np

    from salad.scoring import score_numpy

    bank_t = np.ascontiguousarray(bank.T)
    fns: dict[str, Callable[[Any], tuple[Any, Any]]] = {}
    if "onnxruntime" in methods:
        session = build_scorer_session(bank, k, threads)
        fns["onnxruntime"] = lambda z: tuple(session.run(["score", "knn_angle"], {"embedding": z}))  # type: ignore[return-value]
    if "torch" in methods:
        import torch

        from salad.scoring import score_torch

        torch.set_num_threads(threads)
        tbank = torch.from_numpy(bank)

        def run_torch(z: Any) -> tuple[Any, Any]:
            with torch.inference_mode():
                s, a = score_torch(torch.from_numpy(z), tbank, k)
            return s.numpy(), a.numpy()

        fns["torch"] = run_torch
    if "numpy" in methods:
        fns["numpy"] = lambda z: tuple(score_numpy(z, bank, k).values())  # type: ignore[return-value]
    if "faiss-knn" in methods or "faiss+mean" in methods:
        try:
            import faiss
        except ImportError as exc:
            raise SystemExit(
                f"faiss is not installed ({exc}): pip install 'salad-edge[bench]' (faiss-cpu), "
                "or leave faiss-knn and faiss+mean out of --methods."
            ) from None

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(bank)

        def knn_mean(z: Any) -> Any:
            sims, _ = index.search(z, k)  # the K largest z·m_j = the K smallest angles
            return np.arccos(np.clip(sims, -1.0, 1.0)).mean(axis=1)

        if "faiss-knn" in methods:
            fns["faiss-knn"] = lambda z: (None, knn_mean(z) / np.pi)

        def faiss_full(z: Any) -> tuple[Any, Any]:
            knn = knn_mean(z)
            all_mean = np.arccos(np.clip(z @ bank_t, -1.0, 1.0)).mean(axis=1)  # what FAISS cannot give
            return knn / all_mean, knn / np.pi

        if "faiss+mean" in methods:
            fns["faiss+mean"] = faiss_full
    return fns


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from salad.runtime.bench import library_versions, machine_info

    threads = args.threads or usable_cpus()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(f"read bandwidth ({args.bandwidth_mib} MiB) and sgemm peak, {threads} thread(s)", file=sys.stderr)
    bandwidth = read_bandwidth(args.bandwidth_mib, threads, args.iters)
    peak = sgemm_peak(threads)
    rng = np.random.default_rng(0)
    evict = None
    if args.cold:
        sweep = np.ones(64 * 2**20, dtype=np.float32)  # 256 MiB, well beyond any last-level cache
        evict = sweep.sum
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        bank = unit_rows(rng, n, DIM)
        fns = scorers(bank, args.k, threads, args.methods)
        for b in args.batches:
            picks = rng.integers(0, n, size=b)
            z = bank[picks] + 0.3 * unit_rows(rng, b, DIM)
            z = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
            floor_bw = bank.nbytes / (bandwidth["floor_gb_per_s"] * 1e9) * 1e3
            floor_compute = 2.0 * b * n * DIM / (peak * 1e9) * 1e3
            row: dict[str, Any] = {
                "n": n, "batch": b, "bank_mb": bank.nbytes / 1e6,
                "floor_ms": {"bandwidth": floor_bw, "compute": floor_compute, "roofline": max(floor_bw, floor_compute)},
                "methods": {},
            }
            ref = fns["torch"](z) if "torch" in fns else None
            for name, fn in fns.items():
                out = fn(z)
                entry = timed(lambda fn=fn, z=z: fn(z), args.iters, args.warmup, before=evict)
                if ref is not None:
                    diffs = {"knn_angle": float(np.max(np.abs(np.asarray(out[1]) - ref[1])))}
                    if out[0] is not None:
                        diffs["score"] = float(np.max(np.abs(np.asarray(out[0]) - ref[0])))
                    entry["max_abs_diff_vs_torch"] = diffs
                entry["outputs"] = "knn_angle only" if out[0] is None else "score, knn_angle"
                entry["vs_floor"] = entry["p50_ms"] / row["floor_ms"]["bandwidth"]
                row["methods"][name] = entry
                print(f"N={n:>9,} batch {b:>3} {name:<12} p50 {entry['p50_ms']:9.3f} ms  "
                      f"(IQR {entry['iqr_ms']:.3f}; bandwidth floor {floor_bw:.3f} ms)", file=sys.stderr)
            rows.append(row)
        del fns, bank
    acceptance = _acceptance(rows)
    return {
        "schema": "salad-scorer-scaling/1",
        "header": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": "python " + " ".join(sys.argv),
            "machine": machine_info(), "libraries": library_versions(), "threads": threads,
            "iters": args.iters, "warmup": args.warmup, "k": args.k, "dim": DIM, "opset": OPSET,
            "caches": "evicted before every timed run" if args.cold else "warm (steady state: repeated calls)",
            "load_average_start": load_start, "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
        },
        "bandwidth": bandwidth, "sgemm_peak_gflops": peak, "results": rows, "acceptance": acceptance,
    }


def _acceptance(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The issue's check at N = 100,000, batch 1: graph ≤ 2× the bandwidth floor and no slower than FAISS."""
    row = next((r for r in rows if r["n"] == TARGET_N and r["batch"] == TARGET_BATCH), None)
    if row is None or "onnxruntime" not in row["methods"]:
        return None
    ort_ms = row["methods"]["onnxruntime"]["p50_ms"]
    out: dict[str, Any] = {"n": TARGET_N, "batch": TARGET_BATCH, "onnxruntime_p50_ms": ort_ms,
                           "bandwidth_floor_ms": row["floor_ms"]["bandwidth"],
                           "floor_ratio": ort_ms / row["floor_ms"]["bandwidth"]}
    out["within_2x_floor"] = out["floor_ratio"] <= TARGET_FLOOR_RATIO
    for name in ("faiss-knn", "faiss+mean"):
        if name in row["methods"]:
            out[f"vs_{name}"] = row["methods"][name]["p50_ms"] / ort_ms
            out[f"not_slower_than_{name}"] = ort_ms <= row["methods"][name]["p50_ms"]
    return out


def to_markdown(report: dict[str, Any]) -> str:
    h = report["header"]
    methods = list(dict.fromkeys(m for r in report["results"] for m in r["methods"]))
    bw = report["bandwidth"]["gb_per_s"]
    lines = [
        "# Scorer scaling: kNN-arccos scoring graph vs PyTorch, FAISS and the memory-bandwidth floor",
        "",
        f"{h['machine']['cpu']} ({h['machine']['cpus_usable']} usable CPUs), {h['threads']} thread(s) for every method; "
        f"K = {h['k']}, D = {h['dim']}; median of {h['iters']} runs after {h['warmup']} warm-up runs (IQR in brackets), "
        f"caches {h.get('caches', 'warm')}; "
        f"load average {_load(h['load_average_start'])} → {_load(h['load_average_end'])}.",
        "",
        f"Read bandwidth ({report['bandwidth']['array_mib']} MiB array): numpy sum {bw['single_thread']:.1f} GB/s on one thread, "
        f"{bw['threaded']:.1f} GB/s split over {h['threads']} threads; BLAS sdot {bw.get('blas_dot', float('nan')):.1f} GB/s, "
        f"BLAS sgemv {bw.get('blas_gemv', float('nan')):.1f} GB/s; "
        f"sgemm peak {report['sgemm_peak_gflops']:.1f} GFLOP/s. Floor = bank bytes / {report['bandwidth']['floor_gb_per_s']:.1f} GB/s.",
        "",
        f"Libraries: {', '.join(f'{k} {v}' for k, v in h['libraries'].items())}. Command: `{h['command']}`",
        "",
    ]
    for b in sorted({r["batch"] for r in report["results"]}):
        lines += [f"## Batch {b} (ms per call)", "",
                  "| N | bank MB | " + " | ".join(methods) + " | bandwidth floor | roofline floor | onnxruntime / floor |",
                  "|---:|---:|" + "---:|" * (len(methods) + 3)]
        for r in (r for r in report["results"] if r["batch"] == b):
            cells = []
            for m in methods:
                e = r["methods"].get(m)
                cells.append("-" if e is None else f"{e['p50_ms']:.3f} ({e['iqr_ms']:.3f})")
            ort = r["methods"].get("onnxruntime")
            ratio = f"{ort['p50_ms'] / r['floor_ms']['bandwidth']:.2f}×" if ort else "-"
            lines.append(f"| {r['n']:,} | {r['bank_mb']:.1f} | " + " | ".join(cells)
                         + f" | {r['floor_ms']['bandwidth']:.3f} | {r['floor_ms']['roofline']:.3f} | {ratio} |")
        lines.append("")
    acc = report.get("acceptance")
    if acc:
        lines += [
            "## Acceptance (N = 100,000, batch 1)", "",
            f"onnxruntime {acc['onnxruntime_p50_ms']:.3f} ms = {acc['floor_ratio']:.2f}× the bandwidth floor "
            f"({acc['bandwidth_floor_ms']:.3f} ms): {'PASS' if acc['within_2x_floor'] else 'FAIL'} (target ≤ 2×)."
            + "".join(f" FAISS {m}: {acc[f'vs_{m}']:.2f}× the graph's time ({'PASS' if acc[f'not_slower_than_{m}'] else 'FAIL'})."
                      for m in ("faiss-knn", "faiss+mean") if f"vs_{m}" in acc),
            "",
        ]
    load = h.get("load_average_start") or [0.0]
    if load[0] > 0.5 * h["machine"]["cpus_usable"]:
        lines += [f"**The machine was busy** (1-minute load average {load[0]:.1f} on {h['machine']['cpus_usable']} CPUs at "
                  "the start): absolute figures are noisy; re-run on a quiet machine before quoting them.", ""]
    lines += [
        "faiss-knn gives knn_angle only: a kNN index never sees the mean angle over all N rows that `score` divides by. "
        "faiss+mean adds that one full pass (numpy) and is the fair comparison for the full score.",
        "",
    ]
    return "\n".join(lines)


def _load(values: Sequence[float] | None) -> str:
    return "?" if not values else "/".join(f"{v:.1f}" for v in values)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in report["results"]})
    methods = list(dict.fromkeys(m for r in report["results"] for m in r["methods"]))
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        rows = sorted((r for r in report["results"] if r["batch"] == b), key=lambda r: r["n"])
        ns = [r["n"] for r in rows]
        for m in methods:
            pts = [(r["n"], r["methods"][m]) for r in rows if m in r["methods"]]
            if pts:
                ax.errorbar([n for n, _ in pts], [e["p50_ms"] for _, e in pts],
                            yerr=[[e["p50_ms"] - e["p25_ms"] for _, e in pts], [e["p75_ms"] - e["p50_ms"] for _, e in pts]],
                            marker="o", ms=4, capsize=2, label=m)
        ax.plot(ns, [r["floor_ms"]["bandwidth"] for r in rows], "k--", label="bandwidth floor")
        ax.plot(ns, [r["floor_ms"]["roofline"] for r in rows], "k:", label="roofline floor")
        ax.set(xscale="log", yscale="log", xlabel="bank rows N", ylabel="ms per call (p50, IQR bars)", title=f"batch {b}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    h = report["header"]
    fig.suptitle(f"scorer scaling: {h['machine']['cpu']}, {h['threads']} thread(s), K={h['k']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or usable_cpus()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)  # before numpy's BLAS starts: every method gets the same threads
    report = run(args)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    Path(f"{out}.md").write_text(to_markdown(report), encoding="utf-8")
    plot(report, Path(f"{out}.png"))
    print(f"wrote {out}.json, {out}.md, {out}.png", file=sys.stderr)
    acc = report["acceptance"]
    if acc:
        print(json.dumps(acc), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
