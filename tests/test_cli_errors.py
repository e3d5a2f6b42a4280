"""The CLI layer turns operating-system failures into one line naming the file and the fix."""

from __future__ import annotations

import errno
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from salad.cli import describe_os_error, friendly_errors


def _command(action: object) -> click.Command:
    @click.command()
    @friendly_errors
    def run() -> None:
        action()  # type: ignore[operator]

    return run


def test_memory_error_is_one_line_with_the_fix() -> None:
    result = CliRunner().invoke(_command(lambda: np.empty(1 << 62, dtype=np.uint8)))  # more than any address space
    assert result.exit_code == 1
    assert "error: out of memory. Lower --batch-size" in result.output and "Traceback" not in result.output


def test_os_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    result = CliRunner().invoke(_command(lambda: open(folder, "rb")))  # noqa: SIM115 - the error is the point
    assert result.exit_code == 1
    assert f"error: {folder}: Is a directory; pass a file, not a folder." in result.output
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "bundle" / "model.onnx"))
    assert describe_os_error(full).endswith("No space left on device; free space on that disk or write elsewhere.")


@pytest.mark.parametrize("signal_name", ["SIGTERM"])
def test_the_previous_sigterm_handler_is_restored(signal_name: str) -> None:
    import signal

    before = signal.getsignal(getattr(signal, signal_name))
    CliRunner().invoke(_command(lambda: None))
    assert signal.getsignal(getattr(signal, signal_name)) == before


def test_train_help_does_not_import_torch() -> None:
    """`salad train --help` lists its options without loading the encoders' registry (torch takes seconds)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom salad.cli import main\n"
        "r = CliRunner().invoke(main, ['train', '--help'])\nprint(r.exit_code, '--encoder NAME' in r.output, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["0", "True", "False"], out.stdout + out.stderr
