"""Fault sweep: kill -9 bundle writers at random points and race them; every bundle must survive whole.

On a tiny real run (salad/sample/train/normal, 64 px, width 0.125, seconds per step):
- exports: `salad-export RUN --out BUNDLE --force` replacing an existing bundle, killed with SIGKILL
  after a delay drawn uniformly between 0 and the measured duration of an uninterrupted export;
- calibrations: `salad calibrate BUNDLE --precision P --force` on a bundle that has P accepted,
  killed the same way (delay up to an uninterrupted calibration's duration);
- pairs: two `salad calibrate BUNDLE --precision P --force` started together on one bundle, with
  SALAD_LOCK_TIMEOUT_S=0 (the second fails at once, naming the holder) in even pairs and 10 in odd ones.
After each: read_manifest(verify=True) right away (it completes a commit journal, as any reader
that can write does), then the next writer command (a full export; for calibration a
`salad calibrate BUNDLE --precision P` without --force, which takes the lock, completes any journal,
sweeps dead writers' temporaries and stops: the variant exists), then again: the bundle verifies,
the accepted variant is still there, and nothing hidden (.NAME.*, .*) is left beside or inside it.

P defaults to fp16: the tiny model's int8 variant may be refused by the calibration gate
(|ΔAUC| > 0.005) on some CPUs, and a refused calibration never reaches the commit under test.
Usage: nice -n 10 python benchmarks/fault_sweep.py [--exports 30] [--calibrations 30] [--pairs 10] [--seed 0]
The DICOM node's faults (kill -9 under load, full disk, duplicate UIDs, re-sends, refused SRs, slow writers,
a huge sparse file, symlinks out) are benchmarks/node_faults.py: `fault_sweep.py --node --bundle BUNDLE`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

import salad
from salad.errors import SaladError
from salad.manifest import JOURNAL, read_manifest

SAMPLE = Path(salad.__file__).parent / "sample"
BIN = Path(sys.executable).parent
OUT = Path(__file__).resolve().parent / "results" / "faults"


def tiny_config() -> Any:
    """The tests' CPU-second config (64 px, width 0.125, 3 epochs), so one export or calibration takes seconds."""
    from salad.train.trainer import CPU

    return dataclasses.replace(CPU, size=64, width=0.125, pretrain_epochs=1, rounds=2, round_epochs=1, batch_size=16,
                               score_k=20, threads=2)


