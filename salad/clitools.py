"""Click helpers shared by every command (the core's and the stages'): clean exits and lazily listed choices.

Kept apart from salad/cli.py, which dispatches to the stage commands, so that a stage's command module
imports these without importing the dispatcher that imports it (no import cycle).
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from salad.errors import SaladError
from salad.fsutil import sigterm_as_interrupt

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn a SaladError, an OS-level failure, Ctrl-C or SIGTERM into a clean one-line exit, never a traceback.

    SIGTERM (how a service manager stops a process) is handled like Ctrl-C, so the same cleanup runs:
    temporaries are removed and nothing half-written is kept.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except SaladError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was kept (a training run continues with --resume)", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo(
                "error: out of memory. Lower --batch-size (training) or the batch of the command, score fewer or "
                "smaller films per call, or use a machine with more memory.", err=True,
            )
            sys.exit(1)
        except OSError as exc:  # PermissionError, a full disk, a vanished file: name the file and the fix
            click.echo(f"error: {describe_os_error(exc)}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the file, what the system said, and what usually fixes it."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or type(exc).__name__
    fixes = {
        PermissionError: "check the file's owner and mode (the command runs as this user)",
        FileNotFoundError: "check the path",
        IsADirectoryError: "pass a file, not a folder",
    }
    fix = next((text for kind, text in fixes.items() if isinstance(exc, kind)), "check the disk and the path")
    if exc.errno is not None and exc.errno == errno.ENOSPC:
        fix = "free space on that disk or write elsewhere"
    return f"{where}: {reason}; {fix}."


class LazyChoice(click.Choice):
    """A click.Choice whose values come from a registry that is imported only when needed.

    metavar: shown in --help instead of the list, so that --help does not load the registry (the
    encoders' registry imports torch); a value outside the registry is still refused, listing it.
    """

    def __init__(self, loader: Callable[[], Sequence[str]], metavar: str | None = None) -> None:
        self._loader = loader
        self._metavar = metavar
        super().__init__([], case_sensitive=True)

    def get_metavar(self, *args: Any, **kwargs: Any) -> str | None:
        if self._metavar is not None:
            return self._metavar
        return super().get_metavar(*args, **kwargs)

    @property  # type: ignore[override]
    def choices(self) -> Sequence[str]:
        return tuple(self._loader())

    @choices.setter
    def choices(self, _value: Sequence[str]) -> None:
        pass
