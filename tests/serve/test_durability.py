"""`salad serve` never loses an acknowledged film and never duplicates a row (issue 24, findings 1-6).

Real nodes (subprocesses without torch or onnx), real senders (pynetdicom's storescu in another process),
a real PACS for SRs (a pynetdicom Storage SCP in this process that refuses some SRs), real files and a
real full disk (a small tmpfs mounted for the test).
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.uid import UID, generate_uid

from salad.serve import Store
from tests.serve.conftest import Served, free_port, rows, serve, sop_uid, storescu, wait_until
from tests.serve.conftest import testdata as pydicom_file

pytest.importorskip("pynetdicom", reason="salad serve needs the dicom extra (pip install 'salad-edge[dicom]')")


def small_film(path: Path, *, uid: str | None = None, flip: bool = False, truncate: bool = False) -> Path:
    """A real chest CR (pydicom-data RG1_UNCR) cut to 480x480, with new UIDs (or `uid`); flipped = other pixels."""
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))
    pixels = ds.pixel_array[700:1180, 680:1160]
    pixels = np.ascontiguousarray(pixels[:, ::-1] if flip else pixels)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()[: pixels.nbytes // 2] if truncate else pixels.tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(uid) if uid else generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def small_mr(path: Path) -> Path:
    """pydicom-data's 64x64 MR with a new SOP Instance UID: refused by the node, so each one is a refusal row."""
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def scored(out: Path) -> list[dict[str, Any]]:
    return [r for r in rows(out) if r.get("label") is not None]


