"""ONNX Runtime backend: the console default (CPU), with the CUDA and TensorRT providers when present.

onnxruntime is imported when the runner activates, never at `import salad.runtime`. On `cuda`, the
TensorRT execution provider is preferred when the installed onnxruntime-gpu has it, with its engine
and timing caches on disk (keyed by ONNX Runtime itself on the graph and the GPU), and the CUDA
provider takes any node TensorRT cannot.

On the CPU provider the runner starts from ONNX Runtime's own optimised form of the graph (every graph
optimisation applied, the weights pre-packed for this CPU in one external file), cached under
salad.runtime.cache's folder and keyed on the graph's content, the onnxruntime version, the providers, the
optimisation level and the CPU. The first start optimises and writes it (a folder renamed into place, a
CRC-32 seal beside each file); later starts check the seals and load it with the optimiser off, and ONNX
Runtime maps the weights file instead of copying and re-packing the weights (about half of the session's
start on the paper network's int8 graph, nearly all of it on fp32). Scores are the same bytes either way.
A damaged entry is removed with a warning and rebuilt; $SALAD_NO_CACHE=1 or `use_cache=False` starts from
the bundle's graph every time.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from salad import fsutil
from salad.errors import BackendError, BackendUnavailableError, BundleError

from .base import BATCH, BundleGraph, Runner, importable, register_runner
from .cache import cache_key, cache_root, check_seals, cpu_fingerprint, install_sealed, prune, start_cache_folder

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
#: The cache folder (under salad.runtime.cache's root) of the optimised models, one folder each.
OPTIMISED_FOLDER = "ort-optimised"
#: An optimised model's graph and its weights (external data, pre-packed), inside its folder.
CACHED_MODEL, CACHED_WEIGHTS = "model.onnx", "weights.data"
#: Session settings that save the optimised model as CACHED_MODEL + CACHED_WEIGHTS, pre-packed weights included.
SAVE_CONFIG = {
    "session.optimized_model_external_initializers_file_name": CACHED_WEIGHTS,
    "session.optimized_model_external_initializers_min_size_in_bytes": "1024",
    "session.save_external_prepacked_constant_initializers": "1",
}

log = logging.getLogger(__name__)


@register_runner("onnxruntime", extra="runtime", devices=("cpu", "cuda"))
class OnnxRuntimeRunner(Runner):
    """Runs one bundle graph in an onnxruntime.InferenceSession.

    Options: `threads` (intra-op threads, default: ONNX Runtime's choice), `providers` (explicit
    execution-provider list, overriding the device default), `use_tensorrt` (on cuda, use the
    TensorRT provider when available; default True), `cache_dir` (TensorRT provider caches and the
    optimised model), `use_cache` (start from the cached optimised model on the CPU; default True).
    """

    options: ClassVar[dict[str, str]] = {
        "threads": "intra-op threads (default: ONNX Runtime's choice)",
        "providers": "explicit execution-provider list, overriding the device default",
        "use_tensorrt": "on cuda, use the TensorRT provider when available",
        "cache_dir": "TensorRT provider caches and the optimised-model cache",
        "use_cache": "on the CPU, start from the cached optimised model (default True; $SALAD_NO_CACHE=1 turns it off)",
    }

    def __init__(
        self,
        graph: BundleGraph,
        *,
        max_batch: int = 32,
        device: str | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        use_tensorrt: bool = True,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> None:
        super().__init__(graph, max_batch=max_batch, device=device)
        self.threads = threads
        self.requested_providers = list(providers) if providers else None
        self.use_tensorrt = use_tensorrt
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        #: How this start used the optimised-model cache: status "loaded", "written", "rebuilt" or "off", and the entry.
        self.start_cache: dict[str, Any] = {"status": "off", "path": None}
        self.session: Any = None
        self.providers: list[str] = []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not importable("onnxruntime"):
            return "onnxruntime is not installed. Install it with `pip install 'salad-edge[runtime]'` (CPU) or 'salad-edge[gpu]' (CUDA)."
        return None

    def _provider_config(self, available: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        if self.requested_providers:
            absent = [p for p in self.requested_providers if p not in available]
            if absent:
                raise BackendUnavailableError(
                    f"onnxruntime has no {absent} here (available: {list(available)}). "
                    "Install onnxruntime-gpu (`pip install 'salad-edge[gpu]'`) for CUDA/TensorRT providers."
                )
            return [(p, self._provider_options(p)) for p in self.requested_providers]
        if self.device_kind == "cpu":
            return [(CPU_EP, {})]
        if CUDA_EP not in available:
            raise BackendUnavailableError(
                f"device {self.device!r} needs onnxruntime's CUDA provider, but this onnxruntime has only {list(available)}. "
                "Install onnxruntime-gpu (`pip install 'salad-edge[gpu]'`) or pass --device cpu."
            )
        chosen = [TRT_EP] if self.use_tensorrt and TRT_EP in available else []
        chosen += [CUDA_EP, CPU_EP]
        return [(p, self._provider_options(p)) for p in chosen]

    def _provider_options(self, provider: str) -> dict[str, Any]:
        if provider == CUDA_EP:
            return {"device_id": self.device_index}
        if provider == TRT_EP:
            root = cache_root(self.cache_dir) / "ort-tensorrt"
            # ONNX Runtime names cached engines after the graph's structure, not its weights: key the folder
            # on the content so a re-exported bundle with new weights never reuses a stale engine.
            engines = root / self.graph.content_sha256[:16]
            engines.mkdir(parents=True, exist_ok=True)
            profile = {kind: self._profile_shapes(b) for kind, b in (("min", 1), ("opt", self.max_batch), ("max", self.max_batch))}
            return {
                "device_id": self.device_index,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(engines),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(root),
                "trt_profile_min_shapes": profile["min"],
                "trt_profile_opt_shapes": profile["opt"],
                "trt_profile_max_shapes": profile["max"],
            }
        return {}

    def _profile_shapes(self, batch: int) -> str:
        """ONNX Runtime's profile syntax: "image:1x1x64x64,bank:512x200"."""
        fixed = self.graph.static_dims()
        parts = []
        for t in self.spec.inputs:
            dims = [batch if d == BATCH else fixed.get(d, 0) if isinstance(d, str) else d for d in t.shape]
            parts.append(f"{t.name}:" + "x".join(str(d) for d in dims))
        return ",".join(parts)

    def _activate(self) -> None:
        import onnxruntime as ort

        config = self._provider_config(ort.get_available_providers())
        path = self.graph.path
        if not path.is_file():
            raise BundleError(f"{path}: graph file missing from the bundle. Re-copy or re-export the bundle.")
        providers = [p for p, _ in config]
        entry, _ = self._cache_entry(ort, providers)
        self.start_cache = {"status": "off", "path": str(entry) if entry else None}
        self.session = self._load_cached(ort, entry, config) if entry is not None else None
        if self.session is None:
            self.session = self._build_session(ort, config, entry)
        self.providers = list(self.session.get_providers())
        self._check_session()

    def _options(self, ort: Any, level: Any) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3  # errors only: a console log is not the place for optimiser notes
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        return options

    def _cache_entry(self, ort: Any, providers: Sequence[str]) -> tuple[Path | None, dict[str, Any]]:
        """The cache folder of this graph's optimised model and its key's parts; none off the CPU provider or when off.

        Threads are not in the key: the optimised graph does not depend on them. GPU providers keep their own caches.
        """
        key = {"graph_sha256": self.graph.content_sha256, "onnxruntime": str(ort.__version__), "providers": list(providers),
               "optimisation": "ORT_ENABLE_ALL", "format": "ONNX, external pre-packed weights, CRC-32 seals",
               "cpu": cpu_fingerprint()}
        folder = start_cache_folder(OPTIMISED_FOLDER, self.cache_dir, self.use_cache) if list(providers) == [CPU_EP] else None
        if folder is None:
            return None, key
        return folder / f"{self.graph.key}-{cache_key(key)[:32]}", key

    def _load_cached(self, ort: Any, entry: Path, config: list[tuple[str, dict[str, Any]]]) -> Any:
        """A session on the cached optimised model with the optimiser off; None (a warning if damaged) to build one."""
        if not entry.is_dir():
            return None
        kept, removed = check_seals(entry, "*")  # a file that does not match its seal is removed with a warning
        if removed or CACHED_MODEL not in kept:
            shutil.rmtree(entry, ignore_errors=True)
            self.start_cache["status"] = "rebuilt"
            return None
        options = self._options(ort, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        try:
            session = ort.InferenceSession(str(entry / CACHED_MODEL), sess_options=options, providers=[p for p, _ in config],
                                           provider_options=[o for _, o in config])
        except Exception as exc:  # onnxruntime's own exception types: a stale or foreign entry
            log.warning("%s: onnxruntime cannot load this cached optimised model (%s: %s). Rebuilding it from %s.",
                        entry, type(exc).__name__, exc, self.graph.path)
            shutil.rmtree(entry, ignore_errors=True)
            self.start_cache["status"] = "rebuilt"
            return None
        self.start_cache["status"] = "loaded"
        return session

    def _build_session(self, ort: Any, config: list[tuple[str, dict[str, Any]]], entry: Path | None) -> Any:
        """A session on the bundle's graph with every optimisation; with `entry`, its optimised model saved there.

        Saved as ONNX with every weight in one external file, pre-packed for this CPU's kernels: a later start maps the
        file instead of copying and re-packing the weights (the ORT format cannot hold pre-packed weights).
        """
        path = self.graph.path
        options = self._options(ort, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        tmp = self._staging_folder(entry) if entry is not None else None
        if tmp is not None:
            options.optimized_model_filepath = str(tmp / CACHED_MODEL)
            for name, value in SAVE_CONFIG.items():
                options.add_session_config_entry(name, value)
        providers, provider_options = [p for p, _ in config], [o for _, o in config]
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers, provider_options=provider_options)
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, …)
            if tmp is None:
                raise BundleError(f"{path}: onnxruntime cannot load the graph ({type(exc).__name__}: {exc}).") from exc
            shutil.rmtree(tmp, ignore_errors=True)  # the cache folder may be what failed: try once without saving
            log.warning("%s: optimised model not cached (%s: %s).", entry, type(exc).__name__, exc)
            self.start_cache["status"] = "off"
            return self._build_session(ort, config, None)
        if entry is not None and tmp is not None:
            try:
                install_sealed(tmp, entry)
                prune(entry.parent)
                if self.start_cache["status"] == "off":
                    self.start_cache["status"] = "written"
            except OSError as exc:
                log.warning("%s: optimised model not cached (%s); the next start optimises the graph again.", entry, exc)
                self.start_cache["status"] = "off"
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return session

    def _staging_folder(self, entry: Path) -> Path | None:
        """A fresh folder beside `entry` for the optimised model being saved; None (cache off) if one cannot be made."""
        tmp = entry.with_name(fsutil.temp_name(f".{entry.name}.tmp-"))
        try:
            tmp.mkdir()
        except OSError as exc:  # a read-only or full cache folder costs speed, never the start
            log.warning("%s: optimised model not cached (%s); the next start optimises the graph again.", entry, exc)
            self.start_cache["status"] = "off"
            return None
        return tmp

    def _check_session(self) -> None:
        """The session's inputs and outputs must be the manifest's: a mismatch means a wrong or stale file."""
        self.graph.check_io([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        names = [t.name for t in self.spec.outputs]
        try:
            values = self.session.run(names, feed)
        except Exception as exc:
            raise BackendError(f"{self.graph.path.name}: onnxruntime failed ({type(exc).__name__}: {exc}).") from exc
        return dict(zip(names, values, strict=True))

    def _deactivate(self) -> None:
        self.session = None
        self.providers = []

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        options = self.session.get_session_options() if self.session is not None else None
        return {
            **super().info(), "library": f"onnxruntime {ort.__version__}", "providers": list(self.providers),
            "intra_op_threads": int(options.intra_op_num_threads) if options is not None else None,
            "inter_op_threads": int(options.inter_op_num_threads) if options is not None else None,
            "graph_optimization_level": str(options.graph_optimization_level) if options is not None else None,
            "execution_mode": str(options.execution_mode) if options is not None else None,
            "start_cache": dict(self.start_cache),
        }
