"""`salad demo`: the whole product on real X-rays in one command, with a report worth looking at.

train → evaluate → export → calibrate fp16/int8 → parity of every available runtime × precision →
bench → score a few films (including a real DICOM) → DIR/report.html (self-contained) + report.md.
Part of the CLI layer (salad/cli/), the one place that imports every stage; it calls only their public
APIs (each stage package's `__all__`), which tests/test_style.py checks.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import salad
from salad.data import Sample, read_samples, require_normals
from salad.errors import DataError, SaladError

SAMPLE = Path(__file__).parents[1] / "sample"


@dataclass
class Step:
    """One step of the demo: its title, one-line result, the command that repeats it, seconds taken."""

    title: str
    result: str
    command: str
    seconds: float


@dataclass
class DemoResult:
    """What the demo measured and where it wrote its report."""

    out: Path
    metrics: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    parity: dict[str, bool] = field(default_factory=dict)
    int8_speedup: float | None = None
    bench_busy: bool = False  # the bench started on a busy machine: its figures are not ones to quote
    report_html: Path | None = None
    report_md: Path | None = None


def _write_csv(path: Path, samples: Sequence[Sample]) -> None:
    from salad.train import write_list

    write_list(path, samples)


def prepare_demo_data(out: Path, data: Path | None, seed: int = 0) -> tuple[Path, Path | None, str]:
    """Training normals and a labelled evaluation set: the shipped films, or a patient split of `data`."""
    if data is None:
        return SAMPLE / "train" / "normal", SAMPLE / "eval", "salad/sample (Kermany et al., CC BY 4.0)"
    samples = read_samples(data)
    require_normals(samples, data)
    if not any(s.label == 1 for s in samples):
        return Path(data), None, str(data)
    from salad.train import split_by_patient

    train, held = split_by_patient(samples, 0.2, seed)
    train_normals = [s for s in train if s.label == 0]
    if not train_normals or len({s.label for s in held}) < 2:
        raise DataError(f"{data}: too few films to hold out normal and abnormal patients for evaluation.")
    _write_csv(out / "demo_train.csv", train_normals)
    _write_csv(out / "demo_eval.csv", held)
    return out / "demo_train.csv", out / "demo_eval.csv", str(data)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def run_demo(
    out: Path,
    data: Path | None = None,
    quick: bool = False,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage on real X-rays and write DIR/report.html and DIR/report.md."""
    from salad.calibration import calibrate_bundle, default_tolerances
    from salad.export import export_bundle
    from salad.runtime import Scorer, available_runners, compare, run_bench, runner_class
    from salad.train import CPU, evaluate_run, train_run

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SaladError(f"{out}: already exists. Pass --force to replace it, or choose another --out.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    train_data, eval_data, source = prepare_demo_data(out, data)
    result = DemoResult(out=out, metrics={"data": source, "quick": quick})
    run, bundle = out / "run", out / "bundle"
    cfg = CPU if not quick else dataclasses.replace(CPU, pretrain_epochs=24, rounds=2, round_epochs=8)
    n_normal = len([s for s in read_samples(train_data) if s.label == 0])
    # K ≤ bank rows: about 90 % of the normals stay in training after the validation hold-out.
    cfg = dataclasses.replace(cfg, score_k=min(cfg.score_k, max(1, int(n_normal * 0.85))))
    preset = "cpu" + (" --pretrain-epochs 24 --rounds 2 --round-epochs 8" if quick else "")

    def step(title: str, command: str, fn: Callable[[], tuple[Any, str]]) -> Any:
        echo(f"[{len(result.steps) + 1}/8] {title} …")
        (value, line), seconds = _timed(fn)
        result.steps.append(Step(title, line, command, seconds))
        echo(f"      {line} ({seconds:.0f} s)")
        return value

    def do_train() -> tuple[Any, str]:
        summary = train_run(train_data, run, cfg)
        return summary, f"{summary['epochs']} epochs on {n_normal} normal films in {summary['train_seconds'] / 60:.1f} min"

    step("Train SALAD (CPU preset)", f"salad train --data {train_data} --preset {preset} --k {cfg.score_k} --out {run}", do_train)

    metrics: dict[str, Any] | None = None
    if eval_data is not None:
        def do_eval() -> tuple[Any, str]:
            m = evaluate_run(run, eval_data, json_out=out / "evaluation.json")
            return m, f"AUC {m['auc']:.3f}, AUPRC {m['auprc']:.3f} on {m['n_normal']} normal + {m['n_abnormal']} abnormal held-out films"

        metrics = step(
            "Evaluate on held-out films",
            f"salad evaluate {run} --labelled {eval_data} --json {out}/evaluation.json --plots {out}/plots",
            do_eval,
        )
        result.metrics["evaluation"] = metrics

    n_val = len(read_samples(run / "val.csv")) if (run / "val.csv").stat().st_size > 40 else 0
    n_ref = max(1, min(32, n_val))

    def do_export() -> tuple[Any, str]:
        path = export_bundle(run, bundle, reference_images=n_ref)
        manifest = json.loads((path / "manifest.json").read_text())
        return manifest, (
            f"bundle verified: ONNX Runtime = PyTorch on {n_ref} reference films; threshold {manifest['threshold']['value']:.4f}"
        )

    manifest = step("Export the bundle", f"salad-export {run} --out {bundle} --reference-films {n_ref}", do_export)

    # With labelled films, each variant is judged on them (the same films parity reports on), so a variant
    # that would fail parity is rejected and left out of the bundle rather than shipped; int8 runs in
    # accuracy-bounded mode: the most error-prone layers stay float until every int8 tolerance holds.
    int8_auc_bound = default_tolerances("int8")["delta_auc"]
    labelled = {"data_labelled": eval_data} if eval_data is not None else {}
    bounded = {"max_auc_drop": int8_auc_bound, **labelled} if labelled else {}

    def do_calibrate() -> tuple[Any, str]:
        reports = {
            "fp16": calibrate_bundle(bundle, "fp16", raise_on_failure=False, **labelled),
            "int8": calibrate_bundle(bundle, "int8", data=train_data, raise_on_failure=False, **bounded),
        }
        parts = [f"{p}: accepted" if r.accepted else f"{p}: REJECTED ({'; '.join(r.failures[:2])})" for p, r in reports.items()]
        kept = reports["int8"].layers_in_float
        return reports, ", ".join(parts) + f" (int8: {len(kept)} layer(s) left in float)"

    int8_flags = f" --max-auc-drop {int8_auc_bound} --labelled {eval_data}" if bounded else ""
    fp16_flags = f" --labelled {eval_data}" if labelled else ""
    step("Calibrate fp16 and int8", f"salad calibrate {bundle} --precision fp16{fp16_flags} && "
         f"salad calibrate {bundle} --precision int8 --data {train_data}{int8_flags}", do_calibrate)

    # Every deployable runtime × every precision in the bundle, each against the PyTorch reference
    # (the torch runner *is* that reference, so it is not a row of its own).
    # A remote runtime (triton) needs a server of its own, so it is not one of the demo's rows.
    runtimes = [name for name, why_not in available_runners().items()
                if why_not is None and name != "torch" and not runner_class(name).required]

    def do_parity() -> tuple[Any, str]:
        report = compare(bundle, runtimes=runtimes, precisions=None, data=eval_data)
        (out / "parity.md").write_text(report.to_markdown())
        (out / "parity.json").write_text(report.to_json())
        for row in report.rows:
            result.parity[row.name] = row.passed
        verdicts = ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in result.parity.items())
        return report, verdicts

    parity = step("Parity against PyTorch", f"salad parity {bundle} " + " ".join(f"--runtime {r}" for r in runtimes)
                  + (f" --labelled {eval_data}" if eval_data else "") + f" --markdown {out}/parity.md", do_parity)

    films_dir = eval_data if eval_data is not None and Path(eval_data).is_dir() else SAMPLE / "eval"

    def do_bench() -> tuple[Any, str]:
        report = run_bench(bundle, runtimes=("onnxruntime",), precisions=None, batches=(1, 8),
                           iters=20 if quick else 50, warmup=5, data=films_dir, command=f"salad demo --out {out}")
        (out / "bench.json").write_text(report.to_json())
        (out / "bench.md").write_text(report.to_markdown())
        report.plot(out / "bench.png")
        for r in report.rows:
            if r.runtime == "onnxruntime" and r.precision == "int8" and r.batch == 1:
                result.int8_speedup = r.speedup_vs_torch
        result.bench_busy = report.busy
        sp = f"{result.int8_speedup:.1f}×" if result.int8_speedup else "n/a"
        busy = " (a busy machine: not a figure to quote; see bench.md)" if report.busy else ""
        return report, f"int8 ONNX Runtime end-to-end at batch 1: {sp} PyTorch eager fp32{busy}"

    bench = step(
        "Benchmark latency",
        f"salad bench {bundle} --batch 1 --batch 8 --json {out}/bench.json --markdown {out}/bench.md --plot {out}/bench.png",
        do_bench,
    )

    def do_score() -> tuple[Any, str]:
        films = _example_films(eval_data)
        scorer = Scorer.from_bundle(bundle, runtime="onnxruntime", precision="fp32")
        results = scorer.score([str(f) for f, _ in films], on_error="record")
        return list(zip(films, results, strict=True)), f"scored {len(results)} films ({sum(1 for r in results if r.ok)} ok)"

    scored = step("Score example films", f"salad score {bundle} FILES…", do_score)

    result.report_md, result.report_html = write_report(out, result, metrics, manifest, parity, bench, scored, run, eval_data)
    echo(f"report: {result.report_html}")
    return result


