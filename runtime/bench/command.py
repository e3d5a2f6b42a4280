"""`salad bench`: the configurations, the worker processes, the baseline ratios and the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from salad.bundle import CHECKPOINT_FILE, Bundle
from salad.clitools import DEVICE, OUTPUT, IntList, LazyChoice, flatten, friendly_errors, is_stdout, write_output
from salad.data import find_images, read_samples
from salad.errors import BackendUnavailableError, ConfigError, DataError, SaladError
from salad.imageio import read_image
from salad.machine import library_versions, machine_info
from salad.manifest import PRECISIONS, Manifest
from salad.progress import quiet

from ..base import runner_class, runner_names
from ..options import FLAGS, check_taken, given, runner_option_flags
from .report import BenchReport, BenchRow, machine_busy
from .settings import (
    BASELINE_PRECISION,
    BASELINE_RUNTIME,
    DEFAULT_BATCHES,
    DEFAULT_DATA,
    DEFAULT_FILMS,
    DEFAULT_ITERS,
    DEFAULT_WARMUP,
    MIN_RUNS,
    THREAD_ENV,
)
from .worker import Job, run_worker

#: The runner option that marks a runtime with a start-up cache: it gets a first and a cached start.
START_CACHE_OPTION = "use_cache"


def _film_paths(data: Path, limit: int) -> list[Path]:
    """Up to `limit` image files from a folder, a file or a CSV (path,label), evenly spread and in a fixed order."""
    paths = (
        [s.path for s in read_samples(data)]
        if data.is_file() and data.suffix.lower() == ".csv"
        else sorted(find_images([data]))
    )
    if not paths:
        raise DataError(f"{data}: no films to benchmark with.")
    if len(paths) > limit:
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]
    return paths


def _decode(paths: Sequence[Path]) -> list[np.ndarray]:
    films, failed = [], []
    for p in paths:
        try:
            films.append(read_image(p))
        except DataError as exc:
            failed.append(str(exc))
    if failed:
        raise DataError(f"{len(failed)} film(s) could not be decoded; bench needs readable films:\n  " + "\n  ".join(failed[:10]))
    return films


def configurations(runtimes: Sequence[str], precisions: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(runtime, precision) pairs, the torch fp32 baseline first; torch at fp16/int8 is skipped with a note."""
    pairs = [(BASELINE_RUNTIME, BASELINE_PRECISION)]
    notes = []
    for runtime in runtimes:
        for precision in precisions:
            if runtime == BASELINE_RUNTIME and precision != BASELINE_PRECISION:
                notes.append(f"torch runs only the fp32 reference; torch/{precision} was not measured.")
                continue
            if (runtime, precision) not in pairs:
                pairs.append((runtime, precision))
    return pairs, notes


def _check_runnable(root: Path, pairs: Sequence[tuple[str, str]]) -> None:
    """Fail before any measurement if a runtime cannot run here, or the torch baseline has no checkpoint."""
    problems = []
    for name in dict.fromkeys(runtime for runtime, _ in pairs):
        reason = runner_class(name).unavailable_reason()
        if reason:
            problems.append(f"the {name} runtime is unavailable: {reason}")
    if not (root / CHECKPOINT_FILE).is_file():
        problems.append(
            f"{root} has no {CHECKPOINT_FILE} (exported with --slim?); the PyTorch eager baseline that every row is "
            "compared with rebuilds the model from it. Benchmark the full bundle (export without --slim)."
        )
    if problems:
        raise BackendUnavailableError("cannot benchmark: " + "; ".join(problems))


