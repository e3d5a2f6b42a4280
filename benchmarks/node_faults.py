"""The DICOM node's fault sweep (issue 24): no acknowledged film without a row or SR, no duplicate row, under every fault.

Each fault runs a real `salad serve` subprocess on a tiny bundle; films are real chest CRs (RG1_UNCR cut to
480x480, new UIDs) sent by a pynetdicom SCU (every C-STORE status kept) or exported into a watch folder; SRs go
to a pynetdicom Storage SCP standing in for a PACS. Checked after each: every acknowledged film (C-STORE 0x0000,
or complete in the watch folder) has a scored row and its SR, or an error row when sent broken on purpose; no
(SOP Instance UID, pixel sha256) has two scored rows; every line of scores.jsonl is a row; every SR reached
the PACS or deadletter/ with a reason.
Usage: nice -n 10 python benchmarks/node_faults.py --bundle BUNDLE [--seed 0]  (also: fault_sweep.py --node)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]

import salad
from salad.serve.ledger import film_key, pixel_sha256

BIN = Path(sys.executable).parent
OUT = Path(__file__).resolve().parent / "results" / "faults"


def film(path: Path, *, uid: str | None = None, flip: bool = False, truncate: bool = False) -> Path:
    """A real chest CR (RG1_UNCR) cut to 480x480 with new UIDs (or `uid`); flip: other pixels; truncate: half its pixel data."""
    ds = pydicom.dcmread(str(get_testdata_file("RG1_UNCR.dcm")))
    pixels = ds.pixel_array[700:1180, 680:1160]
    pixels = np.ascontiguousarray(pixels[:, ::-1] if flip else pixels)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()[: pixels.nbytes // 2] if truncate else pixels.tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(uid) if uid else generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def identity(path: Path) -> tuple[str, str]:
    """(SOP Instance UID, pixel sha256) of a film file: how the node tells films apart."""
    data = path.read_bytes()
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID), pixel_sha256(data)


class Node:
    """A `salad serve` subprocess with its log; start() waits until it is ready."""

    def __init__(self, bundle: Path, out: Path, *args: str, port: int | None = None, log: Path | None = None) -> None:
        self.out, self.port, self.log = out, port, log or out.parent / f"{out.name}.log"
        cmd = [str(BIN / "salad"), "serve", str(bundle), "--out", str(out), "--threads", "1", "--status-every", "1", *args]
        if port is not None:
            cmd += ["--host", "127.0.0.1", "--port", str(port)]
        self.cmd = cmd

    def start(self) -> Node:
        self.offset = self.log.stat().st_size if self.log.exists() else 0  # a restart appends: wait for its own lines
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.wait_for(r"INFO ready: ")
        return self

    def text(self) -> str:
        with open(self.log, "rb") as fh:
            fh.seek(self.offset)
            return fh.read().decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text()):
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"salad serve exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise SystemExit(f"no {pattern!r} in {self.log} after {timeout} s")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(180)

    def kill9(self) -> int:
        self.proc.kill()
        return self.proc.wait(30)


def send(port: int, files: list[Path], stop: threading.Event | None = None) -> dict[Path, int]:
    """C-STORE `files` over one association; file → status (-1: no answer, the association went away)."""
    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    statuses: dict[Path, int] = {f: -1 for f in files}
    assoc = ae.associate("127.0.0.1", port, ae_title="SALAD")
    if not assoc.is_established:
        return statuses
    try:
        for f in files:
            if stop is not None and stop.is_set():
                break
            with contextlib.suppress(Exception):
                status = assoc.send_c_store(f)
                statuses[f] = int(status.Status) if status and "Status" in status else -1
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows(out: Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of scores.jsonl and how many lines are not rows."""
    path = out / "scores.jsonl"
    got, bad = [], 0
    for line in path.read_bytes().split(b"\n")[:-1] if path.exists() else []:
        try:
            got.append(json.loads(line))
        except ValueError:
            bad += 1
    return got, bad


