"""The bench report: rows with their ratios to PyTorch eager, and its table, markdown and plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salad.errors import BackendUnavailableError, DataError
from salad.tables import fixed_width

from .settings import BASELINE_PRECISION, BASELINE_RUNTIME, SCHEMA
from .stats import Stats

# -- the report -----------------------------------------------------------------------------------


@dataclass
class BenchRow:
    """One runtime × precision × batch, with its ratios to PyTorch eager fp32 at the same batch."""

    runtime: str
    precision: str
    batch: int
    device: str
    end_to_end: Stats
    inference: Stats
    device_inference: Stats | None
    preprocess_p50_ms: float
    inference_in_e2e_p50_ms: float
    cold_start: dict[str, float]
    memory: dict[str, Any]
    runtime_info: dict[str, Any]
    iters: int
    warmup: int
    #: The start with an empty cache folder (for a runtime without a start-up cache: its only start, = cold_start).
    first_start: dict[str, float]
    #: The start with the folder the first start left (= cold_start); None for a runtime without a start-up cache.
    cached_start: dict[str, float] | None
    speedup_vs_torch: float | None = None
    inference_speedup_vs_torch: float | None = None
    gflops: float | None = None
    peak_gflops: float | None = None

    @classmethod
    def from_worker(cls, d: dict[str, Any]) -> BenchRow:
        dev = d.get("device_inference")
        return cls(
            runtime=d["runtime"], precision=d["precision"], batch=int(d["batch"]), device=d["device"],
            end_to_end=Stats.from_dict(d["end_to_end"]), inference=Stats.from_dict(d["inference"]),
            device_inference=Stats.from_dict(dev) if dev else None, preprocess_p50_ms=float(d["preprocess_p50_ms"]),
            inference_in_e2e_p50_ms=float(d["inference_in_e2e_p50_ms"]),
            cold_start=d["cold_start"], memory=d["memory"], runtime_info=d["runtime_info"],
            iters=int(d["iters"]), warmup=int(d["warmup"]),
            first_start=d.get("first_start") or d["cold_start"], cached_start=d.get("cached_start"),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchRow:
        """A row of a written JSON report (to re-render it)."""
        row = cls.from_worker({**d, "inference": d["inference"], "end_to_end": d["end_to_end"]})
        inf = d["inference"]
        row.speedup_vs_torch, row.inference_speedup_vs_torch = d.get("speedup_vs_torch"), inf.get("speedup_vs_torch")
        row.gflops, row.peak_gflops = inf.get("gflops"), inf.get("peak_gflops")
        return row

    @property
    def is_baseline(self) -> bool:
        return (self.runtime, self.precision) == (BASELINE_RUNTIME, BASELINE_PRECISION)

    @property
    def throughput_ips(self) -> float:
        """Images per second at the median end-to-end latency."""
        return self.batch * 1000.0 / self.end_to_end.p50_ms

    @property
    def inference_throughput_ips(self) -> float:
        return self.batch * 1000.0 / self.inference.p50_ms

    @property
    def fraction_of_peak(self) -> float | None:
        return self.gflops / self.peak_gflops if self.gflops and self.peak_gflops else None

    def to_dict(self) -> dict[str, Any]:
        e = self.end_to_end
        return {
            "runtime": self.runtime, "precision": self.precision, "batch": self.batch, "device": self.device,
            "p50_ms": e.p50_ms, "p95_ms": e.p95_ms, "p99_ms": e.p99_ms,
            "throughput_ips": self.throughput_ips, "peak_rss_mb": self.memory.get("peak_rss_mb"),
            "speedup_vs_torch": self.speedup_vs_torch,
            "end_to_end": e.to_dict(), "preprocess_p50_ms": self.preprocess_p50_ms,
            "inference_in_e2e_p50_ms": self.inference_in_e2e_p50_ms,
            "inference": {
                **self.inference.to_dict(), "throughput_ips": self.inference_throughput_ips,
                "speedup_vs_torch": self.inference_speedup_vs_torch, "gflops": self.gflops,
                "peak_gflops": self.peak_gflops, "fraction_of_peak": self.fraction_of_peak,
            },
            "device_inference": self.device_inference.to_dict() if self.device_inference else None,
            "cold_start": self.cold_start, "first_start": self.first_start, "cached_start": self.cached_start,
            "memory": self.memory, "runtime_info": self.runtime_info,
            "iters": self.iters, "warmup": self.warmup,
        }


def machine_busy(load_average: Sequence[float] | None, usable_cpus: int) -> bool:
    """Whether a bench started on a busy machine: a 1-minute load average above half the usable CPUs."""
    return load_average is not None and len(load_average) > 0 and load_average[0] > 0.5 * usable_cpus


@dataclass(frozen=True)
class Speedup:
    """One like-with-like ratio at one batch: `baseline` p50 / `variant` p50, end to end (> 1: the variant is faster)."""

    variant: str  # "onnxruntime/int8"
    baseline: str  # "onnxruntime/fp32" (same runtime) or "torch/fp32" (PyTorch eager)
    batch: int
    variant_ms: float
    baseline_ms: float

    @property
    def ratio(self) -> float:
        return self.baseline_ms / self.variant_ms

    @property
    def same_runtime(self) -> bool:
        """int8 or fp16 against fp32 on the same runtime (rather than a runtime against PyTorch)."""
        return self.variant.split("/")[0] == self.baseline.split("/")[0]

    def describe(self) -> str:
        """'onnxruntime int8 vs onnxruntime fp32 at batch 1: 0.78× (0.730 vs 0.570 ms)' — what is compared, and by how much."""
        name = "PyTorch eager fp32" if self.baseline == f"{BASELINE_RUNTIME}/{BASELINE_PRECISION}" else self.baseline.replace("/", " ")
        return (f"{self.variant.replace('/', ' ')} vs {name} at batch {self.batch}: {self.ratio:.2f}× "
                f"({self.variant_ms:.3f} vs {self.baseline_ms:.3f} ms p50 end to end)")


@dataclass
class BenchReport:
    """Everything one `salad bench` invocation measured: header, rows, floor, and what to be careful about."""

    header: dict[str, Any]
    rows: list[BenchRow]
    floor: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "header": self.header,
            "results": [r.to_dict() for r in self.rows],
            "floor": self.floor,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        """A report read back from its JSON, e.g. to render the markdown or the plot again."""
        if d.get("schema") != SCHEMA:
            raise DataError(f"not a salad bench report (schema {d.get('schema')!r}, expected {SCHEMA!r}).")
        return cls(header=d["header"], rows=[BenchRow.from_dict(r) for r in d["results"]], floor=d["floor"], notes=list(d.get("notes", [])))

    @property
    def busy(self) -> bool:
        """Whether these figures were taken on a busy machine (then they are not figures to quote)."""
        return machine_busy(self.header.get("load_average_start"), int(self.header["machine"]["cpus_usable"]))

    def busy_reason(self) -> str | None:
        """Why these figures are not ones to quote (the load at the start), or None on a quiet machine."""
        if not self.busy:
            return None
        load = self.header.get("load_average_start") or [0.0]
        return (f"the machine was busy: 1-minute load average {load[0]:.1f} on {self.header['machine']['cpus_usable']} "
                "usable CPUs when the bench started (busy above half the CPUs)")

    def fastest_row(self, batch: int) -> BenchRow | None:
        """The fastest measured variant (any runtime × precision but the PyTorch baseline) at `batch`, end to end p50."""
        rows = [r for r in self.rows if r.batch == batch and not r.is_baseline]
        return min(rows, key=lambda r: r.end_to_end.p50_ms) if rows else None

    def speedups(self, batch: int) -> list[Speedup]:
        """Like with like at `batch`: each non-fp32 precision vs fp32 on the same runtime, then each variant vs PyTorch eager."""
        at = {(r.runtime, r.precision): r for r in self.rows if r.batch == batch}
        base = at.get((BASELINE_RUNTIME, BASELINE_PRECISION))
        out = [Speedup(f"{rt}/{p}", f"{rt}/fp32", batch, r.end_to_end.p50_ms, at[(rt, "fp32")].end_to_end.p50_ms)
               for (rt, p), r in at.items() if p != "fp32" and (rt, "fp32") in at]
        if base is not None:
            out += [Speedup(f"{rt}/{p}", f"{BASELINE_RUNTIME}/{BASELINE_PRECISION}", batch, r.end_to_end.p50_ms, base.end_to_end.p50_ms)
                    for (rt, p), r in at.items() if not r.is_baseline]
        return out

    def fastest(self) -> list[str]:
        """Which runtime is fastest end to end at each precision × batch where several were measured, and by how much."""
        out = []
        keys = dict.fromkeys((r.precision, r.batch) for r in self.rows if not r.is_baseline)
        for precision, batch in keys:
            rows = sorted((r for r in self.rows if (r.precision, r.batch) == (precision, batch) and not r.is_baseline),
                          key=lambda r: r.end_to_end.p50_ms)
            if len(rows) > 1:
                best, second = rows[0], rows[1]
                ratio = second.end_to_end.p50_ms / best.end_to_end.p50_ms
                out.append(f"{precision} batch {batch}: {best.runtime} is fastest, {ratio:.2f}× "
                           f"{second.runtime} ({best.end_to_end.p50_ms:.3f} vs {second.end_to_end.p50_ms:.3f} ms p50 end to end)")
        return out

    def format_table(self) -> str:
        """Fixed-width terminal table: one line per runtime × precision × batch."""
        head = ("runtime", "precision", "batch", "p50 ms", "IQR ms", "p95 ms", "p99 ms", "img/s", "× torch",
                "infer p50", "infer × torch", "GFLOP/s", "% peak", "peak RSS MB", "first start ms", "cached start ms")
        lines = [head] + [
            (r.runtime, r.precision, str(r.batch), f"{r.end_to_end.p50_ms:.3f}", f"{r.end_to_end.iqr_ms:.3f}",
             f"{r.end_to_end.p95_ms:.3f}", f"{r.end_to_end.p99_ms:.3f}", f"{r.throughput_ips:.1f}", _ratio(r.speedup_vs_torch),
             f"{r.inference.p50_ms:.3f}", _ratio(r.inference_speedup_vs_torch), _num(r.gflops, 1), _pct(r.fraction_of_peak),
             _num(r.memory.get("peak_rss_mb"), 0), f"{r.first_start['total_ms']:.0f}", _start(r.cached_start))
            for r in self.rows
        ]
        text = fixed_width(lines, left=2)
        return text + "".join(f"\nfastest: {f}" for f in self.fastest()) + "".join(f"\nnote: {n}" for n in self.notes)

    def to_markdown(self) -> str:
        h = self.header
        lines = [
            f"# salad bench: {h['bundle']['path']}",
            "",
            f"{h['machine']['cpu']} ({h['machine']['cpus_usable']} usable CPUs), GPU: {h['machine']['gpu'] or 'none'}; "
            f"{h['threads']} thread(s) for every runtime; {h['iters']} timed runs after {h['warmup']} warm-up runs per figure; "
            f"{h['data']['films']} decoded films from {h['data']['path']}; load average {_load(h['load_average_start'])} → "
            f"{_load(h['load_average_end'])}.",
            "",
            f"Libraries: {', '.join(f'{k} {v}' for k, v in h['libraries'].items())}."
            + (f" Command: `{h['command']}`" if h["command"] else ""),
            "",
            "## Latency and throughput (end to end: preprocessing of decoded films + inference + score)",
            "",
            "| runtime | precision | batch | p50 ms (IQR) | p95 ms | p99 ms | images/s | speedup vs torch | "
            "of which preprocess p50 ms | of which inference p50 ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            e = r.end_to_end
            lines.append(
                f"| {r.runtime} | {r.precision} | {r.batch} | {e.p50_ms:.3f} ({e.iqr_ms:.3f}) | {e.p95_ms:.3f} | {e.p99_ms:.3f} | "
                f"{r.throughput_ips:.1f} | {_ratio(r.speedup_vs_torch)} | {r.preprocess_p50_ms:.3f} | {r.inference_in_e2e_p50_ms:.3f} |"
            )
        lines += [
            "",
            "## Inference alone (runner.infer on preprocessed batches), against the hardware",
            "",
            "| runtime | precision | batch | p50 ms (IQR) | p95 ms | p99 ms | images/s | speedup vs torch | GFLOP/s | % of measured peak |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            i = r.inference
            lines.append(
                f"| {r.runtime} | {r.precision} | {r.batch} | {i.p50_ms:.3f} ({i.iqr_ms:.3f}) | {i.p95_ms:.3f} | {i.p99_ms:.3f} | "
                f"{r.inference_throughput_ips:.1f} | {_ratio(r.inference_speedup_vs_torch)} | {_num(r.gflops, 2)} | "
                f"{_pct(r.fraction_of_peak)} |"
            )
        fastest = self.fastest()
        if fastest:
            lines += ["", "Fastest runtime per precision and batch (end to end p50): " + "; ".join(fastest) + "."]
        macs = self.floor.get("macs_per_image") or {}
        peaks = self.floor.get("peaks") or {}
        lines += ["", _floor_sentence(macs, peaks), "", "## Cold start and memory (each configuration in a fresh process)", "",
                  "Cold start: from constructing the Scorer (bundle verification) to the first scores of one batch. "
                  "First start: an empty cache folder; cached start: the next fresh process, on what the first left "
                  "(ONNX Runtime's optimised model, OpenVINO's compiled blob); '-': the runtime has no start-up cache. "
                  + (f"Each is the median of {h['starts']} starts (fastest–slowest in brackets)." if h.get("starts", 1) > 1
                     else "One start each."), "",
                  "| runtime | precision | batch | first start ms | cached start ms | verify ms | activate ms | first score ms | "
                  "peak RSS MB | RSS before bundle MB | Δ MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            c, m = r.cold_start, r.memory
            lines.append(
                f"| {r.runtime} | {r.precision} | {r.batch} | {_start(r.first_start, 1)} | {_start(r.cached_start, 1)} | "
                f"{c['verify_ms']:.1f} | {c['activate_ms']:.1f} | {c['first_score_ms']:.1f} | "
                f"{_num(m.get('peak_rss_mb'), 1)} | {_num(m.get('baseline_rss_mb'), 1)} | {_num(m.get('delta_rss_mb'), 1)} |"
            )
        lines += ["", "Verify, activate and first score split the cached start where there is one, else the only start."]
        method = self.rows[0].memory.get("method", "") if self.rows else ""
        lines += ["", f"Peak RSS: {method}; it includes the interpreter and the decoded films (the 'before bundle' column).", ""]
        threads = dict.fromkeys(
            f"{r.runtime_info.get('library', r.runtime)}: {r.runtime_info.get('intra_op_threads', '?')} intra-op, "
            f"{r.runtime_info.get('inter_op_threads', '?')} inter-op" for r in self.rows
        )
        lines += ["Threads as the runtimes report them: " + "; ".join(threads)
                  + " (ONNX Runtime's 0 inter-op = its default; the sequential executor uses none).", ""]
        if self.notes:
            lines += ["## Notes", "", *(f"- {n}" for n in self.notes), ""]
        lines += ["How to read these figures: benchmarks/README.md.", ""]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        """PNG: end-to-end latency per image vs batch (p50 with IQR bars, p95 dotted) and the speedups vs torch."""
        try:
            import matplotlib
            import matplotlib.ticker

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise BackendUnavailableError(f"--plot needs matplotlib ({exc}); install it with `pip install 'salad-edge[bench]'`.") from exc
        configs = list(dict.fromkeys((r.runtime, r.precision) for r in self.rows))
        batches = sorted({r.batch for r in self.rows})
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        width = 0.8 / max(1, len(configs))
        for c, (runtime, precision) in enumerate(configs):
            rows = sorted((r for r in self.rows if (r.runtime, r.precision) == (runtime, precision)), key=lambda r: r.batch)
            xs = [r.batch for r in rows]
            p50 = np.array([r.end_to_end.p50_ms / r.batch for r in rows])
            lo = p50 - np.array([r.end_to_end.p25_ms / r.batch for r in rows])
            hi = np.array([r.end_to_end.p75_ms / r.batch for r in rows]) - p50
            line = ax1.errorbar(xs, p50, yerr=[lo, hi], marker="o", capsize=3, label=f"{runtime} {precision}")
            ax1.plot(xs, [r.end_to_end.p95_ms / r.batch for r in rows], ls=":", color=line[0].get_color())
            pos = [batches.index(r.batch) + (c - (len(configs) - 1) / 2) * width for r in rows]
            ax2.bar(pos, [r.speedup_vs_torch or 0.0 for r in rows], width, label=f"{runtime} {precision}")
        ax1.set(xscale="log", yscale="log", xlabel="batch", ylabel="ms per image (end to end)",
                title="p50 with IQR bars, p95 dotted")
        ax1.set_xticks(batches, [str(b) for b in batches])
        ax1.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax1.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax1.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a log axis
        ax1.legend(fontsize=10)
        ax2.axhline(1.0, color="grey", lw=0.8)
        ax2.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax2.set(xlabel="batch", ylabel="× PyTorch eager fp32 (p50, end to end)",
                title="speed-up vs torch" + (": busy machine, not figures to quote" if self.busy else ""))
        ax2.legend(fontsize=10)
        h = self.header
        fig.suptitle(f"End-to-end latency of the bundle {h['bundle']['path']} on {h['machine']['cpu']}, {h['threads']} thread(s)",
                     fontsize=11)
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}×"


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _start(start: dict[str, float] | None, digits: int = 0) -> str:
    """A start's total (median), with its fastest–slowest range where it is a median of several."""
    if start is None:
        return "-"
    spread = f" ({start['total_min_ms']:.{digits}f}–{start['total_max_ms']:.{digits}f})" if start.get("runs", 1) > 1 else ""
    return f"{start['total_ms']:.{digits}f}{spread}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _load(values: Sequence[float] | None) -> str:
    return "?" if not values else "/".join(f"{v:.1f}" for v in values)


def _floor_sentence(macs: dict[str, Any], peaks: dict[str, Any]) -> str:
    parts = []
    if macs:
        parts.append(
            f"MACs per image: encoder {macs['encoder'] / 1e6:.2f} M, scorer {macs['scorer'] / 1e6:.2f} M (bank MatMul); "
            "GFLOP/s = 2 × model MACs × batch / inference p50."
        )
    if peaks:
        text = (
            f"Measured peaks with the same threads ({peaks.get('size')}² GEMM, best of 5): "
            f"fp32 {peaks.get('fp32_gflops', 0):.1f} GFLOP/s"
        )
        if peaks.get("ort_int8_gops"):
            text += f", int8 (ONNX Runtime MatMulInteger) {peaks['ort_int8_gops']:.1f} GOP/s"
        parts.append(text + "; int8 rows are held to the int8 peak, the others to fp32.")
    return " ".join(parts)
