"""The memory bank a scoring graph really uses, read and hashed without onnx (to check it against `bank.sha256`).

A graph's sha256 says the file is the one the manifest lists; this says the bank inside it is the one
the manifest describes (rows, dim, sha256 of the float32 [N, D] rows), so a graph from another bundle,
or one whose bank was edited, is refused even when its listed checksum was edited to match. The bank
initializer ([D, N], inline or in external data) is found by walking the ONNX protobuf's wire format
(ModelProto.graph → GraphProto.initializer → TensorProto), so a console without the onnx package
checks it too; a bank-as-input bundle's bank.npy is read as the graph will be fed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from salad.errors import BundleError
from salad.schema import confined

# Field numbers of onnx.proto (stable since IR version 3).
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_T_DIMS, _T_DATA_TYPE, _T_FLOAT_DATA, _T_NAME, _T_RAW_DATA, _T_EXTERNAL, _T_LOCATION = 1, 2, 4, 8, 9, 13, 14
_FLOAT = 1  # TensorProto.FLOAT
#: The input name of a scoring graph that is fed its bank (`--bank-as-input`) instead of carrying it.
BANK_INPUT = "bank"


class _Damaged(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Damaged("truncated or over-long varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): an int for varints and fixed widths, a memoryview for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Damaged("a field runs past the end of its message")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise _Damaged("truncated fixed-width field")
            yield number, wire, int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        else:
            raise _Damaged(f"wire type {wire} (groups are not used by ONNX)")


def _packed_ints(value: Any, wire: int) -> list[int]:
    if wire == 0:
        return [int(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _tensor(buf: memoryview, root: Path, where: Path) -> np.ndarray:
    """A float32 TensorProto's values with its dims: raw data, float_data or external data inside the bundle."""
    dims: list[int] = []
    data_type = 0
    raw: bytes | memoryview | None = None
    floats = bytearray()
    external: dict[str, str] = {}
    location = 0
    for number, wire, value in _fields(buf):
        if number == _T_DIMS:
            dims += _packed_ints(value, wire)
        elif number == _T_DATA_TYPE:
            data_type = int(value)
        elif number == _T_FLOAT_DATA:
            floats += bytes(value) if wire == 2 else int(value).to_bytes(4, "little")
        elif number == _T_RAW_DATA:
            raw = value  # a view of the file's bytes: no copy
        elif number == _T_EXTERNAL and wire == 2:
            entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in _fields(value) if w == 2}
            external[entry.get(1, "")] = entry.get(2, "")
        elif number == _T_LOCATION:
            location = int(value)
    if data_type != _FLOAT:
        raise BundleError(f"{where}: the bank initializer has ONNX data type {data_type}, expected float32 (1). Re-export the bundle.")
    if location == 1:
        data_file = confined(root, external.get("location", ""))
        try:
            offset, length = int(external.get("offset") or 0), int(external.get("length") or -1)
            with open(data_file, "rb") as fh:
                fh.seek(offset)
                raw = fh.read(length) if length >= 0 else fh.read()
        except (OSError, ValueError) as exc:
            raise BundleError(f"{where}: cannot read the bank's external data {data_file} ({exc}); re-copy or re-export.") from exc
    data = raw if raw is not None else bytes(floats)
    count = int(np.prod(dims)) if dims else 0
    if len(data) != 4 * count:
        raise BundleError(f"{where}: the bank initializer holds {len(data)} bytes for dims {dims}; the graph is damaged.")
    return np.frombuffer(data, dtype="<f4").reshape(dims).astype(np.float32, copy=False)


def carried_bank(path: Path, name: str, root: Path) -> np.ndarray:
    """The initializer `name` of the ONNX file at `path` as stored ([D, N] for the bank; external data read from `root`).

    Exactly one must exist. The array is read-only and may share memory with the file's bytes.
    """
    found = []
    try:
        view = memoryview(path.read_bytes())  # a graph file is < 2 GiB (protobuf's limit); big banks are external data
        for number, wire, graph in _fields(view):
            if number != _MODEL_GRAPH or wire != 2:
                continue
            for gnum, gwire, tensor in _fields(graph):
                if gnum == _GRAPH_INITIALIZER and gwire == 2:
                    names = [bytes(v).decode("utf-8", "replace") for n, w, v in _fields(tensor) if n == _T_NAME and w == 2]
                    if names == [name]:
                        found.append(_tensor(tensor, root, path))
    except (_Damaged, OSError) as exc:
        raise BundleError(f"{path}: not a readable ONNX file ({exc}). Re-copy or re-export the bundle.") from None
    if len(found) != 1:
        raise BundleError(
            f"{path}: carries {len(found)} initializers named {name!r}; the manifest says the bank is that one initializer. "
            "The graph is not the one exported with this manifest: re-copy or re-export the bundle."
        )
    return found[0]


def bank_digest(rows: np.ndarray) -> str:
    """sha256 of bank rows [N, D] as contiguous float32 (what export records as `bank.sha256`).

    A transposed view (the graphs' [D, N] initializer) is hashed in blocks of rows, which is several
    times faster than one contiguous copy of a large bank and needs no second copy of it in memory.
    """
    h = hashlib.sha256()
    block = 1024
    for start in range(0, max(rows.shape[0], 1), block):
        h.update(np.ascontiguousarray(rows[start:start + block], dtype=np.float32).data)
    return h.hexdigest()
