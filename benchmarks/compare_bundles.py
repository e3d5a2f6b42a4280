"""Compare what two checkouts wrote for one run (benchmarks/compare_checkouts.sh's OUT/before and OUT/after).

Every file of both bundles by sha256; a graph that differs is loaded with onnx, the BEFORE graph passed through
this checkout's salad.merge.normalise_opsets (the one intended change to exported graphs, issue 27) and compared
again, serialised and part by part; JSON files (manifest, parity, calibration reports) are compared figure by
figure. Writes OUT/compare.json and prints a Markdown table. Run with the AFTER checkout's Python.

Usage: python benchmarks/compare_bundles.py OUT
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from salad.merge import normalise_opsets

#: Figures that measure time or the moment of writing: expected to differ between two runs of the same code.
VOLATILE = ("created", "date", "seconds", "latency", "_ms", "elapsed", "load_average", "speedup", "gflops", "gops",
            "throughput", "rss_mb", "fraction_of_peak")


def sha256(path: Path) -> str:
    """The file's sha256, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _opsets(model: onnx.ModelProto) -> list[str]:
    return [f"{e.domain or 'ai.onnx'}:{e.version}" for e in model.opset_import]


def compare_graphs(before: Path, after: Path) -> dict[str, Any]:
    """Whether the graphs differ only in their opset imports: the BEFORE one normalised, then compared."""
    a = onnx.load(str(before), load_external_data=False)
    b = onnx.load(str(after), load_external_data=False)
    out: dict[str, Any] = {"opsets_before": _opsets(a), "opsets_after": _opsets(b),
                           "opset_entries_hex": [[e.SerializeToString().hex() for e in m.opset_import] for m in (a, b)]}
    bare_a, bare_b = onnx.ModelProto(), onnx.ModelProto()
    bare_a.CopyFrom(a)
    bare_b.CopyFrom(b)
    del bare_a.opset_import[:], bare_b.opset_import[:]
    out["bytes_equal_without_opset_imports"] = _serialised(bare_a) == _serialised(bare_b)
    normalise_opsets(a)
    out["opsets_before_normalised"] = _opsets(a)
    out["bytes_equal_after_normalising"] = _serialised(a) == _serialised(b)
    parts: dict[str, bool] = {
        "ir_version": a.ir_version == b.ir_version,
        "producer": (a.producer_name, a.producer_version) == (b.producer_name, b.producer_version),
        "opset_import": list(a.opset_import) == list(b.opset_import),
        "metadata_props": list(a.metadata_props) == list(b.metadata_props),
        "functions": list(a.functions) == list(b.functions),
        "graph.inputs": list(a.graph.input) == list(b.graph.input),
        "graph.outputs": list(a.graph.output) == list(b.graph.output),
        "graph.value_info": list(a.graph.value_info) == list(b.graph.value_info),
        "graph.nodes": list(a.graph.node) == list(b.graph.node),
    }
    inits_a = {t.name: t for t in a.graph.initializer}
    inits_b = {t.name: t for t in b.graph.initializer}
    parts["graph.initializer_names"] = list(inits_a) == list(inits_b)
    parts["graph.initializer_values"] = inits_a.keys() == inits_b.keys() and all(
        _tensor_equal(inits_a[n], inits_b[n]) for n in inits_a)
    parts["graph.initializer_protos"] = list(a.graph.initializer) == list(b.graph.initializer)
    out["parts_equal"] = parts
    out["nodes"] = [len(a.graph.node), len(b.graph.node)]
    out["initializers"] = [len(inits_a), len(inits_b)]
    return out


def _serialised(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def _tensor_equal(x: onnx.TensorProto, y: onnx.TensorProto) -> bool:
    if x.data_location == onnx.TensorProto.EXTERNAL or y.data_location == onnx.TensorProto.EXTERNAL:
        return x == y  # the reference (file, offset, length); the file itself is compared by sha256
    ax, ay = numpy_helper.to_array(x), numpy_helper.to_array(y)
    return ax.dtype == ay.dtype and ax.shape == ay.shape and ax.tobytes() == ay.tobytes()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON value as {path: leaf}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def compare_json(before: Path, after: Path) -> dict[str, Any]:
    """Every leaf of two JSON files: numbers equal, other leaves equal, paths only on one side; volatile ones apart."""
    fa, fb = flatten(json.loads(before.read_text())), flatten(json.loads(after.read_text()))
    numbers = [k for k in fa.keys() & fb.keys() if _is_number(fa[k]) and _is_number(fb[k])]
    differing = sorted(k for k in fa.keys() & fb.keys() if fa[k] != fb[k])
    volatile = [k for k in differing if any(v in k.lower() for v in VOLATILE)]
    return {
        "leaves": [len(fa), len(fb)],
        "numbers_compared": len(numbers),
        "numbers_differing": sorted(k for k in numbers if fa[k] != fb[k] and k not in volatile),
        "other_differing": {k: [fa[k], fb[k]] for k in differing if not _is_number(fa[k]) and k not in volatile},
        "volatile_differing": {k: [fa[k], fb[k]] for k in volatile},
        "only_before": sorted(fa.keys() - fb.keys()),
        "only_after": sorted(fb.keys() - fa.keys()),
    }


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare_npz(before: Path, after: Path) -> dict[str, Any]:
    """Arrays of two .npz files by name: equal dtype, shape and bytes."""
    with np.load(before) as a, np.load(after) as b:
        names = sorted(set(a.files) | set(b.files))
        return {n: (n in a.files and n in b.files and a[n].dtype == b[n].dtype and a[n].shape == b[n].shape
                    and a[n].tobytes() == b[n].tobytes()) for n in names}


def compare_file(rel: str, before: Path, after: Path) -> dict[str, Any]:
    """sha256 of both sides and, where they differ, what differs."""
    row: dict[str, Any] = {"file": rel}
    for side, path in (("before", before), ("after", after)):
        row[side] = sha256(path) if path.is_file() else None
    if row["before"] is None or row["after"] is None:
        row["verdict"] = "only " + ("after" if row["before"] is None else "before")
    elif row["before"] == row["after"]:
        row["verdict"] = "identical"
    else:
        row["verdict"] = "differs"
        if rel.endswith(".onnx"):
            row["graph"] = compare_graphs(before, after)
            if row["graph"]["bytes_equal_after_normalising"]:
                row["verdict"] = "differs only in opset imports"
        elif rel.endswith(".json"):
            row["json"] = compare_json(before, after)
        elif rel.endswith(".npz"):
            row["npz"] = compare_npz(before, after)
        elif rel.endswith((".md", ".txt", ".csv")):
            row["lines"] = compare_lines(before, after)
    return row


def compare_lines(before: Path, after: Path) -> list[str]:
    """The first lines that differ between two text files, as a unified diff without context."""
    a, b = before.read_text(errors="replace").splitlines(), after.read_text(errors="replace").splitlines()
    return list(difflib.unified_diff(a, b, "before", "after", n=0, lineterm=""))[:40]


def files(root: Path) -> set[str]:
    """Every file under root, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def main(out: Path) -> int:
    """Compare OUT/before with OUT/after; 0 when every difference is an intended or volatile one."""
    before, after = out / "before", out / "after"
    rows = [compare_file(rel, before / rel, after / rel) for rel in sorted(files(before) | files(after))]
    (out / "compare.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| file | sha256 before | sha256 after | verdict |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {(r['before'] or '—')[:16]} | {(r['after'] or '—')[:16]} | {r['verdict']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
