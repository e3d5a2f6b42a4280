"""A batch is committed as a whole (serve/worker.py, on the Scorer's batch-scored event): its SRs, then its rows with one
fsync, then its inbox entries.

The node's own parts run in this process on the session's tiny bundle, fed through intake as a C-STORE would be, so
the batch holds exactly the films under test (a running node would score them as they arrive, one at a time).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pydicom
import pytest

from tests.serve.test_durability import small_film

pytest.importorskip("highdicom", reason="salad serve needs the dicom extra (pip install 'salad-edge[dicom]')")


def test_two_films_under_one_uid_in_one_batch_get_two_rows_and_two_srs_the_second_naming_the_collision(
    serve_bundle: Path, tmp_path: Path
) -> None:
    from pydicom.uid import generate_uid

    from salad.serve.intake import Intake
    from salad.serve.node import Node, NodeConfig
    from salad.serve.rows import Received
    from salad.serve.store import Store
    from salad.serve.worker import Worker

    uid = str(generate_uid())
    films = [small_film(tmp_path / "a.dcm", uid=uid), small_film(tmp_path / "b.dcm", uid=uid, flip=True)]
    out = tmp_path / "out"
    node = Node(NodeConfig(bundle=serve_bundle, out=out, port=None, threads=1))
    store = Store(out)
    try:
        received = Received()
        intake = Intake(node.config, store, node.judge, node.stats, node.audit, received, node.wake)
        for path in films:
            data = path.read_bytes()
            header = pydicom.dcmread(path, stop_before_pixels=True)
            assert intake.receive(str(header.SOPClassUID), header, data, str(header.file_meta.TransferSyntaxUID), "TEST@127.0.0.1") == 0
        items = store.queued()
        assert [q.uid for q in items] == [uid, uid]
        worker = Worker(node.config, store, node.scorer, node.judge, node._reports(store), node.stats, received, node.wake,
                        threading.Event())
        with worker.listening():  # its rows and SRs hear the Scorer's events; `commit` makes the batch durable
            assert worker.score(items)
    finally:
        node.scorer.close()
        store.close()
    got = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["sop_instance_uid"] for r in got] == [uid, uid] and got[0]["pixel_sha256"] != got[1]["pixel_sha256"]
    assert "collision" not in got[0] and "already has a scored row for a different film" in got[1]["collision"]
    srs = [pydicom.dcmread(out / r["sr"]) for r in got]
    assert srs[0].SOPInstanceUID != srs[1].SOPInstanceUID  # a PACS keeps both reports
    assert all(sr.ContentSequence[-1].ContentSequence[0].ContentSequence[-1].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
               == uid for sr in srs)
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert sorted(a["sr_sop_instance_uid"] for a in audit if a["event"] == "sr") == sorted(str(sr.SOPInstanceUID) for sr in srs)
    assert list((out / "inbox").iterdir()) == []  # both rows written, both entries gone
