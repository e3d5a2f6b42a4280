"""torch → ONNX: the encoder, the fused kNN-arccos scorer, their merge, and the bank bound into them.

The scorer is a trace of salad.scoring.score_torch (the one score definition), exported with the bank
as a graph input so the trace is tiny whatever N is. The "initializer" form then binds the normal
bank rows into the graph as one transposed constant [D, N] feeding the MatMul directly (no Transpose
at run time, rows read contiguously per embedding dimension), inline or as external data when the
file would pass protobuf's 2 GiB limit. Both scorer.onnx and model.onnx point at the same external
file, so even a huge bank is stored once.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from salad.errors import BackendError, SaladError
from salad.manifest import TensorSpec
from salad.scoring import score_torch
from salad.train.models import EmbeddingNet, SaladAutoencoder

from .spec import BANK_INITIALIZER, BANK_INPUT, BATCH, GraphContract


class ScoreNet(torch.nn.Module):
    """scorer.onnx's body: (embedding [b, D], bank [N, D]) → (score [b], knn_angle [b]) via score_torch."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, embedding: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return score_torch(embedding, bank, self.k)


def _torch_to_onnx(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], contract: GraphContract, opset: int,
    extra_axes: dict[str, dict[int, str]] | None = None,
) -> onnx.ModelProto:
    """Trace `module` with torch's TorchScript exporter (fast, constant-folding, K stays a constant)."""
    axes: dict[str, dict[int, str]] = {
        t.name: {i: BATCH for i, d in enumerate(t.shape) if d == BATCH} for t in (*contract.inputs, *contract.outputs)
    }
    axes = {name: a for name, a in axes.items() if a}
    axes.update(extra_axes or {})
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo (4 s vs 0.1 s per graph here) and
        # warns that check_k's int(N) becomes a constant, which is exactly what K must be.
        warnings.simplefilter("ignore")
        try:
            # The TorchScript exporter writes to file objects too; torch's stub only names paths.
            torch.onnx.export(
                module,
                args,
                buf,  # type: ignore[arg-type]
                input_names=contract.input_names, output_names=contract.output_names,
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; name the graph
            raise BackendError(f"torch could not export the {contract.key} graph at opset {opset}: {type(exc).__name__}: {exc}") from exc
    return onnx.load_from_string(buf.getvalue())


def export_encoder(model: SaladAutoencoder, contract: GraphContract, opset: int) -> onnx.ModelProto:
    """encoder.onnx: image [b, 1, S, S] → unit embedding [b, D] (BatchNorm folded into the convolutions)."""
    net = EmbeddingNet(model).eval()
    size = int(contract.inputs[0].shape[-1])
    return _torch_to_onnx(net, (torch.zeros(2, 1, size, size),), contract, opset)


def export_scorer(k: int, dim: int, bank_rows: int, contract: GraphContract, opset: int) -> onnx.ModelProto:
    """scorer.onnx with the bank as input [N, D]: traced on a small stand-in bank, then N is fixed."""
    n_trace = k + 1  # TopK needs ≥ K rows while tracing; the traced graph does not depend on N
    stand_in = torch.nn.functional.normalize(torch.ones(n_trace, dim), dim=1)
    traced_contract = GraphContract(
        contract.key, contract.file, (contract.inputs[0], TensorSpec(BANK_INPUT, "float32", [n_trace, dim])), contract.outputs,
    )
    proto = _torch_to_onnx(
        ScoreNet(k), (torch.zeros(2, dim), stand_in), traced_contract, opset, extra_axes={BANK_INPUT: {0: "bank_rows"}},
    )
    for inp in proto.graph.input:
        if inp.name == BANK_INPUT:
            rows = inp.type.tensor_type.shape.dim[0]
            rows.Clear()
            rows.dim_value = bank_rows
    del proto.graph.value_info[:]  # may carry the symbolic row count; shape inference recomputes it
    return proto


def bank_tensor(bank: np.ndarray, external_file: str | None) -> TensorProto:
    """The transposed bank [D, N] float32 as an initializer, inline or pointing at `external_file`."""
    bank_t = np.ascontiguousarray(bank.T, dtype=np.float32)
    if external_file is None:
        return numpy_helper.from_array(bank_t, BANK_INITIALIZER)
    tensor = TensorProto(name=BANK_INITIALIZER, data_type=TensorProto.FLOAT, dims=list(bank_t.shape))
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", external_file), ("offset", "0"), ("length", str(bank_t.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def write_bank_data(bank: np.ndarray, path: Path) -> None:
    """The bytes an external bank initializer points at: float32 [D, N], C order, little-endian."""
    np.ascontiguousarray(bank.T, dtype="<f4").tofile(path)


def bind_bank(proto: onnx.ModelProto, tensor: TensorProto) -> onnx.ModelProto:
    """Turn the graph input "bank" [N, D] into the initializer `tensor` ([D, N]) feeding MatMul directly."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    consumers = [n for n in graph.node if BANK_INPUT in n.input]
    transpose = consumers[0] if len(consumers) == 1 else None
    perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"] if transpose is not None else []
    if transpose is None or transpose.op_type != "Transpose" or perm != [[1, 0]]:
        found = [(n.op_type, n.name) for n in consumers]
        raise SaladError(
            f"unexpected scorer graph: the bank should feed exactly one Transpose(perm=[1,0]), found {found}. "
            "The torch exporter changed how it writes salad.scoring.score_torch; update salad.export.graphs.bind_bank."
        )
    t_out = transpose.output[0]
    graph.node.remove(transpose)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == t_out:
                node.input[i] = BANK_INITIALIZER
    kept = [i for i in graph.input if i.name != BANK_INPUT]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.append(tensor)
    return model


def set_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    """Provenance in the ONNX file itself (visible in Netron and to any runtime)."""
    onnx.helper.set_model_props(proto, props)


def tensor_specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
    """A graph's inputs or outputs as manifest TensorSpecs (numpy dtype names, symbolic dims as strings)."""
    specs = []
    for v in values:
        tt = v.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        shape: list[int | str] = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in tt.shape.dim]
        specs.append(TensorSpec(v.name, dtype, shape))
    return specs
