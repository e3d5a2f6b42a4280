"""Where an int8 bundle's time goes, and what each quantization choice costs, on this CPU.

Two parts, both at batch 1 with the bundle's own graphs and real films:
1. a per-operator and per-node profile (ONNX Runtime's profiler) of model.int8.onnx beside model.onnx;
2. the bundle's encoder.onnx re-quantized with calibration's own functions under alternative choices
   (which layers stay float, per-tensor weights, pooling in int8), each timed with ONNX Runtime and
   OpenVINO in the same process, so that every step's effect is a ratio measured on one machine.
Usage: python benchmarks/int8_profile.py BUNDLE --data benchmarks/splits/kermany_train.csv --out benchmarks/results/console
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx

from salad.bundle import Bundle
from salad.calibration.graphs import QUANTIZED_OPS, prepare_for_quantization, quantize_encoder, weighted_layers
from salad.calibration.sources import CalibrationSource, OrtCalibrationReader
from salad.machine import machine_info

RUNS, WARMUP = 50, 10


def _session(path: Path, threads: int, profile: str | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _p50_ms(run: Any) -> float:
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def profile(path: Path, image: np.ndarray, threads: int, workdir: Path) -> dict[str, Any]:
    """Share of kernel time per operator type and per node (top 12) over RUNS runs."""
    session = _session(path, threads, profile=str(workdir / "ort"))
    for _ in range(WARMUP):
        session.run(None, {"image": image})
    for _ in range(RUNS):
        session.run(None, {"image": image})
    trace = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = collections.defaultdict(float)
    by_node: dict[str, float] = collections.defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
            by_node[e["name"][: -len("_kernel_time")]] += e["dur"]
    total = sum(by_op.values())
    # The profile includes the warm-up runs' kernels too when the profiler starts with the session: scale to one run.
    runs = WARMUP + RUNS
    return {
        "kernel_ms_per_run": total / runs / 1e3,
        "by_op": {k: {"ms": v / runs / 1e3, "share": v / total} for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "top_nodes": {k: {"ms": v / runs / 1e3, "share": v / total} for k, v in sorted(by_node.items(), key=lambda kv: -kv[1])[:12]},
    }


def variants(bundle: Bundle, source: CalibrationSource, workdir: Path) -> dict[str, tuple[Path, str]]:
    """The encoder re-quantized under alternative choices: name → (graph, what changed)."""
    prepared = workdir / "prepared.onnx"
    prepare_for_quantization(bundle.graph_path("encoder", "fp32"), prepared)
    layers = weighted_layers(onnx.load(str(prepared)))
    first, projection = layers[0].name, layers[-1].name
    ranges = workdir / "ranges.json"
    out: dict[str, tuple[Path, str]] = {"fp32": (prepared, "the float encoder")}
    choices = {
        "int8_product": ([first, projection], True, "the product's choice: first (1→16) layer and projection float"),
        "int8_all": ([], True, "every layer int8, the projection's output quantized too"),
        "int8_first_int8": ([projection], True, "the first layer int8 as well"),
        "int8_per_tensor": ([first, projection], False, "per-tensor weight scales"),
    }
    for name, (exclude, per_channel, what) in choices.items():
        path = workdir / f"{name}.onnx"
        quantize_encoder(prepared, path, OrtCalibrationReader(source), method="minmax", per_channel=per_channel,
                         exclude=exclude, ranges_cache=ranges)
        out[name] = (path, what)
    return out


def _ort_p50(path: Path, image: np.ndarray, threads: int) -> float:
    session = _session(path, threads)
    return _p50_ms(lambda: session.run(None, {"image": image}))


def _openvino_p50(path: Path, image: np.ndarray, threads: int) -> float | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return _p50_ms(lambda: request.infer({0: image}))


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path), help="Normal films for int8 calibration.")
@click.option("--films", default=100, show_default=True, help="Calibration films for the variants.")
@click.option("--threads", default=2, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for int8_profile.json and .md.")
def main(bundle: Path, data: Path, films: int, threads: int, out: Path) -> None:
    b = Bundle.open(bundle)
    source = CalibrationSource.from_data(data, b.manifest.preprocess_config, images=films)
    image = source.images[:1]
    load = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {
            "schema": "salad-int8-profile/1", "bundle": str(bundle), "machine": machine_info(), "threads": threads,
            "runs": RUNS, "load_average_start": load, "quantized_ops": list(QUANTIZED_OPS),
            "profile": {p: profile(b.graph_path("model", p), image, threads, work) for p in ("fp32", "int8")},
            "variants": {},
        }
        for name, (path, what) in variants(b, source, work).items():
            result["variants"][name] = {"what": what, "onnxruntime_ms": _ort_p50(path, image, threads),
                                        "openvino_ms": _openvino_p50(path, image, threads)}
            click.echo(f"{name}: {result['variants'][name]}")
    result["load_average_end"] = list(os.getloadavg())
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_profile.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "int8_profile.md").write_text(markdown(result), encoding="utf-8")
    click.echo(f"wrote {out / 'int8_profile.json'} and int8_profile.md")


def markdown(r: dict[str, Any]) -> str:
    """The profile and the variants as tables."""
    lines = [f"# int8 profile: {r['bundle']}", "",
             f"{r['machine']['cpu']}, {r['threads']} threads, batch 1, median of {r['runs']} runs; load average "
             f"{'/'.join(f'{v:.1f}' for v in r['load_average_start'])} → {'/'.join(f'{v:.1f}' for v in r['load_average_end'])}.", ""]
    for precision, p in r["profile"].items():
        lines += [f"## ONNX Runtime kernel time of the {precision} model: {p['kernel_ms_per_run']:.2f} ms per film (profiler on)", "",
                  "| operator | ms | share |", "|---|---:|---:|"]
        lines += [f"| {op} | {v['ms']:.3f} | {100 * v['share']:.1f} % |" for op, v in p["by_op"].items() if v["share"] >= 0.005]
        lines += ["", "| node (top 12) | ms | share |", "|---|---:|---:|"]
        lines += [f"| `{n}` | {v['ms']:.3f} | {100 * v['share']:.1f} % |" for n, v in p["top_nodes"].items()]
        lines.append("")
    lines += ["## The encoder under alternative quantization choices (encoder only, batch 1)", "",
              "| variant | what changed | ONNX Runtime ms | OpenVINO ms |", "|---|---|---:|---:|"]
    for name, v in r["variants"].items():
        ov_ms = "–" if v["openvino_ms"] is None else f"{v['openvino_ms']:.2f}"
        lines.append(f"| {name} | {v['what']} | {v['onnxruntime_ms']:.2f} | {ov_ms} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