def litter(bundle: Path) -> list[str]:
    """Hidden entries a writer makes: beside the bundle (.NAME.*) and inside it (.*, any depth)."""
    beside = [p.name for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}.")]
    inside = [str(p.relative_to(bundle)) for p in bundle.rglob(".*")] if bundle.is_dir() else []
    return sorted(beside + inside)


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def timed(cmd: list[str]) -> float:
    """Wall time of one uninterrupted run of `cmd` (which must succeed)."""
    start = time.perf_counter()
    proc = run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def kill_after(cmd: list[str], delay: float) -> dict[str, Any]:
    """Start `cmd`, SIGKILL it after `delay` seconds unless it finished; what happened."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        killed = True
    err = proc.stderr.read() if proc.stderr else ""
    return {
        "delay_s": round(delay, 3),
        "killed": killed,
        "returncode": proc.returncode,
        "stderr": err[-500:] if proc.returncode not in (0, -9) else "",
    }


def check(bundle: Path, precision: str | None) -> list[str]:
    """The invariants: the bundle verifies and (if given) still has `precision`; problems as text."""
    try:
        manifest = read_manifest(bundle, verify=True)
    except SaladError as exc:
        return [f"does not verify: {exc}"]
    if precision is not None and precision not in manifest.precisions():
        return [f"lost its accepted {precision} variant (has {manifest.precisions()})"]
    return []


def sweep_exports(run_dir: Path, work: Path, n: int, duration: float, rng: random.Random) -> list[dict[str, Any]]:
    """Kill n `salad-export --force` runs that replace an existing bundle; after each, check, run the next export, check."""
    bundle = work / "exported"
    rows = []
    export = [str(BIN / "salad-export"), str(run_dir), "--out", str(bundle), "--force"]
    if not bundle.exists():
        timed(export)
    for i in tqdm(range(n), desc="kill -9 salad-export", unit="kill"):
        row = kill_after(export, rng.uniform(0, duration))
        row["i"] = i
        row["left_after_kill"] = litter(bundle)
        row["journal_after_kill"] = (bundle / JOURNAL).exists()
        row["problems"] = check(bundle, None)
        nxt = run(export)
        row["next_returncode"] = nxt.returncode
        row["left_after_next"] = litter(bundle)
        row["problems"] += check(bundle, None) + ([f"next export failed: {nxt.stderr[-300:]}"] if nxt.returncode else [])
        row["problems"] += [f"left after the next command: {row['left_after_next']}"] if row["left_after_next"] else []
        rows.append(row)
    return rows


def sweep_calibrations(bundle: Path, precision: str, data: Path, n: int, duration: float, rng: random.Random) -> list[dict[str, Any]]:
    """Kill n `salad calibrate --force` runs on a bundle that has `precision` accepted; check before and after the next writer."""
    cmd = [str(BIN / "salad"), "calibrate", str(bundle), "--precision", precision, "--force"]
    if precision == "int8":
        cmd += ["--data", str(data)]
    nxt_cmd = [c for c in cmd if c != "--force"]
    rows = []
    for i in tqdm(range(n), desc=f"kill -9 salad calibrate {precision}", unit="kill"):
        row = kill_after(cmd, rng.uniform(0, duration))
        row["i"] = i
        row["left_after_kill"] = litter(bundle)
        row["journal_after_kill"] = (bundle / JOURNAL).exists()
        row["problems"] = check(bundle, precision)  # a reader that can write completes a journal
        nxt = run(nxt_cmd)
        row["next_returncode"] = nxt.returncode
        row["left_after_next"] = litter(bundle)
        if "already has the" not in nxt.stderr + nxt.stdout:
            row["problems"].append(f"the next writer did not find the variant: {(nxt.stderr + nxt.stdout)[-300:]}")
        row["problems"] += check(bundle, precision)
        row["problems"] += [f"left after the next command: {row['left_after_next']}"] if row["left_after_next"] else []
        rows.append(row)
    return rows


def sweep_pairs(bundle: Path, precision: str, data: Path, n: int) -> list[dict[str, Any]]:
    """n pairs of concurrent `salad calibrate --force` on one bundle: one at a time gets the lock, the bundle stays whole."""
    cmd = [str(BIN / "salad"), "calibrate", str(bundle), "--precision", precision, "--force"]
    if precision == "int8":
        cmd += ["--data", str(data)]
    rows = []
    for i in tqdm(range(n), desc=f"concurrent calibrate {precision} pairs", unit="pair"):
        wait = "0" if i % 2 == 0 else "10"  # even pairs: fail at once; odd pairs: the second waits for the first
        env = {**os.environ, "SALAD_LOCK_TIMEOUT_S": wait}
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
        outs = [p.communicate(timeout=900) for p in procs]
        codes = [p.returncode for p in procs]
        refused = ["another salad writer (pid" in err for _, err in outs]
        row: dict[str, Any] = {
            "i": i,
            "lock_timeout_s": float(wait),
            "returncodes": codes,
            "refused_by_lock": refused,
            "left": litter(bundle),
        }
        row["problems"] = check(bundle, precision)
        for code, (_, err), lock in zip(codes, outs, refused, strict=True):
            if code != 0 and not lock:
                row["problems"].append(f"a calibration failed for another reason than the lock: {err[-300:]}")
        row["problems"] += [f"left: {row['left']}"] if row["left"] else []
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of a sweep: runs, killed mid-way, journals found, temporaries left by the kill, invariant failures."""
    return {
        "runs": len(rows),
        "killed_mid_run": sum(bool(r.get("killed")) for r in rows),
        "journals_found_after_kill": sum(bool(r.get("journal_after_kill")) for r in rows),
        "kills_that_left_temporaries": sum(bool(r.get("left_after_kill")) for r in rows),
        "failures": sum(bool(r["problems"]) for r in rows),
    }


