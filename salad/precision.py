"""The precisions a bundle's graphs come in (fp32, fp16, int8, …), registered by name (salad.registry).

A precision is a name in the manifest (graphs[...].precision) and a set of default tolerances. A new one
(registered by its calibration builder) may borrow the default tolerances of a registered precision
for every metric that has none of its own (salad/verdict.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from salad.registry import Registry


@dataclass(frozen=True)
class Precision:
    """A precision of the bundle's graphs: its name, what it is, whose default tolerances it borrows."""

    name: str
    description: str
    #: A registered precision whose default tolerances apply where a metric has none for this one.
    tolerances_like: str | None = None


#: Every precision a manifest may name, in order (fp32 first: the exported bundle itself).
PRECISIONS: Registry[Precision] = Registry("precision")


def register_precision(name: str, description: str, *, tolerances_like: str | None = None) -> Precision:
    """Make `name` a precision manifests, `--precision` options and parity accept (refusing a second one)."""
    if tolerances_like is not None:
        PRECISIONS.get(tolerances_like)  # must exist: ConfigError listing the precisions otherwise
    return PRECISIONS.register(name, Precision(name, description, tolerances_like))


register_precision("fp32", "float32: the exported graphs, the reference for every other precision")
register_precision("fp16", "float16 encoder (weights and activations), float32 scorer")
register_precision("int8", "int8 Q/DQ encoder calibrated on real normal films, float32 scorer")
