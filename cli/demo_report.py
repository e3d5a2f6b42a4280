"""The demo's report: what it measured, on which films, on what machine — report.html (self-contained) and report.md.

Rendering only: it is handed the stage reports (parity, bench) and plain figures, and imports no stage. The
headline follows one rule: speed-ups compare like with like (int8 vs fp32 on the same runtime; each runtime
vs PyTorch eager), the headline is the fastest variant, and a busy machine gets no speed-up figure at all.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

import salad
from salad.data import Sample

#: What each group of films is used for (the report's "Films" table).
PURPOSES = {
    "training": "trains the model and fills its memory bank (normal films only)",
    "validation": "sets the threshold (on its normal films), calibrates fp16 and int8, bounds int8's ΔAUC; "
                  "the bundle's reference films come from here",
    "test": "AUC, sensitivity and specificity at the threshold, and parity against PyTorch — nothing else",
}
#: The README's full-data figures of the CPU preset (benchmarks/results/quality/protocol/summary.md; a test keeps them equal).
FULL_DATA = ("AUC 0.929 ± 0.004 on 292 normal / 745 abnormal held-out Kermany films (about 940 training normals, "
             "three seeds); 0.669 ± 0.056 at a second site (NIH), where the preset does not beat a thumbnail kNN")
#: The AUC range a demo run on the shipped sample lands in (200 training normals, 40 test films; see README).
EXPECTED_AUC = (0.65, 0.90)


@dataclass
class Step:
    """One step of the demo: its title, one-line result, the command that repeats it, seconds taken."""

    title: str
    result: str
    command: str
    seconds: float


@dataclass
class FilmSet:
    """A group of films and the one purpose it serves (training, validation or test)."""

    purpose: str
    path: Path
    samples: list[Sample]

    def count(self, label: int) -> int:
        return sum(1 for s in self.samples if s.label == label)

    def to_json(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "path": str(self.path), "n_normal": self.count(0), "n_abnormal": self.count(1),
                "films": [str(Path(s.path).resolve()) for s in self.samples]}


@dataclass
class OperatingPoint:
    """The bundle's threshold applied to the test films: sensitivity and specificity with their counts."""

    threshold: float
    score: str
    chosen: str  # how the threshold was set, e.g. "specificity:0.95 on 20 validation normals"
    tp: int
    fn: int
    tn: int
    fp: int

    @property
    def sensitivity(self) -> float:
        return self.tp / max(1, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return self.tn / max(1, self.tn + self.fp)

    def describe(self) -> str:
        return (f"threshold {self.threshold:.4f} on {self.score} ({self.chosen}): sensitivity {self.sensitivity:.2f} "
                f"({self.tp}/{self.tp + self.fn} abnormal test films flagged), specificity {self.specificity:.2f} "
                f"({self.tn}/{self.tn + self.fp} normal test films passed)")


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float, thr: dict[str, Any]) -> OperatingPoint:
    """Sensitivity and specificity of `score > threshold` (the bundle's rule) on labelled films."""
    flagged = scores > threshold
    val, point = thr.get("validation") or {}, thr.get("operating_point", "?")
    point = ", ".join(f"{k} {v}" for k, v in point.items()) if isinstance(point, dict) else str(point)
    chosen = f"set for {point} on {val.get('n_normal', '?')} validation normals"
    return OperatingPoint(threshold, str(thr.get("score", "score")), chosen,
                          tp=int((flagged & (labels == 1)).sum()), fn=int((~flagged & (labels == 1)).sum()),
                          tn=int((~flagged & (labels == 0)).sum()), fp=int((flagged & (labels == 0)).sum()))


@dataclass
class Headline:
    """The report's speed figures: cards (value, label), one summary line, and why there are none on a busy machine."""

    busy: bool
    cards: list[tuple[str, str]]
    summary: str
    comparisons: list[str] = field(default_factory=list)
    why: str | None = None


