"""OpenVINO backend: Intel's CPU runtime for consoles without an NVIDIA GPU, on the bundle's own ONNX graphs.

openvino is imported when the runner activates, never at `import salad.runtime`. It reads the fp32,
fp16 (cast) and int8 (Q/DQ) ONNX files directly, with no conversion step, and compiles them for the
CPU with the batch axis left dynamic. The inference precision is pinned to f32 for every graph: on a
CPU with AVX512-BF16 or AMX, OpenVINO's default would otherwise run an fp32 graph in bfloat16 and move
scores by ~1e-3, a hundred times the fp32 parity tolerance (docs/architecture.md, "How to add a runtime").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from salad.errors import BackendUnavailableError, BundleError, SaladError

from .base import BundleGraph, Runner, importable, register_runner

#: The OpenVINO device every graph is compiled for (the runner's only device kind is "cpu").
OV_DEVICE = "CPU"
#: What the compiled model must compute in, whatever the CPU could do faster (bf16, f16).
PINNED_PRECISION = "f32"


@register_runner("openvino", extra="openvino", devices=("cpu",))
class OpenVinoRunner(Runner):
    """Runs one bundle graph as an openvino.CompiledModel on the CPU, in f32 arithmetic.

    Option `threads` sets INFERENCE_NUM_THREADS (default: OpenVINO's choice). The latency hint is
    set, so one request uses one stream and every thread on one batch, as a console scores.
    """

    options: ClassVar[dict[str, str]] = {
        "threads": "inference threads (INFERENCE_NUM_THREADS; default: OpenVINO's choice)",
    }

    def __init__(
        self,
        graph: BundleGraph,
        *,
        max_batch: int = 32,
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(graph, max_batch=max_batch, device=device)
        if threads is not None and threads < 1:
            raise SaladError(
                f"threads={threads}; expected a positive count (e.g. 2), or none for OpenVINO's choice."
            )
        self.threads = threads
        self.compiled: Any = None
        self.request: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not importable("openvino"):
            return "openvino is not installed. Install it with `pip install 'salad-edge[openvino]'`."
        return None

    def _config(self) -> dict[Any, Any]:
        """compile_model properties: f32 arithmetic, the latency hint and, when given, the thread count."""
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[Any, Any] = {
            hints.inference_precision: ov.Type.f32,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
        }
        if self.threads:
            config[props.inference_num_threads] = int(self.threads)
        return config

    def _activate(self) -> None:
        import openvino as ov

        path = self.graph.path
        if not path.is_file():
            raise BundleError(f"{path}: graph file missing from the bundle. Re-copy or re-export the bundle.")
        core = ov.Core()
        try:
            model = core.read_model(str(path))  # the ONNX frontend; external data is read from beside it
            self.compiled = core.compile_model(model, OV_DEVICE, self._config())
        except Exception as exc:  # openvino raises RuntimeError and its own types for unreadable graphs
            raise BundleError(
                f"{path}: openvino cannot load the graph ({type(exc).__name__}: {exc})."
            ) from exc
        self._check_model()
        precision = self.inference_precision
        if precision != PINNED_PRECISION:
            raise BackendUnavailableError(
                f"{path}: compiled for {precision}, expected {PINNED_PRECISION} arithmetic. "
                "This openvino version ignores INFERENCE_PRECISION_HINT; install the tested one "
                "(pip install 'salad-edge[openvino]' -c requirements/constraints.txt)."
            )
        self.request = self.compiled.create_infer_request()

    def _check_model(self) -> None:
        """The compiled model's inputs and outputs must be the manifest's (else a wrong or stale file)."""
        self.graph.check_io([n for port in self.compiled.inputs for n in port.get_names()],
                            [n for port in self.compiled.outputs for n in port.get_names()],
                            input_count=len(self.compiled.inputs))

    @property
    def inference_precision(self) -> str | None:
        """The arithmetic the compiled model runs in, read back from OpenVINO ("f32"); None if inactive."""
        if self.compiled is None:
            return None
        import openvino.properties.hint as hints

        return str(self.compiled.get_property(hints.inference_precision).get_type_name())

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        try:
            self.request.infer(feed, share_inputs=True)
            # The request's output buffers are reused by the next call: copy what is returned.
            outputs = self.spec.outputs
            return {t.name: np.array(self.request.get_tensor(t.name).data, copy=True) for t in outputs}
        except Exception as exc:
            name = self.graph.path.name
            raise SaladError(f"{name}: openvino failed ({type(exc).__name__}: {exc}).") from exc

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None

    def info(self) -> dict[str, Any]:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        info: dict[str, Any] = {**super().info(), "library": f"openvino {ov.get_version()}"}
        if self.compiled is not None:
            info.update(
                {
                    "inference_precision": self.inference_precision,
                    "inference_num_threads": int(self.compiled.get_property(props.inference_num_threads)),
                    "num_streams": int(self.compiled.get_property(props.num_streams)),
                    "performance_mode": str(self.compiled.get_property(hints.performance_mode)),
                    "cpu": str(ov.Core().get_property(OV_DEVICE, props.device.full_name)),
                }
            )
        return info
