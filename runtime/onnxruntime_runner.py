"""ONNX Runtime backend: the console default (CPU), with the CUDA and TensorRT providers when present.

onnxruntime is imported when the runner activates, never at `import salad.runtime`. On `cuda`, the
TensorRT execution provider is preferred when the installed onnxruntime-gpu has it, with its engine
and timing caches on disk (keyed by ONNX Runtime itself on the graph and the GPU), and the CUDA
provider takes any node TensorRT cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from salad.errors import BackendError, BackendUnavailableError, BundleError

from .base import BATCH, BundleGraph, Runner, importable, register_runner
from .cache import cache_root

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"


@register_runner("onnxruntime", extra="runtime", devices=("cpu", "cuda"))
class OnnxRuntimeRunner(Runner):
    """Runs one bundle graph in an onnxruntime.InferenceSession.

    Options: `threads` (intra-op threads, default: ONNX Runtime's choice), `providers` (explicit
    execution-provider list, overriding the device default), `use_tensorrt` (on cuda, use the
    TensorRT provider when available; default True), `cache_dir` (TensorRT provider caches).
    """

    options: ClassVar[dict[str, str]] = {
        "threads": "intra-op threads (default: ONNX Runtime's choice)",
        "providers": "explicit execution-provider list, overriding the device default",
        "use_tensorrt": "on cuda, use the TensorRT provider when available",
        "cache_dir": "TensorRT provider caches",
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
    ) -> None:
        super().__init__(graph, max_batch=max_batch, device=device)
        self.threads = threads
        self.requested_providers = list(providers) if providers else None
        self.use_tensorrt = use_tensorrt
        self.cache_dir = cache_dir
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
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: a console log is not the place for optimiser notes
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=[p for p, _ in config], provider_options=[o for _, o in config]
            )
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, …)
            raise BundleError(f"{path}: onnxruntime cannot load the graph ({type(exc).__name__}: {exc}).") from exc
        self.providers = list(self.session.get_providers())
        self._check_session()

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
        }
