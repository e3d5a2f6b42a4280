"""`salad bench`: latency a console vendor can trust, every runtime × precision × batch against PyTorch eager.

How it measures (docs/architecture.md §10), and why:
- Films are decoded once, up front, by this process and handed to the workers as grey float arrays,
  so no timed loop reads or decodes a file. End to end is `Scorer.score` on those decoded arrays:
  input checks, the shared preprocessing, the runner, the threshold, the Result objects. Inference
  alone is `runner.infer` on preprocessed batches.
- Each configuration (runtime × precision × batch) runs in a fresh Python process of its own, so its
  cold start (bundle verification → engine ready → first score, library import included) and its
  peak resident memory belong to that configuration alone. Peak RSS is the kernel's high-water mark
  (VmHWM), reset after the films are loaded, so it counts the interpreter, the films and the runtime
  but nothing an earlier configuration did.
- PyTorch eager fp32 (the `torch` runtime) on the same films with the same thread count is always
  measured in the same invocation, and every row carries its ratio to it at the same batch size.
- Timings use time.perf_counter_ns; on a GPU the inference calls are also timed with CUDA events.
  Every figure is a median over `iters` timed runs after `warmup` untimed ones, with its spread.

Only click and the core are imported at module level: torch, onnx, onnxruntime and matplotlib are
imported by the worker or the function that needs them.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import click
import numpy as np

import salad
from salad.bundle import CHECKPOINT_FILE, quiet_session
from salad.cli import LazyChoice, friendly_errors
from salad.data import find_images, read_samples
from salad.errors import BackendUnavailableError, DataError, SaladError
from salad.imageio import read_image
from salad.manifest import PRECISIONS, read_manifest

from .base import runner_class, runner_names
from .scorer import IMAGE_INPUT, Scorer

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
LIBRARIES = (
    "salad-edge", "numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "onnxruntime-gpu", "torch",
    "onnx", "tensorrt", "cuda-python", "faiss-cpu", "matplotlib",
)
#: Thread-count variables set in every worker, so numpy/BLAS/OpenMP use the same count as the runtimes.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
            raise SaladError("no timed runs to summarise; pass --iters ≥ 1.")
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


# -- clocks ---------------------------------------------------------------------------------------


class DeviceTimer(Protocol):
    """Times work on a GPU stream with CUDA events (the GPU's own clock)."""

    def start(self) -> None: ...
    def stop_ms(self) -> float: ...
    def close(self) -> None: ...


class _CudaRuntimeEvents:
    """CUDA events (cuda.bindings) on the TensorRT runner's stream."""

    def __init__(self, cudart: Any, stream: Any) -> None:
        from .tensorrt_runner import cuda_check

        self._check = cuda_check
        self._cudart, self._stream = cudart, stream
        self._start = cuda_check(cudart.cudaEventCreate(), "cudaEventCreate")
        self._end = cuda_check(cudart.cudaEventCreate(), "cudaEventCreate")

    def start(self) -> None:
        self._check(self._cudart.cudaEventRecord(self._start, self._stream), "cudaEventRecord")

    def stop_ms(self) -> float:
        self._check(self._cudart.cudaEventRecord(self._end, self._stream), "cudaEventRecord")
        self._check(self._cudart.cudaEventSynchronize(self._end), "cudaEventSynchronize")
        return float(self._check(self._cudart.cudaEventElapsedTime(self._start, self._end), "cudaEventElapsedTime"))

    def close(self) -> None:
        for event in (self._start, self._end):
            self._cudart.cudaEventDestroy(event)


class _TorchCudaEvents:
    """torch.cuda events on the current stream (the torch runner's)."""

    def __init__(self, device: str) -> None:
        import torch

        self._torch = torch
        self._device = device
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record(self._torch.cuda.current_stream(self._device))

    def stop_ms(self) -> float:
        self._end.record(self._torch.cuda.current_stream(self._device))
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def close(self) -> None:
        pass


def device_timer(scorer: Scorer) -> DeviceTimer | None:
    """CUDA events for a runner on a GPU whose stream we can reach (tensorrt, torch); None on CPU.

    `infer` returns host arrays, so the events bracket the copies as well as the engine: the figure
    is the same call as the wall-clock one, read from the GPU's clock. ONNX Runtime's CUDA stream is
    not exposed, so its GPU rows have wall-clock figures only.
    """
    runner = scorer.runner
    if runner.device_kind != "cuda":
        return None
    if runner.name == "tensorrt":
        stream = getattr(runner, "_stream", None)
        cudart = getattr(runner, "_cudart", None)
        return _CudaRuntimeEvents(cudart, stream) if stream is not None and cudart is not None else None
    if runner.name == "torch":
        return _TorchCudaEvents(runner.device)
    return None


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

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.precision} batch {self.batch}"


