"""Who may associate with `salad serve` and which films it scores, over real DICOM associations (pynetdicom SCUs).

The node runs as a subprocess without torch or onnx (tests/serve/conftest.py); every sender here is an
in-process pynetdicom AE, so the test can read the A-ASSOCIATE-RJ's result, source and reason itself.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.uid import generate_uid

from tests.serve.conftest import CR, Served, free_port, rows, serve, wait_until
from tests.serve.conftest import testdata as pydicom_film
from tests.serve.test_sr_content import code, named

pynetdicom = pytest.importorskip("pynetdicom", reason="salad serve needs the dicom extra (pip install 'salad-edge[dicom]')")
MR = "1.2.840.10008.5.1.4.1.1.4"


def associate(port: int, calling: str = "MODALITY", called: str = "SALAD", tls: Any = None) -> Any:
    """An association from `calling` to `called` proposing CR storage (the films' transfer syntaxes) and Verification."""
    ae = pynetdicom.AE(ae_title=calling)
    for syntax in (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.JPEG2000, pydicom.uid.JPEG2000Lossless):
        ae.add_requested_context(CR, syntax)  # one context per transfer syntax: the acceptor picks one per context
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=(tls, "localhost") if tls is not None else None)


def rejection(assoc: Any) -> tuple[int, int, int]:
    """The A-ASSOCIATE-RJ's (result, source, reason) the node answered with."""
    assert assoc.is_rejected, "the association was not rejected"
    rsp = assoc.acceptor.primitive
    return int(rsp.result), int(rsp.result_source), int(rsp.diagnostic)


def store(port: int, *files: Path, calling: str = "MODALITY") -> list[int]:
    """C-STORE each file over one association; the statuses the node answered."""
    assoc = associate(port, calling)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(f).Status) for f in files]
    finally:
        assoc.release()


def audit(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]


def film(tmp_path: Path, name: str, source: str = "RG1_UNCR.dcm", **changes: Any) -> Path:
    """A real film with header changes (None deletes), as its own instance; the file meta follows SOPClassUID unless set."""
    ds = pydicom.dcmread(pydicom_film(source))
    for keyword, value in changes.items():
        if keyword == "MediaStorageSOPClassUID":
            continue
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = changes.get("MediaStorageSOPClassUID", ds.SOPClassUID)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=False)  # as read: preamble and file meta kept, MediaStorageSOPClassUID as set
    return path


def test_allow_list_and_called_ae_reject_at_association_with_the_reason_logged_and_audited(
    serve_bundle: Path, tmp_path: Path, nodes: list[Served]
) -> None:
    port = free_port()
    node = serve(serve_bundle, tmp_path / "out", "--allow", "MODALITY@127.0.0.1", port=port)
    nodes.append(node)
    assert rejection(associate(port, calling="INTRUDER")) == (1, 1, 3)  # permanent, service user, calling AE not recognised
    assert rejection(associate(port, called="OTHER")) == (1, 1, 7)  # called AE title not recognised
    chest = film(tmp_path, "chest")
    assert store(port, chest) == [0x0000]
    wait_until(lambda: len(rows(node.out)) == 1, what="the row")
    assert node.stop() == 0

    log = node.text()
    assert ("association from INTRUDER@127.0.0.1 rejected: calling AE title 'INTRUDER' from 127.0.0.1 is not on the "
            "allow-list (senders MODALITY@127.0.0.1); add it with --allow INTRUDER@127.0.0.1") in log
    assert "rejected: called AE title 'OTHER' is not this node's ('SALAD')" in log
    [row] = rows(node.out)
    assert row["label"] in (0, 1)
    lines = audit(node.out)
    rejected = [a for a in lines if a["event"] == "association" and a["outcome"] == "rejected"]
    assert [(a["calling_ae"], a["called_ae"], a["reject"]) for a in rejected] == [("INTRUDER", "SALAD", [1, 1, 3]),
                                                                                 ("MODALITY", "OTHER", [1, 1, 7])]
    assert all(a["address"] == "127.0.0.1" and "not" in a["reason"] for a in rejected)
    [accepted] = [a for a in lines if a["event"] == "association" and a["outcome"] == "accepted"]
    assert accepted["calling_ae"] == "MODALITY" and accepted["tls_client"] is None
    [instance] = [a for a in lines if a["event"] == "instance"]
    assert instance["sop_instance_uid"] == row["sop_instance_uid"] and instance["status"] == "0x0000"
    assert instance["sop_class_uid"] == CR and instance["calling_ae"] == "MODALITY" and instance["meaning"] == "stored"
    [sr] = [a for a in lines if a["event"] == "sr"]
    assert sr["sop_instance_uid"] == row["sop_instance_uid"] and sr["sr"] == row["sr"] and sr["forward_to"] is None
    assert [a["event"] for a in lines].count("association-end") == 1
    assert all(a["time"].endswith("+00:00") for a in lines)