def headline(bench: Any, machine: str, bench_cmd: str, batch: int = 1) -> Headline:
    """The fastest variant and like-with-like speed-ups at `batch`, or, on a busy machine, why there is no figure."""
    measured = bench.busy_reason()
    busy = bench.busy if machine == "auto" else machine == "busy"
    comparisons = [s.describe() for s in bench.speedups(batch)]
    if busy:
        why = measured or "the machine was treated as busy (--machine busy)"
        text = (f"No speed-up figure: {why}. Figures taken on a busy machine are not ones to quote; "
                f"stop other work and re-run `{bench_cmd}` (its bench.md holds the quiet figures).")
        return Headline(True, [("no speed-up figure", text)], f"no speed-up figure ({why})", comparisons, why)
    fastest = bench.fastest_row(batch)
    if fastest is None:
        return Headline(False, [], "no variant was measured", comparisons)
    cards = [(f"{fastest.end_to_end.p50_ms:.2f} ms", f"fastest variant: {fastest.runtime} {fastest.precision}, "
              f"per film at batch {batch}, end to end (p50)")]
    parts = [f"fastest: {fastest.runtime} {fastest.precision} {fastest.end_to_end.p50_ms:.3f} ms per film at batch {batch}"]
    for s in bench.speedups(batch):
        runtime, precision = s.variant.split("/")
        if s.same_runtime:
            verdict = "faster" if s.ratio > 1 else "slower"
            cards.append((f"{s.ratio:.2f}×", f"{precision} vs fp32 on {runtime} (batch {batch}): {precision} is {verdict}"))
            parts.append(f"{precision} vs fp32 on {runtime} {s.ratio:.2f}×")
        elif s.variant == f"{fastest.runtime}/{fastest.precision}":
            cards.append((f"{s.ratio:.1f}×", f"{runtime} {precision} vs PyTorch eager fp32 (batch {batch})"))
            parts.append(f"{runtime} {precision} vs PyTorch eager fp32 {s.ratio:.1f}×")
    if machine == "quiet" and measured:
        parts.append(f"treated as quiet although {measured}")
    return Headline(False, cards, "; ".join(parts), comparisons)


@dataclass
class DemoResult:
    """What the demo measured, on which films, and where it wrote its report."""

    out: Path
    metrics: dict[str, Any]
    machine_state: str = "auto"
    steps: list[Step] = field(default_factory=list)
    films: list[FilmSet] = field(default_factory=list)
    parity: dict[str, bool] = field(default_factory=dict)
    headline: Headline | None = None
    operating: OperatingPoint | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    report_html: Path | None = None
    report_md: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """DIR/demo.json: the demo's marker and record (which films served which purpose, the figures it reported)."""
        return {
            "schema": "salad-demo/1", "status": "done", "salad_edge": salad.__version__, "metrics": self.metrics,
            "films": {f.purpose: f.to_json() for f in self.films}, "parity": self.parity,
            "headline": None if self.headline is None else {"busy": self.headline.busy, "summary": self.headline.summary,
                                                            "why": self.headline.why, "comparisons": self.headline.comparisons},
            "operating_point": None if self.operating is None else {
                **{k: getattr(self.operating, k) for k in ("threshold", "score", "chosen", "tp", "fn", "tn", "fp")},
                "sensitivity": self.operating.sensitivity, "specificity": self.operating.specificity},
            "steps": [{"title": s.title, "result": s.result, "command": s.command, "seconds": s.seconds} for s in self.steps],
        }


# ---- rendering ------------------------------------------------------------------------------------

def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _thumb_b64(path: Path) -> str:
    from salad.imageio import cv2, read_image

    img = read_image(path)
    h, w = img.shape
    scale = 160 / max(h, w)
    small = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", (np.clip(small, 0, 1) * 255).astype(np.uint8))
    return base64.b64encode(buf.tobytes()).decode() if ok else ""


def _load(values: Sequence[float] | None) -> str:
    return "?" if not values else "/".join(f"{v:.1f}" for v in values)


def machine_line(bench: Any) -> str:
    """CPU model, cores and the load average over the bench (1/5/15-minute), from the bench's own header."""
    h = bench.header
    m = h["machine"]
    return (f"{m['cpu']}, {m['cpus_usable']} usable CPUs ({m['cpus_logical']} logical), GPU: {m.get('gpu') or 'none'}; "
            f"load average {_load(h.get('load_average_start'))} at the bench's start, {_load(h.get('load_average_end'))} "
            f"at its end; {h['threads']} thread(s) per runtime")


