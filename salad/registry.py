"""One registry shape for every pluggable kind: runtimes, precisions and their builders, methods, encoders, scores.

Modelled on timm's model registry: a name is registered once (a second registration of the name
is refused), `names()` lists what can be chosen (the CLI's click choices come from it), `get` resolves
a name or refuses it with a ConfigError listing the choices, and a deprecated alias keeps an old
name working with a warning while it stays out of the listings. A Registry is a read-only mapping,
so `name in REG`, `REG[name]` and `REG.items()` work as on the dicts it replaces.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from salad.errors import ConfigError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind ("runtime", "precision", …), in registration order unless `sort`."""

    def __init__(self, kind: str, *, sort: bool = False) -> None:
        self.kind = kind
        self.sort = sort
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    # -- registering ------------------------------------------------------------------------------

    def register(self, name: str, entry: T) -> T:
        """Add `entry` as `name`; the same entry again is a no-op, another one under a taken name a ConfigError."""
        if not name or not isinstance(name, str):
            raise ConfigError(f"a {self.kind} needs a non-empty name; got {name!r}.")
        if name in self._aliases:
            raise ConfigError(f"{self.kind} {name!r} is a deprecated alias of {self._aliases[name]!r}; choose another name.")
        taken = self._entries.get(name)
        if taken is not None and taken is not entry and taken != entry:
            raise ConfigError(
                f"{self.kind} {name!r} is already registered by {_describe(taken)}; a second {self.kind} of that name "
                f"would shadow it. Choose another name, or unregister the first."
            )
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@REG.decorator("name")`: register the decorated object as `name` and return it unchanged."""

        def decorate(obj: T) -> T:
            return self.register(name, obj)

        return decorate

    def deprecate(self, old: str, new: str) -> None:
        """Keep `old` working as an alias of the registered `new`: `get(old)` warns and returns `new`'s entry."""
        if new not in self._entries:
            raise ConfigError(f"cannot alias {self.kind} {old!r} to {new!r}: {new!r} is not registered.")
        if old in self._entries:
            raise ConfigError(f"cannot alias {self.kind} {old!r}: it is a registered {self.kind} itself.")
        self._aliases[old] = new

    def unregister(self, name: str) -> T:
        """Remove `name` (and the aliases pointing to it): for tests and plug-ins that withdraw an entry."""
        entry = self._entries.pop(name)
        for old in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[old]
        return entry

    # -- looking up -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The names to choose from (no deprecated aliases): the `--option` choices."""
        return sorted(self._entries) if self.sort else list(self._entries)

    def aliases(self) -> dict[str, str]:
        """Deprecated alias → current name."""
        return dict(self._aliases)

    def canonical(self, name: str) -> str:
        """The registered name `name` stands for, warning if it is a deprecated alias; ConfigError if unknown."""
        if name in self._entries:
            return name
        if name in self._aliases:
            new = self._aliases[name]
            warnings.warn(f"{self.kind} {name!r} is deprecated; use {new!r} (same meaning).", FutureWarning, stacklevel=3)
            return new
        raise ConfigError(f"unknown {self.kind} {name!r}; expected one of {self.names()}.")

    def get(self, name: str) -> T:  # type: ignore[override]  # Mapping.get's default is refused: unknown is an error
        """The entry registered as `name` (or its deprecated alias, with a warning); ConfigError listing the choices."""
        return self._entries[self.canonical(name)]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _describe(entry: object) -> str:
    return str(getattr(entry, "__qualname__", None) or getattr(entry, "name", None) or type(entry).__name__)