def test_idle_associations_cannot_lock_other_senders_out_and_are_aborted(
    serve_bundle: Path, tmp_path: Path, nodes: list[Served]
) -> None:
    port = free_port()
    node = serve(serve_bundle, tmp_path / "out", "--any-sender", "--idle-timeout", "3", port=port)
    nodes.append(node)
    idle = [associate(port, calling="IDLER") for _ in range(16)]  # opened, then silent
    held = [a for a in idle if a.is_established]
    assert len(held) == 4  # --max-per-sender's default
    assert {rejection(a) for a in idle if not a.is_established} == {(2, 3, 2)}  # transient: local limit exceeded
    started = time.monotonic()
    assert store(port, film(tmp_path, "chest")) == [0x0000]  # another sender gets in at once
    assert time.monotonic() - started < 10
    wait_until(lambda: all(a.is_aborted or not a.is_alive() for a in held), timeout=30, what="the idle associations aborted")
    assert node.stop() == 0
    ended = [a for a in audit(node.out) if a["event"] == "association-end" and a["calling_ae"] == "IDLER"]
    assert len(ended) == 4 and {a["outcome"] for a in ended} == {"aborted"}
    assert "more than 4" not in node.text() and "already has 4 open association(s)" in node.text()


def test_sop_class_modality_body_part_and_view_are_checked_before_a_film_is_scored(
    serve_bundle: Path, tmp_path: Path, nodes: list[Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    # send files as stored, the context chosen by their file meta (pynetdicom's documented option), as a modality does
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    films = {
        # an MR SOP class dataset (Modality still CR) sent in a CR presentation context
        "mr-in-cr": film(tmp_path, "mr-in-cr", SOPClassUID=MR, MediaStorageSOPClassUID=CR),
        "tibia": pydicom_film("RG3_J2KI.dcm"),  # BodyPartExamined EXTREMITY
        "lateral": film(tmp_path, "lateral", ViewPosition="LL"),
        "no-modality": film(tmp_path, "no-modality", Modality=None),
        "unstated": film(tmp_path, "unstated", BodyPartExamined=None, ViewPosition=None),
        "chest": film(tmp_path, "chest"),
    }
    port = free_port()
    node = serve(serve_bundle, tmp_path / "out", port=port)  # no --allow: senders on this machine
    nodes.append(node)
    statuses = dict(zip(films, store(port, *films.values()), strict=True))
    assert statuses == {"mr-in-cr": 0xA900, "tibia": 0xC100, "lateral": 0xC100, "no-modality": 0xA900,
                        "unstated": 0x0000, "chest": 0x0000}
    wait_until(lambda: len(rows(node.out)) == 6, what="six rows")
    assert node.stop() == 0
    by_uid = {r["sop_instance_uid"]: r for r in rows(node.out)}
    got = {name: by_uid[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)] for name, p in films.items()}
    assert "the dataset's SOP Class UID is MR Image Storage" in got["mr-in-cr"]["error"]
    assert "not the Computed Radiography Image Storage" in got["mr-in-cr"]["error"]
    assert "BodyPartExamined is EXTREMITY: this node scores chest films only" in got["tibia"]["error"]
    assert "ViewPosition is LL: this node scores frontal chest films only" in got["lateral"]["error"]
    assert "the modality is missing" in got["no-modality"]["error"]
    for name in ("mr-in-cr", "tibia", "lateral", "no-modality"):
        assert got[name]["label"] is None and "score" not in got[name] and not got[name].get("sr")
    for name in ("unstated", "chest"):
        assert got[name]["label"] in (0, 1) and got[name]["sr"]
    assert sorted(p.name for p in (node.out / "sr").iterdir()) == sorted(Path(got[n]["sr"]).name for n in ("unstated", "chest"))
    chest, unstated = (pydicom.dcmread(node.out / got[n]["sr"]) for n in ("chest", "unstated"))
    assert code(named(chest, "Finding Site")[0]) == ("816094009", "SCT", "Chest")
    assert code(named(chest, "Image View")[0]) == ("272479007", "SCT", "postero-anterior")
    assert code(named(unstated, "Procedure reported")[0]) == ("363680008", "SCT", "Radiographic imaging procedure")
    assert "Traceback" not in node.text()


def test_ae_title_and_port_errors_are_one_line_with_the_documented_exit_code(serve_bundle: Path, tmp_path: Path) -> None:
    from salad.cli import main

    long_title = "A-TITLE-OF-TWENTY-CHARS"
    for args in (["serve", str(serve_bundle), "--out", str(tmp_path / "out"), "--ae-title", long_title],
                 ["serve", "--check", "--ae-title", long_title]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output  # a value out of range: usage
        assert result.output.strip().splitlines() == [
            f"error: --ae-title '{long_title}': an AE title is 1 to 16 characters, without backslashes or control "
            f"characters ({len(long_title)} given). Use the title configured at the modality or PACS, e.g. SALAD."
        ]
    result = CliRunner().invoke(main, ["serve", str(serve_bundle), "--out", str(tmp_path / "o"), "--allow", "BAD\\AE"])
    assert result.exit_code == 2 and "an AE title is 1 to 16 characters" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(serve_bundle), "--out", str(tmp_path / "out"),
                                           "--host", "127.0.0.1", "--port", str(port)])
    assert result.exit_code == 1, result.output  # the environment, not the command line (README: exit codes)
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.output and "Choose another --port." in result.output
    assert "Traceback" not in result.output