def expectations(result: DemoResult) -> list[str]:
    """The 'what to expect' box: the demo's data, its expected AUC range, and the README's full-data figures."""
    counts = {f.purpose: f"{f.count(0)} normal" + (f" + {f.count(1)} abnormal" if f.count(1) else "") for f in result.films}
    lines = [f"This demo trains on {counts.get('training', '?')} films ({result.metrics['data']}; pre-resized, seen at 64² "
             f"by the CPU preset) and tests on {counts.get('test', 'no')} films of patients it never saw."]
    if "test" in counts:
        lo, hi = EXPECTED_AUC
        interval = result.metrics.get("auc_interval")
        lines.append(f"Expect a test AUC of about {lo:.2f}–{hi:.2f} here: so few test films leave one run's AUC uncertain by "
                     + (f"about ±{(interval[1] - interval[0]) / 2:.2f} (95 % bootstrap interval of this run: "
                        f"{interval[0]:.2f}–{interval[1]:.2f})." if interval else "about ±0.1."))
    lines.append(f"With the full data the same preset reaches {FULL_DATA} (README, docs/quality.md).")
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    esc = (lambda x: x) if raw else html.escape
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _film_rows(result: DemoResult) -> list[list[str]]:
    return [[f.purpose, str(f.count(0)), str(f.count(1)), str(f.path), PURPOSES[f.purpose]] for f in result.films]