def run_bench(
    bundle: str | Path,
    runtimes: Sequence[str] = ("onnxruntime",),
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    *,
    iters: int = DEFAULT_ITERS,
    warmup: int = DEFAULT_WARMUP,
    data: str | Path = DEFAULT_DATA,
    films: int = DEFAULT_FILMS,
    threads: int | None = None,
    device: str | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
    runner_options: dict[str, Any] | None = None,
    starts: int = 1,
) -> BenchReport:
    """Benchmark `bundle` for every runtime × precision × batch, plus PyTorch eager fp32 as the baseline.

    precisions default to every precision the bundle has; threads to every CPU this process may use.
    Each configuration runs in its own worker process (see the module docstring). runner_options: backend
    options beyond threads (TensorRT's cache_dir, rebuild, workspace_mb, opt_batch, allow_tf32).
    """
    say = progress or (lambda _msg: None)
    root = Path(bundle)
    _check_settings(runtimes, batches, iters, warmup, starts)
    manifest = Bundle.open(root, verify=True).manifest
    chosen = _chosen_precisions(manifest, precisions)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_threads = int(threads or usable)
    pairs, notes = configurations(runtimes, chosen)
    _check_runnable(root, pairs)
    if iters < MIN_RUNS:
        notes.append(f"only {iters} timed runs per figure (< {MIN_RUNS}): a smoke run, not a measurement to quote.")

    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    paths = _film_paths(Path(data), films)
    say(f"decoding {len(paths)} films from {data} (once, before any timing)")
    decoded = _decode(paths)
    env = {**os.environ, **{k: str(n_threads) for k in THREAD_ENV}}
    jobs = [Job(str(root.resolve()), runtime, precision, int(b), iters, warmup, n_threads, device, "",
                dict(runner_options or {})) for runtime, precision in pairs for b in batches]
    floor_job = {"bundle": str(root.resolve()), "threads": n_threads, "precisions": chosen, "device": device}
    floor, rows = _run_workers(floor_job, jobs, decoded, starts, env, notes, say)
    load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    _attach_ratios(rows, floor)
    notes += _context_notes(rows, load_start, usable)
    header = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": machine_info(), "libraries": library_versions(), "threads": n_threads,
        "thread_env": {k: env[k] for k in THREAD_ENV}, "iters": iters, "warmup": warmup, "starts": starts,
        "batches": list(batches),
        "load_average_start": load_start, "load_average_end": load_end,
        "bundle": {
            "path": str(root), "toolkit_version": manifest.toolkit_version, "image_size": manifest.preprocess_config.size,
            "bank_rows": manifest.bank.rows, "k": manifest.k,
            "graphs": {p: manifest.graph("model", p).sha256 for p in chosen},
        },
        "data": {"path": str(data), "films": len(paths), "decoded": "once, before timing (grey float32 arrays)"},
        "method": _method(rows),
    }
    return BenchReport(header=header, rows=rows, floor=floor, notes=notes)


def _check_settings(runtimes: Sequence[str], batches: Sequence[int], iters: int, warmup: int, starts: int) -> None:
    """Usage errors before anything is read: counts, batch sizes, runtime names."""
    if starts < 1:
        raise ConfigError(f"--starts {starts}: expected at least one cold start per configuration.")
    if iters < 1 or warmup < 0:
        raise ConfigError(f"--iters {iters} / --warmup {warmup}: expected iters ≥ 1 and warmup ≥ 0.")
    if not batches or any(b < 1 for b in batches):
        raise ConfigError(f"--batch {list(batches)}: expected positive batch sizes, e.g. --batch 1 --batch 8.")
    for name in runtimes:
        runner_class(name)  # unknown names fail here, listing the registered ones


def _chosen_precisions(manifest: Manifest, precisions: Sequence[str] | None) -> list[str]:
    """The precisions asked for (default: every one the bundle has), each known and present in the bundle."""
    chosen = list(precisions) if precisions else manifest.precisions()
    for p in chosen:
        if p not in PRECISIONS:
            raise ConfigError(f"precision {p!r}; expected one of {list(PRECISIONS)}.")
        manifest.graph("model", p)  # names the graphs the bundle has
    return chosen


def _run_workers(floor_job: dict[str, Any], jobs: list[Job], decoded: list[np.ndarray], starts: int, env: dict[str, str],
                 notes: list[str], say: Callable[[str], None]) -> tuple[dict[str, Any], list[BenchRow]]:
    """The hardware floor, then each configuration's job, every one in a fresh worker process on the decoded films.

    `decoded` is emptied once the films are saved for the workers (this process need not hold them while they run).
    """
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="salad-bench-") as tmp:
        workdir = Path(tmp)
        # The floor first: it is quick, and a failure there should not cost the timed runs.
        say("measuring the hardware floor (MAC count, GEMM peaks)")
        try:
            floor = run_worker("--floor", json.dumps(floor_job), workdir, env, "floor measurement")
        except SaladError as exc:
            floor = {"error": str(exc)}
            notes.append(f"no GFLOP/s figures: {exc}")
        films_file = workdir / "films.npz"
        np.savez(films_file, *decoded)
        decoded.clear()
        for job in jobs:
            row = BenchRow.from_worker(_measure(dataclasses.replace(job, films=str(films_file)), starts, workdir, env, say))
            say(f"  end to end p50 {row.end_to_end.p50_ms:.3f} ms, inference p50 {row.inference.p50_ms:.3f} ms")
            rows.append(row)
    return floor, rows


