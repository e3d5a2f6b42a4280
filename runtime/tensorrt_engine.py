"""TensorRT engines for bundle graphs, built or loaded without a runner (docs/architecture.md §6).

`EngineLoader` is to TensorRT what Polygraphy's loaders are: it turns one bundle graph into a
deserialised engine, building it (strongly typed, one optimisation profile over batch 1..max_batch)
or loading it from the engine cache (salad.runtime.cache) keyed on everything the engine depends
on. The TensorRT runner uses it when it activates; `salad build-engine` uses it ahead of time, so a
console can build its engines at install time. TensorRT and cuda-python are imported when used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from salad.errors import BackendError, BackendUnavailableError, BundleError, ConfigError, SaladError

from .base import BATCH, BundleGraph, importable, parse_device
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
        raise BackendError(f"CUDA call {what} failed: {getattr(err, 'name', err)} ({int(err)}).")
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


def unavailable_reason() -> str | None:
    """Why TensorRT cannot build or run engines here (no library, stubs only, no GPU), or None."""
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


class EngineLoader:
    """One bundle graph → a TensorRT engine, from the cache or built (and cached); see the module docstring.

    Options: `opt_batch` (the profile's optimum, default max_batch), `cache_dir`, `workspace_mb`,
    `rebuild` (ignore a cached engine), `verbose` (TensorRT INFO logging), `allow_tf32`.
    """

    def __init__(
        self, graph: BundleGraph, *, max_batch: int = 32, opt_batch: int | None = None, cache_dir: str | Path | None = None,
        workspace_mb: int | None = None, rebuild: bool = False, verbose: bool = False, allow_tf32: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch={max_batch}; expected a positive batch size (e.g. 32).")
        self.graph, self.max_batch = graph, int(max_batch)
        self.spec = graph.spec
        self.opt_batch = int(opt_batch or max_batch)
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"opt_batch={opt_batch}; expected 1..max_batch ({self.max_batch}).")
        self.cache_dir, self.workspace_mb, self.rebuild = cache_dir, workspace_mb, rebuild
        self.verbose, self.allow_tf32 = verbose, allow_tf32
        self.gpu: GpuInfo | None = None
        self.engine_path: Path | None = None
        #: True when the last `load` built the engine, False when it came from the cache.
        self.built = False

    def logger(self, trt_mod: Any) -> Any:
        return trt_mod.Logger(trt_mod.Logger.Severity.INFO if self.verbose else trt_mod.Logger.Severity.WARNING)

    def load(self, trt_mod: Any, logger: Any, gpu: GpuInfo) -> tuple[Any, Any]:
        """(runtime, engine) for `gpu`: the cached engine, or a new build written to the cache first."""
        self.gpu = gpu
        version = str(trt_mod.__version__)
        self.engine_path = path = self.engine_file(version, gpu)
        runtime = engine = None
        if path.is_file() and not self.rebuild:
            runtime, engine = self._deserialize(trt_mod, logger, path.read_bytes())
            if engine is None:
                log.warning("%s: cached engine could not be loaded; rebuilding it", path)
        self.built = engine is None
        if engine is None:
            plan = self._build(trt_mod, logger, self.timing_cache_file(version, gpu))
            write_atomic(path, plan)
            write_atomic(path.with_suffix(".json"), json.dumps(self.engine_key(version, gpu), indent=2).encode())
            runtime, engine = self._deserialize(trt_mod, logger, plan)
            if engine is None:
                raise BackendError(f"{self.graph.path}: TensorRT built an engine it cannot deserialize (see the TensorRT log above).")
        self._check_engine(trt_mod, engine)
        return runtime, engine

    def build(self, device_index: int = 0) -> dict[str, Any]:
        """Build (or find in the cache) the engine on cuda:`device_index` now, without a runner; what was done."""
        reason = unavailable_reason()
        if reason:
            raise BackendUnavailableError(f"cannot build a TensorRT engine here: {reason}")
        trt_mod, cudart = import_tensorrt(), import_cudart()
        cuda_check(cudart.cudaSetDevice(device_index), f"cudaSetDevice({device_index})")
        gpu = GpuInfo.query(cudart, device_index)
        runtime, engine = self.load(trt_mod, self.logger(trt_mod), gpu)
        del engine, runtime  # the engine must go before its runtime
        return {
            "graph": self.graph.key, "engine": str(self.engine_path), "built": self.built, "gpu": asdict(gpu),
            "key": self.engine_key(str(trt_mod.__version__), gpu),
        }

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
        sm = gpu.compute_capability.replace(".", "")
        name = f"{self.graph.key}-{self.graph.content_sha256[:12]}-{slug(gpu.name)}-sm{sm}-trt{trt_version}-{digest}.engine"
        return cache_root(self.cache_dir) / "tensorrt" / name

    def timing_cache_file(self, trt_version: str, gpu: GpuInfo) -> Path:
        name = f"timing-{slug(gpu.name)}-sm{gpu.compute_capability.replace('.', '')}-trt{trt_version}.cache"
        return cache_root(self.cache_dir) / "tensorrt" / name

    def _deserialize(self, trt_mod: Any, logger: Any, plan: bytes) -> tuple[Any, Any]:
        runtime: trt.Runtime = trt_mod.Runtime(logger)  # the engine must not outlive its runtime
        return runtime, runtime.deserialize_cuda_engine(plan)

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
            raise BackendError(
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
        self.graph.check_io(inputs, [n for n in names if n not in inputs], what="engine",
                            fix="Re-export the bundle or rebuild the engine (rebuild=True).")
        for t in [*self.spec.inputs, *self.spec.outputs]:
            got = np.dtype(trt_mod.nptype(engine.get_tensor_dtype(t.name)))
            if got != np.dtype(t.dtype):
                raise BundleError(f"{self.graph.path}: engine tensor {t.name!r} is {got}, the manifest expects {t.dtype}.")


def build_engine(
    bundle: str | os.PathLike[str], precision: str = "fp32", *, graph: str = "model", device: str = "cuda:0",
    **options: Any,
) -> dict[str, Any]:
    """Verify BUNDLE, then build (or find cached) the TensorRT engine of `graph` at `precision` on `device`.

    options: EngineLoader's (max_batch, opt_batch, cache_dir, workspace_mb, rebuild, verbose, allow_tf32).
    Returns what was done: the engine file, whether it was built now, the GPU and the cache key.
    """
    from salad.bundle import Bundle

    reason = unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"cannot build a TensorRT engine here: {reason}")
    kind, index = parse_device(device)
    if kind != "cuda":
        raise ConfigError(f"--device {device!r}: TensorRT engines are built on a CUDA GPU (cuda or cuda:N).")
    opened = Bundle.open(bundle, verify=True, graphs=[(graph, precision)])
    return EngineLoader(BundleGraph.from_bundle(opened, graph, precision), **options).build(index)
