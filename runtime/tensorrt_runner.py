"""Native TensorRT backend (TensorRT 10/11 Python API, CUDA through cuda-python's `cuda.bindings`).

Precision lives in the ONNX file (docs/architecture.md §5), so the engine is built from the bundle's graph for the
requested precision as a strongly typed network: no FP16/INT8 builder flags, which TensorRT 11
removed. One optimisation profile covers batch 1..max_batch. Builds are slow, so the engine is cached
on disk keyed by GPU name, compute capability, TensorRT version, graph sha256 and the profile, and a
timing cache (per GPU and TensorRT version) speeds up the builds of other graphs and variants.
Pinned host buffers, device buffers and one CUDA stream are allocated once, for max_batch, when
the runner activates; `infer` only copies, sets shapes and enqueues `execute_async_v3`. Building and
caching the engine is runtime/tensorrt_engine.py's EngineLoader, usable without a runner.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from salad.errors import BackendError, SaladError

from .base import BundleGraph, DeviceTimer, Runner, register_runner
from .tensorrt_engine import (  # noqa: F401 - INSTALL_HINT, import_tensorrt: this module's names before the split
    INSTALL_HINT,
    MIN_TRT_MAJOR,
    EngineLoader,
    GpuInfo,
    cuda_check,
    import_cudart,
    import_tensorrt,
    unavailable_reason,
)


@dataclass
class _Buffer:
    """A pinned host buffer and a device buffer for one I/O tensor, sized for max_batch."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    nbytes: int
    host_ptr: int
    device_ptr: int
    host: np.ndarray  # flat view of the pinned memory

    @classmethod
    def allocate(cls, cudart: Any, name: str, is_input: bool, dtype: np.dtype[Any], shape: tuple[int, ...]) -> _Buffer:
        count = int(np.prod(shape)) if shape else 1
        nbytes = max(count * dtype.itemsize, dtype.itemsize)
        host_ptr = int(cuda_check(cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes}) for {name!r}"))
        try:
            device_ptr = int(cuda_check(cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes}) for {name!r}"))
        except SaladError:
            cudart.cudaFreeHost(host_ptr)
            raise
        raw = (ctypes.c_ubyte * nbytes).from_address(host_ptr)
        host = np.frombuffer(memoryview(raw), dtype=dtype, count=nbytes // dtype.itemsize)
        return cls(name, is_input, dtype, nbytes, host_ptr, device_ptr, host)

    def free(self, cudart: Any) -> None:
        cudart.cudaFree(self.device_ptr)
        cudart.cudaFreeHost(self.host_ptr)


@register_runner("tensorrt", extra="gpu", devices=("cuda",))
class TensorRTRunner(Runner):
    """Builds (or loads from the cache) a TensorRT engine for one bundle graph and runs it.

    Options: `opt_batch` (the profile's optimum, default max_batch), `cache_dir` (engine and timing
    caches, see salad.runtime.cache), `workspace_mb` (builder workspace limit), `rebuild` (ignore a
    cached engine), `verbose` (TensorRT INFO logging), `allow_tf32` (let float32 convolutions and
    matrix products use TF32 tensor cores; off by default because TF32's 10-bit mantissa breaks the
    fp32 parity tolerance of 1e-5 — the fp32 graph should give fp32 answers).
    """

    options: ClassVar[dict[str, str]] = {
        "opt_batch": "the optimisation profile's optimum batch (default max_batch)",
        "cache_dir": "engine and timing caches (salad.runtime.cache)",
        "workspace_mb": "builder workspace limit in MiB",
        "rebuild": "ignore a cached engine and build anew",
        "verbose": "TensorRT INFO logging",
        "allow_tf32": "let float32 convolutions and matrix products use TF32 (breaks fp32 parity; off)",
    }

    def __init__(
        self,
        graph: BundleGraph,
        *,
        max_batch: int = 32,
        device: str | None = None,
        opt_batch: int | None = None,
        cache_dir: str | Path | None = None,
        workspace_mb: int | None = None,
        rebuild: bool = False,
        verbose: bool = False,
        allow_tf32: bool = False,
    ) -> None:
        super().__init__(graph, max_batch=max_batch, device=device)
        self.loader = EngineLoader(
            graph, max_batch=self.max_batch, opt_batch=opt_batch, cache_dir=cache_dir, workspace_mb=workspace_mb,
            rebuild=rebuild, verbose=verbose, allow_tf32=allow_tf32,
        )
        self.opt_batch = self.loader.opt_batch
        self.gpu: GpuInfo | None = None
        self._cudart: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, _Buffer] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return unavailable_reason()

    # -- the engine (EngineLoader) -----------------------------------------------------------------

    @property
    def engine_path(self) -> Path | None:
        return self.loader.engine_path

    @property
    def built(self) -> bool:
        """True when the last activation built the engine, False when it came from the cache."""
        return self.loader.built

    def engine_key(self, trt_version: str, gpu: GpuInfo) -> dict[str, Any]:
        return self.loader.engine_key(trt_version, gpu)

    def engine_file(self, trt_version: str, gpu: GpuInfo) -> Path:
        return self.loader.engine_file(trt_version, gpu)

    def timing_cache_file(self, trt_version: str, gpu: GpuInfo) -> Path:
        return self.loader.timing_cache_file(trt_version, gpu)

    # -- lifecycle -----------------------------------------------------------------------------

    def _activate(self) -> None:
        trt_mod = import_tensorrt()
        cudart = self._cudart = import_cudart()
        cuda_check(cudart.cudaSetDevice(self.device_index), f"cudaSetDevice({self.device_index})")
        self.gpu = gpu = GpuInfo.query(cudart, self.device_index)
        try:
            self._runtime, self._engine = self.loader.load(trt_mod, self.loader.logger(trt_mod), gpu)
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise BackendError(f"{self.graph.path}: TensorRT could not create an execution context (out of GPU memory?).")
            self._stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._allocate(trt_mod)
        except BaseException:
            self._deactivate()
            raise

    def _allocate(self, trt_mod: Any) -> None:
        """Pinned host + device buffers for every I/O tensor at its largest shape; addresses set once."""
        engine, context, cudart = self._engine, self._context, self._cudart
        for t in self.spec.inputs:
            hi = tuple(engine.get_tensor_profile_shape(t.name, 0)[2])
            if not context.set_input_shape(t.name, hi):
                raise BackendError(f"{self.graph.path}: TensorRT refused input {t.name!r} shape {hi}.")
            self._buffers[t.name] = _Buffer.allocate(cudart, t.name, True, np.dtype(t.dtype), hi)
        for t in self.spec.outputs:
            shape = tuple(context.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.graph.path}: TensorRT cannot infer the shape of output {t.name!r} ({shape}).")
            self._buffers[t.name] = _Buffer.allocate(cudart, t.name, False, np.dtype(t.dtype), shape)
        for name, buf in self._buffers.items():
            if not context.set_tensor_address(name, buf.device_ptr):
                raise BackendError(f"{self.graph.path}: TensorRT refused the device address of {name!r}.")

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        cudart, context, stream = self._cudart, self._context, self._stream
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in feed.items():
            buf = self._buffers[name]
            np.copyto(buf.host[: arr.size], arr.reshape(-1))
            if not context.set_input_shape(name, arr.shape):
                raise BackendError(f"{self.graph.path.name}: TensorRT refused input {name!r} shape {arr.shape}.")
            cuda_check(cudart.cudaMemcpyAsync(buf.device_ptr, buf.host_ptr, arr.nbytes, h2d, stream), "cudaMemcpyAsync(H2D)")
        if not context.execute_async_v3(int(stream)):
            raise BackendError(f"{self.graph.path.name}: TensorRT execute_async_v3 failed (see the TensorRT log above).")
        shapes: dict[str, tuple[int, ...]] = {}
        for t in self.spec.outputs:
            buf = self._buffers[t.name]
            shapes[t.name] = shape = tuple(context.get_tensor_shape(t.name))
            nbytes = int(np.prod(shape)) * buf.dtype.itemsize
            cuda_check(cudart.cudaMemcpyAsync(buf.host_ptr, buf.device_ptr, nbytes, d2h, stream), "cudaMemcpyAsync(D2H)")
        cuda_check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        # Copy out of the pinned buffers: they are overwritten by the next call.
        return {n: self._buffers[n].host[: int(np.prod(s))].reshape(s).copy() for n, s in shapes.items()}

    def _deactivate(self) -> None:
        cudart = self._cudart
        if cudart is not None and self._stream is not None:
            cudart.cudaStreamSynchronize(self._stream)  # nothing may still be reading the buffers
        # TensorRT objects first (context, then engine, then runtime), then the memory they pointed at.
        self._context = None
        self._engine = None
        self._runtime = None
        if cudart is not None:
            for buf in self._buffers.values():
                buf.free(cudart)
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._buffers = {}
        self._stream = None

    def describe(self) -> dict[str, Any]:
        """What was run where: for benchmark and parity reports."""
        return {
            "gpu": asdict(self.gpu) if self.gpu else None,
            "engine": str(self.engine_path) if self.engine_path else None,
            "built": self.built,
        }

    def info(self) -> dict[str, Any]:
        return {**super().info(), **self.describe(), "engine_built_now": bool(self.built)}

    def device_timer(self) -> DeviceTimer | None:
        if self.device_kind != "cuda" or self._stream is None or self._cudart is None:
            return None
        return _CudaRuntimeEvents(self._cudart, self._stream)


class _CudaRuntimeEvents:
    """CUDA events (cuda.bindings) on the TensorRT runner's stream."""

    def __init__(self, cudart: Any, stream: Any) -> None:
        self._cudart, self._stream = cudart, stream
        self._start = cuda_check(cudart.cudaEventCreate(), "cudaEventCreate")
        self._end = cuda_check(cudart.cudaEventCreate(), "cudaEventCreate")

    def start(self) -> None:
        cuda_check(self._cudart.cudaEventRecord(self._start, self._stream), "cudaEventRecord")

    def stop_ms(self) -> float:
        cuda_check(self._cudart.cudaEventRecord(self._end, self._stream), "cudaEventRecord")
        cuda_check(self._cudart.cudaEventSynchronize(self._end), "cudaEventSynchronize")
        return float(cuda_check(self._cudart.cudaEventElapsedTime(self._start, self._end), "cudaEventElapsedTime"))

    def close(self) -> None:
        for event in (self._start, self._end):
            self._cudart.cudaEventDestroy(event)
