"""Start-up caches on real bundles: ONNX Runtime's optimised model and OpenVINO's compiled blobs.

A second start reads what the first wrote (and writes nothing), a damaged entry is rebuilt with a warning,
the scores are the same bytes with and without a cache, and the bundle is never written to.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import salad
from salad.manifest import read_manifest
from salad.runtime import Scorer
from salad.runtime.cache import DISABLE_ENV, SEAL_SUFFIX, SETTLE_NS, crc32, file_state
from salad.runtime.onnxruntime_runner import CACHED_MODEL, CACHED_WEIGHTS
from salad.scoring import SCORES

FILMS = sorted((Path(salad.__file__).parent / "sample" / "eval").rglob("*.jpeg"))[:12]


def start(bundle: Path, runtime: str, cache: Path, **options: object) -> tuple[bytes, dict[str, object]]:
    """Every score of the registry for 12 shipped films, as bytes, and how the start used its cache."""
    with Scorer.from_bundle(bundle, runtime=runtime, max_batch=4, threads=1, cache_dir=cache, **options) as scorer:
        results = scorer.score(FILMS)
        status = dict(scorer.runner.start_cache)  # type: ignore[attr-defined]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return np.array([[r.scores[name] for name in SCORES] for r in results], dtype=np.float64).tobytes(), status


def sealed(entry: Path) -> bool:
    """Whether the cached file is whole: its bytes match the CRC-32 seal beside it."""
    return entry.with_name(entry.name + SEAL_SUFFIX).read_text().split()[0] == crc32(entry.read_bytes())


def bundle_state(bundle: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(bundle)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(bundle.rglob("*"))}


@pytest.mark.parametrize("fixture", ["tiny_bundle", "external_bank_bundle"])
def test_onnxruntime_second_start_loads_the_optimised_model_and_scores_the_same_bytes(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bundle: Path = request.getfixturevalue(fixture)
    state = bundle_state(bundle)
    plain, off = start(bundle, "onnxruntime", tmp_path, use_cache=False)
    assert off == {"status": "off", "path": None}
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "use_cache=False wrote a cache entry"

    first, written = start(bundle, "onnxruntime", tmp_path)
    assert written["status"] == "written"
    entry = Path(str(written["path"]))
    assert entry.is_dir() and entry.parent.parent == tmp_path
    files = sorted(p.name for p in entry.iterdir())  # the graph and its pre-packed weights, each sealed
    assert files == sorted([CACHED_MODEL, CACHED_WEIGHTS, CACHED_MODEL + SEAL_SUFFIX, CACHED_WEIGHTS + SEAL_SUFFIX])
    assert sealed(entry / CACHED_MODEL) and sealed(entry / CACHED_WEIGHTS)
    mtimes = [p.stat().st_mtime_ns for p in sorted(entry.iterdir())]

    cached, loaded = start(bundle, "onnxruntime", tmp_path)
    assert loaded == {"status": "loaded", "path": str(entry)}
    assert [p.stat().st_mtime_ns for p in sorted(entry.iterdir())] == mtimes, "the second start rewrote the cache entry"
    assert plain == first == cached  # fp32 parity stays exact: the same bytes with and without the cache
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary left behind
    assert bundle_state(bundle) == state  # the bundle is read, never written
    read_manifest(bundle, verify=True)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "foreign file"])
def test_a_damaged_onnxruntime_entry_is_ignored_with_a_warning_and_rebuilt(
    damage: str, tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference, written = start(tiny_bundle, "onnxruntime", tmp_path)
    entry = Path(str(written["path"]))
    damaged = entry / (CACHED_MODEL if damage == "foreign file" else CACHED_WEIGHTS)
    data = bytearray(damaged.read_bytes())
    if damage == "flip a byte":
        data[-len(data) // 3] ^= 0x10  # a weight
    elif damage == "truncate":
        del data[len(data) // 2:]
    else:
        data = bytearray(b"not a cache entry\n")
    damaged.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING):
        scores, rebuilt = start(tiny_bundle, "onnxruntime", tmp_path)
    assert rebuilt["status"] == "rebuilt"
    assert any(str(damaged) in r.getMessage() and "CRC-32 seal" in r.getMessage() for r in caplog.records), caplog.text
    assert scores == reference
    assert sealed(entry / CACHED_MODEL) and sealed(entry / CACHED_WEIGHTS)  # whole again
    assert start(tiny_bundle, "onnxruntime", tmp_path)[1]["status"] == "loaded"


def test_a_settled_entry_is_vouched_for_by_its_status_and_one_altered_with_its_mtime_set_back_is_refused(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference, written = start(tiny_bundle, "onnxruntime", tmp_path)
    folder = Path(str(written["path"]))
    entry = folder / CACHED_WEIGHTS
    seal = entry.with_name(entry.name + SEAL_SUFFIX)
    assert len(seal.read_text().split()) == 1  # written moments ago: only its CRC-32
    time.sleep(max(0.0, (max(file_state(entry)[3:]) + SETTLE_NS - time.time_ns()) / 1e9) + 0.05)
    assert start(tiny_bundle, "onnxruntime", tmp_path) == (reference, {"status": "loaded", "path": str(folder)})
    crc, status = seal.read_text().split()  # checked on a settled file: its status is recorded beside the CRC-32
    seal.write_text(f"00000000\n{status}\n")  # a wrong CRC-32 is not even looked at while the status holds:
    assert start(tiny_bundle, "onnxruntime", tmp_path)[1]["status"] == "loaded"  # the file was not read again
    seal.write_text(f"{crc}\n{status}\n")

    before = entry.stat()
    data = bytearray(entry.read_bytes())
    data[-len(data) // 3] ^= 0x10
    with open(entry, "r+b") as fh:  # in place, same size, and the mtime set back: only the ctime tells
        fh.write(bytes(data))
    os.utime(entry, ns=(before.st_atime_ns, before.st_mtime_ns))
    with caplog.at_level(logging.WARNING):
        scores, rebuilt = start(tiny_bundle, "onnxruntime", tmp_path)
    assert rebuilt["status"] == "rebuilt" and scores == reference
    assert "CRC-32 seal" in caplog.text


def test_the_environment_turns_the_cache_off(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, "1")
    for runtime in ("onnxruntime", "openvino"):
        assert start(tiny_bundle, runtime, tmp_path)[1]["status"] == "off"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_cache_folder_that_cannot_be_made_costs_speed_not_scores(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way\n")
    reference, _ = start(tiny_bundle, "onnxruntime", tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        for runtime in ("onnxruntime", "openvino"):
            scores, status = start(tiny_bundle, runtime, blocker / "cache")
            assert status["status"] == "off"
            if runtime == "onnxruntime":
                assert scores == reference
    assert "start-up cache off" in caplog.text


def test_openvino_cache_dir_receives_a_sealed_blob_that_the_second_start_loads(tiny_bundle: Path, tmp_path: Path) -> None:
    state = bundle_state(tiny_bundle)
    plain, off = start(tiny_bundle, "openvino", tmp_path, use_cache=False)
    assert off["status"] == "off" and not any(tmp_path.rglob("*.blob"))

    first, written = start(tiny_bundle, "openvino", tmp_path)
    assert written["status"] == "written"
    folder = Path(str(written["path"]))
    assert folder.parent == tmp_path / "openvino"
    blobs = sorted(folder.glob("*.blob"))
    assert blobs and all(b.stat().st_size > 0 and b.with_name(b.name + SEAL_SUFFIX).is_file() for b in blobs)
    mtimes = [b.stat().st_mtime_ns for b in blobs]

    cached, loaded = start(tiny_bundle, "openvino", tmp_path)
    assert loaded["status"] == "loaded"
    assert sorted(folder.glob("*.blob")) == blobs and [b.stat().st_mtime_ns for b in blobs] == mtimes
    assert plain == first == cached
    assert bundle_state(tiny_bundle) == state


def test_an_altered_openvino_blob_is_removed_with_a_warning_and_compiled_again(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference, written = start(tiny_bundle, "openvino", tmp_path)
    (blob,) = Path(str(written["path"])).glob("*.blob")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit: OpenVINO itself would import it
    blob.chmod(0o600)
    blob.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        scores, rebuilt = start(tiny_bundle, "openvino", tmp_path)
    assert rebuilt["status"] == "rebuilt"
    assert str(blob) in caplog.text and "CRC-32 seal" in caplog.text
    assert scores == reference
    assert start(tiny_bundle, "openvino", tmp_path)[1]["status"] == "loaded"


def test_openvino_is_imported_without_its_converter_which_stays_importable(tiny_bundle: Path, tmp_path: Path) -> None:
    body = (
        "import sys\n"
        "from salad.runtime import Scorer\n"
        f"with Scorer.from_bundle({str(tiny_bundle)!r}, runtime='openvino', cache_dir={str(tmp_path)!r}) as s:\n"
        "    assert s.runner.info()['inference_precision'] == 'f32'\n"
        "assert 'openvino' in sys.modules and 'openvino.tools.ovc' not in sys.modules\n"
        "from openvino.tools.ovc import convert_model\n"
        "print('converter importable:', callable(convert_model))\n"
    )
    proc = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "converter importable: True" in proc.stdout


def test_a_cache_folder_keeps_the_newest_entries(tmp_path: Path) -> None:
    from salad.runtime.cache import KEEP_ENTRIES, prune

    for i in range(KEEP_ENTRIES + 3):
        entry = tmp_path / f"entry-{i:02d}.ort"
        entry.write_bytes(b"x")
        os.utime(entry, ns=(i * 10**9, i * 10**9))
    live = tmp_path / f".entry-99.ort.tmp-{os.getpid()}-ab"  # being written by a live process: stays
    live.write_bytes(b"being written")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    orphan = tmp_path / f".entry-98.ort.tmp-{int(dead.stdout)}-cd"  # its writer was killed: goes
    orphan.write_bytes(b"half")
    for i in (0, KEEP_ENTRIES + 2):  # seals are not entries: each goes with its file
        (tmp_path / f"entry-{i:02d}.ort{SEAL_SUFFIX}").write_bytes(b"0")
    assert prune(tmp_path) == ["entry-02.ort", "entry-01.ort", "entry-00.ort"]
    assert len(list(tmp_path.glob("entry-*.ort"))) == KEEP_ENTRIES and live.exists() and not orphan.exists()
    assert [p.name for p in tmp_path.glob(f"*{SEAL_SUFFIX}")] == [f"entry-{KEEP_ENTRIES + 2:02d}.ort{SEAL_SUFFIX}"]
