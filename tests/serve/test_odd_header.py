"""A film whose header holds one element pydicom cannot convert (a wrong-length value) is scored like any other and
never stops the node: the SR document built ahead (serve/reports.py, Reports.prepare) parses every element, so one
odd private element must cost that film its head start, not the node its worker."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.serve.conftest import Served, free_port, rows, serve, sop_uid, storescu


def _odd_copy(source: Path, out: Path) -> Path:
    """`source` as a new instance with a private US element of 3 bytes (US values are 2 bytes each).

    pydicom will not write such a value, so a well-formed one (2 bytes) is written and its length patched in the file:
    explicit VR little endian, tag (0009,1010), VR "US", length 2 → 3, one byte more.
    """
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.add_new(0x00090010, "LO", "SALAD TEST")
    ds.add_new(0x00091010, "US", 0x0102)
    ds.save_as(out, enforce_file_format=True, little_endian=True, implicit_vr=False)
    data = out.read_bytes()
    element = b"\x09\x00\x10\x10US\x02\x00\x02\x01"
    assert data.count(element) == 1, "the private element as written"
    out.write_bytes(data.replace(element, b"\x09\x00\x10\x10US\x03\x00\x02\x01\x03"))
    return out


def test_a_wrong_length_private_element_does_not_stop_the_node(
    serve_bundle: Path, films: dict[str, Path], tmp_path: Path, nodes: list[Served]
) -> None:
    odd = _odd_copy(films["raw"], tmp_path / "odd.dcm")
    good = films["jpeg-lossless"]
    port = free_port()
    node = serve(serve_bundle, tmp_path / "out", port=port)
    nodes.append(node)
    sent = storescu(port, odd, good)
    assert set(sent.values()) == {"0x0000"}, sent
    assert node.stop() == 0
    log = node.text()
    assert "Traceback" not in log, log
    got = {r["sop_instance_uid"]: r for r in rows(node.out)}
    assert set(got) == {sop_uid(odd), sop_uid(good)}
    for uid in got:  # both scored, each with its SR
        assert got[uid]["label"] in (0, 1) and "error" not in got[uid] and (node.out / got[uid]["sr"]).is_file()
    assert list((node.out / "inbox").iterdir()) == []
