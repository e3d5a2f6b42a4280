"""The Runner lifecycle shared by every backend, and the registry that names them.

A runner is built cheaply (it only remembers which bundle graph to run and how), activated once
(the backend loads or builds its engine), asked to `infer` many times and deactivated. Like
Polygraphy's runners, the base class owns the lifecycle and checks every feed and every result
against the bundle manifest's GraphSpec, so a backend implements only `_activate`, `_infer` and
`_deactivate` and cannot return something the manifest did not promise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from salad.bundle import BANK_INPUT, Bundle
from salad.errors import BackendUnavailableError, BundleError, ConfigError, DataError, SaladError
from salad.machine import DEVICE_KINDS, parse_device  # noqa: F401 - re-exported: runtime.base.parse_device
from salad.manifest import GraphSpec, Manifest, TensorSpec
from salad.registry import Registry

#: The name the manifest gives the dynamic batch axis of every graph input and output.
BATCH = "batch"


@dataclass(frozen=True)
class BundleGraph:
    """One graph of a verified bundle: where its file is, and the contract the manifest gives it.

    It is only a description (nothing is read from disk), so building a runner stays cheap and the
    file is opened by the backend when the runner activates.
    """

    root: Path
    manifest: Manifest
    name: str  # "model", "encoder" or "scorer"
    precision: str  # "fp32", "fp16", "int8"

    @classmethod
    def from_bundle(cls, bundle: Bundle, name: str = "model", precision: str = "fp32") -> BundleGraph:
        """The graph `name` at `precision`; a BundleError listing the bundle's graphs if it has no such graph."""
        bundle.graph(name, precision)  # raises with the list of graphs the bundle has
        return cls(bundle.root, bundle.manifest, name, precision)

    @property
    def bundle(self) -> Bundle:
        """The bundle this graph belongs to (its paths, bank, reference films and threshold)."""
        return Bundle(self.root, self.manifest)

    def static_feed(self) -> dict[str, np.ndarray]:
        """Inputs other than the films: the memory bank of a --bank-as-input graph (read once per call), else {}."""
        return self.bundle.static_feed(self.name, self.precision)

    @property
    def key(self) -> str:
        """The manifest key: "model", "model.fp16", …"""
        return self.manifest.graph_key(self.name, self.precision)

    @property
    def spec(self) -> GraphSpec:
        return self.manifest.graphs[self.key]

    @property
    def path(self) -> Path:
        """The graph's file, confined to the bundle and listed with its sha256 (Manifest.path_of)."""
        return self.manifest.path_of(self.root, self.spec.file)

    def check_io(self, inputs: Sequence[str], outputs: Sequence[str], *, input_count: int | None = None,
                 what: str = "graph", fix: str = "Re-export the bundle.") -> None:
        """A loaded backend's tensor names must be the manifest's: its exact inputs, at least its outputs.

        `input_count` is the number of input ports when a port can carry several names (OpenVINO).
        """
        want_in = [t.name for t in self.spec.inputs]
        want_out = [t.name for t in self.spec.outputs]
        count = len(inputs) if input_count is None else input_count
        if count != len(want_in) or not set(want_in) <= set(inputs) or not set(want_out) <= set(outputs):
            raise BundleError(
                f"{self.path}: {what} has inputs {list(inputs)} and outputs {list(outputs)}; the manifest expects "
                f"inputs {want_in} and outputs {want_out}. {fix}"
            )

    @property
    def content_sha256(self) -> str:
        """Identifies the graph's bytes: its file's sha256, combined with its external data files' (e.g. bank.data).

        Engine caches key on this; the ONNX file alone does not change when only its external weights do.
        """
        spec = self.spec
        if not spec.external_data:
            return spec.sha256
        parts = [spec.sha256, *(f"{name}:{self.manifest.files.get(name, '?')}" for name in sorted(spec.external_data))]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def static_dims(self) -> dict[str, int]:
        """Values of named non-batch axes the manifest fixes: today the bank rows of a `bank` input."""
        rows = self.manifest.bank.rows
        dims: dict[str, int] = {}
        for t in self.spec.inputs:
            if t.name == BANK_INPUT and t.shape and isinstance(t.shape[0], str) and t.shape[0] != BATCH and rows:
                dims[t.shape[0]] = int(rows)
        return dims


class DeviceTimer(Protocol):
    """Times work on a GPU stream with the GPU's own clock (CUDA events), for benchmarks."""

    def start(self) -> None: ...
    def stop_ms(self) -> float: ...
    def close(self) -> None: ...


#: Options every runner takes (the base class's); a backend declares its own in `Runner.options`.
BASE_OPTIONS = {"max_batch": "largest batch the runner is built for", "device": "cpu, cuda or cuda:N"}


