"""The commit of a calibrated variant on a real bundle: killed at any rename, raced by a second writer, rejected."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from salad.calibration import calibrate_bundle
from salad.errors import BundleError, CalibrationError
from salad.manifest import DEFAULT_TOLERANCES, complete_journal, read_manifest, sha256_file

SALAD = Path(sys.executable).parent / "salad"

#: Run a real `--force` fp16 calibration in a child that dies (os._exit, like kill -9) just before its n-th rename
#: inside commit: every rename of a file or of manifest.json is a point where a crash can land.
_CRASH = textwrap.dedent(
    """
    import os, sys
    import salad.calibration.calibrate as cal
    import salad.calibration.staging as staging

    bundle, at = sys.argv[1], int(sys.argv[2])
    real_replace, real_commit, count = os.replace, staging.Staging.commit, [0]

    def replace(src, dst, **kw):
        count[0] += 1
        if count[0] == at:
            os._exit(9)
        real_replace(src, dst, **kw)

    def commit(self, *args, **kwargs):
        os.replace = replace
        try:
            return real_commit(self, *args, **kwargs)
        finally:
            os.replace = real_replace

    staging.Staging.commit = commit
    cal.calibrate_bundle(bundle, "fp16", force=True, latency_runs=1)
    """
)


def _litter(bundle: Path) -> list[str]:
    inside = [p.name for p in bundle.rglob(".*")]
    beside = [p.name for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}.")]
    return inside + beside


@pytest.fixture(scope="module")
def fp16_bundle(base_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with its fp16 variant accepted."""
    import shutil

    path = Path(shutil.copytree(base_bundle, tmp_path_factory.mktemp("commit") / "fp16"))
    calibrate_bundle(path, "fp16", latency_runs=1)
    return path


@pytest.mark.parametrize("crash_at", [2, 6, 10])
def test_a_force_calibration_killed_during_commit_keeps_the_accepted_variant(fp16_bundle: Path, tmp_path: Path, crash_at: int) -> None:
    import shutil

    bundle = Path(shutil.copytree(fp16_bundle, tmp_path / "bundle"))
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(bundle), str(crash_at)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, f"the child did not die at rename {crash_at}: {proc.stderr[-2000:]}"
    complete_journal(bundle)  # the next writer finishes an interrupted commit (read commands never apply a journal)
    manifest = read_manifest(bundle, verify=True)
    assert manifest.precisions() == ["fp32", "fp16"], f"the accepted fp16 variant was lost (crash at rename {crash_at})"
    assert manifest.calibration["fp16"]["report"] == "calibration/fp16.json"
    with pytest.raises(CalibrationError, match="already has the fp16 variant"):
        calibrate_bundle(bundle, "fp16")  # the next writer: sweeps what the dead one left
    assert _litter(bundle) == [], "temporaries of the killed calibration were left behind"


def test_a_rejected_calibration_keeps_the_accepted_report(fp16_bundle: Path, tmp_path: Path) -> None:
    import shutil

    bundle = Path(shutil.copytree(fp16_bundle, tmp_path / "bundle"))
    accepted_md = (bundle / "calibration" / "fp16.md").read_bytes()
    model_sha = read_manifest(bundle).graph("model", "fp16").sha256
    manifest = read_manifest(bundle)
    manifest.parity["fp16"] = {**DEFAULT_TOLERANCES["fp32"], "max_abs_score_diff": 1e-12}
    manifest.write(bundle)
    with pytest.raises(CalibrationError, match=r"The bundle is unchanged") as info:
        calibrate_bundle(bundle, "fp16", force=True, latency_runs=1)
    text = str(info.value)
    assert f"Report of this rejected attempt: {bundle / 'calibration' / 'fp16.rejected.md'}" in text
    assert ".calibrate-" not in text, "the message names the deleted staging copy"
    assert (bundle / "calibration" / "fp16.md").read_bytes() == accepted_md
    assert (bundle / "calibration" / "fp16.rejected.md").read_text().startswith("# Calibration of `bundle`: fp16 REJECTED")
    assert ".calibrate-" not in (bundle / "calibration" / "fp16.rejected.json").read_text()
    assert read_manifest(bundle, verify=True).graph("model", "fp16").sha256 == model_sha == sha256_file(bundle / "model.fp16.onnx")


def test_a_second_calibration_is_refused_while_one_runs(base_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    bundle = Path(shutil.copytree(base_bundle, tmp_path / "bundle"))
    first = subprocess.Popen([str(SALAD), "calibrate", str(bundle), "--precision", "fp16"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".bundle.calibrate-*")):  # the first one is staging: it is a writer now
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        monkeypatch.setenv("SALAD_LOCK_TIMEOUT_S", "0")
        with pytest.raises(
            BundleError, match=rf"another salad writer \(pid {first.pid}\) is changing this bundle .* run the command again"
        ):
            calibrate_bundle(bundle, "fp16", latency_runs=1)
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert read_manifest(bundle, verify=True).precisions() == ["fp32", "fp16"]
    assert _litter(bundle) == []

