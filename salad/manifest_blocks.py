"""The manifest's nested blocks as frozen dataclasses (docs/architecture.md §4): bank, scores, threshold, reference.

In the manner of timm's `PretrainedCfg`: each block names its fields once, with their types; `from_json`
builds one from the manifest's JSON object and `to_json` gives the object back key for key (field order
is the file's key order; an absent optional field stays absent, a `nullable` one is written as null),
so a manifest read and written again is byte-identical. `block_problems` checks a raw object against
the annotations (unknown keys, required keys, JSON types); salad/schema.py adds the ranges, and
tests/export/test_manifest_schema.py holds the published JSON Schema to the same fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

__all__ = [
    "Bank", "Block", "DriftCalibration", "FieldKind", "Reference", "Scores", "Threshold", "Validation", "block_problems", "kinds",
    "nullable", "show",
]

B = TypeVar("B", bound="Block")


def nullable() -> Any:
    """A field that is written as null when it has no value (the file always names it), instead of being left out."""
    return field(default=None, metadata={"nullable": True})


@dataclass(frozen=True, kw_only=True)
class Block:
    """A manifest block: fields in the file's key order; `from_json` and `to_json` round-trip its JSON object exactly."""

    @classmethod
    def from_json(cls: type[B], raw: Mapping[str, Any]) -> B:
        """The block of JSON object `raw` (checked first by block_problems); lists become tuples, objects nested blocks."""
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                continue
            value, kind = raw[f.name], _kind(hints[f.name])
            if isinstance(kind, type) and issubclass(kind, Block) and isinstance(value, Mapping):
                value = kind.from_json(value)
            elif kind is tuple and isinstance(value, list):
                value = tuple(value)
            elif kind is dict and isinstance(value, Mapping):
                value = dict(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        """The JSON object: every field with a value, and nullable ones as null; tuples as lists, blocks as objects."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and not f.metadata.get("nullable"):
                continue
            out[f.name] = _to_json(value)
        return out


def _to_json(value: Any) -> Any:
    if isinstance(value, Block):
        return value.to_json()
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _strip(annotation: Any) -> tuple[Any, bool]:
    """`annotation` without its `| None`, and whether it had one."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{annotation}: a block field is one JSON kind, optionally | None")
        return args[0], True
    return annotation, False


def _kind(annotation: Any) -> Any:
    """The JSON kind of an annotation: bool, int, float, str, tuple (a list), dict (an object) or a Block subclass."""
    base = _strip(annotation)[0]
    origin = typing.get_origin(base)
    return tuple if origin is tuple else dict if origin in (dict, Mapping) else base


def _item(annotation: Any) -> tuple[Any, bool] | None:
    """The kind of a list's items or an object's values, and whether they may be null; None for other kinds."""
    base = _strip(annotation)[0]
    args = typing.get_args(base)
    if _kind(base) is tuple:
        return _kind(args[0]), _strip(args[0])[1]
    if _kind(base) is dict:
        return _kind(args[1]), _strip(args[1])[1]
    return None


@dataclass(frozen=True)
class FieldKind:
    """A block field as JSON sees it: its kind, whether required or nullable, and its items' kind (lists, objects)."""

    kind: Any
    required: bool
    nullable: bool
    item: tuple[Any, bool] | None


def kinds(cls: type[Block]) -> dict[str, FieldKind]:
    """Each field of block `cls` → its FieldKind: what block_problems checks and the tests compare with the JSON Schema."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: FieldKind(
            _kind(hints[f.name]), f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            bool(f.metadata.get("nullable")), _item(hints[f.name]),
        )
        for f in dataclasses.fields(cls)
    }


def _is(kind: Any, value: Any) -> bool:
    """Whether JSON `value` has `kind` (integers strictly: 200.0 and true are not integers; numbers finite)."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is str:
        return isinstance(value, str)
    if kind is tuple:
        return isinstance(value, list)
    return isinstance(value, dict)  # dict or a Block