def _context_notes(rows: list[BenchRow], load_start: list[float] | None, usable: int) -> list[str]:
    """Notes on what the figures are compared with: a baseline on another device, a busy machine."""
    notes = []
    base_devices = {r.device for r in rows if r.is_baseline}
    other = sorted({f"{r.runtime} on {r.device}" for r in rows if not r.is_baseline and r.device not in base_devices})
    if other:
        notes.append(
            f"{', '.join(other)} compared with the torch baseline on {', '.join(sorted(base_devices))}: "
            "pass --device cuda to compare GPU with GPU."
        )
    if load_start and machine_busy(load_start, usable):
        notes.append(
            f"the machine was busy (1-minute load average {load_start[0]:.1f} on {usable} CPUs at the start): "
            "absolute figures are noisy; re-run on a quiet machine before quoting them."
        )
    return notes


def _method(rows: list[BenchRow]) -> dict[str, Any]:
    """How each figure was measured, for the report's header."""
    return {
        "end_to_end": "Scorer.score on decoded films: input checks, preprocessing, inference, threshold",
        "inference": "runner.infer on preprocessed batches",
        "clock": "time.perf_counter_ns" + ("; CUDA events on GPU" if any(r.device_inference for r in rows) else ""),
        "isolation": "one fresh process per configuration",
        "cold_start": "Scorer construction (bundle verification) → runner active → first score of one batch",
        "first_and_cached_start": "runtimes with a start-up cache: first start in a fresh process on an empty private "
                                  "cache folder, cached start in the next fresh process on what it left there",
        "peak_rss": rows[0].memory.get("method") if rows else None,
        "throughput": "batch / end-to-end p50",
    }


def _measure(job: Job, starts: int, workdir: Path, env: dict[str, str], say: Callable[[str], None]) -> dict[str, Any]:
    """One configuration: `starts` cold starts (first and cached where the runtime has a start-up cache), then the rest.

    A runtime with a start-up cache gets a private, empty cache folder per first start; the cached start is the next
    fresh process on that folder, the last one being the measuring worker. Both are medians over `starts`.
    """
    cached = START_CACHE_OPTION in runner_class(job.runtime).options
    firsts: list[dict[str, float]] = []
    again: list[dict[str, float]] = []
    for i in range(starts if cached else starts - 1):
        if cached:
            folder = workdir / f"cache-{job.runtime}-{job.precision}-b{job.batch}-{i}"
            folder.mkdir()
            job = dataclasses.replace(job, options={**job.options, "cache_dir": str(folder)})
        say(f"measuring {job.label}: start {i + 1}/{starts}" + (" (empty cache, fresh process)" if cached else " (fresh process)"))
        firsts.append(run_worker("--start", job.to_json(), workdir, env, f"{job.label} start")["cold_start"])
        if cached and i < starts - 1:
            again.append(run_worker("--start", job.to_json(), workdir, env, f"{job.label} cached start")["cold_start"])
    say(f"measuring {job.label} ({job.warmup} warm-up + {job.iters} timed runs, fresh process)")
    result = run_worker("--worker", job.to_json(), workdir, env, job.label)
    (again if cached else firsts).append(result["cold_start"])
    result["first_start"] = median_start(firsts)
    result["cached_start"] = median_start(again) if cached else None
    return result