def no_duplicate_rows(out: Path) -> None:
    counts = Counter((r["sop_instance_uid"], r["pixel_sha256"]) for r in scored(out))
    assert all(n == 1 for n in counts.values()), counts


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (the test runs as root, as CI does); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CI runs as root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk is full (ENOSPC); return it (remove it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0")
    with pytest.raises(OSError) as err:
        (disk / "probe").write_bytes(b"\0" * 8192)
    assert err.value.errno == errno.ENOSPC
    return filler


def all_lines_are_rows(out: Path) -> None:
    for number, line in enumerate((out / "scores.jsonl").read_bytes().split(b"\n")[:-1], 1):
        assert isinstance(json.loads(line), dict), f"line {number} is not a row: {line[:200]!r}"


# -- 1: size limits before reading; a watch thread that cannot die silently ---------------------------


def test_a_huge_sparse_file_is_refused_unread_and_the_watch_folder_goes_on(
    serve_bundle: Path, tmp_path: Path, nodes: list[Served]
) -> None:
    watch, out = tmp_path / "export", tmp_path / "out"
    watch.mkdir()
    with open(watch / "huge.dcm", "wb") as fh:
        fh.truncate(64 << 30)  # 64 GiB, sparse: reading it whole would need 64 GiB of memory
    node = serve(serve_bundle, out, "--watch", str(watch), "--settle", "0.2", "--status-every", "0.5")
    nodes.append(node)
    wait_until(lambda: len(rows(out)) == 1, what="the refusal row of the huge file")
    film = small_film(watch / "after.dcm")  # the watch folder still takes films
    wait_until(lambda: len(scored(out)) == 1, what="the film exported after the huge one")
    node.wait_for(r"health ok")
    assert node.stop() == 0
    [refusal] = [r for r in rows(out) if "error" in r]
    assert refusal["source"] == "watch:huge.dcm" and refusal["label"] is None
    assert f"{watch / 'huge.dcm'}: 68,719,476,736 bytes is larger than the node's 1,073,741,824-byte cap" in refusal["error"]
    assert "not read" in refusal["error"]
    assert scored(out)[0]["sop_instance_uid"] == sop_uid(film)
    assert json.loads((out / "health.json").read_text())["health"] == "ok"
    assert "Traceback" not in node.text() and "MemoryError" not in node.text()


def test_a_full_disk_under_the_watch_folder_is_reported_and_the_file_taken_once_space_returns(
    serve_bundle: Path, tmp_path: Path, small_disk: Path, nodes: list[Served]
) -> None:
    watch, out = tmp_path / "export", small_disk / "out"
    watch.mkdir()
    node = serve(serve_bundle, out, "--watch", str(watch), "--settle", "0.2", "--status-every", "0.3",
                 log_name=str(tmp_path / "serve.log"))  # the log off the full disk
    nodes.append(node)
    filler = fill(small_disk)
    film = small_film(watch / "a.dcm")
    node.wait_for(r"could not be taken in")
    node.wait_for(r"health DEGRADED \(.*watch: ")  # the status line says so (health.json cannot be written on a full disk)
    filler.unlink()
    wait_until(lambda: len(scored(out)) == 1, what="the film, once there is space again")
    node.wait_for(r"health ok")
    assert node.stop() == 0
    assert scored(out)[0]["sop_instance_uid"] == sop_uid(film)
    assert "watch errors " in node.text() and "Traceback" not in node.text()
    assert len(Store(out).watched()) == 1


# -- 2: rows are whole lines, even on a full disk ------------------------------------------------------


def test_a_full_disk_while_rows_are_written_glues_no_rows_and_the_node_restarts(
    serve_bundle: Path, tmp_path: Path, small_disk: Path, nodes: list[Served]
) -> None:
    out, port = small_disk / "out", free_port()
    node = serve(serve_bundle, out, "--status-every", "0.3", port=port, log_name=str(tmp_path / "serve.log"))
    nodes.append(node)
    storescu(port, small_mr(tmp_path / "mr" / "first.dcm"))
    wait_until(lambda: len(rows(out)) == 1, what="the first refusal row")
    filler = fill(small_disk)
    mrs = [small_mr(tmp_path / "mr" / f"{i}.dcm") for i in range(12)]  # 12 rows of ~700 bytes: past a 4 KiB page
    film = small_film(tmp_path / "film.dcm")
    sent = storescu(port, *mrs, film)
    assert sent[str(film.resolve())] == "0xa700"  # not stored: the sender keeps it
    time.sleep(1.0)  # a few status lines on the full disk
    filler.unlink()
    assert set(storescu(port, film).values()) == {"0x0000"}  # re-sent once there is space
    wait_until(lambda: re.search(rb'"label": [01]', (out / "scores.jsonl").read_bytes()), what="the re-sent film's row")
    all_lines_are_rows(out)  # no row glued to half a row
    assert re.search(r"cannot write a row to .*scores\.jsonl \((No space left on device|only \d+ of \d+ bytes)", node.text())
    assert re.search(r"health DEGRADED \(disk: ", node.text())
    node.proc.kill()  # kill -9, then restart on the same results
    node.proc.wait(30)
    node = serve(serve_bundle, out, port=port, log_name=str(tmp_path / "restart.log"))
    nodes.append(node)
    assert node.stop() == 0
    all_lines_are_rows(out)
    assert [r["sop_instance_uid"] for r in scored(out)] == [sop_uid(film)]
    assert "Traceback" not in node.text()


def test_torn_and_glued_rows_are_quarantined_at_start(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = Store(out)
    store.append_row({"sop_instance_uid": "1.2.3", "score": 0.5, "label": 0, "pixel_sha256": "ab" * 32})
    store.close()
    good = json.dumps({"sop_instance_uid": "1.2.4", "score": 0.25, "label": 0, "pixel_sha256": "cd" * 32})
    with open(out / "scores.jsonl", "ab") as fh:  # what an older node left after a full disk: half a row, then a row glued on
        fh.write(b'{"sop_instance_uid": "1.2.9", "thresh' + good.encode() + b"\n" + b'{"sop_instance_uid": "1.2.5", "sc')
    again = Store(out)
    assert again.recovered["damaged_lines"] == 2
    assert [r["sop_instance_uid"] for r in again.rows()] == ["1.2.3", "1.2.4"]  # the glued complete row is kept
    [damaged] = list(out.glob("scores.jsonl.damaged-*"))
    assert damaged.read_bytes() == b'{"sop_instance_uid": "1.2.9", "thresh\n{"sop_instance_uid": "1.2.5", "sc\n'
    assert again.processed == {"1.2.3", "1.2.4"}
    again.close()


# -- 3: a different film under a known SOP Instance UID ------------------------------------------------


def test_a_uid_collision_keeps_and_reports_both_films_and_an_identical_resend_is_not_duplicated(
    serve_bundle: Path, tmp_path: Path, nodes: list[Served]
) -> None:
    uid = generate_uid()
    first = small_film(tmp_path / "first.dcm", uid=uid)
    other = small_film(tmp_path / "other.dcm", uid=uid, flip=True)  # another film, same SOP Instance UID
    port = free_port()
    node = serve(serve_bundle, tmp_path / "out", port=port)
    nodes.append(node)
    assert set(storescu(port, first, other).values()) == {"0x0000"}
    wait_until(lambda: len(scored(node.out)) == 2, what="both films' rows")
    assert set(storescu(port, first, other).values()) == {"0x0000"}  # identical re-sends
    node.wait_for(r"\(the same pixels\) was already scored.*\n(.*\n)*.*\(the same pixels\) was already scored")
    assert node.stop() == 0
    got = scored(node.out)
    assert len(got) == len(rows(node.out)) == 2 and {r["sop_instance_uid"] for r in got} == {uid}
    assert got[0]["pixel_sha256"] != got[1]["pixel_sha256"]
    assert "collision" not in got[0] and "already has a scored row for a different film" in got[1]["collision"]
    srs = [pydicom.dcmread(node.out / r["sr"]) for r in got]
    assert srs[0].SOPInstanceUID != srs[1].SOPInstanceUID  # a PACS keeps both reports
    assert "UID collision: " in node.text()
    no_duplicate_rows(node.out)


# -- 4: re-sends after an error row; slow writers -------------------------------------------------------


def test_a_resend_after_an_error_row_and_a_slowly_written_export_are_scored(
    serve_bundle: Path, tmp_path: Path, nodes: list[Served]
) -> None:
    uid = generate_uid()
    broken = small_film(tmp_path / "broken.dcm", uid=uid, truncate=True)  # half its pixel data
    fixed = small_film(tmp_path / "fixed.dcm", uid=uid)
    watch, port = tmp_path / "export", free_port()
    watch.mkdir()
    node = serve(serve_bundle, tmp_path / "out", "--watch", str(watch), "--settle", "0.3", port=port)
    nodes.append(node)
    assert set(storescu(port, broken).values()) == {"0x0000"}
    wait_until(lambda: any("error" in r for r in rows(node.out)), what="the error row")
    assert set(storescu(port, fixed).values()) == {"0x0000"}  # re-sent, as the error row advises
    wait_until(lambda: len(scored(node.out)) == 1, what="the re-sent film's score")

    slow = small_film(tmp_path / "slow.dcm").read_bytes()
    with open(watch / "slow.dcm", "wb") as fh:  # written in two halves, pausing longer than --settle
        fh.write(slow[: len(slow) // 2])
        fh.flush()
        time.sleep(1.5)
        fh.write(slow[len(slow) // 2:])
    wait_until(lambda: len(scored(node.out)) == 2, what="the slowly written film's score")
    assert node.stop() == 0
    assert {r["sop_instance_uid"] for r in scored(node.out)} == {uid, sop_uid(watch / "slow.dcm")}
    no_duplicate_rows(node.out)


# -- 5: SR forwarding that a PACS refuses; missing SRs ---------------------------------------------------


class Pacs:
    """A pynetdicom Storage SCP for SRs (called AE 'PACS', checked) that refuses the SRs of films in `refuse`."""

    def __init__(self, port: int, refuse: set[str]) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]

        self.refuse, self.received = refuse, list[str]()
        ae = AE(ae_title="PACS")
        ae.require_called_aet = True
        ae.add_supported_context(ComprehensiveSRStorage)
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
        assert server is not None
        self.server = server

    def on_store(self, event: Any) -> int:
        ds = event.dataset
        [ref] = [r for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence for r in s.ReferencedSOPSequence]
        if ref.ReferencedSOPInstanceUID in self.refuse:
            return 0xA700
        self.received.append(str(ref.ReferencedSOPInstanceUID))
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


def test_a_refused_sr_is_dead_lettered_with_its_reason_and_does_not_block_the_others(
    serve_bundle: Path, tmp_path: Path, nodes: list[Served]
) -> None:
    films = [small_film(tmp_path / f"f{i}.dcm") for i in range(3)]
    port, pacs_port = free_port(), free_port()
    pacs = Pacs(pacs_port, refuse={sop_uid(films[0])})
    try:
        node = serve(serve_bundle, tmp_path / "out", "--forward", f"PACS@127.0.0.1:{pacs_port}", "--retry-max", "1", port=port)
        nodes.append(node)
        assert set(storescu(port, films[0]).values()) == {"0x0000"}  # the refused one is first in the outbox
        wait_until(lambda: len(scored(node.out)) == 1, what="the first row")
        assert set(storescu(port, *films[1:]).values()) == {"0x0000"}
        wait_until(lambda: sorted(pacs.received) == sorted(sop_uid(f) for f in films[1:]), what="the other SRs at the PACS")
        wait_until(lambda: list((node.out / "deadletter").glob("*.dcm")), timeout=60, what="the refused SR dead-lettered")
        assert node.stop() == 0
    finally:
        pacs.close()
    [dead] = list((node.out / "deadletter").glob("*.dcm"))
    reason = json.loads(dead.with_suffix(".reason.json").read_text())
    assert reason["tries"] == 5 and "answered C-STORE with status 0xa700" in reason["reason"]
    assert pydicom.dcmread(dead).CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == sop_uid(films[0])
    assert "refused (try 1 of 5)" in node.text() and "dead-lettered after 5 refusals" in node.text()
    assert not list((node.out / "outbox").glob("*.dcm"))


def test_a_wrong_called_ae_at_the_pacs_is_logged_with_its_reason_and_dead_lettered(
    serve_bundle: Path, tmp_path: Path, nodes: list[Served]
) -> None:
    port, pacs_port = free_port(), free_port()
    pacs = Pacs(pacs_port, refuse=set())
    try:
        node = serve(serve_bundle, tmp_path / "out", "--forward", f"WRONG@127.0.0.1:{pacs_port}", "--retry-max", "0.5", port=port)
        nodes.append(node)
        assert set(storescu(port, small_film(tmp_path / "f.dcm")).values()) == {"0x0000"}
        wait_until(lambda: list((node.out / "deadletter").glob("*.dcm")), timeout=60, what="the SR dead-lettered")
        assert node.stop() == 0
    finally:
        pacs.close()
    assert "Called AE title not recognised" in node.text()
    [reason] = list((node.out / "deadletter").glob("*.reason.json"))
    assert "rejected the association" in json.loads(reason.read_text())["reason"]


def test_missing_srs_of_scored_films_are_made_at_the_next_start(serve_bundle: Path, tmp_path: Path, nodes: list[Served]) -> None:
    out, port = tmp_path / "out", free_port()
    node = serve(serve_bundle, out, port=port)
    nodes.append(node)
    (out / "sr").rmdir()
    (out / "sr").write_text("not a folder")  # every SR write fails now, as on a broken results disk
    film = small_film(tmp_path / "f.dcm")
    assert set(storescu(port, film).values()) == {"0x0000"}
    wait_until(lambda: len(scored(out)) == 1, what="the row")
    assert node.stop() == 0
    [row] = scored(out)
    assert row["sr"] is None and "no structured report" in row["sr_error"]
    (out / "sr").unlink()
    node = serve(serve_bundle, out, port=port, log_name="restart.log")
    nodes.append(node)
    assert node.stop() == 0
    [sr] = list((out / "sr").glob("*.dcm"))
    assert pydicom.dcmread(sr).CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop_uid(film)
    assert "made the missing SR of" in node.text() and not list((out / "nosr").iterdir())


# -- 6: folders that overlap; symlinks out of the watch folder -------------------------------------------


def test_out_inside_watch_is_refused_at_start(tmp_path: Path) -> None:
    from salad.cli import main

    for out, watch in ((tmp_path / "w" / "out", tmp_path / "w"), (tmp_path / "w", tmp_path / "w"),
                       (tmp_path / "o", tmp_path / "o" / "export")):
        watch.mkdir(parents=True, exist_ok=True)
        result = CliRunner().invoke(main, ["serve", str(tmp_path / "bundle"), "--out", str(out), "--watch", str(watch)])
        assert result.exit_code == 2, result.output  # usage: an impossible combination (README's exit codes)
        assert result.output.startswith(f"error: --out {out} ")
        assert f"--watch {watch}: the node would take in its own output" in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_symlinks_out_of_the_watch_folder_are_refused_unread(serve_bundle: Path, tmp_path: Path, nodes: list[Served]) -> None:
    watch, elsewhere = tmp_path / "export", tmp_path / "elsewhere"
    watch.mkdir()
    outside = small_film(elsewhere / "outside.dcm")
    (watch / "link-out.dcm").symlink_to(outside)
    (watch / "passwd").symlink_to("/etc/passwd")
    (watch / "folder-out").symlink_to(elsewhere, target_is_directory=True)
    inside = small_film(watch / "inside.dcm")
    (watch / "link-in.dcm").symlink_to(inside)
    node = serve(serve_bundle, tmp_path / "out", "--watch", str(watch), "--settle", "0.2")
    nodes.append(node)
    wait_until(lambda: len(rows(node.out)) == 4, what="three refusals and one score")
    time.sleep(1.0)  # a few more passes: nothing else arrives
    assert node.stop() == 0
    got = rows(node.out)
    assert [r["sop_instance_uid"] for r in scored(node.out)] == [sop_uid(inside)]
    refused = {r["source"]: r["error"] for r in got if "error" in r}
    assert set(refused) == {"watch:link-out.dcm", "watch:passwd", "watch:folder-out"}
    assert all("outside the watch folder" in e and "not read" in e for e in refused.values())
    assert "/etc/passwd" in refused["watch:passwd"]
    assert sop_uid(outside) not in {r["sop_instance_uid"] for r in got}
