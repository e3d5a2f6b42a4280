"""OpenVINO backend: Intel's CPU runtime for consoles without an NVIDIA GPU, on the bundle's own ONNX graphs.

openvino is imported when the runner activates, never at `import salad.runtime`. It reads the fp32,
fp16 (cast) and int8 (Q/DQ) ONNX files directly, with no conversion step, and compiles them for the
CPU with the batch axis left dynamic. The inference precision is pinned to f32 for every graph: on a
CPU with AVX512-BF16 or AMX, OpenVINO's default would otherwise run an fp32 graph in bfloat16 and move
scores by ~1e-3, a hundred times the fp32 parity tolerance (docs/architecture.md, "How to add a runtime").

Start-up: the graph is compiled from its path with OpenVINO's model cache (CACHE_DIR) in a folder of
salad.runtime.cache's root keyed on the graph's content, so a second start imports the compiled blob
instead of reading and compiling the ONNX file ($SALAD_NO_CACHE=1 or `use_cache=False` turns it off).
openvino is imported without its model-conversion tools (openvino.tools.ovc and its telemetry, most of
the import time), which OpenVINO's own package treats as optional: the runner never converts a model.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from salad.errors import BackendUnavailableError, BundleError, SaladError

from .base import BundleGraph, Runner, importable, register_runner
from .cache import check_seals, prune, seal_new, start_cache_folder

#: The OpenVINO device every graph is compiled for (the runner's only device kind is "cpu").
OV_DEVICE = "CPU"
#: What the compiled model must compute in, whatever the CPU could do faster (bf16, f16).
PINNED_PRECISION = "f32"
#: The cache folder (under salad.runtime.cache's root) of OpenVINO's compiled blobs, one sub-folder per graph.
BLOB_FOLDER = "openvino"
#: OpenVINO's converter package: optional in OpenVINO's own __init__, not needed to compile an ONNX file.
CONVERTER = "openvino.tools.ovc"
#: OpenVINO's compiled-model files in CACHE_DIR; each gets a CRC-32 seal beside it (salad.runtime.cache.check_seals).
BLOB_PATTERN = "*.blob"

log = logging.getLogger(__name__)


def import_openvino() -> Any:
    """`import openvino` without importing its model converter (and the converter's telemetry and HTTP stack).

    Only where openvino is not imported yet; the converter stays importable afterwards by its own name.
    """
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    blocked = CONVERTER not in sys.modules
    if blocked:
        sys.modules[CONVERTER] = None  # type: ignore[assignment]  # makes `from openvino.tools.ovc import …` an ImportError
    try:
        import openvino
    finally:
        if blocked and sys.modules.get(CONVERTER, 0) is None:
            del sys.modules[CONVERTER]
    return openvino


@register_runner("openvino", extra="openvino", devices=("cpu",))
class OpenVinoRunner(Runner):
    """Runs one bundle graph as an openvino.CompiledModel on the CPU, in f32 arithmetic.

    Option `threads` sets INFERENCE_NUM_THREADS (default: OpenVINO's choice). The latency hint is
    set, so one request uses one stream and every thread on one batch, as a console scores. Options
    `cache_dir` and `use_cache` relocate or turn off the compiled-model cache (CACHE_DIR).
    """

    options: ClassVar[dict[str, str]] = {
        "threads": "inference threads (INFERENCE_NUM_THREADS; default: OpenVINO's choice)",
        "cache_dir": "root of the compiled-model cache (CACHE_DIR is a folder in it)",
        "use_cache": "start from OpenVINO's compiled-model cache (default True; $SALAD_NO_CACHE=1 turns it off)",
    }

    def __init__(
        self,
        graph: BundleGraph,
        *,
        max_batch: int = 32,
        device: str | None = None,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> None:
        super().__init__(graph, max_batch=max_batch, device=device)
        if threads is not None and threads < 1:
            raise SaladError(
                f"threads={threads}; expected a positive count (e.g. 2), or none for OpenVINO's choice."
            )
        self.threads = threads
        self.cache_dir, self.use_cache = cache_dir, use_cache
        #: OpenVINO's CACHE_DIR for this graph, or None when the cache is off.
        self.blob_dir: Path | None = None
        #: How this start used the cache: "loaded", "written", "rebuilt" or "off" (salad.runtime.cache.seal_new).
        self.start_cache: dict[str, Any] = {"status": "off", "path": None}
        self.compiled: Any = None
        self.request: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not importable("openvino"):
            return "openvino is not installed. Install it with `pip install 'salad-edge[openvino]'`."
        return None

    def _config(self) -> dict[Any, Any]:
        """compile_model properties: f32 arithmetic, the latency hint, the model cache and, when given, the thread count."""
        ov = import_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[Any, Any] = {
            hints.inference_precision: ov.Type.f32,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
        }
        if self.threads:
            config[props.inference_num_threads] = int(self.threads)
        if self.blob_dir is not None:
            config[props.cache_dir] = str(self.blob_dir)
        return config

    def _blob_dir(self) -> Path | None:
        """CACHE_DIR for this graph: OpenVINO keys blobs on the model and its settings; the folder adds the content.

        Compiled from a path, OpenVINO's key names the file rather than its bytes, so the graph's sha256 (with its
        external data) names the folder: a bundle re-exported in place never meets a stale blob.
        """
        folder = start_cache_folder(BLOB_FOLDER, self.cache_dir, self.use_cache)
        if folder is None:
            return None
        blobs = folder / self.graph.content_sha256[:32]
        try:
            blobs.mkdir(exist_ok=True)
        except OSError:
            return None
        return blobs

    def _activate(self) -> None:
        ov = import_openvino()

        path = self.graph.path
        if not path.is_file():
            raise BundleError(f"{path}: graph file missing from the bundle. Re-copy or re-export the bundle.")
        self.blob_dir = self._blob_dir()
        before, removed = check_seals(self.blob_dir, BLOB_PATTERN) if self.blob_dir is not None else ({}, [])
        core = ov.Core()
        try:
            # From the path: on a cache hit OpenVINO imports the blob without reading the ONNX file (external data
            # is read from beside it otherwise).
            self.compiled = core.compile_model(str(path), OV_DEVICE, self._config())
        except Exception as exc:  # openvino raises RuntimeError and its own types for unreadable graphs
            raise BundleError(
                f"{path}: openvino cannot load the graph ({type(exc).__name__}: {exc})."
            ) from exc
        if self.blob_dir is not None:
            status = seal_new(self.blob_dir, BLOB_PATTERN, before, removed)
            if status == "written":
                prune(self.blob_dir.parent)
            if status == "rebuilt" and not removed:
                log.warning("%s: OpenVINO could not use its cached blob (another version?) and compiled the graph again.",
                            self.blob_dir)
            self.start_cache = {"status": status, "path": str(self.blob_dir)}
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
        ov = import_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        info: dict[str, Any] = {**super().info(), "library": f"openvino {ov.get_version()}",
                                "start_cache": dict(self.start_cache)}
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
