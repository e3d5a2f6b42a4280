"""DICOM node load and fault benchmark: 1,000 C-STOREs over 4 concurrent associations into `salad serve`.

Acceptance (issue 18): 1,000 rows, 0 lost, 0 duplicates; throughput and p50/p95 acceptance-to-score latency;
memory flat; kill -9 during the load and a restart score every acknowledged instance exactly once; the same
for the watch folder with files copied in while the node is down.

Films: pydicom-data's CR films (raw RG3_UNCR, JPEG 2000 RG3_J2KI and RG1_J2KI) and its JPEG Lossless film
relabelled CR, cycled, each copy a new instance (new SOP Instance UID); their BodyPartExamined (EXTREMITY, WHOLE
BODY) is removed, since the node scores chest films and films that state no body part (serve/admission.py).
Senders: pynetdicom's own storescu application, one process per association. The node: `salad serve` as a subprocess, sampled for RSS.

Phases: `steady` (the load, measured: a burst, so latency there is mostly the backlog), `kill` (the load again
into a fresh results folder; kill -9 after --kill-after rows, restart, then each sender re-sends what it was not
acknowledged, as a modality does),
`watch` (--watch-files copied into a watch folder, kill -9 half way, the rest copied while it is down),
`paced` (one association, one film every --paced-interval s: the latency a console sees below capacity),
`throughput` (--throughput-n films as fast as the senders go, once per count in --throughput-associations).
`--serve-from DIR` runs the node from another checkout's serve/ folder (the rest of the toolkit as installed), so a
change to the node can be measured against the code before it in one run, under the same load; `--reader-from DIR`
does the same for reading and preprocessing a film (dicom_display.py, imageio.py and preprocess.py from another checkout's
salad/); the two may be given together.
Usage: python benchmarks/dicom_load.py BUNDLE [--n 1000] [--associations 4] [--out benchmarks/results/dicom]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import UID, generate_uid

from salad.runtime.bench import library_versions, machine_info

FILMS = ("RG3_UNCR.dcm", "RG3_J2KI.dcm", "RG1_J2KI.dcm", "JPEG-LL.dcm")
CR = UID("1.2.840.10008.5.1.4.1.1.1")
LIBRARIES = ("salad-edge", "numpy", "pydicom", "pynetdicom", "highdicom", "onnxruntime", "pylibjpeg-openjpeg", "psutil")


def make_films(folder: Path, n: int, senders: int) -> list[list[Path]]:
    """n real CR films (cycled, each a new instance), dealt round-robin into one folder per sender."""
    sources = []
    for name in FILMS:
        ds = pydicom.dcmread(str(get_testdata_file(name)))
        if ds.get("Modality") != "CR":  # JPEG-LL.dcm (NM): the pydicom-data JPEG Lossless film, sent as a CR plate sends it
            ds.Modality = "CR"
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR
        ds.pop("BodyPartExamined", None)  # the tibia and the bone scan: not refused as non-chest, the load is the same
        sources.append(ds)
    groups: list[list[Path]] = [[] for _ in range(senders)]
    for i in range(n):
        ds = sources[i % len(sources)]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"sender{i % senders}" / f"{i:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        groups[i % senders].append(path)
    return groups


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Loads salad.serve from the folder given as the next argument (--serve-from), before anything imports it.
_SERVE_FROM = """
folder = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location("salad.serve", folder + "/__init__.py", submodule_search_locations=[folder])
module = importlib.util.module_from_spec(spec)
sys.modules["salad.serve"] = module
spec.loader.exec_module(module)
salad.serve = module
"""
#: Loads salad.dicom_display, salad.imageio and salad.preprocess (reading and preprocessing a film) from the salad/
#: folder given as the next argument (--reader-from), before anything imports them.
_READER_FROM = """
folder = sys.argv.pop(1)
for name in ("dicom_display", "imageio", "preprocess"):
    spec = importlib.util.spec_from_file_location("salad." + name, folder + "/" + name + ".py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["salad." + name] = module
    spec.loader.exec_module(module)
    setattr(salad, name, module)
"""
_LAUNCH = ("import importlib.util, sys\nimport salad\n{reader}{serve}"
           "from salad.cli import main\nmain(args=sys.argv[1:], prog_name='salad')\n")
#: The node's code: None is the installed salad.serve; a folder is another checkout's serve/ (--serve-from).
SERVE_FROM: Path | None = None
#: The node's film reader and preprocessing: None is the installed ones; a folder is another checkout's salad/.
READER_FROM: Path | None = None
#: The bundle's graph variant the node runs (`salad serve --precision`; --precision here).
PRECISION = "fp32"


class Node:
    """`salad serve` in a subprocess, with an RSS sampler."""

    def __init__(self, bundle: Path, out: Path, log: Path, *args: str) -> None:
        launch = ["-m", "salad.cli"]
        if SERVE_FROM is not None or READER_FROM is not None:  # the reader's folder first, then the node's
            code = _LAUNCH.format(reader=_READER_FROM if READER_FROM else "", serve=_SERVE_FROM if SERVE_FROM else "")
            launch = ["-c", code, *(str(f) for f in (READER_FROM, SERVE_FROM) if f is not None)]
        cmd = [sys.executable, *launch, "serve", str(bundle), "--out", str(out), "--status-every", "10",
               "--precision", PRECISION, *args]
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        deadline = time.monotonic() + 120
        while "INFO ready: " not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"salad serve did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        proc = psutil.Process(self.proc.pid)
        while not self._stop.wait(0.5):
            try:
                self.rss.append((time.monotonic() - self._t0, proc.memory_info().rss / 2**20))
            except psutil.Error:
                return

    def kill(self) -> None:
        self._stop.set()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)

    def stop(self) -> int:
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(600)


def storescu(port: int, files: list[Path], log: Path) -> subprocess.Popen[bytes]:
    listing = log.with_suffix(".files")
    folder = listing.parent / (listing.stem + "-send")
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:  # storescu takes a folder: hard links keep the send list exact without copying films
        target = folder / f.name
        if not target.exists():
            os.link(f, target)
    cmd = [sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port), str(folder), "-aec", "SALAD", "-cx", "-v"]
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)


def acknowledged(log: Path) -> set[str]:
    """File names storescu got a 0x0000 for, from its -v log."""
    ok, current = set(), None
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"Sending file: (.+)$", line)
        if m:
            current = Path(m.group(1).strip()).name
        elif current and "Received Store Response (Status: 0x0000" in line:
            ok.add(current)
    return ok


def rows(out: Path) -> list[dict[str, Any]]:
    path = out / "scores.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def wait_rows(out: Path, n: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while len(rows(out)) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"{out}: {len(rows(out))} rows after {timeout} s; expected {n}")
        time.sleep(0.5)


def check(got: list[dict[str, Any]], expected_uids: set[str]) -> dict[str, int]:
    counts = Counter(r["sop_instance_uid"] for r in got)
    return {
        "rows": len(got),
        "errors": sum(1 for r in got if "error" in r),
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "lost": len(expected_uids - set(counts)),
        "unexpected": len(set(counts) - expected_uids),
    }


def memory(rss: list[tuple[float, float]]) -> dict[str, float]:
    values = np.array([mb for _, mb in rss])
    if values.size < 4:
        return {}
    quarter = values.size // 4
    return {
        "start_mb": round(float(values[0]), 1),
        "after_first_quarter_mb": round(float(values[quarter]), 1),
        "end_mb": round(float(values[-1]), 1),
        "max_mb": round(float(values.max()), 1),
        "growth_after_first_quarter_mb": round(float(values[-1] - values[quarter]), 1),
        "samples": int(values.size),
    }


def steady(bundle: Path, work: Path, groups: list[list[Path]], tag: str = "steady") -> dict[str, Any]:
    """Every film of `groups` sent at once, one storescu process (association) per group: throughput and memory."""
    out, port = work / tag, free_port()
    node = Node(bundle, out, work / f"{tag}.log", "--host", "127.0.0.1", "--port", str(port))
    t0 = time.monotonic()
    senders = [storescu(port, g, work / f"{tag}-sender{i}.log") for i, g in enumerate(groups)]
    for s in senders:
        s.wait()
    sent_s = time.monotonic() - t0
    n = sum(len(g) for g in groups)
    wait_rows(out, n)
    wall = time.monotonic() - t0
    node.stop()
    got = rows(out)
    acked = set().union(*(acknowledged(work / f"{tag}-sender{i}.log") for i in range(len(groups))))
    lat = np.array([r["timings"]["latency_ms"] for r in got if "timings" in r])
    pre = np.array([r["timings"]["preprocess_ms"] for r in got if "timings" in r])
    batches = Counter(r["timings"]["batch_size"] for r in got if "timings" in r)
    return {
        "sent": n,
        "acknowledged": len(acked),
        **check(got, {uid_of(p) for g in groups for p in g}),
        "seconds_to_send": round(sent_s, 1),
        "seconds_to_last_row": round(wall, 1),
        "throughput_films_per_s": round(n / wall, 2),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p95": round(float(np.percentile(lat, 95)), 1),
                       "max": round(float(lat.max()), 1)},
        "preprocess_ms_median": round(float(np.median(pre)), 1),
        "batch_sizes": {str(k): v for k, v in sorted(batches.items())},
        "memory": memory(node.rss),
    }


def throughput(bundle: Path, work: Path, n: int, associations: list[int]) -> dict[str, Any]:
    """Films per second from the first send to the last row, for each number of concurrent associations."""
    out: dict[str, Any] = {}
    for count in associations:
        groups = make_films(work / f"throughput-films-{count}", n, count)
        result = steady(bundle, work, groups, tag=f"throughput{count}")
        kept = ("sent", "acknowledged", "rows", "lost", "duplicates", "errors", "unexpected", "seconds_to_send",
                "seconds_to_last_row", "throughput_films_per_s", "preprocess_ms_median", "batch_sizes")
        out[str(count)] = {"load_average_at_end": _load(), **{k: result[k] for k in kept}}
        print(json.dumps({f"throughput, {count} association(s)": out[str(count)]}, indent=2), flush=True)
    return out


def kill_restart(bundle: Path, work: Path, groups: list[list[Path]], kill_after: int) -> dict[str, Any]:
    out, port = work / "kill", free_port()
    node = Node(bundle, out, work / "kill.log", "--host", "127.0.0.1", "--port", str(port))
    logs = [work / f"kill-sender{i}.log" for i in range(len(groups))]
    senders = [storescu(port, g, log) for g, log in zip(groups, logs, strict=True)]
    wait_rows(out, kill_after)
    node.kill()
    for s in senders:
        s.wait(300)
    rows_at_kill = len(rows(out))
    acked_before = set().union(*(acknowledged(log) for log in logs))
    queued_at_kill = len(list((out / "inbox").glob("*.dcm")))
    node = Node(bundle, out, work / "kill-restart.log", "--host", "127.0.0.1", "--port", str(port))
    # a modality re-sends what was not acknowledged, until it is (a failed C-STORE is retried, as on a console)
    pending = [p for g in groups for p in g if p.name not in acked_before]
    rounds, resent = 0, 0
    while pending and rounds < 5:
        chunks = [pending[i :: len(groups)] for i in range(len(groups))]
        logs2 = [work / f"kill-resend{rounds}-{i}.log" for i in range(len(groups))]
        senders = [storescu(port, c, log) for c, log in zip(chunks, logs2, strict=True) if c]
        for s in senders:
            s.wait(600)
        resent += len(pending)
        acked_now = set().union(*(acknowledged(log) for log in logs2 if log.exists()))
        pending = [p for p in pending if p.name not in acked_now]
        rounds += 1
    n = sum(len(g) for g in groups)
    wait_rows(out, n - len(pending))
    node.stop()
    got = rows(out)
    counts = Counter(r["sop_instance_uid"] for r in got)
    acked_uids = {uid_of(p) for g in groups for p in g if p.name in acked_before}
    return {
        "sent": n,
        "killed_after_rows": rows_at_kill,
        "acknowledged_before_kill": len(acked_before),
        "queued_on_disk_at_kill": queued_at_kill,
        "resent_after_restart": resent,
        "resend_rounds": rounds,
        **check(got, {uid_of(p) for g in groups for p in g}),
        "acknowledged_scored_exactly_once": sum(1 for u in acked_uids if counts[u] == 1),
    }


def watch_fault(bundle: Path, work: Path, files: list[Path]) -> dict[str, Any]:
    folder, out = work / "watched", work / "watch-out"
    folder.mkdir()
    node = Node(bundle, out, work / "watch.log", "--watch", str(folder), "--settle", "0.5")
    half = len(files) // 2
    for f in files[:half]:  # rename into place, as an exporter should
        shutil.copy(f, folder / f".{f.name}.part")
        os.replace(folder / f".{f.name}.part", folder / f.name)
    wait_rows(out, half // 2)
    node.kill()
    rows_at_kill = len(rows(out))
    for f in files[half:]:  # copied in while the node is down
        shutil.copy(f, folder / f.name)
    node = Node(bundle, out, work / "watch-restart.log", "--watch", str(folder), "--settle", "0.5")
    wait_rows(out, len(files))
    time.sleep(3)  # a duplicate row would come now
    node.stop()
    return {"files": len(files), "killed_after_rows": rows_at_kill, **check(rows(out), {uid_of(p) for p in files})}


def paced(bundle: Path, work: Path, files: list[Path], interval_s: float) -> dict[str, Any]:
    """One association sending a film every `interval_s` (a console's pace, below capacity): ack-to-score latency."""
    from pynetdicom import AE

    out, port = work / "paced", free_port()
    node = Node(bundle, out, work / "paced.log", "--host", "127.0.0.1", "--port", str(port))
    ae = AE(ae_title="PACED")
    for ds in {(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in map(_header, files)}:
        ae.add_requested_context(*ds)
    assoc = ae.associate("127.0.0.1", port, ae_title="SALAD")
    if not assoc.is_established:
        raise SystemExit("paced: no association")
    ack_ms, acked = [], {}  # the sender's round trip; the wall-clock time each film's ack reached the sender
    start = time.monotonic()
    for i, path in enumerate(files):
        time.sleep(max(0.0, start + i * interval_s - time.monotonic()))
        t = time.perf_counter()
        status = assoc.send_c_store(path)
        ack_ms.append((time.perf_counter() - t) * 1000)
        acked[uid_of(path)] = time.time()
        if not status or status.Status != 0:
            raise SystemExit(f"paced: {path} not stored ({status})")
    assoc.release()
    wait_rows(out, len(files))
    node.stop()
    got = rows(out)
    shutil.copy(out / "scores.jsonl", work / "paced-scores.jsonl")  # each film's timings travel with the results
    lat = np.array([r["timings"]["latency_ms"] for r in got])
    decode = np.array([r["timings"]["preprocess_ms"] for r in got])
    rest = lat - decode - np.array([r["timings"]["inference_ms"] for r in got])
    # the row's time (`scored`, ms) less the ack's arrival at the sender: the node's latency_ms counts from the inbox
    # file's mtime, before its fsyncs, so it includes the durable write the ack waits for; this starts at the ack itself
    seen = np.array([(datetime.fromisoformat(r["scored"]).timestamp() - acked[r["sop_instance_uid"]]) * 1000 for r in got])
    source = {uid_of(path): FILMS[i % len(FILMS)] for i, path in enumerate(files)}  # make_films cycles FILMS
    by_film = {}
    for name in FILMS:
        mine = [i for i, r in enumerate(got) if source.get(r["sop_instance_uid"]) == name]
        if mine:
            by_film[name] = {"films": len(mine), "latency_ms_p50": round(float(np.median(lat[mine])), 1),
                             "decode_preprocess_ms_p50": round(float(np.median(decode[mine])), 1),
                             "beyond_decode_and_inference_ms_p50": round(float(np.median(rest[mine])), 1),
                             "sender_ack_to_row_ms_p50": round(float(np.median(seen[mine])), 1),
                             "inference_ms_p50": round(float(np.median(lat[mine] - decode[mine] - rest[mine])), 1)}
    return {
        "sent": len(files), "interval_s": interval_s, **check(got, {uid_of(p) for p in files}), "load_average_at_end": _load(),
        "c_store_round_trip_ms": {"p50": round(float(np.percentile(ack_ms, 50)), 1), "p95": round(float(np.percentile(ack_ms, 95)), 1)},
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p95": round(float(np.percentile(lat, 95)), 1),
                       "max": round(float(lat.max()), 1)},
        "sender_ack_to_row_ms": {"p50": round(float(np.percentile(seen, 50)), 1), "p95": round(float(np.percentile(seen, 95)), 1)},
        # the Scorer's read, decode and preprocessing of the film; what remains besides inference is the node's own work
        "decode_preprocess_ms": {"p50": round(float(np.percentile(decode, 50)), 1), "p95": round(float(np.percentile(decode, 95)), 1)},
        "beyond_decode_and_inference_ms": {"p50": round(float(np.percentile(rest, 50)), 1),
                                           "p95": round(float(np.percentile(rest, 95)), 1)},
        "batch_sizes": {str(k): v for k, v in sorted(Counter(r["timings"]["batch_size"] for r in got).items())},
        "by_film": by_film,
        "memory": memory(node.rss),
    }


def _load() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (the figures beside it were measured under this load)."""
    return [round(x, 2) for x in os.getloadavg()]


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _table_rows(result: dict[str, Any]) -> list[str]:
    """One table row per phase this result holds."""
    s, k, w, p = (result.get(name) for name in ("steady", "kill", "watch", "paced"))
    lines = []
    if s:
        lines.append(f"| steady | {s['sent']} | {s['rows']} | {s['lost']} | {s['duplicates']} | {s['errors']} | "
                     f"{s['throughput_films_per_s']} films/s; latency p50 {s['latency_ms']['p50']} ms, p95 {s['latency_ms']['p95']} ms |")
    if k:
        lines.append(
            f"| kill -9 + restart | {k['sent']} | {k['rows']} | {k['lost']} | {k['duplicates']} | {k['errors']} | killed after "
            f"{k['killed_after_rows']} rows with {k['queued_on_disk_at_kill']} queued on disk and "
            f"{k['sent'] - k['acknowledged_before_kill']} not yet acknowledged (re-sent after the restart, "
            f"{k.get('resend_rounds', 1)} round(s)); "
            f"{k['acknowledged_scored_exactly_once']} of {k['acknowledged_before_kill']} acknowledged before the kill "
            "scored exactly once |")
    if w:
        lines.append(f"| watch folder, kill -9, files copied while down | {w['files']} | {w['rows']} | {w['lost']} | "
                     f"{w['duplicates']} | {w['errors']} | killed after {w['killed_after_rows']} rows |")
    if p:
        beyond = p.get("beyond_decode_and_inference_ms")
        lines.append(
            f"| paced, one film every {p['interval_s']} s | {p['sent']} | {p['rows']} | {p['lost']} | {p['duplicates']} | "
            f"{p['errors']} | ack → row p50 {p['latency_ms']['p50']} ms, p95 {p['latency_ms']['p95']} ms"
            + (f" (decode + preprocessing p50 {p['decode_preprocess_ms']['p50']} ms; the node's own work p50 {beyond['p50']} ms)"
               if beyond else "")
            + (f"; ack at the sender → row p50 {p['sender_ack_to_row_ms']['p50']} ms" if "sender_ack_to_row_ms" in p else "")
            + f"; C-STORE round trip p50 {p['c_store_round_trip_ms']['p50']} ms |")
    for name, f in (p or {}).get("by_film", {}).items():
        lines.append(f"| paced: {name} | {f['films']} | | | | | ack → row p50 {f['latency_ms_p50']} ms (decode + preprocessing "
                     f"{f['decode_preprocess_ms_p50']} ms, "
                     + (f"inference {f['inference_ms_p50']} ms, " if "inference_ms_p50" in f else "")
                     + f"the node's own work {f['beyond_decode_and_inference_ms_p50']} ms)"
                     + (f"; ack at the sender → row p50 {f['sender_ack_to_row_ms_p50']} ms" if "sender_ack_to_row_ms_p50" in f else "")
                     + " |")
    for count, t in result.get("throughput", {}).items():
        lines.append(f"| throughput, {count} association(s) | {t['sent']} | {t['rows']} | {t['lost']} | {t['duplicates']} | "
                     f"{t['errors']} | {t['throughput_films_per_s']} films/s (first send to last row, {t['seconds_to_last_row']} s);"
                     f" batch sizes {t['batch_sizes']} |")
    return lines


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    s = result.get("steady")
    node = f" Node code: {result['serve_from']}." if result.get("serve_from") else ""
    node += f" Film reader and preprocessing: {result['reader_from']}." if result.get("reader_from") else ""
    lines = [
        "# DICOM node load (benchmarks/dicom_load.py)",
        "",
        f"{result['machine'].get('cpu', '?')}, {result['machine'].get('cpus_usable', '?')} usable CPUs, run niced beside other work "
        f"(load average {result.get('load_average_at_start', '?')} at start, {result.get('load_average_at_end', '?')} at the end); "
        f"bundle {result['bundle']} ({result['runtime']}).{node} C-STOREs from pynetdicom (storescu processes, one per "
        "association; the paced phase's SCU in the harness), pydicom-data CR films cycled as new instances.",
        "",
        "| phase | sent | rows | lost | duplicates | errors | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
        *_table_rows(result),
    ]
    if s:
        m = s["memory"]
        lines += [
            "",
            f"Steady phase ({s['sent']} films over {result['associations']} associations): all sent in {s['seconds_to_send']} s "
            f"(acknowledged on disk), last row after {s['seconds_to_last_row']} s; decode + preprocessing median "
            f"{s['preprocess_ms_median']} ms per film; batch sizes {s['batch_sizes']}.",
            f"Node RSS: {m.get('start_mb')} MB at start, {m.get('after_first_quarter_mb')} MB after the first quarter, "
            f"{m.get('end_mb')} MB at the end (max {m.get('max_mb')} MB; {m.get('samples')} samples every 0.5 s).",
        ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--associations", type=int, default=4)
    ap.add_argument("--kill-after", type=int, default=300, help="rows before the kill -9 of the fault phase")
    ap.add_argument("--watch-files", type=int, default=200)
    ap.add_argument("--paced-files", type=int, default=120)
    ap.add_argument("--paced-interval", type=float, default=1.0, help="seconds between films in the paced phase")
    ap.add_argument("--phases", default="steady,kill,watch,paced",
                    help="comma-separated; phases not run keep their figures from an existing OUT/load.json")
    ap.add_argument("--throughput-n", type=int, default=200, help="films per run of the throughput phase")
    ap.add_argument("--throughput-associations", default="1,4", help="comma-separated association counts")
    ap.add_argument("--serve-from", type=Path, default=None, help="run the node from this serve/ folder (another checkout's)")
    ap.add_argument("--reader-from", type=Path, default=None,
                    help="run the node with dicom_display.py, imageio.py and preprocess.py from this folder (another checkout's salad/)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="the graph variant the node runs")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dicom")
    args = ap.parse_args(argv)
    phases = args.phases.split(",")
    global SERVE_FROM, READER_FROM, PRECISION
    PRECISION = args.precision
    SERVE_FROM = args.serve_from.resolve() if args.serve_from else None
    READER_FROM = args.reader_from.resolve() if args.reader_from else None
    with tempfile.TemporaryDirectory(prefix="dicom-load-") as tmp:
        work = Path(tmp)
        previous = args.out / "load.json"
        result: dict[str, Any] = json.loads(previous.read_text()) if previous.exists() else {}
        result.update({
            "bundle": str(args.bundle), "runtime": f"onnxruntime/{PRECISION}", "associations": args.associations,
            "films": list(FILMS), "machine": machine_info(), "libraries": library_versions(LIBRARIES),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "serve_from": str(SERVE_FROM or "") or None,
            "reader_from": str(READER_FROM or "") or None,
        })
        groups = make_films(work / "films", args.n, args.associations) if {"steady", "kill"} & set(phases) else []
        if "steady" in phases:
            result["steady"] = steady(args.bundle, work, groups)
            print(json.dumps(result["steady"], indent=2), flush=True)
        if "kill" in phases:
            result["kill"] = kill_restart(args.bundle, work, groups, args.kill_after)
            print(json.dumps(result["kill"], indent=2), flush=True)
        if "watch" in phases:
            watch_files = make_films(work / "watch-films", args.watch_files, 1)[0]
            result["watch"] = watch_fault(args.bundle, work, watch_files)
            print(json.dumps(result["watch"], indent=2), flush=True)
        if "paced" in phases:
            paced_files = make_films(work / "paced-films", args.paced_files, 1)[0]
            result["paced"] = paced(args.bundle, work, paced_files, args.paced_interval)
            print(json.dumps(result["paced"], indent=2), flush=True)
        if "throughput" in phases:
            counts = [int(c) for c in args.throughput_associations.split(",")]
            result["throughput"] = throughput(args.bundle, work, args.throughput_n, counts)
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load.json").write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(args.out / "load.md", result)
        # the node's own logs (status lines) and the paced phase's rows travel with the results
        for log in sorted([*work.glob("*.log"), *work.glob("paced-scores.jsonl")]):
            if not log.name.startswith(("steady-sender", "kill-sender", "kill-resend")) and "-sender" not in log.name:
                shutil.copy(log, args.out / log.name)
    checked = [result[p] for p in phases if p != "throughput"] + list(result.get("throughput", {}).values())
    failed = [r for r in checked if r["lost"] or r["duplicates"] or r["unexpected"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
