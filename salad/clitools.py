"""Click helpers shared by every command (the core's and the stages'): clean exits, lazily listed choices and
the option grammar every command shares (deprecated aliases, repeatable lists, devices).

Kept in the core, apart from the CLI layer (cli/, installed as salad.cli), which dispatches to the stage commands,
so that a stage's command module imports these without importing the dispatcher that imports it (no import cycle).
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from salad.errors import EXIT_ERROR, EXIT_INTERRUPTED, DataError, SaladError
from salad.fsutil import sigterm_as_interrupt, write_atomic

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
        except SaladError as exc:  # the exit code says which kind (salad.errors.EXIT_CODES)
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was kept (a training run continues with --resume)", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except MemoryError:
            click.echo(
                "error: out of memory. Lower --batch-size (training) or the batch of the command, score fewer or "
                "smaller films per call, or use a machine with more memory.", err=True,
            )
            sys.exit(EXIT_ERROR)
        except OSError as exc:  # PermissionError, a full disk, a vanished file: name the file and the fix
            click.echo(f"error: {describe_os_error(exc)}", err=True)
            sys.exit(EXIT_ERROR)

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


# -- the option grammar every command shares ---------------------------------------------------------


def deprecated_alias(old: str, new: str, dest: str, **kwargs: Any) -> Callable[[F], F]:
    """A hidden option `old` that sets the parameter `dest` of the option `new`, printing a one-line notice.

    Old spellings keep working in scripts; `new` wins when both are given. kwargs: the new option's type and
    `multiple` (the same conversion applies to both spellings).
    """
    alias_name = "_alias_" + old.lstrip("-").replace("-", "_")

    def move(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if ctx.get_parameter_source(alias_name) != click.core.ParameterSource.COMMANDLINE:
            return
        click.echo(f"warning: {old} is deprecated; use {new} (same meaning).", err=True)
        if ctx.get_parameter_source(dest) == click.core.ParameterSource.COMMANDLINE:
            return  # both given: the new spelling wins
        if kwargs.get("multiple") and dest in ctx.params and ctx.params[dest]:
            value = (*ctx.params[dest], *value)
        ctx.params[dest] = value
        ctx.set_parameter_source(dest, click.core.ParameterSource.COMMANDLINE)

    return click.option(old, alias_name, hidden=True, expose_value=False, callback=move, **kwargs)


def require(ctx_value: Any, option: str) -> None:
    """A usage error (exit 2) for an option that is required but has a deprecated alias, so click cannot require it."""
    if ctx_value is None:
        raise click.UsageError(f"Missing option '{option}'.")


class DeviceType(click.ParamType):
    """One type for every --device: cpu, cuda or cuda:N (salad.machine.parse_device), normalised to that text."""

    name = "device"

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return "cpu|cuda[:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from salad.machine import parse_device

        try:
            kind, index = parse_device(str(value))
        except SaladError as exc:
            self.fail(str(exc), param, ctx)
        return kind if kind == "cpu" or (":" not in str(value)) else f"{kind}:{index}"


DEVICE = DeviceType()


class IntList(click.ParamType):
    """Integers given one per option (repeatable) or as a comma list ("1,8,32"); each at least `min`."""

    name = "int-list"

    def __init__(self, min: int = 1) -> None:  # noqa: A002 - click's own spelling (IntRange(min=…))
        self.min = min

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return "N[,N…]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            numbers = [int(part) for part in str(value).split(",") if part.strip()]
        except ValueError:
            self.fail(f"{value!r}: expected whole numbers, e.g. 8 or 1,8,32.", param, ctx)
        if not numbers or any(n < self.min for n in numbers):
            self.fail(f"{value!r}: expected whole numbers ≥ {self.min}, e.g. 1,8,32.", param, ctx)
        return numbers


def flatten(lists: Sequence[Sequence[int]]) -> list[int]:
    """The values of a repeatable IntList option, in order, each once."""
    return list(dict.fromkeys(n for numbers in lists for n in numbers))


#: The type of every `--json` and `--markdown` option: a file to write (never a folder), or `-` for standard output.
OUTPUT = click.Path(path_type=Path, dir_okay=False, allow_dash=True)


def is_stdout(*outputs: Path | None) -> bool:
    """Whether any of these output options is `-`: the command then prints only that document on standard output."""
    return any(out is not None and str(out) == "-" for out in outputs)


def write_output(out: Path | None, text: str) -> bool:
    """`text` to the file `out` (its folders made, written atomically), to standard output for `-`, nowhere for None.

    Returns whether a file was written (so the command can say where).
    """
    if out is None:
        return False
    if is_stdout(out):
        click.echo(text, nl=not text.endswith("\n"))
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text.encode("utf-8"))
    return True


def name_path_pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """NAME=PATH options → {name: path}, refusing a missing '=' or a repeated name."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise DataError(f"{option} {v!r}: expected NAME=PATH, e.g. {option} kermany=../films/kermany.")
        if name in out:
            raise DataError(f"{option} {v!r}: the name {name!r} is given twice; names must be unique.")
        out[name] = path
    return out
