"""`salad-export` without --reference-films takes 32 reference films, or every validation film of a run that has fewer;
an explicit count the run cannot meet is still refused (exit 2) naming the count it can."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from salad.export.cli import export_command  # noqa: E402


def _keep_validation_films(run: Path, n: int) -> None:
    lines = (run / "val.csv").read_text().splitlines()
    (run / "val.csv").write_text("\n".join(lines[: 1 + n]) + "\n")


def test_default_reference_films_cap_to_the_validation_films(make_run: Callable[..., Path], tmp_path: Path) -> None:
    run = make_run()
    _keep_validation_films(run, 12)
    result = CliRunner().invoke(export_command, [str(run), "--out", str(tmp_path / "b"), "--slim"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["reference"]["images"] == 12
    assert "on 12 reference films" in result.output
    refused = CliRunner().invoke(export_command, [str(run), "--out", str(tmp_path / "c"), "--slim", "--reference-films", "32"])
    assert refused.exit_code == 2 and "Pass --reference-films 12" in refused.output and not (tmp_path / "c").exists()
