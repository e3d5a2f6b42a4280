"""One option grammar across commands: exit codes, deprecated spellings, --device, backend options, -v/-q."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from salad.cli import main
from salad.clitools import deprecated_alias, friendly_errors
from salad.errors import (
    EXIT_CHECKS_FAILED,
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_USAGE,
    BackendUnavailableError,
    CalibrationError,
    CalibrationRejectedError,
    ConfigError,
    DataError,
    ExportValidationError,
    ParityError,
)
from tests.runtime.conftest import SAMPLE_EVAL

FILM = sorted((SAMPLE_EVAL / "normal").iterdir())[0]


@pytest.mark.parametrize(("error", "code"), [
    (DataError("x"), EXIT_ERROR), (BackendUnavailableError("x"), EXIT_ERROR), (CalibrationError("x"), EXIT_ERROR),
    (ConfigError("x"), EXIT_USAGE), (ParityError("x"), EXIT_CHECKS_FAILED),
    (ExportValidationError("x"), EXIT_CHECKS_FAILED), (CalibrationRejectedError("x"), EXIT_CHECKS_FAILED),
])
def test_each_kind_of_error_has_its_exit_code(error: Exception, code: int) -> None:
    @click.command()
    @friendly_errors
    def run() -> None:
        raise error

    result = CliRunner().invoke(run)
    assert result.exit_code == code and result.output == "error: x\n"
    assert sorted(EXIT_CODES) == [0, 1, 2, 3, 130]


def test_a_deprecated_spelling_still_works_prints_one_line_and_loses_to_the_new_one() -> None:
    @click.command()
    @click.option("--films", type=int, default=None)
    @deprecated_alias("--images", "--films", "films", type=int)
    def cmd(films: int | None) -> None:
        click.echo(f"films={films}")

    runner = CliRunner()
    old = runner.invoke(cmd, ["--images", "5"])
    assert old.exit_code == 0 and old.output == "warning: --images is deprecated; use --films (same meaning).\nfilms=5\n"
    assert runner.invoke(cmd, ["--films", "7"]).output == "films=7\n"
    assert runner.invoke(cmd, []).output == "films=None\n"
    both = runner.invoke(cmd, ["--films", "7", "--images", "5"]).output
    assert both.endswith("films=7\n") and "deprecated" in both
    assert runner.invoke(cmd, ["--images", "5", "--films", "7"]).output.endswith("films=7\n")
    assert "--images" not in runner.invoke(cmd, ["--help"]).output  # hidden


@pytest.mark.parametrize(("command", "old", "new"), [
    ("calibrate", "--data-labelled", "--labelled"), ("calibrate", "--images", "--films"),
    ("calibrate", "--min-images", "--min-films"), ("evaluate", "--data", "--labelled"),
    ("parity", "--data", "--labelled"), ("export", "--reference-images", "--reference-films"),
])
def test_help_shows_the_new_names_only(command: str, old: str, new: str) -> None:
    shown = CliRunner().invoke(main, [command, "--help"]).output
    assert new in shown and f" {old} " not in shown


def test_usage_errors_exit_2(tiny_bundle: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["evaluate", str(tiny_bundle)])
    assert missing.exit_code == EXIT_USAGE and "Missing option '--labelled'" in missing.output
    device = runner.invoke(main, ["score", str(tiny_bundle), str(FILM), "--device", "gpu"])
    assert device.exit_code == EXIT_USAGE and "expected 'cpu', 'cuda' or 'cuda:N'" in device.output
    batch = runner.invoke(main, ["bench", str(tiny_bundle), "--batch", "1,x"])
    assert batch.exit_code == EXIT_USAGE and "expected whole numbers" in batch.output
    trt = runner.invoke(main, ["score", str(tiny_bundle), str(FILM), "--workspace-mb", "64"])
    assert trt.exit_code == EXIT_USAGE
    assert "--workspace-mb is an option of the tensorrt runtime(s); the chosen runtime(s) ['onnxruntime']" in trt.output


def test_backend_options_reach_the_runtimes_that_declare_them(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["score", str(tiny_bundle), str(FILM), "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["results"][0]["label"] in (0, 1)
    parity = CliRunner().invoke(main, ["parity", str(tiny_bundle), "--runtime", "onnxruntime", "--runtime", "torch",
                                       "--precision", "fp32", "--threads", "1", "--json", "-"])
    assert parity.exit_code == 0, parity.output
    assert [r["runtime"] for r in json.loads(parity.output)["rows"]] == ["onnxruntime", "torch"]


def test_parity_data_is_the_old_spelling_of_labelled(tiny_bundle: Path) -> None:
    old = CliRunner().invoke(main, ["parity", str(tiny_bundle), "--data", str(SAMPLE_EVAL), "--json", "-"])
    assert old.exit_code == 0, old.output
    warning, _, body = old.output.partition("\n")
    assert warning == "warning: --data is deprecated; use --labelled (same meaning)."
    assert json.loads(body)["images"]["data"] == 80


def test_quiet_and_verbose_are_global(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.delenv("SALAD_QUIET", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert CliRunner().invoke(main, ["-q", "inspect", str(tiny_bundle), "--no-verify"]).exit_code == 0
    assert os.environ.get("SALAD_QUIET") == "1" and logging.getLogger("salad").level == logging.ERROR
    assert CliRunner().invoke(main, ["-vv", "inspect", str(tiny_bundle), "--no-verify"]).exit_code == 0
    assert "SALAD_QUIET" not in os.environ and logging.getLogger("salad").level == logging.DEBUG
    CliRunner().invoke(main, ["inspect", str(tiny_bundle), "--no-verify"])
    assert logging.getLogger("salad").level == logging.WARNING


def test_each_runtime_gets_only_the_options_it_declares(tiny_bundle: Path, tmp_path: Path) -> None:
    """The flags of score/parity/bench reach a TensorRT runner (built, not activated: no GPU needed) and nothing else."""
    from salad.runtime import Scorer
    from salad.runtime.bench.worker import _runner_options
    from salad.runtime.options import check_taken, given, options_for

    flags = {"threads": None, "rebuild": True, "allow_tf32": None, "cache_dir": tmp_path / "engines", "opt_batch": 4,
             "workspace_mb": 64}
    options = given(flags)
    assert options == {"rebuild": True, "cache_dir": tmp_path / "engines", "opt_batch": 4, "workspace_mb": 64}
    scorer = Scorer.from_bundle(tiny_bundle, runtime="tensorrt", max_batch=8, **options_for("tensorrt", options))
    loader = scorer.runner.loader  # type: ignore[attr-defined]
    assert (loader.opt_batch, loader.workspace_mb, loader.rebuild, loader.cache_dir) == (4, 64, True, tmp_path / "engines")
    assert options_for("onnxruntime", options) == {"cache_dir": tmp_path / "engines"}  # its TensorRT provider's cache
    assert options_for("torch", {**options, "threads": 2}) == {"threads": 2}
    assert _runner_options("tensorrt", 2, {"opt_batch": 4}) == {"opt_batch": 4}  # bench's workers: same filter
    assert _runner_options("onnxruntime", 2, {"opt_batch": 4}) == {"threads": 2}
    check_taken(["onnxruntime", "tensorrt"], {"opt_batch": 4})  # one chosen runtime takes it: fine
    with pytest.raises(ConfigError, match="--opt-batch is an option of the tensorrt runtime"):
        check_taken(["onnxruntime", "openvino"], {"opt_batch": 4})