class Runner(ABC):
    """Template method: `activate()` → `infer(feed)` … → `deactivate()`, or use it as a context manager.

    Subclasses are registered with `@register_runner(name, extra=…)` and implement `_activate`,
    `_infer` and `_deactivate`; the base class validates inputs and outputs against the manifest.
    """

    #: Registry name ("torch", "onnxruntime", "tensorrt"); set by @register_runner.
    name: ClassVar[str] = ""
    #: The pip extra that installs this backend, named in BackendUnavailableError.
    extra: ClassVar[str] = "runtime"
    #: Device kinds the backend runs on; the first is the default.
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    #: The backend's own constructor options (keyword → what it does), beyond BASE_OPTIONS: commands and
    #: benchmarks read these instead of testing runner names.
    options: ClassVar[dict[str, str]] = {}
    #: Options without which the backend cannot run (a remote runtime's server URL).
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, graph: BundleGraph, *, max_batch: int = 32, device: str | None = None) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch={max_batch}; expected a positive batch size (e.g. 32).")
        self.graph = graph
        self.max_batch = int(max_batch)
        self.device_kind, self.device_index = parse_device(device or self.devices[0])
        if self.device_kind not in self.devices:
            raise ConfigError(
                f"the {self.name} runtime runs on {' or '.join(self.devices)}; received device {device!r}. "
                f"Pass --device {self.devices[0]} or choose another --runtime."
            )
        self.is_active = False
        #: Wall time of the last `infer` call in milliseconds (backend work only, after validation).
        self.last_inference_ms = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def spec(self) -> GraphSpec:
        return self.graph.spec

    @property
    def device(self) -> str:
        return self.device_kind if self.device_kind == "cpu" else f"{self.device_kind}:{self.device_index}"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here (missing package, no device), or None if it may run."""
        return None

    def activate(self) -> None:
        """Load or build the engine. Idempotent; a missing backend raises BackendUnavailableError."""
        if self.is_active:
            return
        reason = type(self).unavailable_reason()
        if reason:
            raise BackendUnavailableError(f"the {self.name} runtime is unavailable: {reason}")
        self._activate()
        self.is_active = True

    def deactivate(self) -> None:
        """Release the engine, device buffers and streams. Idempotent."""
        if not self.is_active:
            return
        try:
            self._deactivate()
        finally:
            self.is_active = False

    def __enter__(self: R) -> R:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.deactivate()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feed` (input name → array); returns output name → array, in manifest order."""
        if not self.is_active:
            raise ConfigError(f"{self!r} is not active; call activate() first or use it in a `with` block.")
        arrays = self._check_feed(feed)
        start = time.perf_counter_ns()
        raw = self._infer(arrays)
        self.last_inference_ms = (time.perf_counter_ns() - start) / 1e6
        return self._check_outputs(raw, arrays)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.graph.path.name}, device={self.device!r}, max_batch={self.max_batch})"

    def info(self) -> dict[str, Any]:
        """What the backend runs with (library version, threads, providers, engine): for benchmark reports."""
        return {"runner": repr(self)}

    def device_timer(self) -> DeviceTimer | None:
        """CUDA events on the stream this runner works on, when it runs on a GPU and exposes one; else None."""
        return None

    # -- what a backend implements ---------------------------------------------------------------

    @abstractmethod
    def _activate(self) -> None:
        """Load the graph (or build the engine) and allocate what `_infer` needs."""

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Run validated, C-contiguous inputs; return every output the manifest lists."""

    @abstractmethod
    def _deactivate(self) -> None:
        """Free what `_activate` allocated."""

    # -- validation ------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.graph.spec.file} ({self.name})"

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = [t.name for t in self.spec.inputs]
        if not isinstance(feed, Mapping):
            raise DataError(f"{self._where()}: feed must map input names {expected} to arrays; received {type(feed).__name__}.")
        missing = [n for n in expected if n not in feed]
        unexpected = [n for n in feed if n not in expected]
        if missing or unexpected:
            raise DataError(
                f"{self._where()}: received inputs {sorted(feed)}, expected {expected}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {unexpected}" if unexpected else "")
                + "."
            )
        symbols: dict[str, int] = dict(self.graph.static_dims())
        out: dict[str, np.ndarray] = {}
        for t in self.spec.inputs:
            arr = feed[t.name]
            if not isinstance(arr, np.ndarray):
                raise DataError(f"{self._where()}: input {t.name!r} is a {type(arr).__name__}; expected a numpy array.")
            if arr.dtype != np.dtype(t.dtype):
                raise DataError(
                    f"{self._where()}: input {t.name!r} received dtype {arr.dtype}, expected {t.dtype} "
                    f"(convert with array.astype(np.{t.dtype}))."
                )
            self._check_shape("input", t, arr.shape, symbols)
            out[t.name] = np.ascontiguousarray(arr)
        return out

    def _check_shape(self, kind: str, t: TensorSpec, shape: tuple[int, ...], symbols: dict[str, int]) -> None:
        """Check one shape against the spec; named axes must agree across tensors (batch with batch)."""
        expected = _LazyShape(t.shape, symbols)  # formatted only into an error message: this runs every call
        if len(shape) != len(t.shape):
            raise DataError(
                f"{self._where()}: {kind} {t.name!r} received shape {tuple(shape)} ({len(shape)} axes), "
                f"expected {expected} ({len(t.shape)} axes)."
            )
        for axis, (got, want) in enumerate(zip(shape, t.shape, strict=True)):
            if isinstance(want, int):
                if got != want:
                    raise DataError(
                        f"{self._where()}: {kind} {t.name!r} received shape {tuple(shape)}, expected {expected} "
                        f"(axis {axis} must be {want})."
                    )
                continue
            if want == BATCH and kind == "input" and not 1 <= got <= self.max_batch:
                raise DataError(
                    f"{self._where()}: {kind} {t.name!r} received batch {got}, expected 1..{self.max_batch}. "
                    f"Split the batch or create the runner with max_batch={max(got, 1)}."
                )
            if want in symbols and symbols[want] != got:
                raise DataError(
                    f"{self._where()}: {kind} {t.name!r} received shape {tuple(shape)}, expected {expected} "
                    f"(axis {axis} {want!r} must be {symbols[want]} like the other tensors)."
                )
            symbols[want] = got

    def _check_outputs(self, raw: Mapping[str, np.ndarray], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        symbols: dict[str, int] = dict(self.graph.static_dims())
        for t in self.spec.inputs:
            for want, got in zip(t.shape, feed[t.name].shape, strict=True):
                if isinstance(want, str):
                    symbols[want] = got
        expected = [t.name for t in self.spec.outputs]
        missing = [n for n in expected if n not in raw]
        if missing:
            raise BundleError(
                f"{self._where()}: the backend returned outputs {sorted(raw)}, the manifest expects {expected} "
                f"(missing {missing}). The graph and its manifest disagree; re-export the bundle."
            )
        out: dict[str, np.ndarray] = {}
        for t in self.spec.outputs:
            arr = np.asarray(raw[t.name])
            if arr.dtype != np.dtype(t.dtype):
                raise BundleError(
                    f"{self._where()}: output {t.name!r} has dtype {arr.dtype}, the manifest expects {t.dtype}. "
                    "The graph and its manifest disagree; re-export the bundle."
                )
            try:
                self._check_shape("output", t, arr.shape, symbols)
            except SaladError as exc:
                raise BundleError(f"{exc} The graph and its manifest disagree; re-export the bundle.") from None
            out[t.name] = arr
        return out


R = TypeVar("R", bound=Runner)


def importable(module: str) -> bool:
    """True if `module` can be found, without importing it (a blocked or broken finder counts as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class _LazyShape:
    """format_shape(shape, symbols) when printed; symbols are copied as they are now."""

    def __init__(self, shape: list[int | str], symbols: Mapping[str, int]) -> None:
        self.shape, self.symbols = shape, dict(symbols)

    def __str__(self) -> str:
        return format_shape(self.shape, self.symbols)


def format_shape(shape: list[int | str], symbols: Mapping[str, int] | None = None) -> str:
    """[batch, 1, 64, 64] → "(batch, 1, 64, 64)", with known named axes shown as `name=value`."""
    symbols = symbols or {}
    parts = [f"{d}={symbols[d]}" if isinstance(d, str) and d in symbols else str(d) for d in shape]
    return "(" + ", ".join(parts) + ")"


# -- registry ------------------------------------------------------------------------------------

#: Runtimes by name (salad.registry): `--runtime` choices, parity rows, bench rows.
RUNNERS: Registry[type[Runner]] = Registry("runtime", sort=True)


def register_runner(name: str, *, extra: str = "runtime", devices: tuple[str, ...] = ("cpu",)) -> Callable[[type[R]], type[R]]:
    """Class decorator: make a Runner subclass available as `--runtime name` (timm-style registry)."""

    def decorate(cls: type[R]) -> type[R]:
        RUNNERS.register(name, cls)  # a second runtime of the same name is refused
        cls.name, cls.extra, cls.devices = name, extra, devices
        return cls

    return decorate


def runner_names() -> list[str]:
    """Registered runtime names (also the `--runtime` choices), whether or not installed here."""
    return RUNNERS.names()


def runner_class(name: str) -> type[Runner]:
    """The Runner class registered as `name`, or an error listing the registered names."""
    return RUNNERS.get(name)


def available_runners() -> dict[str, str | None]:
    """Each registered runtime → None if it can run here, else why not (for `--help` and reports)."""
    return {name: RUNNERS[name].unavailable_reason() for name in runner_names()}


def create_runner(name: str, graph: BundleGraph, **options: Any) -> Runner:
    """Build (not activate) the runner `name` for `graph`; options go to the backend's constructor.

    An option the backend does not declare (Runner.options) is a SaladError listing the ones it takes.
    """
    cls = runner_class(name)
    missing = [o for o in cls.required if options.get(o) is None]
    if missing:
        raise ConfigError(
            f"the {name} runtime needs option(s) {missing} ({'; '.join(f'{o}: {cls.options[o]}' for o in missing)}), "
            f"e.g. `salad score BUNDLE FILMS --runtime {name} --url http://HOST:8000`."
        )
    unknown = sorted(set(options) - set(BASE_OPTIONS) - set(cls.options))
    if unknown:
        raise ConfigError(
            f"the {name} runtime takes no option(s) {unknown}; it takes {sorted({**BASE_OPTIONS, **cls.options})}."
        )
    return cls(graph, **options)
