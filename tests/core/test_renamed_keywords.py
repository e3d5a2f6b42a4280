"""The Python API speaks the CLI's names; the old keywords still work at the public entry points, with a warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from salad.errors import CalibrationError, SaladError
from salad.preprocess import PreprocessConfig
from tests.conftest import SAMPLE_TRAIN


def test_calibrate_bundle_takes_the_old_labelled_keyword_to_the_new_one(tmp_path: Path) -> None:
    from salad.calibration import calibrate_bundle

    with (pytest.warns(DeprecationWarning, match=r"calibrate_bundle\(data_labelled=…\) is deprecated; use labelled=…"),
          pytest.raises(CalibrationError, match=r"--labelled /no/such/folder: no such file or folder")):
        calibrate_bundle(tmp_path / "not-a-bundle", "int8", SAMPLE_TRAIN, data_labelled="/no/such/folder")


def test_both_spellings_at_once_are_refused(tmp_path: Path) -> None:
    from salad.calibration import calibrate_bundle

    with pytest.raises(TypeError, match=r"got images= and films=; images is the deprecated name of films"):
        calibrate_bundle(tmp_path / "not-a-bundle", "int8", SAMPLE_TRAIN, images=100, films=100)


def test_calibration_source_takes_the_old_film_counts() -> None:
    from salad.calibration import CalibrationSource

    with (pytest.warns(DeprecationWarning) as warned,
          pytest.raises(CalibrationError, match=r"--films 10 is below the minimum of 20 calibration films")):
        CalibrationSource.from_data(SAMPLE_TRAIN, PreprocessConfig(size=64), images=10, min_images=20)
    assert sorted(str(w.message).split("(")[1].split("=")[0] for w in warned) == ["images", "min_images"]


def test_export_bundle_takes_the_old_reference_images(tmp_path: Path) -> None:
    from salad.export import export_bundle

    with (pytest.warns(DeprecationWarning, match=r"export_bundle\(reference_images=…\) is deprecated; use reference_films=…"),
          pytest.raises(SaladError, match=str(tmp_path / "no-run"))):
        export_bundle(tmp_path / "no-run", tmp_path / "bundle", reference_images=8)


def test_parity_and_evaluation_take_the_old_data_keyword(tmp_path: Path) -> None:
    from salad.runtime.parity import compare
    from salad.train import evaluate_run

    for call, name in ((compare, "compare"), (evaluate_run, "evaluate_run")):
        with (pytest.warns(DeprecationWarning, match=rf"{name}\(data=…\) is deprecated; use labelled=…"),
              pytest.raises(SaladError, match=str(tmp_path / "nothing"))):
            call(tmp_path / "nothing", data=SAMPLE_TRAIN)
