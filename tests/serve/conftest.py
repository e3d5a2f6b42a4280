"""`salad serve` as a console runs it: a subprocess without torch or onnx, fed by pynetdicom's own storescu."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import UID, generate_uid

#: `salad serve` in a fresh interpreter where torch and onnx cannot be imported (a console's install).
_SERVE = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx"):
            raise ModuleNotFoundError(f"{name} is blocked: a console has no {name}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from salad.cli import main
main(args=sys.argv[1:], prog_name="salad")
"""
CR = "1.2.840.10008.5.1.4.1.1.1"


@pytest.fixture(scope="session")
def serve_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard bundle of the session's tiny run."""
    export = pytest.importorskip("salad.export", reason="salad.export needs the train extra")
    return Path(export.export_bundle(tiny_run, tmp_path_factory.mktemp("serve") / "tiny"))


def testdata(name: str) -> Path:
    pytest.importorskip("data_store", reason="pydicom-data is not installed (pip install pydicom-data)")
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file(name)))


@pytest.fixture(scope="session")
def films(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """pydicom-data's CR films (raw, JPEG 2000 lossless and lossy), a JPEG Lossless one, an MR and a CT.

    pydicom-data has no JPEG Lossless CR: its JPEG Lossless SV1 film (JPEG-LL.dcm, NM) is relabelled CR, as in
    tests/runtime/test_input_scoring.py, with its pixel data untouched, and its BodyPartExamined (WHOLE BODY)
    removed: the node scores chest films and films that do not state a body part (serve/admission.py).
    """
    folder = tmp_path_factory.mktemp("films")
    ds = pydicom.dcmread(testdata("JPEG-LL.dcm"))
    ds.Modality = "CR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(CR)
    del ds.BodyPartExamined
    ds.save_as(folder / "jpeg-lossless-cr.dcm", enforce_file_format=True)
    return {
        "raw": testdata("RG1_UNCR.dcm"),
        "j2k-lossless": testdata("RG1_J2KR.dcm"),
        "j2k": testdata("RG1_J2KI.dcm"),
        "jpeg-lossless": folder / "jpeg-lossless-cr.dcm",
        "mr": testdata("MR2_UNCR.dcm"),
        "ct": testdata("693_UNCR.dcm"),
    }


def copies(source: Path, folder: Path, n: int) -> list[Path]:
    """`n` copies of a real film, each a new instance (new SOP Instance UID), as a load test sends them."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    out = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"copy-{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A running `salad serve` subprocess, its log file and results folder."""

    proc: subprocess.Popen[bytes]
    log: Path
    out: Path
    port: int | None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text()):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"salad serve exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the log after {timeout} s:\n{self.text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def serve(bundle: Path, out: Path, *args: str, port: int | None = None, log_name: str = "serve.log") -> Served:
    """Start `salad serve BUNDLE --out OUT ARGS` (on 127.0.0.1:`port` when given) and wait until it is ready."""
    log = out.parent / log_name
    cmd = [sys.executable, "-c", _SERVE, "serve", str(bundle), "--out", str(out), "--threads", "1", *args]
    if port is not None:
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    served = Served(proc, log, out, port)
    served.wait_for(r"INFO ready: ")
    return served


@pytest.fixture
def nodes() -> Iterator[list[Served]]:
    """Started nodes, stopped (SIGKILL) after the test whatever happened."""
    started: list[Served] = []
    yield started
    for node in started:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(30)


def storescu(port: int, *files: Path, called: str = "SALAD") -> dict[str, str]:
    """Send `files` with pynetdicom's own storescu application (a separate process); file → status it received.

    A file that got no response at all is sent once more, as a modality retries: on a loaded machine
    pynetdicom's SCU can lose a response to its own reactor thread (pydicom/pynetdicom#875) and abort.
    """
    statuses: dict[str, str] = {}
    for _attempt in range(2):
        todo = [f for f in files if statuses.get(str(Path(f).resolve()), "none") == "none"]
        if not todo:
            break
        cmd = [sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port), *map(str, todo), "-aec", called, "-cx", "-v"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        statuses.update(store_statuses(done.stdout + done.stderr))
    return statuses


def store_statuses(log: str) -> dict[str, str]:
    """storescu -v's log → {file sent: 'Status: 0x0000' …}; a file without a response maps to 'none'."""
    statuses: dict[str, str] = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Sending file: (.+)$", line)
        if m:
            current = m.group(1).strip()
            statuses[current] = "none"
            continue
        m = re.search(r"Received Store Response \(Status: (0x[0-9A-Fa-f]{4})", line)
        if m and current is not None:
            statuses[current] = m.group(1).lower()
    return statuses


def rows(out: Path) -> list[dict[str, Any]]:
    path = out / "scores.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(predicate: Any, timeout: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