def _load_films(path: str | Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [np.ascontiguousarray(data[f"arr_{i}"], dtype=np.float32) for i in range(len(data.files))]


def _runner_options(runtime: str, threads: int) -> dict[str, Any]:
    """`threads=` for backends that take it (torch: torch.set_num_threads; onnxruntime: intra-op threads)."""
    params = inspect.signature(runner_class(runtime).__init__).parameters
    return {"threads": threads} if "threads" in params else {}


def _runtime_info(scorer: Scorer) -> dict[str, Any]:
    """What the backend actually runs with: library version, threads, providers, optimisation level."""
    runner = scorer.runner
    info: dict[str, Any] = {"runner": repr(runner)}
    if runner.name == "torch":
        import torch

        info.update(
            library=f"torch {torch.__version__}", intra_op_threads=torch.get_num_threads(),
            inter_op_threads=torch.get_num_interop_threads(), mkldnn=bool(torch.backends.mkldnn.is_available()),
            mode="eager, inference_mode",
        )
    elif runner.name == "onnxruntime":
        import onnxruntime as ort

        session = getattr(runner, "session", None)
        options = session.get_session_options() if session is not None else None
        info.update(
            library=f"onnxruntime {ort.__version__}", providers=list(getattr(runner, "providers", [])),
            intra_op_threads=int(options.intra_op_num_threads) if options is not None else None,
            inter_op_threads=int(options.inter_op_num_threads) if options is not None else None,
            graph_optimization_level=str(options.graph_optimization_level) if options is not None else None,
            execution_mode=str(options.execution_mode) if options is not None else None,
        )
    elif runner.name == "tensorrt":
        describe = getattr(runner, "describe", None)
        if callable(describe):
            info.update(describe())
        info["engine_built_now"] = bool(getattr(runner, "built", False))
    try:
        import cv2

        info["opencv_threads"] = int(cv2.getNumThreads())
    except ImportError:  # pragma: no cover - opencv is a core dependency
        pass
    return info


def _bank_feed(scorer: Scorer) -> dict[str, np.ndarray]:
    """The bank input of a bundle exported with --bank-as-input (the same array the Scorer feeds)."""
    return scorer.runner.graph.static_feed()


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
    t0 = time.perf_counter_ns()
    scorer = Scorer.from_bundle(
        job.bundle, runtime=job.runtime, precision=job.precision, device=job.device, max_batch=b,
        **_runner_options(job.runtime, job.threads),
    )
    t1 = time.perf_counter_ns()
    scorer.activate()
    t2 = time.perf_counter_ns()
    scorer.score(batch_of(0))
    t3 = time.perf_counter_ns()
    cold = {"verify_ms": (t1 - t0) / 1e6, "activate_ms": (t2 - t1) / 1e6, "first_score_ms": (t3 - t2) / 1e6, "total_ms": (t3 - t0) / 1e6}

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
        timer = device_timer(scorer)
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


# -- the physical floor ---------------------------------------------------------------------------


def count_macs(path: str | Path) -> dict[str, int]:
    """Multiply-accumulates per image of an ONNX graph: Conv, ConvTranspose, Gemm and MatMul after shape inference.

    The batch axis is set to 1 first; the bank of an external-data graph is not read (only its shape).
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path), load_external_data=False)
    for value in (*model.graph.input, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
                dim.dim_value = 1
    del model.graph.value_info[:]
    inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for value in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [int(d.dim_value) for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]

    def attr(node: Any, name: str, default: int) -> int:
        for a in node.attribute:
            if a.name == name:
                return int(a.i)
        return default

    macs: dict[str, int] = {}
    unknown: list[str] = []
    for node in inferred.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        a, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        out = shapes.get(node.output[0])
        if a is None or w is None or out is None:
            unknown.append(node.name or op)
            continue
        # Grouped convolutions need no special case: the weight's channel axis is already Cin/group (Cout/group).
        if op == "Conv":  # out [N, Cout, *spatial], weight [Cout, Cin/group, *kernel]
            n = int(np.prod(out)) * int(np.prod(w[1:]))
        elif op == "ConvTranspose":  # input [N, Cin, *spatial], weight [Cin, Cout/group, *kernel]
            n = int(np.prod(a)) * int(np.prod(w[1:]))
        elif op == "Gemm":
            k = a[0] if attr(node, "transA", 0) else a[-1]
            n = int(np.prod(out)) * int(k)
        else:  # MatMul: out [..., M, N], A [..., M, K]
            n = int(np.prod(out)) * int(a[-1])
        macs[op] = macs.get(op, 0) + n
    if unknown:
        raise SaladError(f"{path}: shape inference left the shapes of {unknown[:5]} unknown; cannot count MACs.")
    macs["total"] = sum(macs.values())
    return macs


def _time_best(fn: Callable[[], Any], reps: int = 5) -> float:
    """Best of `reps` runs after one warm-up, in seconds (a peak is a best case, not a median)."""
    fn()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - start) / 1e9)
    return best


def gemm_peaks(threads: int, precisions: Iterable[str], device: str | None = None, size: int = GEMM_SIZE) -> dict[str, Any]:
    """Measured matrix-multiply peaks of this machine in GFLOP/s (GOP/s for int8), same thread count.

    fp32: numpy and torch sgemm of a size × size matrix (the best counts); int8: ONNX Runtime
    MatMulInteger (u8 × s8 → s32, the kernel a Q/DQ graph's convolutions use); on cuda: torch fp32/fp16.
    """
    flops = 2.0 * size**3
    peaks: dict[str, Any] = {"size": size, "threads": threads}
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    peaks["numpy_sgemm_gflops"] = flops / _time_best(lambda: a @ b) / 1e9
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        peaks["torch_sgemm_gflops"] = flops / _time_best(lambda: torch.mm(ta, tb)) / 1e9
        if device and device.startswith("cuda") and torch.cuda.is_available():
            for name, dtype in (("cuda_sgemm_gflops", torch.float32), ("cuda_hgemm_gflops", torch.float16)):
                ga, gb = ta.to(device, dtype), tb.to(device, dtype)

                def run(ga: Any = ga, gb: Any = gb) -> None:
                    torch.mm(ga, gb)
                    torch.cuda.synchronize()

                peaks[name] = flops / _time_best(run) / 1e9
    peaks["fp32_gflops"] = max(v for k, v in peaks.items() if k.endswith("sgemm_gflops") and not k.startswith("cuda"))
    if "int8" in precisions:
        try:
            peaks["ort_int8_gops"] = flops / _time_best(_ort_matmul_integer(size, threads)) / 1e9
        except ImportError as exc:
            peaks["ort_int8_gops"] = None
            peaks["int8_note"] = f"not measured ({exc})"
    return peaks


def _ort_matmul_integer(size: int, threads: int) -> Callable[[], Any]:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]), helper.make_tensor_value_info("b", TensorProto.INT8, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])],
    )
    # IR 8 (opset 17's): the newest onnx writes an IR version that older ONNX Runtime builds refuse.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = quiet_session(model.SerializeToString(), threads=threads)
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8), "b": rng.integers(-127, 127, (size, size), dtype=np.int8)}
    return lambda: session.run(None, feed)


def measure_floor(bundle: str | Path, threads: int, precisions: Sequence[str], device: str | None) -> dict[str, Any]:
    """MACs per image of the bundle's fp32 encoder and scorer, and this machine's measured GEMM peaks."""
    manifest = read_manifest(bundle, verify=False)
    floor: dict[str, Any] = {}
    try:
        enc = count_macs(manifest.path_of(bundle, manifest.graph("encoder").file))
        sco = count_macs(manifest.path_of(bundle, manifest.graph("scorer").file))
        floor["macs_per_image"] = {"encoder": enc["total"], "scorer": sco["total"], "model": enc["total"] + sco["total"]}
    except ImportError as exc:
        floor["macs_per_image"] = None
        floor["macs_note"] = f"not counted: {exc} (install salad-edge[train] for onnx)"
    floor["peaks"] = gemm_peaks(threads, precisions, device)
    return floor


# -- worker process -------------------------------------------------------------------------------


def _worker_main(argv: Sequence[str]) -> int:
    """`python -m salad.runtime.bench --worker JOB.json OUT.json` (or `--floor …`): one measurement, JSON out."""
    kind, job_path, out_path = argv[0], Path(argv[1]), Path(argv[2])
    spec = json.loads(job_path.read_text(encoding="utf-8"))
    try:
        if kind == "--floor":
            result = measure_floor(spec["bundle"], spec["threads"], spec["precisions"], spec.get("device"))
        else:
            job = Job(**spec)
            result = measure_configuration(job, _load_films(job.films))
    except SaladError as exc:
        out_path.write_text(json.dumps({"error": str(exc)}), encoding="utf-8")
        return 1
    out_path.write_text(json.dumps(result), encoding="utf-8")
    return 0


def _run_worker(kind: str, payload: str, workdir: Path, env: dict[str, str], what: str) -> dict[str, Any]:
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
        raise SaladError(f"bench {what} failed: {reason}")
    return result


# -- the report -----------------------------------------------------------------------------------


@dataclass
class BenchRow:
    """One runtime × precision × batch, with its ratios to PyTorch eager fp32 at the same batch."""

    runtime: str
    precision: str
    batch: int
    device: str
    end_to_end: Stats
    inference: Stats
    device_inference: Stats | None
    preprocess_p50_ms: float
    inference_in_e2e_p50_ms: float
    cold_start: dict[str, float]
    memory: dict[str, Any]
    runtime_info: dict[str, Any]
    iters: int
    warmup: int
    speedup_vs_torch: float | None = None
    inference_speedup_vs_torch: float | None = None
    gflops: float | None = None
    peak_gflops: float | None = None

    @classmethod
    def from_worker(cls, d: dict[str, Any]) -> BenchRow:
        dev = d.get("device_inference")
        return cls(
            runtime=d["runtime"], precision=d["precision"], batch=int(d["batch"]), device=d["device"],
            end_to_end=Stats.from_dict(d["end_to_end"]), inference=Stats.from_dict(d["inference"]),
            device_inference=Stats.from_dict(dev) if dev else None, preprocess_p50_ms=float(d["preprocess_p50_ms"]),
            inference_in_e2e_p50_ms=float(d["inference_in_e2e_p50_ms"]),
            cold_start=d["cold_start"], memory=d["memory"], runtime_info=d["runtime_info"],
            iters=int(d["iters"]), warmup=int(d["warmup"]),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchRow:
        """A row of a written JSON report (to re-render it)."""
        row = cls.from_worker({**d, "inference": d["inference"], "end_to_end": d["end_to_end"]})
        inf = d["inference"]
        row.speedup_vs_torch, row.inference_speedup_vs_torch = d.get("speedup_vs_torch"), inf.get("speedup_vs_torch")
        row.gflops, row.peak_gflops = inf.get("gflops"), inf.get("peak_gflops")
        return row

    @property
    def is_baseline(self) -> bool:
        return (self.runtime, self.precision) == (BASELINE_RUNTIME, BASELINE_PRECISION)

    @property
    def throughput_ips(self) -> float:
        """Images per second at the median end-to-end latency."""
        return self.batch * 1000.0 / self.end_to_end.p50_ms

    @property
    def inference_throughput_ips(self) -> float:
        return self.batch * 1000.0 / self.inference.p50_ms

    @property
    def fraction_of_peak(self) -> float | None:
        return self.gflops / self.peak_gflops if self.gflops and self.peak_gflops else None

    def to_dict(self) -> dict[str, Any]:
        e = self.end_to_end
        return {
            "runtime": self.runtime, "precision": self.precision, "batch": self.batch, "device": self.device,
            "p50_ms": e.p50_ms, "p95_ms": e.p95_ms, "p99_ms": e.p99_ms,
            "throughput_ips": self.throughput_ips, "peak_rss_mb": self.memory.get("peak_rss_mb"),
            "speedup_vs_torch": self.speedup_vs_torch,
            "end_to_end": e.to_dict(), "preprocess_p50_ms": self.preprocess_p50_ms,
            "inference_in_e2e_p50_ms": self.inference_in_e2e_p50_ms,
            "inference": {
                **self.inference.to_dict(), "throughput_ips": self.inference_throughput_ips,
                "speedup_vs_torch": self.inference_speedup_vs_torch, "gflops": self.gflops,
                "peak_gflops": self.peak_gflops, "fraction_of_peak": self.fraction_of_peak,
            },
            "device_inference": self.device_inference.to_dict() if self.device_inference else None,
            "cold_start": self.cold_start, "memory": self.memory, "runtime_info": self.runtime_info,
            "iters": self.iters, "warmup": self.warmup,
        }


@dataclass
class BenchReport:
    """Everything one `salad bench` invocation measured: header, rows, floor, and what to be careful about."""

    header: dict[str, Any]
    rows: list[BenchRow]
    floor: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "header": self.header, "results": [r.to_dict() for r in self.rows], "floor": self.floor, "notes": self.notes}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        """A report read back from its JSON, e.g. to render the markdown or the plot again."""
        if d.get("schema") != SCHEMA:
            raise SaladError(f"not a salad bench report (schema {d.get('schema')!r}, expected {SCHEMA!r}).")
        return cls(header=d["header"], rows=[BenchRow.from_dict(r) for r in d["results"]], floor=d["floor"], notes=list(d.get("notes", [])))

    def format_table(self) -> str:
        """Fixed-width terminal table: one line per runtime × precision × batch."""
        head = ("runtime", "precision", "batch", "p50 ms", "IQR ms", "p95 ms", "p99 ms", "img/s", "× torch",
                "infer p50", "infer × torch", "GFLOP/s", "% peak", "peak RSS MB", "cold ms")
        lines = [head] + [
            (r.runtime, r.precision, str(r.batch), f"{r.end_to_end.p50_ms:.3f}", f"{r.end_to_end.iqr_ms:.3f}",
             f"{r.end_to_end.p95_ms:.3f}", f"{r.end_to_end.p99_ms:.3f}", f"{r.throughput_ips:.1f}", _ratio(r.speedup_vs_torch),
             f"{r.inference.p50_ms:.3f}", _ratio(r.inference_speedup_vs_torch), _num(r.gflops, 1), _pct(r.fraction_of_peak),
             _num(r.memory.get("peak_rss_mb"), 0), f"{r.cold_start['total_ms']:.0f}")
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        text = "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in lines)
        return text + "".join(f"\nnote: {n}" for n in self.notes)

    def to_markdown(self) -> str:
        h = self.header
        lines = [
            f"# salad bench: {h['bundle']['path']}",
            "",
            f"{h['machine']['cpu']} ({h['machine']['cpus_usable']} usable CPUs), GPU: {h['machine']['gpu'] or 'none'}; "
            f"{h['threads']} thread(s) for every runtime; {h['iters']} timed runs after {h['warmup']} warm-up runs per figure; "
            f"{h['data']['films']} decoded films from {h['data']['path']}; load average {_load(h['load_average_start'])} → "
            f"{_load(h['load_average_end'])}.",
            "",
            f"Libraries: {', '.join(f'{k} {v}' for k, v in h['libraries'].items())}."
            + (f" Command: `{h['command']}`" if h["command"] else ""),
            "",
            "## Latency and throughput (end to end: preprocessing of decoded films + inference + score)",
            "",
            "| runtime | precision | batch | p50 ms (IQR) | p95 ms | p99 ms | images/s | speedup vs torch | of which preprocess p50 ms | of which inference p50 ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            e = r.end_to_end
            lines.append(
                f"| {r.runtime} | {r.precision} | {r.batch} | {e.p50_ms:.3f} ({e.iqr_ms:.3f}) | {e.p95_ms:.3f} | {e.p99_ms:.3f} | "
                f"{r.throughput_ips:.1f} | {_ratio(r.speedup_vs_torch)} | {r.preprocess_p50_ms:.3f} | {r.inference_in_e2e_p50_ms:.3f} |"
            )
        lines += [
            "",
            "## Inference alone (runner.infer on preprocessed batches), against the hardware",
            "",
            "| runtime | precision | batch | p50 ms (IQR) | p95 ms | p99 ms | images/s | speedup vs torch | GFLOP/s | % of measured peak |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            i = r.inference
            lines.append(
                f"| {r.runtime} | {r.precision} | {r.batch} | {i.p50_ms:.3f} ({i.iqr_ms:.3f}) | {i.p95_ms:.3f} | {i.p99_ms:.3f} | "
                f"{r.inference_throughput_ips:.1f} | {_ratio(r.inference_speedup_vs_torch)} | {_num(r.gflops, 2)} | {_pct(r.fraction_of_peak)} |"
            )
        macs = self.floor.get("macs_per_image") or {}
        peaks = self.floor.get("peaks") or {}
        lines += ["", _floor_sentence(macs, peaks), "", "## Cold start and memory (each configuration in a fresh process)", "",
                  "| runtime | precision | batch | verify ms | activate ms | first score ms | total ms | peak RSS MB | RSS before bundle MB | Δ MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            c, m = r.cold_start, r.memory
            lines.append(
                f"| {r.runtime} | {r.precision} | {r.batch} | {c['verify_ms']:.1f} | {c['activate_ms']:.1f} | {c['first_score_ms']:.1f} | "
                f"{c['total_ms']:.1f} | {_num(m.get('peak_rss_mb'), 1)} | {_num(m.get('baseline_rss_mb'), 1)} | {_num(m.get('delta_rss_mb'), 1)} |"
            )
        method = self.rows[0].memory.get("method", "") if self.rows else ""
        lines += ["", f"Peak RSS: {method}; it includes the interpreter and the decoded films (the 'before bundle' column).", ""]
        threads = dict.fromkeys(
            f"{r.runtime_info.get('library', r.runtime)}: {r.runtime_info.get('intra_op_threads', '?')} intra-op, "
            f"{r.runtime_info.get('inter_op_threads', '?')} inter-op" for r in self.rows
        )
        lines += ["Threads as the runtimes report them: " + "; ".join(threads)
                  + " (ONNX Runtime's 0 inter-op = its default; the sequential executor uses none).", ""]
        if self.notes:
            lines += ["## Notes", "", *(f"- {n}" for n in self.notes), ""]
        lines += ["How to read these figures: benchmarks/README.md.", ""]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        """PNG: end-to-end latency per image vs batch (p50 with IQR bars, p95 dotted) and the speedups vs torch."""
        try:
            import matplotlib
            import matplotlib.ticker

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise SaladError(f"--plot needs matplotlib ({exc}); install it with `pip install 'salad-edge[bench]'`.") from exc
        configs = list(dict.fromkeys((r.runtime, r.precision) for r in self.rows))
        batches = sorted({r.batch for r in self.rows})
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        width = 0.8 / max(1, len(configs))
        for c, (runtime, precision) in enumerate(configs):
            rows = sorted((r for r in self.rows if (r.runtime, r.precision) == (runtime, precision)), key=lambda r: r.batch)
            xs = [r.batch for r in rows]
            p50 = np.array([r.end_to_end.p50_ms / r.batch for r in rows])
            lo = p50 - np.array([r.end_to_end.p25_ms / r.batch for r in rows])
            hi = np.array([r.end_to_end.p75_ms / r.batch for r in rows]) - p50
            line = ax1.errorbar(xs, p50, yerr=[lo, hi], marker="o", capsize=3, label=f"{runtime} {precision}")
            ax1.plot(xs, [r.end_to_end.p95_ms / r.batch for r in rows], ls=":", color=line[0].get_color())
            pos = [batches.index(r.batch) + (c - (len(configs) - 1) / 2) * width for r in rows]
            ax2.bar(pos, [r.speedup_vs_torch or 0.0 for r in rows], width, label=f"{runtime} {precision}")
        ax1.set(xscale="log", yscale="log", xlabel="batch", ylabel="ms per image (end to end)",
                title="p50 with IQR bars, p95 dotted")
        ax1.set_xticks(batches, [str(b) for b in batches])
        ax1.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        for axis in (ax1.yaxis,):
            axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax1.legend(fontsize=8)
        ax2.axhline(1.0, color="grey", lw=0.8)
        ax2.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax2.set(xlabel="batch", ylabel="× PyTorch eager fp32 (p50, end to end)", title="speedup vs torch")
        ax2.legend(fontsize=8)
        h = self.header
        fig.suptitle(f"{Path(h['bundle']['path']).name}: {h['machine']['cpu']}, {h['threads']} thread(s)", fontsize=9)
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}×"


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _load(values: Sequence[float] | None) -> str:
    return "?" if not values else "/".join(f"{v:.1f}" for v in values)


def _floor_sentence(macs: dict[str, Any], peaks: dict[str, Any]) -> str:
    parts = []
    if macs:
        parts.append(
            f"MACs per image: encoder {macs['encoder'] / 1e6:.2f} M, scorer {macs['scorer'] / 1e6:.2f} M (bank MatMul); "
            "GFLOP/s = 2 × model MACs × batch / inference p50."
        )
    if peaks:
        text = f"Measured peaks with the same threads ({peaks.get('size')}² GEMM, best of 5): fp32 {peaks.get('fp32_gflops', 0):.1f} GFLOP/s"
        if peaks.get("ort_int8_gops"):
            text += f", int8 (ONNX Runtime MatMulInteger) {peaks['ort_int8_gops']:.1f} GOP/s"
        parts.append(text + "; int8 rows are held to the int8 peak, the others to fp32.")
    return " ".join(parts)


# -- orchestration --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU and GPU model and core counts, read without importing any runtime library."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            gpu = "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or None
        except (OSError, subprocess.SubprocessError):
            gpu = None
    return {
        "cpu": cpu, "cpus_logical": os.cpu_count(), "cpus_usable": usable, "cpus_physical": physical, "gpu": gpu,
        "platform": platform.platform(), "python": platform.python_version(),
    }


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of `names` (the distributions a figure depends on); absent ones are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _film_paths(data: Path, limit: int) -> list[Path]:
    """Up to `limit` image files from a folder, a file or a CSV (path,label), evenly spread and in a fixed order."""
    if data.is_file() and data.suffix.lower() == ".csv":
        paths = [s.path for s in read_samples(data)]
    else:
        paths = sorted(find_images([data]))
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


def _configurations(runtimes: Sequence[str], precisions: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
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
) -> BenchReport:
    """Benchmark `bundle` for every runtime × precision × batch, plus PyTorch eager fp32 as the baseline.

    precisions default to every precision the bundle has; threads to every CPU this process may use.
    Each configuration runs in its own worker process (see the module docstring).
    """
    say = progress or (lambda _msg: None)
    root = Path(bundle)
    if iters < 1 or warmup < 0:
        raise SaladError(f"--iters {iters} / --warmup {warmup}: expected iters ≥ 1 and warmup ≥ 0.")
    if not batches or any(b < 1 for b in batches):
        raise SaladError(f"--batch {list(batches)}: expected positive batch sizes, e.g. 1,8,32.")
    for name in runtimes:
        runner_class(name)  # unknown names fail here, listing the registered ones
    manifest = read_manifest(root, verify=True)
    chosen = list(precisions) if precisions else manifest.precisions()
    for p in chosen:
        if p not in PRECISIONS:
            raise SaladError(f"precision {p!r}; expected one of {list(PRECISIONS)}.")
        manifest.graph("model", p)  # names the graphs the bundle has
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_threads = int(threads or usable)
    pairs, notes = _configurations(runtimes, chosen)
    _check_runnable(root, pairs)
    if iters < MIN_RUNS:
        notes.append(f"only {iters} timed runs per figure (< {MIN_RUNS}): a smoke run, not a measurement to quote.")

    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    paths = _film_paths(Path(data), films)
    say(f"decoding {len(paths)} films from {data} (once, before any timing)")
    decoded = _decode(paths)
    env = {**os.environ, **{k: str(n_threads) for k in THREAD_ENV}}
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="salad-bench-") as tmp:
        workdir = Path(tmp)
        # The floor first: it is quick, and a failure there should not cost the timed runs.
        say("measuring the hardware floor (MAC count, GEMM peaks)")
        floor_job = json.dumps({"bundle": str(root.resolve()), "threads": n_threads, "precisions": chosen, "device": device})
        try:
            floor = _run_worker("--floor", floor_job, workdir, env, "floor measurement")
        except SaladError as exc:
            floor = {"error": str(exc)}
            notes.append(f"no GFLOP/s figures: {exc}")
        films_file = workdir / "films.npz"
        np.savez(films_file, *decoded)
        del decoded
        for runtime, precision in pairs:
            for b in batches:
                job = Job(str(root.resolve()), runtime, precision, int(b), iters, warmup, n_threads, device, str(films_file))
                say(f"measuring {job.label} ({warmup} warm-up + {iters} timed runs, fresh process)")
                row = BenchRow.from_worker(_run_worker("--worker", job.to_json(), workdir, env, job.label))
                say(f"  end to end p50 {row.end_to_end.p50_ms:.3f} ms, inference p50 {row.inference.p50_ms:.3f} ms")
                rows.append(row)
    load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    _attach_ratios(rows, floor)
    base_devices = {r.device for r in rows if r.is_baseline}
    other = sorted({f"{r.runtime} on {r.device}" for r in rows if not r.is_baseline and r.device not in base_devices})
    if other:
        notes.append(
            f"{', '.join(other)} compared with the torch baseline on {', '.join(sorted(base_devices))}: "
            "pass --device cuda to compare GPU with GPU."
        )
    if load_start and load_start[0] > 0.5 * usable:
        notes.append(
            f"the machine was busy (1-minute load average {load_start[0]:.1f} on {usable} CPUs at the start): "
            "absolute figures are noisy; re-run on a quiet machine before quoting them."
        )
    header = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": machine_info(), "libraries": library_versions(), "threads": n_threads,
        "thread_env": {k: env[k] for k in THREAD_ENV}, "iters": iters, "warmup": warmup, "batches": list(batches),
        "load_average_start": load_start, "load_average_end": load_end,
        "bundle": {
            "path": str(root), "toolkit_version": manifest.toolkit_version, "image_size": manifest.preprocess_config.size,
            "bank_rows": manifest.bank.get("rows"), "k": manifest.k,
            "graphs": {p: manifest.graph("model", p).sha256 for p in chosen},
        },
        "data": {"path": str(data), "films": len(paths), "decoded": "once, before timing (grey float32 arrays)"},
        "method": {
            "end_to_end": "Scorer.score on decoded films: input checks, preprocessing, inference, threshold",
            "inference": "runner.infer on preprocessed batches",
            "clock": "time.perf_counter_ns" + ("; CUDA events on GPU" if any(r.device_inference for r in rows) else ""),
            "isolation": "one fresh process per configuration",
            "peak_rss": rows[0].memory.get("method") if rows else None,
            "throughput": "batch / end-to-end p50",
        },
    }
    return BenchReport(header=header, rows=rows, floor=floor, notes=notes)


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
    """Write the requested files (creating folders) and return their paths."""
    written = []
    for out, text in ((json_out, report.to_json() + "\n"), (markdown_out, report.to_markdown())):
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            written.append(out)
    if plot_out is not None:
        report.plot(plot_out)
        written.append(plot_out)
    return written


# -- CLI ------------------------------------------------------------------------------------------


def parse_batches(_ctx: click.Context | None, _param: click.Parameter | None, value: str) -> tuple[int, ...]:
    """"1,8,32" → (1, 8, 32); anything else is a usage error naming the expected form."""
    try:
        batches = tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{value!r}; expected comma-separated positive integers, e.g. 1,8,32.") from None
    if not batches or any(b < 1 for b in batches):
        raise click.BadParameter(f"{value!r}; expected comma-separated positive integers, e.g. 1,8,32.")
    return tuple(dict.fromkeys(batches))


def _command_line() -> str:
    """The invocation as a user would retype it: `salad bench ARGS…` whichever entry point ran it."""
    args = sys.argv[1:]
    if args[:1] == ["bench"]:
        args = args[1:]
    return shlex.join(["salad", "bench", *args])


@click.command("bench")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--runtime", "runtimes", multiple=True, type=LazyChoice(runner_names),
              help="Runtime to measure; repeat for several. PyTorch eager fp32 (torch) is always measured as the baseline.  [default: onnxruntime]")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(list(PRECISIONS)),
              help="Graph variant to measure; repeat for several.  [default: every precision in the bundle]")
@click.option("--batch", "batches", default=",".join(map(str, DEFAULT_BATCHES)), show_default=True, callback=parse_batches,
              help="Comma-separated batch sizes.")
@click.option("--iters", type=click.IntRange(min=1), default=DEFAULT_ITERS, show_default=True,
              help=f"Timed runs per figure (≥ {MIN_RUNS} for figures you quote).")
@click.option("--warmup", type=click.IntRange(min=0), default=DEFAULT_WARMUP, show_default=True, help="Untimed runs first.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=DEFAULT_DATA,
              help="Real films (folder, file or CSV path,label), decoded once before timing.  [default: the shipped salad/sample/eval films]")
@click.option("--films", type=click.IntRange(min=1), default=DEFAULT_FILMS, show_default=True,
              help="Decode at most this many films, evenly spread over --data.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for every runtime (torch, ONNX Runtime intra-op, BLAS).  [default: all usable CPUs]")
@click.option("--device", default=None, help="cpu, cuda or cuda:N for every runtime, the torch baseline included (default: each runtime's own).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the results as JSON here.")
@click.option("--markdown", "markdown_out", type=click.Path(path_type=Path), default=None, help="Write a markdown report here.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None, help="Write a PNG plot here (needs matplotlib).")
@friendly_errors
def bench_command(
    bundle: Path, runtimes: Sequence[str], precisions: Sequence[str], batches: tuple[int, ...], iters: int, warmup: int,
    data: Path, films: int, threads: int | None, device: str | None,
    json_out: Path | None, markdown_out: Path | None, plot_out: Path | None,
) -> None:
    """Latency, throughput, peak memory and cold start of BUNDLE per runtime × precision × batch, vs PyTorch eager fp32."""
    report = run_bench(
        bundle, runtimes or ("onnxruntime",), precisions or None, batches, iters=iters, warmup=warmup, data=data,
        films=films, threads=threads, device=device, command=_command_line(),
        progress=lambda msg: click.echo(msg, err=True),
    )
    click.echo(report.format_table())
    for path in write_outputs(report, json_out, markdown_out, plot_out):
        click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