def _parity_rows(parity: Any) -> list[list[str]]:
    rows = []
    for row in parity.rows:
        m = row.metrics

        def fmt(key: str, spec: str = ".2e", m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return "–" if v is None else format(v, spec)

        verdict = "<span class='pass'>PASS</span>" if row.passed else "<span class='fail'>FAIL</span>"
        rows.append([html.escape(row.name), str(row.images), fmt("embedding_cosine_min", ".6f"), fmt("max_abs_score_diff"),
                     fmt("label_agreement", ".4f"), fmt("spearman", ".5f"), fmt("delta_auc", "+.4f"), verdict])
    return rows


PARITY_HEADER = ["runtime/precision", "test films", "min embedding cosine", "max |Δscore|", "label agreement", "Spearman",
                 "ΔAUC", "verdict"]
BENCH_HEADER = ["runtime", "precision", "batch", "p50 ms", "p95 ms", "p99 ms", "films/s", "vs PyTorch eager fp32"]

CSS = (
    "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#1d2330}"
    "h1{margin-bottom:.2em}h2{border-bottom:2px solid #e4e7ee;padding-bottom:.2em;margin-top:1.6em}"
    "table{border-collapse:collapse;margin:.6em 0;font-size:.92em}td,th{border:1px solid #d6dae3;padding:.3em .6em;text-align:left}"
    "th{background:#f3f5f9}.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}"
    ".kpi{display:flex;gap:1em;flex-wrap:wrap}.kpi div{background:#f3f5f9;border-radius:8px;padding:.6em 1em;max-width:30em}"
    ".kpi b{display:block;font-size:1.6em}.kpi div.busy{background:#fff4e5;border:1px solid #f0c36d}"
    ".expect{background:#eef6ff;border:1px solid #b6d4fe;border-radius:8px;padding:.4em 1em;margin:1em 0}"
    ".pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}figure{margin:.6em 0}figure img{width:100%;height:auto}"
    "figcaption{font-size:.9em;color:#5f6675}"
    ".films{display:flex;flex-wrap:wrap;gap:1em}.films figure{margin:0;text-align:center;font-size:.85em}.films img{width:auto}"
    "pre{background:#f3f5f9;padding:.8em;white-space:pre-wrap;font-size:.85em}.muted{color:#5f6675}"
)


def _figure(title: str, path: Path) -> str:
    return (f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{_png_b64(path)}'>"
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


def render_html(result: DemoResult, parity: Any, bench: Any, scored: list[tuple[tuple[Path, str], Any]],
                figures: list[tuple[str, Path]], thr: dict[str, Any]) -> str:
    """report.html: every figure embedded, nothing fetched, plots at the page's full width (ROC and PR side by side)."""
    metrics = result.metrics.get("evaluation")
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>salad-edge demo report</title><style>{CSS}</style>"
        "</head><body>",
        f"<h1>salad-edge demo report</h1><p class='muted'>salad-edge {salad.__version__} · data: "
        f"{html.escape(str(result.metrics['data']))}" + (" · quick mode" if result.metrics.get("quick") else "") + "</p>",
        "<div class='expect'><h3>What to expect</h3>" + "".join(f"<p>{html.escape(t)}</p>" for t in expectations(result)) + "</div>",
    ]
    kpis: list[tuple[str, str, str]] = []
    if metrics is not None:
        interval = result.metrics.get("auc_interval")
        kpis.append((f"{metrics['auc']:.3f}", "AUC on the test films" + (
            f" (95 % interval {interval[0]:.2f}–{interval[1]:.2f})" if interval else ""), ""))
        kpis.append((f"{metrics['auprc']:.3f}", "AUPRC on the test films", ""))
    if result.operating is not None:
        op = result.operating
        kpis.append((f"{op.sensitivity:.2f} / {op.specificity:.2f}", f"sensitivity / specificity at the threshold "
                     f"({op.tp}/{op.tp + op.fn} abnormal flagged, {op.tn}/{op.tn + op.fp} normal passed)", ""))
    kpis.append((f"{sum(result.parity.values())}/{len(result.parity)}", "parity checks passed (test films)", ""))
    if result.headline is not None:
        kpis += [(v, k, "busy" if result.headline.busy else "") for v, k in result.headline.cards]
    parts.append("<div class='kpi'>" + "".join(f"<div class='{c}'><b>{html.escape(v)}</b>{html.escape(k)}</div>"
                                               for v, k, c in kpis) + "</div>")
    parts.append("<h2>Films and what each served</h2>" + _table(["films", "normal", "abnormal", "list", "used for"], _film_rows(result))
                 + "<p class='muted'>Split by patient: no patient has films in two groups. demo.json lists every film.</p>")
    if result.headline is not None:
        parts.append(f"<h2>Machine</h2><p>{html.escape(machine_line(bench))}.</p>")
    parts.append("<h2>Steps</h2>" + _table(["step", "result", "seconds"], [[f"{i}. {s.title}", s.result, f"{s.seconds:.0f}"]
                                                                          for i, s in enumerate(result.steps, 1)]))
    detection = [(t, p) for t, p in figures if "test films" in t]
    if result.operating is not None:
        parts.append(f"<h2>Detection on the test films</h2><p>Operating point: {html.escape(result.operating.describe())}.</p>")
    if detection:
        parts.append("<div class='pair'>" + "".join(_figure(t, p) for t, p in detection[:2]) + "</div>")
        parts += [_figure(t, p) for t, p in detection[2:]]
    parts.append("<h2>Parity against the PyTorch reference</h2>" + _table(PARITY_HEADER, _parity_rows(parity), raw=True))
    parts += [f"<p class='muted'>{html.escape(note)}</p>" for note in getattr(parity, "notes", [])]
    busy = result.headline is not None and result.headline.busy  # a busy machine's ratios are not shown at all
    brow = [[r.runtime, r.precision, str(r.batch), f"{r.end_to_end.p50_ms:.2f}", f"{r.end_to_end.p95_ms:.2f}",
             f"{r.end_to_end.p99_ms:.2f}", f"{r.throughput_ips:.1f}",
             "–" if r.speedup_vs_torch is None or busy else f"{r.speedup_vs_torch:.2f}×"]
            for r in bench.rows]
    parts.append("<h2>Latency on this machine</h2>" + _table(BENCH_HEADER, brow))
    if result.headline is not None:
        note = (f"<p><b>{html.escape(result.headline.cards[0][1])}</b></p>" if result.headline.busy
                else "<ul>" + "".join(f"<li>{html.escape(c)}</li>" for c in result.headline.comparisons) + "</ul>")
        parts.append(note)
    parts.append("<p class='muted'>End to end = preprocessing of decoded films + inference + score; PyTorch eager fp32 measured "
                 "in the same invocation, each configuration in a fresh process.</p>")
    parts += [_figure(t, p) for t, p in figures if "test films" not in t and p.exists()]
    films = []
    for (path, truth), r in scored:
        label = ("abnormal" if r.label else "normal") if r.ok else "error"
        caption = f"{html.escape(path.name)}<br>truth: {html.escape(truth)}<br>" + (
            f"{html.escape(thr['score'])} {getattr(r, thr['score']):.4f} → <b>{label}</b>" if r.ok
            else f"<span class='fail'>{html.escape(str(r.error))}</span>")
        films.append(f"<figure><img alt='{html.escape(path.name)}' src='data:image/png;base64,{_thumb_b64(path)}'>"
                     f"<figcaption>{caption}</figcaption></figure>")
    parts.append(f"<h2>Example films</h2><p class='muted'>Labelled by the bundle's threshold on {html.escape(thr['score'])} "
                 f"({float(thr['value']):.4f}).</p><div class='films'>" + "".join(films) + "</div>")
    parts.append("<h2>Repeat each step</h2><pre>" + html.escape("\n".join(s.command for s in result.steps)) + "</pre>")
    parts.append("<p class='muted'>Sample films: Kermany D., Zhang K., Goldbaum M., Mendeley Data v2 (2018), "
                 "doi:10.17632/rscbjbr9sj.2, CC BY 4.0. DICOM: pydicom-data test files.</p></body></html>")
    return "\n".join(parts)


def render_markdown(result: DemoResult, parity: Any, bench: Any, scored: list[tuple[tuple[Path, str], Any]],
                    figures: list[tuple[str, Path]], thr: dict[str, Any], out: Path) -> str:
    """report.md: the same content, figures linked."""
    md = [f"# salad-edge demo report\n\nsalad-edge {salad.__version__} · data: {result.metrics['data']}"
          + (" · quick mode" if result.metrics.get("quick") else "") + "\n", "## What to expect\n", *expectations(result), ""]
    if result.headline is not None:
        md += ["## Speed\n", result.headline.summary + ".", "", f"Machine: {machine_line(bench)}.", ""]
    md.append("## Films and what each served\n\n| films | normal | abnormal | list | used for |\n|---|---|---|---|---|")
    md += ["| " + " | ".join(r) + " |" for r in _film_rows(result)]
    md.append("\n## Steps\n\n| step | result | seconds |\n|---|---|---|")
    md += [f"| {i}. {s.title} | {s.result.replace('|', chr(92) + '|')} | {s.seconds:.0f} |" for i, s in enumerate(result.steps, 1)]
    metrics = result.metrics.get("evaluation")
    if metrics is not None and result.operating is not None:
        md.append(f"\n## Detection on the test films\n\nAUC **{metrics['auc']:.3f}**, AUPRC **{metrics['auprc']:.3f}** "
                  f"({metrics['n_normal']} normal, {metrics['n_abnormal']} abnormal test films). "
                  f"Operating point: {result.operating.describe()}.\n")
    md += ["## Parity against the PyTorch reference\n", parity.to_markdown(), "\n## Latency (this machine)\n", bench.to_markdown()]
    md.append("\n## Example films\n\n| film | truth | score | knn_angle | label |\n|---|---|---|---|---|")
    for (path, truth), r in scored:
        md.append(f"| {path.name} | {truth} | {r.score:.4f} | {r.knn_angle:.4f} | {'abnormal' if r.label else 'normal'} ({thr['score']}) |"
                  if r.ok else f"| {path.name} | {truth} | – | – | error: {r.error} |")
    md.append("\n## Figures\n")
    md += [f"![{title}]({p.relative_to(out)})" for title, p in figures if p.exists()]
    md += ["\n## Repeat each step\n\n```bash", *[s.command for s in result.steps], "```\n"]
    return "\n".join(md) + "\n"


def write_report(out: Path, result: DemoResult, manifest: dict[str, Any], parity: Any, bench: Any,
                 scored: list[tuple[tuple[Path, str], Any]], figures: list[tuple[str, Path]]) -> tuple[Path, Path]:
    """report.md (links to PNGs) and report.html (the same, images embedded so it can be mailed)."""
    thr = manifest["threshold"]
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_markdown(result, parity, bench, scored, figures, thr, out), encoding="utf-8")
    html_path.write_text(render_html(result, parity, bench, scored, figures, thr), encoding="utf-8")
    return md_path, html_path


# ---- structure ------------------------------------------------------------------------------------

class _Skeleton(HTMLParser):
    """Headings, table headers and figure captions of a report, numbers blanked: its structure, not its figures."""

    KEEP = {"h1", "h2", "h3", "th", "figcaption"}

    def __init__(self) -> None:
        super().__init__()
        self.items: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.KEEP and not (tag == "figcaption" and self._in_films):
            self._open = tag
            self.items.append(f"{tag}:")
        if tag == "div":
            self._in_films = dict(attrs).get("class") == "films" or self._in_films

    _in_films = False

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            self.items[-1] += re.sub(r"\d+([.,]\d+)?", "#", data.strip())


def structure(report_html: str) -> list[str]:
    """The report's skeleton: section headings, table headers and plot captions (no figures, no film names)."""
    parser = _Skeleton()
    parser.feed(report_html)
    seen: list[str] = []
    for item in parser.items:  # a table repeated per row or a caption per film adds nothing to the structure
        if item not in seen:
            seen.append(item)
    return seen


def structure_fingerprint(report_html: str) -> str:
    """sha256 of the skeleton: changes when a section, a table's columns or a plot change, not when a number does."""
    return hashlib.sha256(json.dumps(structure(report_html)).encode()).hexdigest()
