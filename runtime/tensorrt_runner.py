"""Native TensorRT backend (TensorRT 10/11 Python API, CUDA through cuda-python's `cuda.bindings`).

Precision lives in the ONNX file (docs/architecture.md §5), so the engine is built from the bundle's graph for the
requested precision as a strongly typed network: no FP16/INT8 builder flags, which TensorRT 11
removed. One optimisation profile covers batch 1..max_batch. Builds are slow, so the engine is cached
on disk keyed by GPU name, compute capability, TensorRT version, graph sha256 and the profile, and a
timing cache (per GPU and TensorRT version) speeds up the builds of other graphs and variants.
Pinned host buffers, device buffers and one CUDA stream are allocated once, for max_batch, when
the runner activates; `infer` only copies, sets shapes and enqueues `execute_async_v3`.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from salad.errors import BackendUnavailableError, BundleError, SaladError

from .base import BATCH, BundleGraph, DeviceTimer, Runner, importable, register_runner
from .cache import cache_root, slug, write_atomic

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

MIN_TRT_MAJOR = 10
INSTALL_HINT = "Install `pip install 'salad-edge[gpu]'` (tensorrt>=10, cuda-python) on a machine with an NVIDIA GPU and driver."


def import_tensorrt() -> Any:
    """The real TensorRT module, or BackendUnavailableError.

    `tensorrt-stubs` installs a namespace package `tensorrt` holding only .pyi files, so a
    successful `import tensorrt` proves nothing: the real bindings have `Builder`.
    """
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the package is there but libnvinfer is not
        raise BackendUnavailableError(f"TensorRT is not installed or cannot load ({exc}). {INSTALL_HINT}") from exc
    if not hasattr(tensorrt, "Builder"):
        raise BackendUnavailableError(
            "TensorRT is not installed: `import tensorrt` found only type stubs (tensorrt-stubs), not the library. " + INSTALL_HINT
        )
    version = str(getattr(tensorrt, "__version__", "0"))
    if int(version.split(".")[0]) < MIN_TRT_MAJOR:
        raise BackendUnavailableError(f"TensorRT {version} is too old; salad-edge needs TensorRT ≥ {MIN_TRT_MAJOR}. {INSTALL_HINT}")
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime API module (`cuda.bindings.runtime`), or BackendUnavailableError."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendUnavailableError(f"cuda-python is not installed ({exc}). {INSTALL_HINT}") from exc
    return cudart


def cuda_check(result: Any, what: str) -> Any:
    """cuda.bindings calls return (error, *values): raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise SaladError(f"CUDA call {what} failed: {getattr(err, 'name', err)} ({int(err)}).")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    """The device an engine is built for; engines are not portable across GPUs or TensorRT versions."""

    index: int
    name: str
    compute_capability: str  # "9.0"

    @classmethod
    def query(cls, cudart: Any, index: int) -> GpuInfo:
        count = cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if index >= int(count):
            raise BackendUnavailableError(f"device cuda:{index} does not exist; this machine has {count} CUDA device(s).")
        props = cuda_check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        raw = props.name
        name = (raw.decode(errors="replace") if isinstance(raw, bytes | bytearray) else str(raw)).split("\x00")[0].strip()
        return cls(index=index, name=name, compute_capability=f"{props.major}.{props.minor}")


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
        self.opt_batch = int(opt_batch or max_batch)
        if not 1 <= self.opt_batch <= self.max_batch:
            raise SaladError(f"opt_batch={opt_batch}; expected 1..max_batch ({self.max_batch}).")
        self.cache_dir = cache_dir
        self.workspace_mb = workspace_mb
        self.rebuild = rebuild
        self.verbose = verbose
        self.allow_tf32 = allow_tf32
        self.gpu: GpuInfo | None = None
        self.engine_path: Path | None = None
        #: True when the last activation built the engine, False when it came from the cache.
        self.built = False
        self._cudart: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, _Buffer] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not importable("tensorrt"):
            return f"TensorRT is not installed. {INSTALL_HINT}"
        try:
            import_tensorrt()
            cudart = import_cudart()
            count = cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        except (BackendUnavailableError, SaladError) as exc:
            return str(exc)
        if not count:
            return "no CUDA GPU is visible (cudaGetDeviceCount = 0)."
        return None

    # -- engine cache --------------------------------------------------------------------------

    def engine_key(self, trt_version: str, gpu: GpuInfo) -> dict[str, Any]:
        """Everything an engine depends on: change any of it and the cached engine is not reused."""
        return {
            "graph": self.graph.key,
            "graph_sha256": self.graph.content_sha256,
            "gpu": gpu.name,
            "compute_capability": gpu.compute_capability,
            "tensorrt": trt_version,
            "profile": {"min": 1, "opt": self.opt_batch, "max": self.max_batch},
            "workspace_mb": self.workspace_mb,
            "tf32": self.allow_tf32,
        }

    def engine_file(self, trt_version: str, gpu: GpuInfo) -> Path:
        key = self.engine_key(trt_version, gpu)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        name = f"{self.graph.key}-{self.graph.content_sha256[:12]}-{slug(gpu.name)}-sm{gpu.compute_capability.replace('.', '')}-trt{trt_version}-{digest}.engine"
        return cache_root(self.cache_dir) / "tensorrt" / name

    def timing_cache_file(self, trt_version: str, gpu: GpuInfo) -> Path:
        name = f"timing-{slug(gpu.name)}-sm{gpu.compute_capability.replace('.', '')}-trt{trt_version}.cache"
        return cache_root(self.cache_dir) / "tensorrt" / name

    # -- lifecycle -----------------------------------------------------------------------------

    def _activate(self) -> None:
        trt_mod = import_tensorrt()
        cudart = self._cudart = import_cudart()
        cuda_check(cudart.cudaSetDevice(self.device_index), f"cudaSetDevice({self.device_index})")
        self.gpu = gpu = GpuInfo.query(cudart, self.device_index)
        severity = trt_mod.Logger.Severity.INFO if self.verbose else trt_mod.Logger.Severity.WARNING
        logger = trt_mod.Logger(severity)
        version = str(trt_mod.__version__)
        self.engine_path = path = self.engine_file(version, gpu)
        try:
            engine = None
            if path.is_file() and not self.rebuild:
                engine = self._deserialize(trt_mod, logger, path.read_bytes())
                if engine is None:
                    log.warning("%s: cached engine could not be loaded; rebuilding it", path)
            self.built = engine is None
            if engine is None:
                plan = self._build(trt_mod, logger, self.timing_cache_file(version, gpu))
                write_atomic(path, plan)
                write_atomic(path.with_suffix(".json"), json.dumps(self.engine_key(version, gpu), indent=2).encode())
                engine = self._deserialize(trt_mod, logger, plan)
                if engine is None:
                    raise SaladError(f"{self.graph.path}: TensorRT built an engine it cannot deserialize (see the TensorRT log above).")
            self._engine = engine
            self._check_engine(trt_mod, engine)
            self._context = engine.create_execution_context()
            if self._context is None:
                raise SaladError(f"{self.graph.path}: TensorRT could not create an execution context (out of GPU memory?).")
            self._stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._allocate(trt_mod)
        except BaseException:
            self._deactivate()
            raise

    def _deserialize(self, trt_mod: Any, logger: Any, plan: bytes) -> Any:
        runtime: trt.Runtime = trt_mod.Runtime(logger)
        self._runtime = runtime  # the engine must not outlive its runtime
        return runtime.deserialize_cuda_engine(plan)

    def _build(self, trt_mod: Any, logger: Any, timing_path: Path) -> bytes:
        """Parse the bundle ONNX into a strongly typed network and build a serialized engine."""
        builder: trt.Builder = trt_mod.Builder(logger)
        strongly_typed = getattr(trt_mod.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        # TensorRT 10 needs the flag to honour the graph's types; TensorRT 11 is always strongly typed.
        flags = 1 << int(strongly_typed) if strongly_typed is not None else 0
        network: trt.INetworkDefinition = builder.create_network(flags)
        parser: trt.OnnxParser = trt_mod.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.graph.path)):
            errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
            raise BundleError(f"{self.graph.path}: TensorRT's ONNX parser failed: " + "; ".join(errors or ["no details"]))
        config: trt.IBuilderConfig = builder.create_builder_config()
        tf32 = getattr(trt_mod.BuilderFlag, "TF32", None)
        if tf32 is not None and not self.allow_tf32:
            config.clear_flag(tf32)  # TensorRT enables TF32 by default for float32 layers
        if self.workspace_mb:
            config.set_memory_pool_limit(trt_mod.MemoryPoolType.WORKSPACE, int(self.workspace_mb) << 20)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            lo, opt, hi = self._profile_shapes(tensor.name, tuple(tensor.shape))
            profile.set_shape(tensor.name, trt_mod.Dims(lo), trt_mod.Dims(opt), trt_mod.Dims(hi))
        config.add_optimization_profile(profile)
        timing = self._timing_cache(config, timing_path)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise SaladError(
                f"{self.graph.path}: TensorRT could not build an engine for {self.gpu.name if self.gpu else 'this GPU'} "
                "(see the TensorRT log above; a smaller --batch or a larger workspace may help)."
            )
        if timing is not None:
            write_atomic(timing_path, memoryview(config.get_timing_cache().serialize()))
        return bytes(memoryview(plan))

    def _timing_cache(self, config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache | None:
        """Attach the on-disk timing cache (or a fresh one if it is absent, stale or corrupt)."""
        for data in ((path.read_bytes() if path.is_file() else b""), b""):
            try:
                cache = config.create_timing_cache(data)
            except Exception:  # a corrupt cache file: start a new one
                continue
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return cache
        return None

    def _profile_shapes(self, name: str, network_shape: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
        """min/opt/max shapes: the manifest's batch axis spans 1..max_batch, other dynamic axes are fixed."""
        spec = next((t for t in self.spec.inputs if t.name == name), None)
        if spec is None:
            raise BundleError(f"{self.graph.path}: the graph has input {name!r}, the manifest lists {[t.name for t in self.spec.inputs]}.")
        static = self.graph.static_dims()
        lo, opt, hi = [], [], []
        for axis, (dim, want) in enumerate(zip(network_shape, spec.shape, strict=True)):
            if want == BATCH:
                lo.append(1)
                opt.append(self.opt_batch)
                hi.append(self.max_batch)
            elif dim >= 0:
                lo.append(dim)
                opt.append(dim)
                hi.append(dim)
            elif isinstance(want, int) or want in static:
                fixed = want if isinstance(want, int) else static[want]
                lo.append(fixed)
                opt.append(fixed)
                hi.append(fixed)
            else:
                raise BundleError(f"{self.graph.path}: input {name!r} axis {axis} ({want!r}) is dynamic and the manifest does not fix it.")
        return lo, opt, hi

    def _check_engine(self, trt_mod: Any, engine: trt.ICudaEngine) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt_mod.TensorIOMode.INPUT]
        want_in = [t.name for t in self.spec.inputs]
        want_out = [t.name for t in self.spec.outputs]
        if sorted(inputs) != sorted(want_in) or not set(want_out) <= set(names):
            raise BundleError(
                f"{self.graph.path}: engine has tensors {names} (inputs {inputs}); the manifest expects inputs {want_in} "
                f"and outputs {want_out}. Re-export the bundle or rebuild the engine (rebuild=True)."
            )
        for t in [*self.spec.inputs, *self.spec.outputs]:
            got = np.dtype(trt_mod.nptype(engine.get_tensor_dtype(t.name)))
            if got != np.dtype(t.dtype):
                raise BundleError(f"{self.graph.path}: engine tensor {t.name!r} is {got}, the manifest expects {t.dtype}.")

    def _allocate(self, trt_mod: Any) -> None:
        """Pinned host + device buffers for every I/O tensor at its largest shape; addresses set once."""
        engine, context, cudart = self._engine, self._context, self._cudart
        for t in self.spec.inputs:
            hi = tuple(engine.get_tensor_profile_shape(t.name, 0)[2])
            if not context.set_input_shape(t.name, hi):
                raise SaladError(f"{self.graph.path}: TensorRT refused input {t.name!r} shape {hi}.")
            self._buffers[t.name] = _Buffer.allocate(cudart, t.name, True, np.dtype(t.dtype), hi)
        for t in self.spec.outputs:
            shape = tuple(context.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                raise SaladError(f"{self.graph.path}: TensorRT cannot infer the shape of output {t.name!r} ({shape}).")
            self._buffers[t.name] = _Buffer.allocate(cudart, t.name, False, np.dtype(t.dtype), shape)
        for name, buf in self._buffers.items():
            if not context.set_tensor_address(name, buf.device_ptr):
                raise SaladError(f"{self.graph.path}: TensorRT refused the device address of {name!r}.")

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        cudart, context, stream = self._cudart, self._context, self._stream
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in feed.items():
            buf = self._buffers[name]
            np.copyto(buf.host[: arr.size], arr.reshape(-1))
            if not context.set_input_shape(name, arr.shape):
                raise SaladError(f"{self.graph.path.name}: TensorRT refused input {name!r} shape {arr.shape}.")
            cuda_check(cudart.cudaMemcpyAsync(buf.device_ptr, buf.host_ptr, arr.nbytes, h2d, stream), "cudaMemcpyAsync(H2D)")
        if not context.execute_async_v3(int(stream)):
            raise SaladError(f"{self.graph.path.name}: TensorRT execute_async_v3 failed (see the TensorRT log above).")
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
        return {"gpu": asdict(self.gpu) if self.gpu else None, "engine": str(self.engine_path) if self.engine_path else None, "built": self.built}

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