def audit(out: Path, acked: set[tuple[str, str]], broken: frozenset[str] | set[str] = frozenset(), srs: bool = True) -> dict[str, Any]:
    """The invariants over one results folder, as counts (and the films that break them)."""
    got, bad = rows(out)
    scored = Counter((r["sop_instance_uid"], r.get("pixel_sha256")) for r in got if r.get("label") is not None)
    errors = {r["sop_instance_uid"] for r in got if r.get("error") and "refused" not in r}
    lost = []
    for uid, sha in sorted(acked):
        if (uid, sha) in scored:
            if srs and not (out / "sr" / f"{film_key(uid, sha)}.dcm").exists():
                lost.append(f"{uid}: scored, no SR")
        elif not (uid in broken and uid in errors):
            lost.append(f"{uid}: acknowledged, no row")
    dups = {f"{k[0]}/{str(k[1])[:12]}": n for k, n in scored.items() if n > 1}
    return {"acknowledged": len(acked), "rows": len(got), "scored_rows": sum(scored.values()), "error_rows": len(errors),
            "refusal_rows": sum("refused" in r for r in got), "lines_not_rows": bad,
            "acknowledged_without_row_or_sr": len(lost), "duplicate_rows": sum(n - 1 for n in dups.values()),
            "problems": lost[:20] + [f"duplicate {k} x{n}" for k, n in dups.items()]}


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


