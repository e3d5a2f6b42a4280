"""The variant builders: one per precision behind the `VariantBuilder` protocol, found through `BUILDERS`.

A builder turns the bundle's fp32 encoder into the precision's encoder, merges it with the fp32
scorer into the precision's model, and says what it did (details, layers kept float, per-layer
errors). Adding a precision is one class (here or in a plug-in module) with `@register_builder("name",
tolerances_like=…)`; its default tolerances are the metrics' (salad/verdict.py) (docs/architecture.md §7).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from salad.errors import CalibrationError
from salad.precision import PRECISIONS, register_precision
from salad.registry import Registry

from .sources import CalibrationSource, OrtCalibrationReader

if TYPE_CHECKING:
    from .staging import Staging


@dataclass(frozen=True)
class BuildRequest:
    """What the caller asked for: calibration films (int8), method, per-channel weights, the channel floor."""

    source: CalibrationSource | None = None
    method: str = "minmax"
    per_channel: bool = True
    min_channels: int = 0


class VariantBuilder(Protocol):
    """Builds one precision's encoder and model in a staging copy, and describes them for the manifest and report."""

    precision: ClassVar[str]
    #: Whether the builder needs real calibration films (int8) or is a cast (fp16).
    needs_films: ClassVar[bool]
    #: Whether the accuracy-bounded search may keep layers float to meet --max-auc-drop.
    searchable: ClassVar[bool]
    notes: list[str]
    encoder: Any  # onnx.ModelProto once built
    model: Any

    def __init__(self, stage: Staging, request: BuildRequest) -> None: ...
    def build(self, kept: Sequence[str]) -> None: ...
    def structure_problems(self) -> list[str]: ...
    def details(self) -> dict[str, Any]: ...
    def calibration_summary(self) -> dict[str, Any]: ...
    def layers_in_float(self) -> dict[str, str]: ...
    def layer_errors(self) -> list[Any]: ...
    def ranked_layers(self) -> list[Any]: ...


#: precision → its builder class (salad.registry); `salad calibrate --precision` choices are its names.
BUILDERS: Registry[type[VariantBuilder]] = Registry("precision to calibrate")
B = TypeVar("B")


def register_builder(precision: str, *, description: str = "", tolerances_like: str | None = None) -> Callable[[B], B]:
    """Class decorator: make a builder the one `salad calibrate --precision NAME` uses.

    A precision the core does not know yet is registered with it (salad.precision), borrowing the
    default tolerances of `tolerances_like` where its metrics have none of their own.
    """

    def decorate(cls: B) -> B:
        if precision not in PRECISIONS:
            register_precision(precision, description or (cls.__doc__ or "").strip(), tolerances_like=tolerances_like)
        BUILDERS.register(precision, cls)  # type: ignore[arg-type]
        return cls

    return decorate


@register_builder("fp16")
class Fp16Builder:
    """encoder.fp16.onnx (float16 body, float32 I/O and normalisation) + the fp32 scorer → model.fp16.onnx."""

    precision = "fp16"
    needs_films = False
    searchable = False

    def __init__(self, stage: Staging, request: BuildRequest) -> None:
        self.stage = stage
        self.notes: list[str] = []
        self.encoder: Any = None
        self.model: Any = None
        self.kept: list[str] = []

    def build(self, kept: Sequence[str]) -> None:
        import onnx

        from .graphs import fp16_encoder, merge_with_scorer

        m = self.stage.original
        enc32 = onnx.load(str(self.stage.path / m.graphs["encoder"].file))
        converted = fp16_encoder(enc32)
        self.kept = converted.kept_float32
        if converted.clamped_values:
            self.notes.append(
                f"{converted.clamped_values} encoder constant(s) lay outside float16's normal range and were clamped by the converter."
            )
        self.encoder = converted.proto
        self.model = merge_with_scorer(self.encoder, self.stage.load_scorer(), m.bank.initializer)

    def structure_problems(self) -> list[str]:
        from .graphs import scorer_precision_problems

        return [f"model.{self.precision}.onnx: {p}" for p in scorer_precision_problems(self.model)]

    def details(self) -> dict[str, Any]:
        import onnxconverter_common

        return {
            "calibration_method": None,
            "calibration_images": 0,
            "calibration_list_sha256": None,
            "converter": f"onnxconverter-common {onnxconverter_common.__version__} float16.convert_float_to_float16 (keep_io_types)",
            "encoder": "float16 weights and activations; image in and embedding out stay float32",
            "layers_in_float": list(self.kept),
            "scorer": "float32 (scorer.onnx merged unchanged)",
        }

    def calibration_summary(self) -> dict[str, Any]:
        return {"method": "cast (no calibration films)", "float32_nodes": len(self.kept)}

    def layers_in_float(self) -> dict[str, str]:
        return {n: "L2-normalisation tail: float16 can overflow a sum of squares and loses the epsilon" for n in self.kept}

    def layer_errors(self) -> list[Any]:
        return []

    def ranked_layers(self) -> list[Any]:
        return []


#: Why the int8 encoder's last weighted layer stays float (see Int8Builder).
PROJECTION_REASON = ("the projection to the embedding: its output must stay float, and a quantized convolution with a float "
                     "output runs unfused (its weights dequantized on every call)")


