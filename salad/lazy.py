"""Package attributes imported on first use (PEP 562), so that importing a stage stays cheap."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any


def lazy_attribute(package: str, table: Mapping[str, str], name: str) -> Any:
    """`name` from the module `table` maps it to, imported now; the AttributeError Python expects otherwise."""
    if name in table:
        return getattr(import_module(table[name]), name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
