"""`salad serve`: films sent by a real DICOM client are scored exactly once, as `salad score` scores them.

Every node runs as a subprocess in which torch and onnx cannot be imported (a console's install), and
every film is sent by pynetdicom's own storescu application in another process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner

from salad.onsite.score import score_command
from salad.serve import Store
from salad.serve.forward import parse_forward
from salad.serve.sr import ANOMALY_SCORE
from tests.serve.conftest import (
    Served,
    copies,
    free_port,
    rows,
    serve,
    sop_uid,
    store_statuses,
    storescu,
    wait_until,
)

pytest.importorskip("pynetdicom", reason="salad serve needs the dicom extra (pip install 'salad-edge[dicom]')")


def salad_score(bundle: Path, files: list[Path]) -> dict[str, dict[str, Any]]:
    """`salad score --json -` on the original files: path → row."""
    result = CliRunner().invoke(score_command, [str(bundle), *map(str, files), "--json", "-"])
    assert result.exit_code == 0, result.output
    return {r["path"]: r for r in json.loads(result.stdout)["results"]}


def sr_values(path: Path) -> tuple[str, float, str]:
    """(referenced SOP Instance UID, anomaly score, finding) read back from an SR with pydicom alone."""
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    [study] = ds.CurrentRequestedProcedureEvidenceSequence
    [ref] = [r for s in study.ReferencedSeriesSequence for r in s.ReferencedSOPSequence]
    score, finding = None, None
    stack = list(ds.ContentSequence)
    while stack:
        item = stack.pop()
        name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        if name is not None and name.CodeValue == ANOMALY_SCORE.value and item.ValueType == "NUM":
            score = float(item.MeasuredValueSequence[0].NumericValue)
        if name is not None and name.CodeMeaning == "Finding":
            finding = str(item.ConceptCodeSequence[0].CodeMeaning)
        stack.extend(item.get("ContentSequence", []))
    assert score is not None and finding is not None
    return str(ref.ReferencedSOPInstanceUID), score, finding


def test_storescu_films_are_scored_like_salad_score_with_an_sr_each(
    serve_bundle: Path, films: dict[str, Path], tmp_path: Path, nodes: list[Served]
) -> None:
    port = free_port()
    node = serve(serve_bundle, tmp_path / "out", "--status-every", "1", port=port)
    nodes.append(node)
    check = subprocess.run([sys.executable, "-m", "salad.cli", "serve", "--check", "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout.startswith(f"ok: SALAD@127.0.0.1:{port} answered C-ECHO"), check.stderr
    sent = storescu(port, *films.values())
    by_name = {name: sent[str(path.resolve())] for name, path in films.items()}
    assert by_name == {"raw": "0x0000", "j2k-lossless": "0x0000", "j2k": "0x0000", "jpeg-lossless": "0x0000",
                       "mr": "0x0122", "ct": "0x0122"}
    assert node.stop() == 0  # SIGTERM at once: the queued films are drained (scored) before it stops
    log = node.text()
    assert "refused from dicom:STORESCU@127.0.0.1: MR Image Storage (1.2.840.10008.5.1.4.1.1.4), modality MR" in log
    assert "refused from dicom:STORESCU@127.0.0.1: CT Image Storage (1.2.840.10008.5.1.4.1.1.2), modality CT" in log
    assert "INFO status: received 4, scored 4, failed 0, refused 2, duplicates 0, queue 0" in log
    assert "Traceback" not in log, log

    got = {r["sop_instance_uid"]: r for r in rows(node.out)}
    assert len(got) == len(rows(node.out)) == 6
    films_ok = [films[n] for n in ("raw", "j2k-lossless", "j2k", "jpeg-lossless")]
    expected = salad_score(serve_bundle, films_ok)
    for film in films_ok:
        uid = sop_uid(film)
        row, want = got[uid], expected[str(film)]
        assert abs(row["score"] - want["score"]) <= 1e-6 and abs(row["knn_angle"] - want["knn_angle"]) <= 1e-6
        assert row["label"] == want["label"] and "error" not in row
        header = pydicom.dcmread(film, stop_before_pixels=True)
        assert (row["study_instance_uid"], row["series_instance_uid"]) == (header.StudyInstanceUID, header.SeriesInstanceUID)
        assert row["runtime"] == "onnxruntime" and row["precision"] == "fp32" and len(row["bundle_sha256"]) == 64
        assert isinstance(row["threshold"], float) and row["timings"]["latency_ms"] > 0
        ref, score, finding = sr_values(node.out / row["sr"])
        assert ref == uid and abs(score - row["score"]) <= 1e-6
        assert finding == ("Abnormal" if row["label"] == 1 else "Normal")
    for name in ("mr", "ct"):
        row = got[sop_uid(films[name])]
        assert row["label"] is None and "score" not in row and row["refused"] == "0x0122"
        assert "not a projection radiograph" in row["error"]
    assert list((node.out / "inbox").iterdir()) == []


def test_forward_delivers_every_sr_and_queues_while_the_pacs_is_down(
    serve_bundle: Path, films: dict[str, Path], tmp_path: Path, nodes: list[Served]
) -> None:
    port, pacs_port = free_port(), free_port()
    received = tmp_path / "pacs"
    received.mkdir()
    node = serve(serve_bundle, tmp_path / "out", "--forward", f"PACS@127.0.0.1:{pacs_port}", "--retry-max", "1", port=port)
    nodes.append(node)
    assert set(storescu(port, films["j2k"], films["jpeg-lossless"]).values()) == {"0x0000"}
    wait_until(lambda: len(rows(node.out)) == 2, what="two rows")
    node.wait_for(r"forward: cannot associate with PACS@127\.0\.0\.1:\d+ .*SR\(s\) stay queued")  # the PACS is down
    assert len(list((node.out / "outbox").glob("*.dcm"))) == 2

    pacs = subprocess.Popen([sys.executable, "-m", "pynetdicom", "storescp", str(pacs_port), "-aet", "PACS", "-od", str(received)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(list(received.iterdir())) == 2 and not list((node.out / "outbox").glob("*.dcm")),
                   what="the queued SRs at the PACS")
        assert set(storescu(port, films["raw"]).values()) == {"0x0000"}  # and with the PACS up, at once
        wait_until(lambda: len(list(received.iterdir())) == 3, what="the third SR")
    finally:
        assert node.stop() == 0
        pacs.terminate()
        pacs.wait(30)
    delivered = {sop_uid(p) for p in received.iterdir()}
    assert delivered == {sop_uid(p) for p in (node.out / "sr").iterdir()}
    assert {sr_values(p)[0] for p in received.iterdir()} == {sop_uid(films[n]) for n in ("j2k", "jpeg-lossless", "raw")}


def test_kill_9_then_restart_scores_every_acknowledged_film_exactly_once(
    serve_bundle: Path, films: dict[str, Path], tmp_path: Path, nodes: list[Served]
) -> None:
    sent_files = copies(films["j2k"], tmp_path / "load", 16)
    port = free_port()
    out = tmp_path / "out"
    node = serve(serve_bundle, out, "--batch", "4", port=port)
    nodes.append(node)
    cmd = [sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port), str(tmp_path / "load"), "-aec", "SALAD", "-cx", "-v"]
    sender = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: len(rows(out)) >= 2, what="the first rows")
    node.proc.send_signal(signal.SIGKILL)  # mid-queue (and possibly mid-transfer)
    node.proc.wait(30)
    statuses = store_statuses(sender.communicate(timeout=120)[0])
    acked = {sop_uid(Path(f)) for f, s in statuses.items() if s == "0x0000"}
    assert len(acked) >= 2
    before = len(rows(out))
    assert before < len(sent_files), "nothing was left to resume: the kill came too late to test anything"

    node = serve(serve_bundle, out, "--batch", "4", port=port, log_name="restart.log")
    nodes.append(node)
    wait_until(lambda: not list((out / "inbox").glob("*.dcm")), what="the queue to drain after the restart")
    assert node.stop() == 0
    counts = Counter(r["sop_instance_uid"] for r in rows(out))
    assert all(n == 1 for n in counts.values()), counts  # nothing scored twice
    assert acked <= set(counts), acked - set(counts)  # every acknowledged film scored
    assert set(counts) <= {sop_uid(f) for f in sent_files}
    assert all("error" not in r for r in rows(out))
    assert "queued from before" in node.text()


def test_watch_folder_scores_each_complete_file_once_across_restarts(
    serve_bundle: Path, films: dict[str, Path], tmp_path: Path, nodes: list[Served]
) -> None:
    watch, out = tmp_path / "export", tmp_path / "out"
    watch.mkdir()
    args = ("--watch", str(watch), "--settle", "0.3")
    node = serve(serve_bundle, out, *args)
    nodes.append(node)
    shutil.copy(films["j2k"], watch / ".incoming.part")  # a writer that renames into place
    os.replace(watch / ".incoming.part", watch / "a.dcm")
    shutil.copy(films["jpeg-lossless"], watch / "b.dcm")
    wait_until(lambda: len(rows(out)) == 2, what="two rows from the watch folder")
    assert node.stop() == 0

    # while it is down, the console exports more: a new film, the same film again under another name, an MR, junk
    (watch / "day2").mkdir()
    shutil.copy(films["raw"], watch / "day2" / "c.dcm")
    shutil.copy(films["j2k"], watch / "day2" / "a-again.dcm")
    shutil.copy(films["mr"], watch / "day2" / "mr.dcm")
    (watch / "day2" / "notes.txt").write_text("not a film")
    node = serve(serve_bundle, out, *args, log_name="restart.log")
    nodes.append(node)
    wait_until(lambda: len(rows(out)) == 5, what="the files exported while it was down")
    wait_until(lambda: "already scored" in node.text(), what="the duplicate to be recognised")
    assert node.stop() == 0
    got = rows(out)
    scored = Counter(r["sop_instance_uid"] for r in got if "score" in r)
    assert scored == {sop_uid(films[n]): 1 for n in ("j2k", "jpeg-lossless", "raw")}
    errors = {r["source"]: r["error"] for r in got if "error" in r}
    assert set(errors) == {"watch:day2/notes.txt", "watch:day2/mr.dcm"}
    assert errors["watch:day2/notes.txt"].startswith(f"{watch / 'day2' / 'notes.txt'}: not a readable DICOM file")
    assert errors["watch:day2/mr.dcm"].startswith("MR Image Storage (1.2.840.10008.5.1.4.1.1.4), modality MR")
    assert len(Store(out).watched()) == 6
    # the audit log names every watch-folder instance it decided on, with its status (not the unreadable notes.txt)
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    instances = {a["path"]: a["status"] for a in audit if a["event"] == "instance" and a.get("source") == "watch"}
    assert instances["a.dcm"] == instances["b.dcm"] == instances["day2/c.dcm"] == "0x0000"
    assert instances["day2/mr.dcm"] != "0x0000" and "day2/notes.txt" not in instances


# -- the store's crash recovery, file by file ----------------------------------------------------


def test_store_cuts_a_half_written_row_and_drops_inbox_entries_that_have_a_row(films: dict[str, Path], tmp_path: Path) -> None:
    store = Store(tmp_path / "out")
    scored_uid, waiting_uid = sop_uid(films["raw"]), sop_uid(films["j2k"])
    store.put(scored_uid, films["raw"].read_bytes())
    store.put(waiting_uid, films["j2k"].read_bytes())
    store.append_row({"sop_instance_uid": scored_uid, "score": 0.5})
    store.close()
    partial = b'{"sop_instance_uid": "' + waiting_uid.encode() + b'", "sco'
    with open(tmp_path / "out" / "scores.jsonl", "ab") as fh:  # kill -9 in the middle of the next row
        fh.write(partial)
    (tmp_path / "out" / "inbox" / ".x.dcm.tmp-999999999-ab12").write_bytes(b"half")  # a dead writer's temporary

    again = Store(tmp_path / "out")
    assert again.recovered == {"cut_bytes": len(partial), "damaged_lines": 1, "temporaries": 1, "already_scored": 1}
    assert [q.uid for q in again.queued()] == [waiting_uid]  # scored again: its row never completed
    assert again.processed == {scored_uid}
    assert [r["sop_instance_uid"] for r in again.rows()] == [scored_uid]
    again.close()


def test_forward_destination_is_parsed_or_refused_with_the_expected_form() -> None:
    assert str(parse_forward("PACS@10.0.0.5:104")) == "PACS@10.0.0.5:104"
    from salad.errors import SaladError

    with pytest.raises(SaladError, match=r"--forward 'PACS@host': expected AE@HOST:PORT, e\.g\. PACS@10\.0\.0\.5:104"):
        parse_forward("PACS@host")


def test_command_line_errors_are_one_line(tmp_path: Path) -> None:
    from salad.cli import main

    result = CliRunner().invoke(main, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip() == (  # a usage error (ConfigError)
        "error: salad serve needs BUNDLE and --out RESULTS (or --check to test a running node)."
    )
    port = free_port()  # nothing listens there
    result = CliRunner().invoke(main, ["serve", "--check", "--port", str(port)])
    assert result.exit_code == 1
    assert f"error: no DICOM node answered at SALAD@127.0.0.1:{port}" in result.output and "Traceback" not in result.output


def test_without_the_dicom_extra_help_works_and_serve_names_the_extra(tmp_path: Path) -> None:
    blocker = (
        "import importlib.abc, sys\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pynetdicom', 'highdicom', 'torch', 'onnx'):\n"
        "            raise ModuleNotFoundError(f'{name} is blocked', name=name.split('.')[0])\n"
        "sys.meta_path.insert(0, B())\n"
        "from salad.cli import main\n"
        "main(args=sys.argv[1:], prog_name='salad')\n"
    )
    listed = subprocess.run([sys.executable, "-c", blocker, "--help"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "  serve " in listed.stdout, listed.stderr
    refused = subprocess.run([sys.executable, "-c", blocker, "serve", str(tmp_path), "--out", str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "error: `salad serve` needs pynetdicom and highdicom (highdicom is not installed): pip install 'salad-edge[dicom]'."
    ]