def _example_films(eval_data: Path | None) -> list[tuple[Path, str]]:
    """Three normal and three abnormal evaluation films, plus the pydicom-data CR radiograph if installed."""
    films: list[tuple[Path, str]] = []
    if eval_data is not None:
        samples = read_samples(eval_data)
        for label, name in ((0, "normal"), (1, "abnormal")):
            films += [(s.path, name) for s in [s for s in samples if s.label == label][:3]]
    try:
        from pydicom.data import get_testdata_file

        dcm = get_testdata_file("RG1_UNCR.dcm")
        if dcm:
            films.append((Path(dcm), "DICOM CR (adult, unlabelled)"))
    except Exception:  # pydicom-data is optional: the demo runs without it
        pass
    return films


# ---- report -------------------------------------------------------------------------------------

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


def write_report(
    out: Path, result: DemoResult, metrics: dict[str, Any] | None, manifest: dict[str, Any], parity: Any,
    bench: Any, scored: list[tuple[tuple[Path, str], Any]], run: Path, eval_data: Path | None,
) -> tuple[Path, Path]:
    """report.md (links to PNGs) and report.html (the same, images embedded so it can be mailed)."""
    figures: list[tuple[str, Path]] = []
    if metrics is not None and eval_data is not None:
        from salad.train import load_run, score_samples, write_detection_plots

        samples = read_samples(eval_data)
        labels = np.array([s.label for s in samples])
        scores = score_samples(load_run(run), samples)[manifest["threshold"]["score"]]
        paths = write_detection_plots(labels, scores, out / "plots", threshold=float(manifest["threshold"]["value"]))
        figures += [("ROC curve", paths["roc"]), ("Precision–recall curve", paths["pr"]),
                    ("Score histogram with the bundle threshold", paths["histogram"])]
    if (out / "bench.png").exists():
        figures.append(("Latency", out / "bench.png"))

    thr = manifest["threshold"]
    md: list[str] = [f"# salad-edge demo report\n\nsalad-edge {salad.__version__} · data: {result.metrics['data']}"
                     + (" · quick mode" if result.metrics.get("quick") else "") + "\n"]
    md.append("## Steps\n\n| step | result | seconds |\n|---|---|---|")
    md += [f"| {s.title} | {s.result} | {s.seconds:.0f} |" for s in result.steps]
    if metrics is not None:
        md.append(f"\n## Detection\n\nAUC **{metrics['auc']:.3f}**, AUPRC **{metrics['auprc']:.3f}** "
                  f"({metrics['n_normal']} normal, {metrics['n_abnormal']} abnormal films of held-out patients). "
                  f"Threshold {thr['value']:.4f} on `{thr.get('score', 'score')}` "
                  f"(operating point {json.dumps(thr.get('operating_point'))}, chosen on validation normals, never on test films).\n")
    md.append("## Parity against the PyTorch reference\n")
    md.append(parity.to_markdown())
    md.append("\n## Latency (this machine)\n")
    md.append(bench.to_markdown())
    md.append("\n## Example films\n\n| film | truth | score | knn_angle | label |\n|---|---|---|---|---|")
    for (path, truth), r in scored:
        if r.ok:
            md.append(f"| {path.name} | {truth} | {r.score:.4f} | {r.knn_angle:.4f} | "
                      f"{'abnormal' if r.label else 'normal'} ({thr['score']}) |")
        else:
            md.append(f"| {path.name} | {truth} | – | – | error: {r.error} |")
    md.append("\n## Figures\n")
    md += [f"![{title}]({p.relative_to(out)})" for title, p in figures]
    md.append("\n## Repeat each step\n\n```bash")
    md += [s.command for s in result.steps]
    md.append("```\n")
    md_text = "\n".join(md) + "\n"
    md_path = out / "report.md"
    md_path.write_text(md_text, encoding="utf-8")

    html_path = out / "report.html"
    html_path.write_text(_html(result, metrics, thr, parity, bench, scored, figures), encoding="utf-8")
    return md_path, html_path


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    esc = (lambda x: x) if raw else html.escape
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(result: DemoResult, metrics: dict[str, Any] | None, thr: dict[str, Any], parity: Any, bench: Any,
          scored: list[tuple[tuple[Path, str], Any]], figures: list[tuple[str, Path]]) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>salad-edge demo report</title><style>",
        "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1d2330}",
        "h1{margin-bottom:.2em}h2{border-bottom:2px solid #e4e7ee;padding-bottom:.2em;margin-top:1.6em}",
        "table{border-collapse:collapse;margin:.6em 0;font-size:.92em}td,th{border:1px solid #d6dae3;padding:.3em .6em;text-align:left}",
        "th{background:#f3f5f9}.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}",
        ".kpi{display:flex;gap:1em;flex-wrap:wrap}.kpi div{background:#f3f5f9;border-radius:8px;padding:.6em 1em}",
        ".kpi b{display:block;font-size:1.6em}.figs{display:flex;flex-wrap:wrap;gap:1em}.figs figure{margin:0}",
        ".films{display:flex;flex-wrap:wrap;gap:1em}.films figure{margin:0;text-align:center;font-size:.85em}",
        "pre{background:#f3f5f9;padding:.8em;overflow-x:auto;font-size:.85em}.muted{color:#5f6675}</style></head><body>",
        f"<h1>salad-edge demo report</h1><p class='muted'>salad-edge {salad.__version__} · data: {html.escape(str(result.metrics['data']))}"
        + (" · quick mode" if result.metrics.get("quick") else "") + "</p>",
    ]
    kpis = []
    if metrics is not None:
        kpis += [("AUC", f"{metrics['auc']:.3f}"), ("AUPRC", f"{metrics['auprc']:.3f}")]
    n_pass = sum(result.parity.values())
    kpis.append(("parity checks passed", f"{n_pass}/{len(result.parity)}"))
    if result.int8_speedup:
        label = "int8 speed-up vs PyTorch (batch 1" + (", busy machine: not a figure to quote)" if result.bench_busy else ")")
        kpis.append((label, f"{result.int8_speedup:.1f}×"))
    parts.append("<div class='kpi'>" + "".join(f"<div><b>{v}</b>{html.escape(k)}</div>" for k, v in kpis) + "</div>")
    parts.append("<h2>Steps</h2>" + _table(["step", "result", "seconds"], [[s.title, s.result, f"{s.seconds:.0f}"] for s in result.steps]))
    if metrics is not None:
        parts.append(f"<h2>Detection</h2><p>Threshold <b>{thr['value']:.4f}</b> on "
                     f"<code>{html.escape(str(thr.get('score', 'score')))}</code>, "
                     f"operating point {html.escape(json.dumps(thr.get('operating_point')))}, chosen on validation normals.</p>")
    parts.append("<div class='figs'>" + "".join(
        f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,{_png_b64(p)}' style='max-width:520px'>"
        f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, p in figures) + "</div>")
    rows = []
    for row in parity.rows:
        m = row.metrics
        verdict = "<span class='pass'>PASS</span>" if row.passed else "<span class='fail'>FAIL</span>"

        def fmt(key: str, spec: str = ".2e", m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return "–" if v is None else format(v, spec)

        rows.append([html.escape(row.name), str(row.images), fmt("embedding_cosine_min", ".6f"), fmt("max_abs_score_diff"),
                     fmt("label_agreement", ".4f"), fmt("spearman", ".5f"), fmt("delta_auc", "+.4f"), verdict])
    parity_header = ["runtime/precision", "films", "min embedding cosine", "max |Δscore|", "label agreement", "Spearman", "ΔAUC", "verdict"]
    parts.append("<h2>Parity against the PyTorch reference</h2>" + _table(parity_header, rows, raw=True))
    for note in getattr(parity, "notes", []):
        parts.append(f"<p class='muted'>{html.escape(note)}</p>")
    brow = [[r.runtime, r.precision, str(r.batch), f"{r.end_to_end.p50_ms:.2f}", f"{r.end_to_end.p95_ms:.2f}",
             f"{r.end_to_end.p99_ms:.2f}", f"{r.throughput_ips:.1f}", "–" if r.speedup_vs_torch is None else f"{r.speedup_vs_torch:.2f}×"]
            for r in bench.rows]
    parts.append("<h2>Latency on this machine</h2>" + _table(
        ["runtime", "precision", "batch", "p50 ms", "p95 ms", "p99 ms", "images/s", "speed-up vs PyTorch"], brow))
    parts.append(f"<p class='muted'>{html.escape(str(bench.header.get('cpu', '')))} · "
                 "end to end = preprocessing of decoded films + inference + score; "
                 "PyTorch eager fp32 measured in the same invocation.</p>")
    films = []
    for (path, truth), r in scored:
        label = ("abnormal" if r.label else "normal") if r.ok else "error"
        caption = f"{html.escape(path.name)}<br>truth: {html.escape(truth)}<br>" + (
            f"{html.escape(thr['score'])} {getattr(r, thr['score']):.4f} → <b>{label}</b>"
            if r.ok
            else f"<span class='fail'>{html.escape(str(r.error))}</span>"
        )
        films.append(
            f"<figure><img alt='{html.escape(path.name)}' src='data:image/png;base64,{_thumb_b64(path)}'>"
            f"<figcaption>{caption}</figcaption></figure>"
        )
    parts.append("<h2>Example films</h2><div class='films'>" + "".join(films) + "</div>")
    parts.append("<h2>Repeat each step</h2><pre>" + html.escape("\n".join(s.command for s in result.steps)) + "</pre>")
    parts.append("<p class='muted'>Sample films: Kermany D., Zhang K., Goldbaum M., Mendeley Data v2 (2018), "
                 "doi:10.17632/rscbjbr9sj.2, CC BY 4.0. "
                 "DICOM: pydicom-data test files.</p></body></html>")
    return "\n".join(parts)