def markdown(result: dict[str, Any]) -> str:
    """The sweep's figures as a short markdown report."""
    s, env = result["summary"], result["environment"]
    lines = [
        "# Fault sweep: kill -9 and concurrent bundle writers", "",
        f"Tiny run (64 px, width 0.125) on salad/sample; precision under test **{result['precision']}** "
        f"(see the script's docstring for why not int8). Seed {result['seed']}. {env['cpu']}, {env['cores']} cores, "
        f"Python {env['python']}, salad-edge {env['salad']}. Wall time {result['wall_s']:.0f} s (run under nice -n 10, shared CPU).", "",
        f"Uninterrupted durations: export {result['durations_s']['export']:.2f} s, calibrate {result['durations_s']['calibrate']:.2f} s; "
        "each kill delay is drawn uniformly in [0, that duration].", "",
        "| sweep | runs | killed mid-run | journal found after kill | kill left temporaries | invariant failures |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("exports", "calibrations"):
        t = s[name]
        lines.append(f"| kill -9 {name} | {t['runs']} | {t['killed_mid_run']} | {t['journals_found_after_kill']} | "
                     f"{t['kills_that_left_temporaries']} | {t['failures']} |")
    p = s["pairs"]
    lines += [
        "", f"Concurrent pairs: {p['runs']}; a second writer refused by the lock in {p['refused_by_lock']} pair(s) "
        f"(SALAD_LOCK_TIMEOUT_S = 0 in even pairs; 10 s in odd pairs, where the second runs after the first if it finishes in time); "
        f"invariant failures {p['failures']}.", "",
        "Invariants checked after every run: `read_manifest(verify=True)` passes right after the kill and again after the next "
        "writer command; the accepted variant is still listed; nothing hidden is left beside or inside the bundle after the "
        "next writer command.", "",
    ]
    failures = [r for sweep in ("exports", "calibrations", "pairs") for r in result[sweep] if r["problems"]]
    lines += ["## Failures", ""] + ([f"- {json.dumps(r)[:600]}" for r in failures] or ["None."])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the three sweeps, write JSON and markdown; exit 1 if any invariant failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--exports", type=int, default=30)
    ap.add_argument("--calibrations", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--precision", choices=["fp16", "int8"], default="fp16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a new temporary one, removed after).")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--node", action="store_true", help="Run the DICOM node's sweep instead (benchmarks/node_faults.py).")
    ap.add_argument("--bundle", type=Path, default=None, help="With --node: the bundle the node serves.")
    args = ap.parse_args(argv)
    if args.node:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from node_faults import main as node_main

        if args.bundle is None:
            ap.error("--node needs --bundle BUNDLE")
        return node_main(["--bundle", str(args.bundle), "--seed", str(args.seed), "--out", str(args.out)])
    rng = random.Random(args.seed)
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="fault-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from salad.calibration import calibrate_bundle
        from salad.train.trainer import train_run

        run_dir = work / "run"
        if not (run_dir / "checkpoint.pt").exists():
            print("training the tiny run …", flush=True)
            train_run(SAMPLE / "train" / "normal", run_dir, tiny_config(), val=SAMPLE / "eval", force=True)
        data = SAMPLE / "train" / "normal"
        export_s = timed([str(BIN / "salad-export"), str(run_dir), "--out", str(work / "timing"), "--force"])
        bundle = work / "calibrated"
        if bundle.exists():
            shutil.rmtree(bundle)
        shutil.copytree(work / "timing", bundle)
        calibrate_bundle(bundle, args.precision, data if args.precision == "int8" else None, latency_runs=1)
        cal_cmd = [str(BIN / "salad"), "calibrate", str(bundle), "--precision", args.precision, "--force"]
        calibrate_s = timed(cal_cmd + (["--data", str(data)] if args.precision == "int8" else []))
        exports = sweep_exports(run_dir, work, args.exports, export_s, rng)
        calibrations = sweep_calibrations(bundle, args.precision, data, args.calibrations, calibrate_s, rng)
        pairs = sweep_pairs(bundle, args.precision, data, args.pairs)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "precision": args.precision, "seed": args.seed,
        "durations_s": {"export": round(export_s, 3), "calibrate": round(calibrate_s, 3)},
        "summary": {
            "exports": summary(exports), "calibrations": summary(calibrations),
            "pairs": {"runs": len(pairs), "refused_by_lock": sum(any(r["refused_by_lock"]) for r in pairs),
                      "failures": sum(bool(r["problems"]) for r in pairs)},
        },
        "exports": exports, "calibrations": calibrations, "pairs": pairs,
        "environment": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version(), "salad": salad.__version__, "platform": platform.platform()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fault_sweep.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "fault_sweep.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    failed = sum(result["summary"][k]["failures"] for k in ("exports", "calibrations", "pairs"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
