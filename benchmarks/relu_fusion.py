"""Does ONNX Runtime fuse a bundle's activation into its int8 convolutions, and what does each int8 flavour cost?

For each BUNDLE (e.g. the same network with `--activation leaky_relu` and `--activation relu`):
1. the op types of its encoder.int8.onnx as calibration wrote it and as ONNX Runtime optimises it (the file
   `optimized_model_filepath` writes, at ORT_ENABLE_EXTENDED and ORT_ENABLE_ALL);
2. the encoder alone at batch 1 (p50 of int8_profile.py's runs, ONNX Runtime and OpenVINO in one process) in fp32,
   in int8 as calibration ships it (symmetric activations, zero point 0: the flavour TensorRT takes too), and in an
   ONNX Runtime-only probe: asymmetric activations with Relu handed to the quantizer, which then removes every Relu
   whose input is quantized (the zero point at the type's minimum does the clamp), so QLinearConv carries it.
The probe is not a product flavour: TensorRT's Q/DQ needs zero point 0. Same first/last layers float as calibration;
each int8 graph's embeddings are compared with fp32's on the calibration films (minimum cosine) to show it computes the same.
Usage: python benchmarks/relu_fusion.py BUNDLE... --data salad/sample/train/normal --out DIR
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx

from salad.bundle import Bundle
from salad.calibration.graphs import QUANTIZED_OPS, prepare_for_quantization, quantize_encoder, weighted_layers
from salad.calibration.sources import CalibrationSource, OrtCalibrationReader
from salad.machine import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_profile import RUNS, _openvino_p50, _ort_p50, _session  # noqa: E402 - the sibling profile's timing, one implementation


def optimised_ops(path: Path, workdir: Path) -> dict[str, dict[str, int]]:
    """Op counts of `path` as written and as ONNX Runtime's optimiser leaves it (extended and all levels)."""
    import onnxruntime as ort

    counts = {"written": collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)}
    for name, level in (("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED), ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.optimized_model_filepath = str(workdir / f"optimised_{name}.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        counts[name] = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in counts.items()}


def asymmetric_relu_probe(prepared: Path, out: Path, source: CalibrationSource, exclude: list[str]) -> Path:
    """The encoder quantized with asymmetric int8 activations and Relu among the quantized ops (ORT removes it)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": False, "CalibStridedMinMax": 1}
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(prepared), str(out), OrtCalibrationReader(source), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=[*QUANTIZED_OPS, "Relu"], per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra)
    finally:
        root.setLevel(level)
    return out


def _embeddings(path: Path, source: CalibrationSource, threads: int) -> np.ndarray:
    """The encoder's unit embeddings of the calibration films, with ONNX Runtime (to compare a variant with fp32)."""
    session = _session(path, threads)
    return np.concatenate([session.run(None, {"image": np.ascontiguousarray(b)})[0] for b in source.batches(8)])


def measure(bundle_path: Path, source: CalibrationSource, threads: int, work: Path) -> dict[str, Any]:
    """The fusion counts and the encoder timings of one bundle."""
    bundle = Bundle.open(bundle_path)
    image = source.images[:1]
    prepared = work / "prepared.onnx"
    prepare_for_quantization(bundle.graph_path("encoder", "fp32"), prepared)
    layers = weighted_layers(onnx.load(str(prepared)))
    exclude = [layers[0].name, layers[-1].name]  # calibration's choice: the 1→16 stem and the projection stay float
    quantize_encoder(prepared, work / "int8.onnx", OrtCalibrationReader(source), method="minmax", per_channel=True,
                     exclude=exclude, ranges_cache=work / "ranges.json")
    graphs = {"fp32": prepared, "int8 (shipped: symmetric)": work / "int8.onnx"}
    if any(n.op_type == "Relu" for n in onnx.load(str(prepared)).graph.node):
        graphs["int8 probe (asymmetric, Relu removed)"] = asymmetric_relu_probe(prepared, work / "probe.onnx", source, exclude)
    result: dict[str, Any] = {"bundle": str(bundle_path), "fusion": {}, "encoder_ms": {}, "cosine_min_vs_fp32": {}}
    reference = _embeddings(prepared, source, threads)
    for i, (name, path) in enumerate(graphs.items()):
        if name != "fp32":
            (work / str(i)).mkdir()
            result["fusion"][name] = optimised_ops(path, work / str(i))
            result["cosine_min_vs_fp32"][name] = float((reference * _embeddings(path, source, threads)).sum(axis=1).min())
        result["encoder_ms"][name] = {"onnxruntime": _ort_p50(path, image, threads), "openvino": _openvino_p50(path, image, threads)}
        click.echo(f"{bundle_path}: {name}: {result['encoder_ms'][name]}")
    return result


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path), help="Normal films for int8 calibration.")
@click.option("--films", default=100, show_default=True, help="Calibration films.")
@click.option("--threads", default=2, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where relu_fusion.json goes.")
def main(bundles: tuple[Path, ...], data: Path, films: int, threads: int, out: Path) -> None:
    load = list(os.getloadavg())
    results = []
    for path in bundles:
        source = CalibrationSource.from_data(data, Bundle.open(path).manifest.preprocess_config, films=films)
        with tempfile.TemporaryDirectory() as tmp:
            results.append(measure(path, source, threads, Path(tmp)))
    report = {"schema": "salad-relu-fusion/1", "machine": machine_info(), "threads": threads, "runs": RUNS, "films": films,
              "load_average_start": load, "load_average_end": list(os.getloadavg()), "bundles": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "relu_fusion.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    click.echo(f"wrote {out / 'relu_fusion.json'}")


if __name__ == "__main__":
    main()
