"""The calibration report of one variant: accuracy against PyTorch, per-layer error, size and CPU latency.

Written as JSON (for machines and CI) and markdown (for the person deciding whether to ship the
variant) to --report-dir or BUNDLE/calibration/, whether or not the variant was accepted: an accepted
variant's report is <precision>.json/.md, a rejected one's <precision>.rejected.json/.md, so a
rejected attempt never overwrites the report of the variant the bundle keeps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .measure import Timed
from .sensitivity import LayerError

#: The shape of a calibration report's JSON (salad/schemas/calibration.json).
SCHEMA = "salad-calibration/1"
#: Accuracy figures the report leads with (parity metric names).
HEADLINE = ("delta_auc", "delta_auprc", "label_agreement", "max_abs_score_diff", "p99_abs_score_diff", "embedding_cosine_min", "spearman")


def _num(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN"
        if 0.999 < abs(value) < 1:
            return f"{value:.6f}"
        return f"{value:.{digits}g}"
    return str(value)


@dataclass
class Attempt:
    """One candidate of the accuracy-bounded search: which layers stayed float and what it achieved."""

    kept_float: list[str]
    metrics: dict[str, float | None]
    passed: bool
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kept_float": list(self.kept_float), "metrics": {k: _num(v) for k, v in self.metrics.items()},
                "passed": self.passed, "failures": list(self.failures)}


@dataclass
class CalibrationReport:
    """What `calibrate_bundle` did and measured for one precision variant."""

    bundle: str
    precision: str
    accepted: bool
    graphs: dict[str, str]  # manifest key → file
    settings: dict[str, Any]
    tolerances: dict[str, float]
    #: The parity row of the variant against PyTorch (salad.runtime.compare), as JSON.
    parity: dict[str, Any]
    #: ΔAUC/ΔAUPRC on the bundle's labelled reference films (always measurable), besides the parity row.
    reference_films: dict[str, Any]
    calibration: dict[str, Any] = field(default_factory=dict)  # images, found, list_sha256, method (int8)
    layers_in_float: dict[str, str] = field(default_factory=dict)  # node → reason
    layer_errors: list[LayerError] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    #: Quantized layers, noisiest first: the order the accuracy-bounded search keeps them float.
    search_order: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    latency: dict[str, dict[int, Timed]] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # "json"/"markdown" → where the report was written

    # -- figures ------------------------------------------------------------------------------------

    def metric(self, name: str) -> float | None:
        value = self.parity.get(name)
        return None if value is None else float(value)

    @property
    def delta_auc(self) -> float | None:
        """ΔAUC on the labelled data when given, else on the reference films."""
        value = self.metric("delta_auc")
        return value if value is not None else self.reference_films.get("delta_auc")

    @property
    def label_agreement(self) -> float | None:
        return self.metric("label_agreement")

    def speedup(self, graph: str, batch: int, stat: str = "median_ms") -> float | None:
        """fp32 time / variant time of `graph` ("encoder" or "model") at `batch` (> 1 means the variant is faster)."""
        base = self.latency.get(f"{graph}.fp32", {}).get(batch)
        variant = self.latency.get(f"{graph}.{self.precision}", {}).get(batch)
        if base is None or variant is None:
            return None
        return float(getattr(base, stat)) / max(float(getattr(variant, stat)), 1e-12)

    def busy_reason(self) -> str | None:
        """Why the latency figures are not ones to quote (the load when they were taken), or None on a quiet machine."""
        from salad.runtime.bench import machine_busy

        load, cores = self.environment.get("load_average"), self.environment.get("cores")
        if not load or not cores or not machine_busy(load, int(cores)):
            return None
        return f"the machine was busy (1-minute load average {load[0]:.1f} on {cores} cores)"

    def speedup_line(self) -> str | None:
        """The printed speed-up: the variant vs fp32 on ONNX Runtime (like with like); on a busy machine none, saying why."""
        batches = sorted({b for per in self.latency.values() for b in per})
        pairs = [(b, s) for b in batches if (s := self.speedup("encoder", b)) is not None]
        if not pairs:
            return None
        why = self.busy_reason()
        if why:
            return (f"no speed-up figure: {why}; re-run `salad bench {self.bundle} --precision fp32 --precision "
                    f"{self.precision} --batch 1` on a quiet machine")
        figures = ", ".join(f"batch {b} ×{s:.2f}" for b, s in pairs)
        return f"{self.precision} encoder vs fp32 encoder, both on ONNX Runtime CPU (median; >1: {self.precision} is faster): {figures}"

    # -- output ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (schema salad-calibration/1, salad/schemas/calibration.json)."""
        return {
            "schema": SCHEMA,
            "bundle": self.bundle,
            "precision": self.precision,
            "accepted": self.accepted,
            "failures": list(self.failures),
            "graphs": dict(self.graphs),
            "settings": dict(self.settings),
            "accuracy": {k: _num(self.parity.get(k)) for k in HEADLINE},
            "tolerances": dict(self.tolerances),
            "parity": self.parity,
            "reference_films": {k: _num(v) for k, v in self.reference_films.items()},
            "calibration": dict(self.calibration),
            "layers_in_float": dict(self.layers_in_float),
            "layer_errors": [e.to_dict() for e in self.layer_errors],
            "attempts": [a.to_dict() for a in self.attempts],
            "search_order": list(self.search_order),
            "sizes": dict(self.sizes),
            "latency": {g: {str(b): t.to_dict() for b, t in per.items()} for g, per in self.latency.items()},
            "speedup": {
                f"{g}@{b}": round(s, 3)
                for g in ("encoder", "model") for b in sorted({b for per in self.latency.values() for b in per})
                if (s := self.speedup(g, b)) is not None
            },
            "environment": dict(self.environment),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_markdown(self) -> str:
        p = self.precision
        status = "accepted" if self.accepted else "REJECTED"
        lines = [f"# Calibration of `{Path(self.bundle).name}`: {p} {status}", ""]
        if self.failures:
            lines += ["## Why it was rejected", "", *[f"- {f}" for f in self.failures], ""]
        s = self.settings
        lines += ["## Settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in s.items()]
        if self.calibration:
            lines += ["", "| calibration | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in self.calibration.items()]
        lines += ["", f"## Accuracy against the PyTorch reference ({self._images_text()})", "",
                  "| metric | value | tolerance | |", "|---|---|---|---|"]
        for check in self.parity.get("checks", []):
            if check["metric"] == "nonfinite":
                continue
            mark = "-" if not check["checked"] else ("pass" if check["passed"] else "**FAIL**")
            lines.append(f"| {check['metric']} | {_fmt(check['value'])} | {_fmt(check['tolerance'])} | {mark} |")
        rf = self.reference_films
        if rf.get("delta_auc") is not None:
            lines += ["", f"On the bundle's {rf.get('images')} labelled reference films: AUC {_fmt(rf.get('auc'))} "
                      f"(PyTorch {_fmt(rf.get('reference_auc'))}), ΔAUC {_fmt(rf.get('delta_auc'))}, ΔAUPRC {_fmt(rf.get('delta_auprc'))}."]
        if self.attempts:
            lines += ["", "## Accuracy-bounded search", "",
                      "Each attempt keeps one more layer float, the noisiest first (see the per-layer table).", "",
                      "| attempt | layer added to float | layers kept float | ΔAUC | label agreement | max \\|Δscore\\| | fits |",
                      "|---|---|---|---|---|---|---|"]
            for i, a in enumerate(self.attempts, start=1):
                added = f"`{a.kept_float[-1]}`" if a.kept_float else "(none: channel rule only)"
                lines.append(f"| {i} | {added} | {len(a.kept_float)} | {_fmt(a.metrics.get('delta_auc'))} | "
                             f"{_fmt(a.metrics.get('label_agreement'))} | {_fmt(a.metrics.get('max_abs_score_diff'))} | "
                             f"{'yes' if a.passed else 'no'} |")
        if self.layers_in_float:
            lines += ["", "## Layers left in float", "", "| layer | why |", "|---|---|"]
            lines += [f"| `{n}` | {r} |" for n, r in self.layers_in_float.items()]
        if self.layer_errors:
            lines += ["", "## Per-layer quantisation error (SQNR, dB; higher is better)", "",
                      "| layer | op | channels in→out | int8 | weights | input | output vs float |", "|---|---|---|---|---|---|---|"]
            for e in self.layer_errors:
                lines.append(f"| `{e.name}` | {e.op_type} | {e.channels_in}→{e.channels_out} | {'yes' if e.quantized else 'no'} | "
                             f"{_fmt(e.weight_sqnr_db, 3)} | {_fmt(e.input_sqnr_db, 3)} | {_fmt(e.output_sqnr_db, 3)} |")
        if self.sizes:
            lines += ["", "## File sizes", "", "| file | bytes |", "|---|---|"]
            lines += [f"| {f} | {n:,} |" for f, n in self.sizes.items()]
        if self.latency:
            batches = sorted({b for per in self.latency.values() for b in per})
            head = " | ".join(f"batch {b} median | batch {b} min" for b in batches)
            lines += ["", "## ONNX Runtime CPU latency (ms)", "", f"| graph | {head} |", "|---" * (1 + 2 * len(batches)) + "|"]
            for g, per in self.latency.items():
                cells = " | ".join(f"{_fmt(per[b].median_ms)} | {_fmt(per[b].min_ms)}" if b in per else "- | -" for b in batches)
                lines.append(f"| {g} | {cells} |")
            sp = [f"{g} batch {b}: ×{self.speedup(g, b):.2f} (median), ×{self.speedup(g, b, 'min_ms'):.2f} (min)"
                  for g in ("encoder", "model") for b in batches if self.speedup(g, b) is not None]
            if sp and self.busy_reason():
                line = self.speedup_line() or ""
                lines += ["", f"{line[:1].upper()}{line[1:]}: speed-ups taken on a busy machine are not figures to quote."]
            elif sp:
                lines += ["", "Speed-up of the variant over fp32 on ONNX Runtime (>1 is faster): " + "; ".join(sp) + "."]
            env = self.environment
            lines += ["", f"Measured on {env.get('cpu', '?')} ({env.get('cores', '?')} cores; "
                      f"{', '.join(env.get('int8_flags', [])) or 'no VNNI'}), "
                      f"onnxruntime {env.get('onnxruntime', '?')}, load average {env.get('load_average', '?')}, "
                      f"{next(iter(next(iter(self.latency.values())).values())).runs} runs per figure, graphs interleaved."]
        if self.notes:
            lines += ["", "## Notes", "", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"

    def _images_text(self) -> str:
        images = self.parity.get("images") or {}
        if isinstance(images, dict):
            return ", ".join(f"{n} {k} films" for k, n in images.items()) or "no films"
        return f"{images} films"

    @property
    def stem(self) -> str:
        """The report's file name without extension: <precision>, or <precision>.rejected for a rejected variant."""
        return self.precision if self.accepted else f"{self.precision}.rejected"

    def file_names(self) -> dict[str, str]:
        """"json"/"markdown" → the report's file names (no folder)."""
        return {"json": f"{self.stem}.json", "markdown": f"{self.stem}.md"}

    def write(self, directory: Path, names: dict[str, str] | None = None) -> dict[str, str]:
        """Write the JSON and markdown report into `directory` (as `names`, default `file_names()`); returns their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {k: directory / v for k, v in (names or self.file_names()).items()}
        self.files = {k: str(v) for k, v in paths.items()}
        paths["json"].write_text(self.to_json() + "\n", encoding="utf-8")
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        return self.files