_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", tuple: "a list", dict: "an object"}


def _expected(k: FieldKind) -> str:
    name = _NAMES.get(k.kind, "an object")
    if k.item is None:
        return name
    item = _NAMES[k.item[0]].split(" ", 1)[1] + ("s or nulls" if k.item[1] else "s")
    return f"{name} of {item}"


def show(value: Any) -> str:
    """A value as a problem message shows it: its JSON (cut at 60 characters) and its Python type."""
    return f"{json.dumps(value)[:60]} ({type(value).__name__})"


def block_problems(cls: type[Block], raw: Any, where: str) -> list[str]:
    """Every key of JSON object `raw` that is unknown, missing while required, or of the wrong JSON type (nested blocks too)."""
    if not isinstance(raw, dict):
        return [f"{where}: {show(raw)}; expected an object"]
    fields = kinds(cls)
    problems = []
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        problems.append(f"{where}: unknown field(s) {unknown}; expected only {list(fields)} (a rewrite would drop others)")
    for name, k in fields.items():
        at = f"{where}.{name}"
        if name not in raw:
            if k.required:
                problems.append(f"{at}: missing; expected {_expected(k)}")
            continue
        value = raw[name]
        if value is None and k.nullable:
            continue
        if isinstance(k.kind, type) and issubclass(k.kind, Block):
            problems += block_problems(k.kind, value, at)
            continue
        ok = _is(k.kind, value)
        if ok and k.item is not None:
            kind, can_be_null = k.item
            values = value if isinstance(value, list) else list(value.values())
            ok = all((v is None and can_be_null) or _is(kind, v) for v in values)
        if not ok:
            problems.append(f"{at}: {show(value)}; expected {_expected(k)}")
    return problems


# -- the blocks ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Bank(Block):
    """The memory bank: rows × dim float32 normal embeddings, their sha256, and how the scoring graphs get them."""

    rows: int
    dim: int | None = None
    dtype: str | None = None
    sha256: str
    dropped_anomalous: int | None = None
    #: "initializer" (bound into scorer/model) or "input" (fed from bank.npy).
    form: str
    file: str | None = nullable()
    initializer: str | None = nullable()
    external_data: str | None = nullable()


@dataclass(frozen=True, kw_only=True)
class Scores(Block):
    """The score outputs the graphs produce, the one a threshold applies to by default, and what each means."""

    default: str
    outputs: tuple[str, ...]
    definitions: dict[str, str] | None = None
    range: tuple[float, ...] | None = None
    norm_eps: float | None = None


@dataclass(frozen=True, kw_only=True)
class DriftCalibration(Block):
    """The validation normals' operating scores and exposures that the drift checks calibrate on."""

    normal_scores: tuple[float, ...] | None = None
    normal_exposure: tuple[float, ...] | None = None
    unreadable_films: int | None = None


@dataclass(frozen=True, kw_only=True)
class Validation(Block):
    """The validation films the threshold was chosen on."""

    n_normal: int | None = None
    n_abnormal: int | None = None
    source: str | None = None
    drift: DriftCalibration | None = None


@dataclass(frozen=True, kw_only=True)
class Threshold(Block):
    """The decision rule: a film whose `score` output exceeds `value` is abnormal; the operating point it was set for."""

    score: str | None = None
    value: float
    rule: str | None = None
    operating_point: dict[str, float] | None = None
    achieved: dict[str, float | None] | None = None
    validation: Validation | None = None


@dataclass(frozen=True, kw_only=True)
class Reference(Block):
    """How reference.npz (the parity oracle's films and PyTorch outputs) was chosen."""

    file: str | None = None
    images: int | None = None
    keys: tuple[str, ...] | None = None
    n_normal: int | None = None
    n_abnormal: int | None = None
    source: str | None = None
    list_sha256: str | None = None
    batch_sizes: tuple[int, ...] | None = None
