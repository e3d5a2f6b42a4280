"""The physical floor: multiply-accumulates per film and this machine's measured GEMM peaks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from salad.bundle import Bundle, quiet_session
from salad.errors import SaladError

from .settings import GEMM_SIZE

# -- the physical floor ---------------------------------------------------------------------------


def count_macs(path: str | Path) -> dict[str, int]:
    """Multiply-accumulates per image of an ONNX graph: Conv, ConvTranspose, Gemm and MatMul after shape inference.

    The batch axis is set to 1 first; the bank of an external-data graph is not read (only its shape).
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path), load_external_data=False)
    for value in (*model.graph.input, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
                dim.dim_value = 1
    del model.graph.value_info[:]
    inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for value in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [int(d.dim_value) for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]

    def attr(node: Any, name: str, default: int) -> int:
        for a in node.attribute:
            if a.name == name:
                return int(a.i)
        return default

    macs: dict[str, int] = {}
    unknown: list[str] = []
    for node in inferred.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        a, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        out = shapes.get(node.output[0])
        if a is None or w is None or out is None:
            unknown.append(node.name or op)
            continue
        # Grouped convolutions need no special case: the weight's channel axis is already Cin/group (Cout/group).
        if op == "Conv":  # out [N, Cout, *spatial], weight [Cout, Cin/group, *kernel]
            n = int(np.prod(out)) * int(np.prod(w[1:]))
        elif op == "ConvTranspose":  # input [N, Cin, *spatial], weight [Cin, Cout/group, *kernel]
            n = int(np.prod(a)) * int(np.prod(w[1:]))
        elif op == "Gemm":
            k = a[0] if attr(node, "transA", 0) else a[-1]
            n = int(np.prod(out)) * int(k)
        else:  # MatMul: out [..., M, N], A [..., M, K]
            n = int(np.prod(out)) * int(a[-1])
        macs[op] = macs.get(op, 0) + n
    if unknown:
        raise SaladError(f"{path}: shape inference left the shapes of {unknown[:5]} unknown; cannot count MACs.")
    macs["total"] = sum(macs.values())
    return macs


def _time_best(fn: Callable[[], Any], reps: int = 5) -> float:
    """Best of `reps` runs after one warm-up, in seconds (a peak is a best case, not a median)."""
    fn()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - start) / 1e9)
    return best


def gemm_peaks(threads: int, precisions: Iterable[str], device: str | None = None, size: int = GEMM_SIZE) -> dict[str, Any]:
    """Measured matrix-multiply peaks of this machine in GFLOP/s (GOP/s for int8), same thread count.

    fp32: numpy and torch sgemm of a size × size matrix (the best counts); int8: ONNX Runtime
    MatMulInteger (u8 × s8 → s32, the kernel a Q/DQ graph's convolutions use); on cuda: torch fp32/fp16.
    """
    flops = 2.0 * size**3
    peaks: dict[str, Any] = {"size": size, "threads": threads}
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    peaks["numpy_sgemm_gflops"] = flops / _time_best(lambda: a @ b) / 1e9
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        peaks["torch_sgemm_gflops"] = flops / _time_best(lambda: torch.mm(ta, tb)) / 1e9
        if device and device.startswith("cuda") and torch.cuda.is_available():
            for name, dtype in (("cuda_sgemm_gflops", torch.float32), ("cuda_hgemm_gflops", torch.float16)):
                ga, gb = ta.to(device, dtype), tb.to(device, dtype)

                def run(ga: Any = ga, gb: Any = gb) -> None:
                    torch.mm(ga, gb)
                    torch.cuda.synchronize()

                peaks[name] = flops / _time_best(run) / 1e9
    peaks["fp32_gflops"] = max(v for k, v in peaks.items() if k.endswith("sgemm_gflops") and not k.startswith("cuda"))
    if "int8" in precisions:
        try:
            peaks["ort_int8_gops"] = flops / _time_best(_ort_matmul_integer(size, threads)) / 1e9
        except ImportError as exc:
            peaks["ort_int8_gops"] = None
            peaks["int8_note"] = f"not measured ({exc})"
    return peaks


def _ort_matmul_integer(size: int, threads: int) -> Callable[[], Any]:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_peak",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [size, size]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])],
    )
    # IR 8 (opset 17's): the newest onnx writes an IR version that older ONNX Runtime builds refuse.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = quiet_session(model.SerializeToString(), threads=threads)
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8), "b": rng.integers(-127, 127, (size, size), dtype=np.int8)}
    return lambda: session.run(None, feed)


def measure_floor(bundle: str | Path, threads: int, precisions: Sequence[str], device: str | None) -> dict[str, Any]:
    """MACs per image of the bundle's fp32 encoder and scorer, and this machine's measured GEMM peaks."""
    opened = Bundle.open(bundle, verify=False)
    floor: dict[str, Any] = {}
    try:
        enc = count_macs(opened.graph_path("encoder"))
        sco = count_macs(opened.graph_path("scorer"))
        floor["macs_per_image"] = {"encoder": enc["total"], "scorer": sco["total"], "model": enc["total"] + sco["total"]}
    except ImportError as exc:
        floor["macs_per_image"] = None
        floor["macs_note"] = f"not counted: {exc} (install salad-edge[train] for onnx)"
    floor["peaks"] = gemm_peaks(threads, precisions, device)
    return floor
