"""`--json -` is standard output in every command, and `salad inspect --json` takes a path like every other `--json`.

Each command runs through the `salad` group on the tiny bundle (or run) the suite builds, from an empty working
folder: its standard output must be exactly the document its JSON Schema describes, and no file named `-` appears.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from salad.cli import main
from tests.conftest import check_json_schema
from tests.runtime.conftest import SAMPLE_EVAL

FILMS = [str(p) for p in sorted((SAMPLE_EVAL / "normal").iterdir())[:2]]

#: command → (its arguments before `--json -`, given the bundle and the run; the JSON Schema of its output).
COMMANDS: dict[str, tuple[Callable[[str, str], list[str]], str]] = {
    "score": (lambda bundle, run: ["score", bundle, *FILMS], "score"),
    "parity": (lambda bundle, run: ["parity", bundle], "parity"),
    "inspect": (lambda bundle, run: ["inspect", bundle], "inspect"),
    "validate": (lambda bundle, run: ["validate", bundle], "validation"),
    "evaluate": (lambda bundle, run: ["evaluate", run, "--labelled", str(SAMPLE_EVAL)], "evaluation"),
    "choose-bundle": (lambda bundle, run: ["choose-bundle", "--target", str(SAMPLE_EVAL / "normal"),
                                                       "--candidate", f"tiny={bundle}"], "bundle-choice"),
    "bench": (lambda bundle, run: ["bench", bundle, "--batch", "1", "--iters", "2", "--warmup", "1", "--films", "2",
                                   "--threads", "1"], "bench"),
}


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, ["-q", *args])


def _why(result: Result) -> str:
    """What the command printed and, when it crashed, where."""
    import traceback

    crash = result.exc_info is not None and not isinstance(result.exception, SystemExit)
    return result.output + ("".join(traceback.format_exception(*result.exc_info)) if crash and result.exc_info else "")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_json_dash_is_standard_output_and_only_the_document(
    command: str, tiny_bundle: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    args, schema = COMMANDS[command]
    result = _invoke([*args(str(tiny_bundle), str(tiny_run)), "--json", "-"])
    assert result.exit_code == 0, _why(result)
    payload = json.loads(result.stdout)  # nothing but the document: a table or a summary line would not parse
    assert check_json_schema(schema, payload)["schema"].startswith("salad-")
    assert not (tmp_path / "-").exists() and list(tmp_path.iterdir()) == [], "`--json -` wrote a file"


def test_parity_markdown_dash_is_standard_output(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _invoke(["parity", str(tiny_bundle), "--markdown", "-"])
    assert result.exit_code == 0, _why(result)
    assert result.stdout.startswith(f"# Parity of `{tiny_bundle.name}`: passed") and "| runtime | precision |" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_inspect_json_takes_a_path_like_every_other_json(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "inspect.json"
    to_file = _invoke(["inspect", str(tiny_bundle), "--json", str(out)])
    assert to_file.exit_code == 0, to_file.output
    written = check_json_schema("inspect", json.loads(out.read_text()))
    assert "every file matches its sha256" in to_file.stdout  # the description is still shown
    to_stdout = _invoke(["inspect", str(tiny_bundle), "--json", "-"])
    bare = _invoke(["inspect", str(tiny_bundle), "--json"])  # the flag's old spelling: standard output
    assert to_stdout.exit_code == bare.exit_code == 0, to_stdout.output + bare.output
    assert json.loads(to_stdout.stdout) == json.loads(bare.stdout) == written


def test_a_folder_is_not_a_json_output(tiny_bundle: Path, tmp_path: Path) -> None:
    for args in (["inspect", str(tiny_bundle)], ["score", str(tiny_bundle), FILMS[0]]):
        result = _invoke([*args, "--json", str(tmp_path)])
        assert result.exit_code == 2, result.output  # a usage error, before anything runs
        assert "is a directory" in result.output and str(tmp_path) in result.output