@register_builder("int8")
class Int8Builder:
    """encoder.int8.onnx (Q/DQ, calibrated on real normals) + the fp32 scorer → model.int8.onnx."""

    precision = "int8"
    needs_films = True
    searchable = True

    def __init__(self, stage: Staging, request: BuildRequest) -> None:
        from .graphs import prepare_for_quantization, weighted_layers

        if request.source is None:
            raise CalibrationError("int8 calibration needs real normal films (--data); none were given.")
        source, method, per_channel, min_channels = request.source, request.method, request.per_channel, request.min_channels
        self.stage, self.source, self.method, self.per_channel = stage, source, method, per_channel
        self.notes: list[str] = []
        self.work = Path(tempfile.mkdtemp(prefix="quant-", dir=stage.path))
        self.prepared = self.work / "prepared.onnx"
        self.ranges = self.work / "ranges.json"
        proto = prepare_for_quantization(stage.path / stage.original.graphs["encoder"].file, self.prepared)
        self.layers = weighted_layers(proto)
        self.float_by_rule = {
            layer.name: (
                f"{layer.channels_in}→{layer.channels_out} channels (< {min_channels}): "
                "int8 kernels are slower than float ones on so few channels"
            )
            for layer in self.layers if layer.channels < min_channels
        }
        if self.layers:
            # The projection to the embedding stays float: its output is the embedding before L2-normalisation,
            # which must leave the encoder unrounded, and ONNX Runtime fuses a Q/DQ convolution only when its
            # output is quantized too; otherwise it dequantizes the weights on every call (docs/architecture.md §5).
            self.float_by_rule.setdefault(self.layers[-1].name, PROJECTION_REASON)
        if len(self.float_by_rule) == len(self.layers):
            raise CalibrationError(
                f"every weighted layer of the encoder has fewer than --min-channels {min_channels} channels, so nothing would be "
                "quantized; lower --min-channels (0 quantizes every layer)."
            )
        self.kept: list[str] = []
        self.encoder: Any = None
        self.model: Any = None
        self._errors: list[Any] | None = None

    def build(self, kept: Sequence[str]) -> None:
        from .graphs import merge_with_scorer, quantize_encoder

        self.kept = list(kept)
        exclude = [*self.float_by_rule, *self.kept]
        out = self.work / "encoder.int8.onnx"
        reader = OrtCalibrationReader(self.source)
        self.encoder = quantize_encoder(self.prepared, out, reader, method=self.method, per_channel=self.per_channel,
                                        exclude=exclude, ranges_cache=self.ranges)
        self.model = merge_with_scorer(self.encoder, self.stage.load_scorer(), self.stage.original.bank.initializer)

    def structure_problems(self) -> list[str]:
        from .graphs import quantized_layers, scorer_precision_problems, tensorrt_qdq_problems

        problems = [f"model.int8.onnx: {p}" for p in scorer_precision_problems(self.model)]
        problems += [f"encoder.int8.onnx: {p}" for p in tensorrt_qdq_problems(self.encoder)]
        if not quantized_layers(self.encoder):
            problems.append("encoder.int8.onnx: no layer was quantized")
        return problems

    def layers_in_float(self) -> dict[str, str]:
        out = dict(self.float_by_rule)
        out.update({n: "kept float by the accuracy-bounded search (largest quantisation noise)" for n in self.kept})
        return out

    def details(self) -> dict[str, Any]:
        import onnxruntime

        from .graphs import quantized_layers

        return {
            "calibration_method": self.method,
            "calibration_images": self.source.count,
            "calibration_list_sha256": self.source.list_sha256,
            "layers_in_float": list(self.layers_in_float()),
            "quantized_layers": len(quantized_layers(self.encoder)),
            "format": "QDQ",
            "weights": f"int8 symmetric, {'per output channel' if self.per_channel else 'per tensor'}",
            "activations": "int8 symmetric (zero point 0), per tensor",
            "bias": "float32",
            "quantizer": f"onnxruntime {onnxruntime.__version__} quantize_static",
            "scorer": "float32 (scorer.onnx merged unchanged)",
        }

    def calibration_summary(self) -> dict[str, Any]:
        return {"method": self.method, "images": self.source.count, "normal_films_found": self.source.found,
                "list_sha256": self.source.list_sha256}

    def layer_errors(self) -> list[Any]:
        """Per-layer quantisation error, measured once on the encoder with every eligible layer in int8.

        The figures explain the search order, so they stay those of that first encoder; `quantized`
        and `reason_float` say what each layer finally is.
        """
        import dataclasses

        from .sensitivity import layer_errors

        if self._errors is None:  # first called before the search keeps any layer float (see calibrate_bundle)
            path = self.work / "encoder.int8.onnx"
            self._errors = layer_errors(self.prepared, path, self.layers, self.source, self.layers_in_float())
        final = self.layers_in_float()
        return [dataclasses.replace(e, quantized=e.name not in final, reason_float=final.get(e.name)) for e in self._errors]

    def ranked_layers(self) -> list[Any]:
        """Quantized layers, noisiest first (the order the accuracy-bounded search keeps them float)."""
        from .sensitivity import rank_by_noise

        if self._errors is None:
            self.layer_errors()
        assert self._errors is not None
        return rank_by_noise(self._errors)
