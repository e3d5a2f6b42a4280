"""Export holds a run to its training-free floors when its labelled validation is large enough to tell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salad.errors import ExportValidationError
from salad.export import export_bundle
from salad.manifest import read_manifest
from tests.conftest import KERMANY, SAMPLE_TRAIN, tiny_config


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run validated on 100 normal + 100 pneumonia real Kermany films (enough for the floor check)."""
    from salad.train.trainer import train_run

    root = tmp_path_factory.mktemp("judged")
    lines = ["path,label"]
    for cls, label in (("normal", 0), ("pneumonia", 1)):
        lines += [f"{p},{label}" for p in sorted((KERMANY / "train" / cls).glob("*.jpeg"))[-100:]]
    (root / "val.csv").write_text("\n".join(lines) + "\n")
    train_run(SAMPLE_TRAIN, root / "run", tiny_config(), val=root / "val.csv")
    return root / "run"


def test_export_refuses_a_run_below_its_floors_unless_allowed(judged_run: Path, tmp_path: Path) -> None:
    validation = json.loads((judged_run / "validation.json").read_text())
    assert validation["n_normal"] == 100 and validation["n_abnormal"] == 100
    if validation["beats_floors"]:
        bundle = export_bundle(judged_run, tmp_path / "b", reference_films=8)
        assert read_manifest(bundle).source["validation"]["checked"] is True
        return
    with pytest.raises(ExportValidationError, match=r"does not beat its training-free floors: .*needs ≥ .*--allow-below-floors") as caught:
        export_bundle(judged_run, tmp_path / "b", reference_films=8)
    assert not (tmp_path / "b").exists()
    short = {f["floor"]: f for f in caught.value.failures}  # structured: one dict per floor the run does not beat
    assert short and all(f["check"] == "floor" and f["auc"] < f["needed"] for f in short.values())
    assert {k: f["floor_auc"] for k, f in short.items()} == {k: validation["floors"][k] for k in short}
    bundle = export_bundle(judged_run, tmp_path / "b", reference_films=8, allow_below_floors=True)
    recorded = read_manifest(bundle).source["validation"]
    assert recorded["checked"] is True and recorded["exported_below_floors"] is True and recorded["floors"] == validation["floors"]


def test_a_small_validation_set_is_recorded_not_judged(tiny_run: Path, tmp_path: Path) -> None:
    bundle = export_bundle(tiny_run, tmp_path / "b", reference_films=8)
    recorded = read_manifest(bundle).source["validation"]
    assert recorded["checked"] is False and "fewer than 100 of a class" in recorded["reason"]