class Pacs:
    """A pynetdicom Storage SCP for SRs (AE 'PACS', called AE checked) that refuses (0xA700) the SRs of films in `refuse`."""

    def __init__(self, port: int, refuse: set[str]) -> None:
        self.refuse, self.received = refuse, set[str]()
        ae = AE(ae_title="PACS")
        ae.require_called_aet = True
        ae.add_supported_context(ComprehensiveSRStorage)
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event: Any) -> int:
        ds = event.dataset
        ev = ds.CurrentRequestedProcedureEvidenceSequence[0]
        uid = str(ev.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        if uid in self.refuse:
            return 0xA700
        self.received.add(str(ds.SOPInstanceUID))
        return 0x0000

    def close(self) -> None:
        self.server.shutdown() if self.server is not None else None


def acked_of(statuses: dict[Path, int]) -> set[tuple[str, str]]:
    return {identity(f) for f, s in statuses.items() if s == 0}


def wait_drained(out: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and list((out / "inbox").glob("*.dcm")):
        time.sleep(0.2)


# -- the faults ----------------------------------------------------------------------------------------


def kill9_under_load(bundle: Path, work: Path, rng: random.Random, rounds: int, n: int) -> list[dict[str, Any]]:
    """Send n films; kill -9 the node once a random number of rows is written (films still queued, a batch in flight);
    restart; re-send what was not acknowledged; check. A row count, not a delay: a faster node must still be killed
    mid-load."""
    results = []
    for i in range(rounds):
        out, port = work / f"kill9-{i}", free_port()
        files = [film(work / f"kill9-{i}-films" / f"{k:03d}.dcm") for k in range(n)]
        node = Node(bundle, out, "--batch", "4", port=port).start()
        statuses: dict[Path, int] = {}
        sender = threading.Thread(target=lambda st=statuses, p=port, fs=files: st.update(send(p, fs)))
        sender.start()
        kill_after = rng.randint(1, n // 2)
        deadline = time.monotonic() + 120
        while len(rows(out)[0]) < kill_after and time.monotonic() < deadline:
            time.sleep(0.01)
        node.kill9()
        at_kill = {"rows_at_kill": len(rows(out)[0]), "queued_at_kill": len(list((out / "inbox").glob("*.dcm")))}
        sender.join(120)
        acked = acked_of(statuses)
        node = Node(bundle, out, "--batch", "4", port=port).start()
        again = send(port, [f for f in files if statuses.get(f) != 0])  # the modality re-sends what was not stored
        acked |= acked_of(again)
        wait_drained(out)
        node.stop()
        results.append({"fault": "kill -9 under load", "round": i, "kill_after_rows": kill_after, "sent": n,
                        "acked_before_kill": sum(s == 0 for s in statuses.values()), **at_kill, **audit(out, acked)})
    return results


def fill(disk: Path) -> Path:
    """Write a filler file until the disk is full (ENOSPC); remove it to free the space."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)
    return filler


def disk_full(bundle: Path, work: Path, sizes: list[str], n: int) -> list[dict[str, Any]]:
    """RESULTS on a tmpfs of each size: films and MR refusals until it fills, then a filler takes the rest and more are
    sent (rows and stores fail); kill -9, free and grow the disk, restart, re-send what was not acknowledged."""
    results = []
    mr = pydicom.dcmread(str(get_testdata_file("MR_small.dcm")))
    for size in sizes:
        disk, port = work / f"disk-{size}", free_port()
        files = [film(work / f"disk-{size}-films" / f"{k:03d}.dcm") for k in range(n)]
        mrs = []
        for k in range(n):
            mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            mrs.append(work / f"disk-{size}-films" / f"mr-{k:03d}.dcm")
            mr.save_as(mrs[-1], enforce_file_format=True)
        half = n // 2
        with tmpfs(disk, size):
            out = disk / "out"
            node = Node(bundle, out, port=port, log=work / f"disk-{size}.log").start()  # the log off the full disk
            statuses = send(port, [f for pair in zip(files[:half], mrs[:half], strict=True) for f in pair])
            time.sleep(2.0)
            filler = fill(disk)
            statuses |= send(port, [f for pair in zip(files[half:], mrs[half:], strict=True) for f in pair])
            time.sleep(2.0)  # scoring on the full disk: rows and SRs fail, films stay queued
            full_log = node.text()
            node.kill9()
            filler.unlink()
            subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
            node = Node(bundle, out, port=port, log=work / f"disk-{size}.log").start()
            again = send(port, [f for f in files if statuses.get(f) != 0])
            wait_drained(out)
            node.stop()
            acked = acked_of({f: s for f, s in statuses.items() if f in files}) | acked_of(again)
            results.append({"fault": "disk full (tmpfs)", "size": size, "sent": n, "mr_refusals_sent": n,
                            "acked_while_full": sum(statuses.get(f) == 0 for f in files),
                            "answered_a700": sum(s == 0xA700 for s in statuses.values()),
                            "row_write_failures_logged": full_log.count("cannot write a row"),
                            "restart_ok": "INFO ready: " in node.text(), **audit(out, acked)})
    return results


def duplicate_uids(bundle: Path, work: Path, pairs: int) -> dict[str, Any]:
    """Pairs of different films under one UID, then identical re-sends of all of them."""
    out, port, files = work / "dups", free_port(), []
    for k in range(pairs):
        uid = generate_uid()
        files += [film(work / "dup-films" / f"{k:03d}-a.dcm", uid=uid), film(work / "dup-films" / f"{k:03d}-b.dcm", uid=uid, flip=True)]
    node = Node(bundle, out, port=port).start()
    first = send(port, files)
    wait_drained(out)
    resent = send(port, files)
    wait_drained(out)
    node.stop()
    got, _ = rows(out)
    sr_uids = [str(pydicom.dcmread(out / r["sr"], stop_before_pixels=True).SOPInstanceUID) for r in got if r.get("sr")]
    return {"fault": "duplicate UIDs", "films": len(files), "uids": pairs, "resent": len(files),
            "resends_acked": sum(s == 0 for s in resent.values()), "rows_naming_a_collision": sum("collision" in r for r in got),
            # checked: each pair's second film names the collision, and no two SRs share a SOP Instance UID (a PACS keeps one)
            "collisions_unnamed": pairs - sum("collision" in r for r in got), "srs_sharing_a_uid": len(sr_uids) - len(set(sr_uids)),
            **audit(out, acked_of(first) | acked_of(resent))}


def resend_after_error(bundle: Path, work: Path, n: int) -> dict[str, Any]:
    """n films sent with half their pixel data (error rows), then re-sent whole under the same UIDs."""
    out, port = work / "resend", free_port()
    uids = [generate_uid() for _ in range(n)]
    broken = [film(work / "resend-films" / f"{k:03d}-broken.dcm", uid=u, truncate=True) for k, u in enumerate(uids)]
    fixed = [film(work / "resend-films" / f"{k:03d}-fixed.dcm", uid=u) for k, u in enumerate(uids)]
    node = Node(bundle, out, port=port).start()
    first = send(port, broken)
    wait_drained(out)
    second = send(port, fixed)
    wait_drained(out)
    node.stop()
    return {"fault": "re-send after an error row", "films": n, **audit(out, acked_of(first) | acked_of(second), broken=set(uids))}


def rejected_srs(bundle: Path, work: Path, n: int) -> list[dict[str, Any]]:
    """A PACS that refuses every third SR, and one behind a wrong called AE title: nothing blocked, every SR accounted for."""
    results: list[dict[str, Any]] = []
    for case in ("PACS refuses 1 in 3", "wrong called AE"):
        out, port, pacs_port = work / f"srs-{len(results)}", free_port(), free_port()
        files = [film(work / f"srs-films-{len(results)}" / f"{k:03d}.dcm") for k in range(n)]
        refuse = {identity(f)[0] for f in files[::3]} if case.startswith("PACS") else set()
        pacs = Pacs(pacs_port, refuse)
        called = "PACS" if case.startswith("PACS") else "WRONG"
        node = Node(bundle, out, "--forward", f"{called}@127.0.0.1:{pacs_port}", "--retry-max", "0.5", port=port).start()
        statuses = send(port, files)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (list((out / "inbox").glob("*.dcm")) or list((out / "outbox").glob("*.dcm"))):
            time.sleep(0.3)
        node.stop()
        pacs.close()
        dead = list((out / "deadletter").glob("*.dcm"))
        reasons = [json.loads(p.with_suffix(".reason.json").read_text())["reason"] for p in dead]
        sr_count = len(list((out / "sr").glob("*.dcm")))
        results.append({"fault": f"rejected SRs: {case}", "films": n, "srs": sr_count, "delivered": len(pacs.received),
                        "dead_lettered": len(dead), "dead_lettered_with_reason": sum(bool(r) for r in reasons),
                        "sr_unaccounted": sr_count - len(pacs.received) - len(dead), "example_reason": reasons[0] if reasons else None,
                        **audit(out, acked_of(statuses))})
    return results


def watch_folder(bundle: Path, work: Path, rng: random.Random, n: int) -> dict[str, Any]:
    """Slow writers (each film in 2-4 chunks, pauses longer than --settle), a 64 GiB sparse file, symlinks out."""
    watch, out, elsewhere = work / "watch", work / "watch-out", work / "elsewhere"
    watch.mkdir(parents=True)
    outside = [film(elsewhere / f"outside-{k}.dcm") for k in range(3)]
    node = Node(bundle, out, "--watch", str(watch), "--settle", "0.3").start()
    with open(watch / "huge.dcm", "wb") as fh:
        fh.truncate(64 << 30)
    for k, target in enumerate(outside):
        (watch / f"link-out-{k}.dcm").symlink_to(target)
    (watch / "passwd").symlink_to("/etc/passwd")
    (watch / "folder-out").symlink_to(elsewhere, target_is_directory=True)
    written = []
    for k in range(n):
        data = film(work / "slow-src" / f"{k:03d}.dcm").read_bytes()
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 3)))
        with open(watch / f"slow-{k:03d}.dcm", "wb") as fh:
            for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
                fh.write(data[a:b])
                fh.flush()
                if b < len(data):
                    time.sleep(rng.uniform(0.4, 1.0))
        written.append(watch / f"slow-{k:03d}.dcm")
    acked = {identity(p) for p in written}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len({(r["sop_instance_uid"], r.get("pixel_sha256")) for r in rows(out)[0]} & acked) < n:
        time.sleep(0.3)
    time.sleep(2.0)
    node.stop()
    got, _ = rows(out)
    outside_uids = {identity(p)[0] for p in outside}
    return {"fault": "watch folder: slow writers, 64 GiB sparse file, symlinks out", "films": n,
            "huge_file_refused_unread": any(r.get("source") == "watch:huge.dcm" and "not read" in r.get("error", "") for r in got),
            "symlinks_refused": sum("outside the watch folder" in r.get("error", "") for r in got),
            "outside_films_scored": sum(r.get("sop_instance_uid") in outside_uids for r in got),
            "watch_thread_failures": node.text().count("could not be taken in") + node.text().count("a pass failed"),
            **audit(out, acked)}


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = ["# Fault sweep: the DICOM node (issue 24)", "",
             f"`benchmarks/node_faults.py`, seed {result['seed']}, tiny bundle; {env['cpu']}, {env['cores']} cores (shared, nice -n 10), "
             f"Python {env['python']}, salad-edge {env['salad']}; wall time {result['wall_s']:.0f} s.", "",
             "| fault | case | acknowledged | rows | scored | error rows | refusals | lines not rows | "
             "acknowledged without row or SR | duplicate rows |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["faults"]:
        case = r.get("size") or r.get("round", "")
        lines.append(f"| {r['fault']} | {case} | {r['acknowledged']} | {r['rows']} | {r['scored_rows']} | {r['error_rows']} | "
                     f"{r['refusal_rows']} | {r['lines_not_rows']} | {r['acknowledged_without_row_or_sr']} | {r['duplicate_rows']} |")
    t = result["totals"]
    lines += ["", f"**Totals: {t['acknowledged']} acknowledged films, {t['acknowledged_without_row_or_sr']} without a row or SR, "
              f"{t['duplicate_rows']} duplicate rows, {t['lines_not_rows']} lines that are not rows.**", "", "Details per fault:", ""]
    for r in result["faults"]:
        extra = {k: v for k, v in r.items() if k not in ("fault", "problems", "acknowledged", "rows", "scored_rows", "error_rows",
                                                          "refusal_rows", "lines_not_rows", "acknowledged_without_row_or_sr",
                                                          "duplicate_rows")}
        lines.append(f"- {r['fault']}: {json.dumps(extra)}" + (f"; problems: {r['problems']}" if r["problems"] else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--bundle", type=Path, required=True, help="A bundle (e.g. salad-export of the tests' tiny run).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kill-rounds", type=int, default=3)
    ap.add_argument("--films", type=int, default=24, help="Films per fault.")
    ap.add_argument("--disk-sizes", default="2m,3m,5m")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rng, started = random.Random(args.seed), time.perf_counter()
    faults: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="node-faults-") as tmp:
        work = Path(tmp)
        steps = [
            lambda: kill9_under_load(args.bundle, work, rng, args.kill_rounds, args.films),
            lambda: disk_full(args.bundle, work, args.disk_sizes.split(","), args.films),
            lambda: [duplicate_uids(args.bundle, work, args.films // 2)],
            lambda: [resend_after_error(args.bundle, work, args.films // 2)],
            lambda: rejected_srs(args.bundle, work, args.films // 2),
            lambda: [watch_folder(args.bundle, work, rng, args.films // 2)],
        ]
        for step in steps:
            done = step()
            for r in done:
                print(f"{r['fault']}: acknowledged {r['acknowledged']}, without row or SR {r['acknowledged_without_row_or_sr']}, "
                      f"duplicate rows {r['duplicate_rows']}", flush=True)
            faults += done
    totals = {k: sum(r[k] for r in faults) for k in ("acknowledged", "acknowledged_without_row_or_sr", "duplicate_rows", "lines_not_rows")}
    result = {"seed": args.seed, "faults": faults, "totals": totals, "wall_s": round(time.perf_counter() - started, 1),
              "environment": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "python": platform.python_version(), "salad": salad.__version__, "platform": platform.platform()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "node_faults.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "node_faults.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    failed = totals["acknowledged_without_row_or_sr"] + totals["duplicate_rows"] + totals["lines_not_rows"]
    failed += sum(r.get("sr_unaccounted", 0) + r.get("outside_films_scored", 0) + r.get("collisions_unnamed", 0)
                  + r.get("srs_sharing_a_uid", 0) for r in faults)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
