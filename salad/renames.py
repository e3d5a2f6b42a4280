"""Old keyword names of the Python API, kept working with a DeprecationWarning after the CLI's options were renamed.

The Python API speaks the command line's names (`films`, `min_films`, `labelled`, …); a caller still passing an old
keyword gets the same behaviour and a warning naming the new one, as `salad.clitools.deprecated_alias` does for options.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def renamed_keywords(**renames: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Accept each old keyword (`renamed_keywords(images="films")`) as its new name, warning once per call.

    Passing both spellings is a TypeError, as Python's own "got multiple values for argument" is.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{fn.__qualname__}() got {old}= and {new}=; {old} is the deprecated name of {new}: pass {new} only.")
                warnings.warn(f"{fn.__qualname__}({old}=…) is deprecated; use {new}=… (the same meaning, the CLI's name).",
                              DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
