"""Tolerances per precision: the manifest's, then overrides (API or --tolerance), then the fixed ones."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from salad.errors import ConfigError
from salad.manifest import PRECISIONS, Manifest
from salad.verdict import fixed_tolerances, metrics

# -- tolerances --------------------------------------------------------------------------------------


def resolve_tolerances(
    manifest: Manifest,
    precisions: Iterable[str],
    overrides: Mapping[str, float] | Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Tolerances per precision: the manifest's (Manifest.tolerances), then `overrides`, then the fixed ones.

    `overrides` is either {metric: value} for every precision or {precision: {metric: value}}.
    Returns the tolerances and notes about manifest keys that are not parity metrics.
    """
    per_precision = _split_overrides(overrides)
    notes: list[str] = []
    out: dict[str, dict[str, float]] = {}
    for precision in precisions:
        base = manifest.tolerances(precision)
        known = metrics()
        unknown = sorted(set(base) - set(known))
        if unknown:
            notes.append(f"manifest tolerances for {precision} name unknown metric(s) {unknown}; they are ignored.")
        tol = {k: float(v) for k, v in base.items() if k in known}
        tol.update(per_precision.get("*", {}))
        tol.update(per_precision.get(precision, {}))
        tol.update(fixed_tolerances())
        out[precision] = tol
    return out, notes


def _split_overrides(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """{metric: v} → {"*": {…}}; {precision: {metric: v}} as is; refusing unknown names and fixed metrics."""
    if not overrides:
        return {}
    nested = all(isinstance(v, Mapping) for v in overrides.values())
    groups = dict(overrides) if nested else {"*": overrides}
    out: dict[str, dict[str, float]] = {}
    known, fixed = metrics(), fixed_tolerances()
    for precision, values in groups.items():
        if precision != "*" and precision not in PRECISIONS:
            raise ConfigError(f"tolerance override for precision {precision!r}; expected one of {list(PRECISIONS)}.")
        for metric, value in values.items():
            if metric in fixed:
                raise ConfigError(f"tolerance {metric!r} is fixed at {fixed[metric]:g}: NaN or infinite outputs never pass.")
            if metric not in known:
                raise ConfigError(
                    f"unknown parity metric {metric!r} in tolerance overrides; "
                    f"expected one of {sorted(set(known) - set(fixed))}."
                )
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"tolerance {metric}={value!r} is not a number.") from None
            if not math.isfinite(number):
                raise ConfigError(f"tolerance {metric}={value!r}: expected a finite number.")
            if known[metric].bound == "min" and number > 1:
                raise ConfigError(f"tolerance {metric}={number:g} can never pass: {metric} is at most 1.")
            if known[metric].bound != "min" and number < 0:
                raise ConfigError(f"tolerance {metric}={number:g} can never pass: it bounds a magnitude, so use a value ≥ 0.")
            out.setdefault(precision, {})[metric] = number
    return out


def parse_tolerance_options(options: Sequence[str]) -> dict[str, dict[str, float]]:
    """CLI `--tolerance [PRECISION:]METRIC=VALUE` strings → {precision or "*": {metric: value}}."""
    out: dict[str, dict[str, float]] = {}
    for text in options:
        lhs, sep, value = text.partition("=")
        precision, _, metric = lhs.rpartition(":")
        if not sep or not metric.strip():
            raise ConfigError(
                f"--tolerance {text!r}: expected [PRECISION:]METRIC=VALUE, e.g. max_abs_score_diff=1e-4 or int8:label_agreement=0.98."
            )
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--tolerance {text!r}: {value!r} is not a number.") from None
        out.setdefault(precision.strip() or "*", {})[metric.strip()] = number
    _split_overrides(out)  # validate names and values now, with the option's wording
    return out
