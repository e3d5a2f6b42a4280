"""Scoring soak: N films (default 50,000) through salad.runtime.Scorer, watching memory and file descriptors.

Acceptance: "a 50,000-film scoring soak stays flat in memory and file descriptors". Films are the
real shipped sample films, cycled, read from disk and decoded every time (the console's path:
file → salad.imageio → preprocessing → runner), scored in batches. Every `--every` films it samples
the process's RSS (psutil) and open file-descriptor count, then writes JSON and markdown (and a
PNG with --plot): first/last/max RSS, the RSS slope over the second half in MB per 10k films,
the fd range, throughput, CPU model and library versions.

It exports nothing unless no bundle is given; then it trains a tiny run on salad/sample/train/normal
and exports it (salad.train.trainer.train_run + salad.export.export_bundle) into --build-dir.
Usage: python benchmarks/soak.py [BUNDLE] [--films 50000] [--batch 32] [--every 1000] [--out DIR] [--plot]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tqdm import tqdm

import salad
from salad.runtime import Scorer
from salad.runtime.bench import library_versions, machine_info

SAMPLE = Path(salad.__file__).parent / "sample"
LIBRARIES = ("salad-edge", "numpy", "opencv-python-headless", "pydicom", "onnxruntime", "simplejpeg", "psutil", "torch")


def sample_films() -> list[Path]:
    """The real films shipped with the package (train normals and the labelled eval films)."""
    films = sorted(SAMPLE.rglob("*.jpeg"))
    if not films:
        raise SystemExit(f"{SAMPLE}: no sample films; reinstall salad-edge.")
    return films


def open_fds(proc: psutil.Process) -> int:
    """Open file descriptors of this process (Linux/macOS: psutil's num_fds)."""
    return int(proc.num_fds())


def build_tiny_bundle(out: Path) -> Path:
    """Train a seconds-sized run on the shipped normals and export it: a real bundle for a soak without one."""
    from salad.export import export_bundle
    from salad.train.trainer import CPU, train_run

    cfg = dataclasses.replace(
        CPU, size=64, width=0.125, pretrain_epochs=1, rounds=2, round_epochs=1, batch_size=16, score_k=20, threads=2
    )
    run = out / "run"
    train_run(SAMPLE / "train" / "normal", run, cfg, val=SAMPLE / "eval")
    return Path(export_bundle(run, out / "bundle", force=True))


def soak(
    bundle: Path, films: Sequence[Path], n: int, *, batch: int = 32, every: int = 1000, runtime: str = "onnxruntime",
    precision: str = "fp32", progress: bool = True, **runner_options: Any,
) -> dict[str, Any]:
    """Score `n` films cycled from `films`; sample RSS and fds after activation and every `every` films."""
    proc = psutil.Process()
    samples: list[dict[str, float]] = []
    failed = 0
    with Scorer.from_bundle(bundle, runtime=runtime, precision=precision, max_batch=batch, **runner_options) as scorer:
        cycle = itertools.cycle(films)
        done, next_sample = 0, 0
        start = time.perf_counter()
        bar = tqdm(total=n, unit="film", disable=not progress, mininterval=2.0)
        while done < n:
            if done >= next_sample:
                samples.append({"films": done, "rss_mb": proc.memory_info().rss / 2**20, "fds": open_fds(proc),
                                "seconds": time.perf_counter() - start})
                next_sample += every
            chunk = [next(cycle) for _ in range(min(batch, n - done))]
            failed += sum(not r.ok for r in scorer.score(chunk, on_error="record"))
            done += len(chunk)
            bar.update(len(chunk))
        bar.close()
        elapsed = time.perf_counter() - start
        samples.append({"films": done, "rss_mb": proc.memory_info().rss / 2**20, "fds": open_fds(proc), "seconds": elapsed})
        runtime_name, precision_name = scorer.runtime, scorer.precision
    return summarise(samples, n=n, failed=failed, elapsed=elapsed, batch=batch, runtime=runtime_name, precision=precision_name,
                     bundle=bundle, distinct_films=len(films))


def summarise(samples: list[dict[str, float]], **info: Any) -> dict[str, Any]:
    """Headline figures from the samples: RSS first/last/max, second-half slope (MB per 10k films), fd range."""
    films = np.array([s["films"] for s in samples], dtype=np.float64)
    rss = np.array([s["rss_mb"] for s in samples], dtype=np.float64)
    half = films >= films[-1] / 2
    slope = float(np.polyfit(films[half], rss[half], 1)[0] * 10_000) if half.sum() >= 2 else float("nan")
    fds = [int(s["fds"]) for s in samples]
    n, elapsed = int(info["n"]), float(info["elapsed"])
    return {
        **{k: str(v) if isinstance(v, Path) else v for k, v in info.items()},
        "rss_mb": {"first": float(rss[0]), "last": float(rss[-1]), "max": float(rss.max()), "second_half_slope_mb_per_10k": slope},
        "fds": {"first": fds[0], "last": fds[-1], "min": min(fds), "max": max(fds)},
        "films_per_s": n / elapsed if elapsed > 0 else None,
        "samples": samples,
        "machine": {
            "cpu": machine_info()["cpu"],
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "libraries": library_versions(LIBRARIES),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a short markdown page."""
    r, f = report["rss_mb"], report["fds"]
    libs = ", ".join(f"{k} {v}" for k, v in report["libraries"].items())
    return "\n".join([
        f"# Scoring soak: {report['n']:,} films",
        "",
        f"`{report['command']}` — {report['runtime']}/{report['precision']}, batch {report['batch']}, "
        f"{report['distinct_films']} distinct real films cycled (read and decoded from disk every time).",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| RSS first / last / max (MB) | {r['first']:.1f} / {r['last']:.1f} / {r['max']:.1f} |",
        f"| RSS slope over the second half (MB per 10k films) | {r['second_half_slope_mb_per_10k']:+.2f} |",
        f"| open fds first / last (min–max) | {f['first']} / {f['last']} ({f['min']}–{f['max']}) |",
        f"| throughput (films/s) | {report['films_per_s']:.1f} |",
        f"| failed films | {report['failed']} |",
        "",
        f"CPU: {report['machine']['cpu']} ({report['machine']['cpus_usable']} usable); {report['machine']['platform']}; "
        f"Python {report['machine']['python']}.",
        f"Libraries: {libs}.",
        "",
    ])


def plot(report: dict[str, Any], path: Path) -> None:
    """RSS and fds against films scored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    films = [s["films"] for s in report["samples"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(films, [s["rss_mb"] for s in report["samples"]], color="tab:blue", label="RSS (MB)")
    ax.set_xlabel("films scored")
    ax.set_ylabel("RSS (MB)")
    ax2 = ax.twinx()
    ax2.plot(films, [s["fds"] for s in report["samples"]], color="tab:orange", label="open fds")
    ax2.set_ylabel("open fds")
    ax.set_title(f"Scoring soak, {report['runtime']}/{report['precision']}, batch {report['batch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: soak a bundle (or a freshly built tiny one) and write soak.json / soak.md (/ soak.png)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, help="bundle to score with (default: build a tiny one in --build-dir)")
    parser.add_argument("--films", type=int, default=50_000, help="films to score (cycling the shipped sample)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--every", type=int, default=1000, help="sample RSS and fds every this many films")
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="runner threads (default: the runtime's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak"))
    parser.add_argument("--plot", action="store_true", help="also write soak.png")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="where a tiny bundle is built when none is given (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or build_tiny_bundle(args.build_dir or Path(tempfile.mkdtemp(prefix="salad-soak-")))
    options = {"threads": args.threads} if args.threads else {}
    report = soak(bundle, sample_films(), args.films, batch=args.batch, every=args.every, runtime=args.runtime,
                  precision=args.precision, **options)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (args.out / "soak.md").write_text(to_markdown(report), encoding="utf-8")
    if args.plot:
        plot(report, args.out / "soak.png")
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
