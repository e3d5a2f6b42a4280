"""One configuration (runtime × precision × batch) measured in a fresh process: cold start, end to end, inference.

A runtime with a start-up cache (Runner.options has `use_cache`) is started twice, each time in a fresh
process on the same private cache folder: `--start` once with the folder empty (the first start), then
`--worker` with what the first left there (the cached start, and every other figure).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salad.errors import BackendError, DataError, SaladError

from ..base import runner_class
from ..scorer import IMAGE_INPUT, Scorer
from .floor import measure_floor
from .stats import Stats, current_rss_mb, peak_rss_mb, reset_peak_rss

# -- the job a worker runs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One configuration, as handed to a worker process (JSON)."""

    bundle: str
    runtime: str
    precision: str
    batch: int
    iters: int
    warmup: int
    threads: int
    device: str | None
    films: str  # .npz of decoded grey films
    #: Backend options beyond threads (TensorRT's cache_dir, opt_batch, …); each runtime gets those it declares.
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        # a path option (`--cache-dir` arrives from click as a Path) travels as its string
        return json.dumps(dataclasses.asdict(self), default=os.fspath)

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.precision} batch {self.batch}"


def _load_films(path: str | Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [np.ascontiguousarray(data[f"arr_{i}"], dtype=np.float32) for i in range(len(data.files))]


def _runner_options(runtime: str, threads: int, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """`threads=` and the job's other options, for backends that declare them (Runner.options)."""
    declared = runner_class(runtime).options
    return {k: v for k, v in {**(options or {}), "threads": threads}.items() if k in declared}


def _runtime_info(scorer: Scorer) -> dict[str, Any]:
    """What the backend actually runs with (Runner.info: library, threads, providers, engine), and OpenCV's threads."""
    info = scorer.runner.info()
    try:
        import cv2

        info["opencv_threads"] = int(cv2.getNumThreads())
    except ImportError:  # pragma: no cover - opencv is a core dependency
        pass
    return info


def _bank_feed(scorer: Scorer) -> dict[str, np.ndarray]:
    """The bank input of a bundle exported with --bank-as-input (the same array the Scorer feeds)."""
    return scorer.runner.graph.static_feed()


def start_scorer(job: Job, films: Sequence[np.ndarray]) -> tuple[Scorer, dict[str, float]]:
    """The active Scorer and its cold start: bundle verification → engine ready → first score of one batch, in ms.

    The clock starts before the Scorer (and so the runner) is constructed and stops when the first scores are back.
    """
    t0 = time.perf_counter_ns()
    scorer = Scorer.from_bundle(
        job.bundle, runtime=job.runtime, precision=job.precision, device=job.device, max_batch=job.batch,
        **_runner_options(job.runtime, job.threads, job.options),
    )
    t1 = time.perf_counter_ns()
    scorer.activate()
    t2 = time.perf_counter_ns()
    scorer.score([films[j % len(films)] for j in range(job.batch)])
    t3 = time.perf_counter_ns()
    cold = {"verify_ms": (t1 - t0) / 1e6, "activate_ms": (t2 - t1) / 1e6, "first_score_ms": (t3 - t2) / 1e6, "total_ms": (t3 - t0) / 1e6}
    return scorer, cold


def measure_start(job: Job, films: Sequence[np.ndarray]) -> dict[str, Any]:
    """Only the cold start of one configuration (the first start, on an empty cache folder), and what the runtime used."""
    if not films:
        raise DataError("no decoded films to benchmark with.")
    scorer, cold = start_scorer(job, films)
    try:
        return {"cold_start": cold, "runtime_info": _runtime_info(scorer)}
    finally:
        scorer.close()


def measure_configuration(job: Job, films: Sequence[np.ndarray]) -> dict[str, Any]:
    """Cold start, end-to-end and inference-only timings and peak memory of one configuration.

    Meant to run in a fresh process (see `run_bench`): the cold start then includes importing the
    backend library, and the peak RSS is this configuration's own.
    """
    if not films:
        raise DataError("no decoded films to benchmark with.")
    rss_reset = reset_peak_rss()
    baseline_rss = current_rss_mb()
    b = job.batch

    def batch_of(i: int) -> list[np.ndarray]:
        return [films[(i * b + j) % len(films)] for j in range(b)]

    # Cold start: bundle verification (every sha256) → engine ready → first score of one batch.
    scorer, cold = start_scorer(job, films)

    try:
        # End to end: Scorer.score on decoded films (checks + preprocessing + inference + threshold).
        for i in range(job.warmup):
            scorer.score(batch_of(i))
        e2e, pre, inf_in_e2e = [], [], []
        for i in range(job.iters):
            images = batch_of(i)
            start = time.perf_counter_ns()
            results = scorer.score(images)
            e2e.append((time.perf_counter_ns() - start) / 1e6)
            pre.append(sum(r.timings.preprocess_ms for r in results))
            inf_in_e2e.append(scorer.runner.last_inference_ms)

        # Inference alone: runner.infer on batches preprocessed beforehand.
        cfg = scorer.preprocess_config
        from salad.preprocess import preprocess

        tensors = [preprocess(f, cfg) for f in films]
        n_feeds = max(1, len(tensors) // b)
        extra = _bank_feed(scorer)
        feeds = [
            {IMAGE_INPUT: np.stack([tensors[(k * b + j) % len(tensors)] for j in range(b)]), **extra} for k in range(n_feeds)
        ]
        runner = scorer.runner
        timer = runner.device_timer()  # CUDA events where the backend exposes its stream; None on a CPU
        for i in range(job.warmup):
            runner.infer(feeds[i % n_feeds])
        inf, dev = [], []
        for i in range(job.iters):
            feed = feeds[i % n_feeds]
            if timer is not None:
                timer.start()
            start = time.perf_counter_ns()
            runner.infer(feed)
            inf.append((time.perf_counter_ns() - start) / 1e6)
            if timer is not None:
                dev.append(timer.stop_ms())
        if timer is not None:
            timer.close()
        info = _runtime_info(scorer)
    finally:
        scorer.close()
    peak, method = peak_rss_mb()
    return {
        "runtime": job.runtime, "precision": job.precision, "batch": b, "device": scorer.runner.device,
        "end_to_end": Stats.from_ms(e2e).to_dict(),
        "preprocess_p50_ms": float(np.median(pre)), "inference_in_e2e_p50_ms": float(np.median(inf_in_e2e)),
        "inference": Stats.from_ms(inf).to_dict(),
        "device_inference": Stats.from_ms(dev).to_dict() if dev else None,
        "cold_start": cold,
        "memory": {
            "peak_rss_mb": peak, "baseline_rss_mb": baseline_rss,
            "delta_rss_mb": None if baseline_rss is None else peak - baseline_rss,
            "method": method + (" after reset (clear_refs)" if rss_reset else " (process-wide, not reset)"),
        },
        "runtime_info": info, "iters": job.iters, "warmup": job.warmup, "threads": job.threads,
    }


# -- worker process -------------------------------------------------------------------------------


def worker_main(argv: Sequence[str]) -> int:
    """`python -m salad.runtime.bench --worker JOB.json OUT.json` (or `--start`, `--floor`): one measurement, JSON out."""
    kind, job_path, out_path = argv[0], Path(argv[1]), Path(argv[2])
    spec = json.loads(job_path.read_text(encoding="utf-8"))
    try:
        if kind == "--floor":
            result = measure_floor(spec["bundle"], spec["threads"], spec["precisions"], spec.get("device"))
        elif kind == "--start":
            job = Job(**spec)
            result = measure_start(job, _load_films(job.films))
        else:
            job = Job(**spec)
            result = measure_configuration(job, _load_films(job.films))
    except SaladError as exc:
        out_path.write_text(json.dumps({"error": str(exc)}), encoding="utf-8")
        return 1
    out_path.write_text(json.dumps(result), encoding="utf-8")
    return 0


def run_worker(kind: str, payload: str, workdir: Path, env: dict[str, str], what: str) -> dict[str, Any]:
    job_path = workdir / f"job-{time.perf_counter_ns()}.json"
    out_path = job_path.with_suffix(".out.json")
    job_path.write_text(payload, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "salad.runtime.bench", kind, str(job_path), str(out_path)],
        env=env, capture_output=True, text=True, check=False,
    )
    result: dict[str, Any] = {}
    if out_path.is_file():
        result = json.loads(out_path.read_text(encoding="utf-8"))
    if proc.returncode != 0 or "error" in result or not result:
        reason = result.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"bench {what} failed: {reason}")
    return result