def median_start(starts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each phase's median over several cold starts, their count, and the fastest and slowest total."""
    keys = starts[0].keys()
    out = {k: float(np.median([s[k] for s in starts])) for k in keys}
    totals = [s["total_ms"] for s in starts]
    return {**out, "runs": len(starts), "total_min_ms": min(totals), "total_max_ms": max(totals)}


def _attach_ratios(rows: list[BenchRow], floor: dict[str, Any]) -> None:
    """speedup_vs_torch = torch fp32 p50 / row p50 at the same batch; GFLOP/s against the measured peak."""
    base = {r.batch: r for r in rows if r.is_baseline}
    macs = (floor.get("macs_per_image") or {}).get("model")
    peaks = floor.get("peaks") or {}
    for r in rows:
        ref = base.get(r.batch)
        if ref is not None:
            r.speedup_vs_torch = ref.end_to_end.p50_ms / r.end_to_end.p50_ms
            r.inference_speedup_vs_torch = ref.inference.p50_ms / r.inference.p50_ms
        if macs:
            r.gflops = 2.0 * macs * r.batch / (r.inference.p50_ms / 1e3) / 1e9
            if r.device.startswith("cuda"):
                r.peak_gflops = peaks.get("cuda_hgemm_gflops" if r.precision == "fp16" else "cuda_sgemm_gflops")
            else:
                r.peak_gflops = peaks.get("ort_int8_gops") if r.precision == "int8" else peaks.get("fp32_gflops")


def write_outputs(report: BenchReport, json_out: Path | None, markdown_out: Path | None, plot_out: Path | None) -> list[Path]:
    """Write the requested outputs (files atomically, creating folders; '-': stdout) and return the files' paths."""
    written = []
    for out, text in ((json_out, report.to_json() + "\n"), (markdown_out, report.to_markdown())):
        if write_output(out, text) and out is not None:
            written.append(out)
    if plot_out is not None:
        report.plot(plot_out)
        written.append(plot_out)
    return written


# -- CLI ------------------------------------------------------------------------------------------


def _command_line() -> str:
    """The invocation as a user would retype it: `salad bench ARGS…` whichever entry point ran it."""
    args = sys.argv[1:]
    if args[:1] == ["bench"]:
        args = args[1:]
    return shlex.join(["salad", "bench", *args])


@click.command("bench")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--runtime", "runtimes", multiple=True, type=LazyChoice(runner_names),
              help="Runtime to measure; repeat for several. PyTorch eager fp32 (torch) is always measured as the baseline.  "
                   "[default: onnxruntime]")
@click.option("--precision", "precisions", multiple=True, type=LazyChoice(PRECISIONS.names),
              help="Graph variant to measure; repeat for several.  [default: every precision in the bundle]")
@click.option("--batch", "batches", type=IntList(), multiple=True,
              help="Films per inference call to measure; repeat for several (a comma list also works: 1,8,32).  "
                   f"[default: {','.join(map(str, DEFAULT_BATCHES))}]")
@click.option("--iters", type=click.IntRange(min=1), default=DEFAULT_ITERS, show_default=True,
              help=f"Timed runs per figure (≥ {MIN_RUNS} for figures you quote).")
@click.option("--warmup", type=click.IntRange(min=0), default=DEFAULT_WARMUP, show_default=True, help="Untimed runs first.")
@click.option("--starts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cold starts per configuration, each a fresh process; first and cached starts are their medians.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=DEFAULT_DATA,
              help="Real films (folder, file or CSV path,label), decoded once before timing.  "
                   "[default: the shipped salad/sample/eval films]")
@click.option("--films", type=click.IntRange(min=1), default=DEFAULT_FILMS, show_default=True,
              help="Decode at most this many films, evenly spread over --data.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for every runtime (torch, ONNX Runtime intra-op, BLAS).  [default: all usable CPUs]")
@click.option("--device", type=DEVICE, default=None,
              help="cpu, cuda or cuda:N for every runtime, the torch baseline included (default: each runtime's own).")
@click.option("--json", "json_out", type=OUTPUT, default=None, help="Write the results as JSON here ('-' for stdout).")
@click.option("--markdown", "markdown_out", type=OUTPUT, default=None, help="Write a markdown report here ('-' for stdout).")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None, help="Write a PNG plot here (needs matplotlib).")
@runner_option_flags([name for name in FLAGS if name != "threads"])
@friendly_errors
def bench_command(
    bundle: Path, runtimes: Sequence[str], precisions: Sequence[str], batches: Sequence[list[int]], iters: int,
    warmup: int, starts: int, data: Path, films: int, threads: int | None, device: str | None,
    json_out: Path | None, markdown_out: Path | None, plot_out: Path | None, **backend: Any,
) -> None:
    """Latency, throughput, peak memory and cold start of BUNDLE per runtime × precision × batch, vs PyTorch eager fp32."""
    runtimes = runtimes or ("onnxruntime",)
    options = given(backend)
    check_taken([*runtimes, BASELINE_RUNTIME], options)
    report = run_bench(
        bundle, runtimes, precisions or None, flatten(batches) or DEFAULT_BATCHES, iters=iters, warmup=warmup,
        starts=starts, data=data, films=films, threads=threads, device=device, command=_command_line(),
        progress=None if quiet() else lambda msg: click.echo(msg, err=True), runner_options=options,
    )
    if not is_stdout(json_out, markdown_out):
        click.echo(report.format_table())
    for path in write_outputs(report, json_out, markdown_out, plot_out):
        click.echo(f"wrote {path}", err=True)
