"""`salad demo`: the whole product on real X-rays in one command, with a report that tells a newcomer the truth.

train → evaluate → export → calibrate fp16/int8 → parity of every available runtime × precision → bench →
score a few films (including a real DICOM) → DIR/report.html (self-contained) + report.md.
The labelled films are split by patient into a validation part (threshold, calibration, int8's accuracy
bound) and a test part (AUC and parity only), so no figure of the report comes from a film that tuned it.
Part of the CLI layer (cli/, installed as salad.cli), the one place that imports every stage; it calls only their public
APIs (each stage package's `__all__`), which tests/test_style.py checks. Rendering is cli/demo_report.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import salad
from salad.cli.demo_report import DemoResult, FilmSet, Step, headline, operating_point, write_report
from salad.data import Sample, read_samples, require_normals
from salad.errors import ConfigError, DataError, SaladError

SAMPLE = Path(salad.__file__).parent / "sample"  # the films shipped in the core package (salad/sample)
#: The marker that makes a folder a demo output, the only kind `salad demo --force` replaces.
MARKER = "demo.json"
#: How the demo may treat the machine's load: measured (auto), or forced for tests and for re-rendering.
MACHINE_STATES = ("auto", "busy", "quiet")


def claim_out(out: Path, force: bool) -> None:
    """Make `out` ready: a new or empty folder; with `force`, a previous demo output (or run / bundle), never another folder."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out}: exists and is not a folder; choose another --out.")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SaladError(f"{out}: already exists. Pass --force to replace it, or choose another --out.")
        marked = ((out / MARKER).is_file() or ((out / "config.json").is_file() and (out / "checkpoint.pt").is_file())
                  or (out / "manifest.json").is_file()
                  or ((out / "report.html").is_file() and (out / "run" / "checkpoint.pt").is_file()))  # before the marker
        if not marked:
            raise SaladError(
                f"{out}: --force replaces only a demo output (one with {MARKER}), a run directory or a bundle, and this "
                "folder is none of them. Nothing was deleted; choose another --out or empty the folder yourself."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _write_csv(path: Path, samples: list[Sample]) -> Path:
    from salad.train import write_list

    write_list(path, samples)
    return path


def _halves(samples: list[Sample], seed: int, what: str) -> tuple[list[Sample], list[Sample]]:
    """Labelled films split by patient into validation and test halves, each holding normal and abnormal films."""
    from salad.train import split_by_patient

    for attempt in range(20):
        val, test = split_by_patient(samples, 0.5, seed + attempt)
        if all(len({s.label for s in part}) == 2 for part in (val, test)):
            return val, test
    raise DataError(f"{what}: too few patients to split into validation and test films that both hold normal and abnormal ones.")


def shown(path: Path) -> Path:
    """`path` relative to the working directory when it lies below it: the report's commands then work as printed."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()) if path.is_absolute() else path
    except ValueError:
        return path


def prepare_demo_data(out: Path, data: Path | None, seed: int = 0) -> tuple[Path, FilmSet | None, FilmSet | None, str]:
    """Training normals; labelled validation films (threshold, calibration) and test films (AUC, parity), split by patient."""
    if data is None:
        source = "salad/sample (Kermany et al., CC BY 4.0)"
        train: Path = shown(SAMPLE / "train" / "normal")
        labelled = read_samples(SAMPLE / "eval")
    else:
        samples = read_samples(data)
        require_normals(samples, data)
        source = str(data)
        if not any(s.label == 1 for s in samples):
            return Path(data), None, None, source
        from salad.train import split_by_patient

        # A fifth of the normal patients and every abnormal film of the other patients are labelled films;
        # the remaining normals train (abnormal films never do).
        kept, held = split_by_patient([s for s in samples if s.label == 0], 0.2, seed)
        seen = {s.patient for s in kept if s.patient}
        labelled = held + [s for s in samples if s.label == 1 and (s.patient is None or s.patient not in seen)]
        train = _write_csv(out / "train.csv", kept)
    val, test = _halves(labelled, seed, str(data or SAMPLE / "eval"))
    return (train, FilmSet("validation", _write_csv(out / "validation.csv", val), val),
            FilmSet("test", _write_csv(out / "test.csv", test), test), source)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


#: The stage APIs the demo's steps call (each step imports its own where it runs).
_STAGE_APIS = {
    "salad.calibration": ("calibrate_bundle", "default_tolerances"),
    "salad.export": ("export_bundle",),
    "salad.runtime": ("Scorer", "available_runners", "compare", "run_bench", "runner_class"),
    "salad.train": ("CPU", "evaluate_run", "load_run", "score_samples", "train_run", "write_detection_plots"),
}


def run_demo(
    out: Path,
    data: Path | None = None,
    quick: bool = False,
    force: bool = False,
    echo: Callable[[str], None] = print,
    machine: str = "auto",
) -> DemoResult:
    """Run every stage on real X-rays and write DIR/report.html and DIR/report.md.

    machine: "auto" judges the bench's figures by the load average; "busy" or "quiet" force the verdict (tests).
    """
    for module, names in _STAGE_APIS.items():  # resolved before DIR is touched: a missing extra fails first
        for name in names:
            getattr(importlib.import_module(module), name)
    if machine not in MACHINE_STATES:
        raise ConfigError(f"machine state {machine!r}; expected one of {list(MACHINE_STATES)}.")
    out = Path(out)
    claim_out(out, force)
    (out / MARKER).write_text(json.dumps({"schema": "salad-demo/1", "status": "running"}) + "\n", encoding="utf-8")
    train_data, val, test, source = prepare_demo_data(out, data)
    demo = _Demo(out, train_data, val, test, DemoResult(out=out, metrics={"data": source, "quick": quick}, machine_state=machine),
                 quick, echo)
    demo.train()
    if test is not None:
        demo.evaluate(test)
    manifest = demo.export()
    demo.calibrate()
    parity = demo.parity()
    bench = demo.bench()
    scored = demo.score()
    result = demo.result
    result.report_md, result.report_html = write_report(out, result, manifest, parity, bench, scored, demo.figures(manifest))
    (out / MARKER).write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    echo(f"report: {result.report_html}")
    return result


class _Demo:
    """One demo run: its folders, films and settings, and one method per step, each shown as `[i/n] title …` and timed."""

    def __init__(self, out: Path, train_data: Path, val: FilmSet | None, test: FilmSet | None, result: DemoResult,
                 quick: bool, echo: Callable[[str], None]) -> None:
        from salad.train import CPU

        self.out, self.train_data, self.val, self.test, self.result, self.quick, self.echo = (
            out, train_data, val, test, result, quick, echo)
        self.run, self.bundle = out / "run", out / "bundle"
        cfg = CPU if not quick else dataclasses.replace(CPU, pretrain_epochs=24, rounds=2, round_epochs=8)
        self.n_normal = len([s for s in read_samples(train_data) if s.label == 0])
        held_out = val is None  # without labelled films, training holds out 10 % of its normals for the threshold
        self.cfg = dataclasses.replace(cfg, score_k=min(cfg.score_k, max(1, int(self.n_normal * (0.85 if held_out else 1.0)))))
        result.films.append(FilmSet("training", train_data, [s for s in read_samples(train_data) if s.label == 0]))
        if val is not None and test is not None:
            result.films += [val, test]
        self.n_steps = 7 if test is not None else 6
        self.scores: np.ndarray | None = None  # the test films' scores and labels (with test films)
        self.labels: np.ndarray | None = None

    def step(self, title: str, command: str, fn: Callable[[], tuple[Any, str]]) -> Any:
        self.echo(f"[{len(self.result.steps) + 1}/{self.n_steps}] {title} …")
        (value, line), seconds = _timed(fn)
        self.result.steps.append(Step(title, line, command, seconds))
        self.echo(f"      {line} ({seconds:.0f} s)")
        return value

    def train(self) -> None:
        from salad.train import train_run

        cfg, val = self.cfg, self.val

        def do_train() -> tuple[Any, str]:
            summary = train_run(self.train_data, self.run, cfg, val=val.path if val else None, log_epochs=False)
            return summary, (f"{cfg.method}: {summary['epochs']} epochs on {self.n_normal} normal films in "
                             f"{summary['train_seconds'] / 60:.1f} min")

        preset = "cpu" + (" --pretrain-epochs 24 --rounds 2 --round-epochs 8" if self.quick else "")
        val_flag = f" --val {val.path}" if val else ""
        self.step(f"Train the CPU preset's auto-encoder ({cfg.method}, reconstruction only)",
                  f"salad train --data {self.train_data}{val_flag} --preset {preset} --k {cfg.score_k} --out {self.run}", do_train)

    def evaluate(self, test: FilmSet) -> None:
        from salad.train import evaluate_run, load_run, score_samples

        out, run = self.out, self.run

        def do_eval() -> tuple[Any, str]:
            m = evaluate_run(run, test.path, json_out=out / "evaluation.json")
            return m, f"AUC {m['auc']:.3f}, AUPRC {m['auprc']:.3f} on {m['n_normal']} normal + {m['n_abnormal']} abnormal test films"

        metrics = self.step("Evaluate on the test films", f"salad evaluate {run} --labelled {test.path} --json {out}/evaluation.json "
                            f"--plots {out}/plots", do_eval)
        self.result.metrics["evaluation"] = metrics
        loaded = load_run(run)
        self.labels = np.array([s.label for s in test.samples])
        self.scores = np.asarray(score_samples(loaded, test.samples)[loaded.score_name])
        self.result.metrics["auc_interval"] = _auc_interval(self.labels, self.scores)

    def export(self) -> dict[str, Any]:
        from salad.export import export_bundle

        run, bundle = self.run, self.bundle

        def do_export() -> tuple[Any, str]:
            n_val = len(read_samples(run / "val.csv"))
            path = export_bundle(run, bundle, reference_films=max(1, min(32, n_val)))
            manifest = json.loads((path / "manifest.json").read_text())
            return manifest, (f"bundle verified: ONNX Runtime = PyTorch on {manifest['reference']['images']} validation films; "
                              f"threshold {manifest['threshold']['value']:.4f} on {manifest['threshold']['score']}")

        manifest: dict[str, Any] = self.step("Export the bundle", f"salad-export {run} --out {bundle}", do_export)
        thr = manifest["threshold"]
        if self.scores is not None and self.labels is not None:
            self.result.operating = operating_point(self.labels, self.scores, float(thr["value"]), thr)
        return manifest

    def calibrate(self) -> None:
        """fp16 and int8, judged on the validation films; the test films are never shown to calibration.

        int8 runs in accuracy-bounded mode: the most error-prone layers stay float until its ΔAUC bound holds there.
        """
        from salad.calibration import calibrate_bundle, default_tolerances

        bundle, val, result = self.bundle, self.val, self.result
        int8_auc_bound = default_tolerances("int8")["delta_auc"]
        labelled = {"labelled": val.path} if val is not None else {}
        bounded = {"max_auc_drop": int8_auc_bound, **labelled} if labelled else {}

        def do_calibrate() -> tuple[Any, str]:
            reports = {
                "fp16": calibrate_bundle(bundle, "fp16", raise_on_failure=False, **labelled),
                "int8": calibrate_bundle(bundle, "int8", data=self.train_data, raise_on_failure=False, **bounded),
            }
            result.calibration = {p: r.to_dict() for p, r in reports.items()}
            parts = [f"{p}: accepted" if r.accepted else f"{p}: REJECTED ({'; '.join(r.failures[:2])})" for p, r in reports.items()]
            kept = reports["int8"].layers_in_float
            return reports, ", ".join(parts) + f" (int8: {len(kept)} layer(s) left in float)"

        int8_flags = f" --max-auc-drop {int8_auc_bound} --labelled {val.path}" if val else ""
        fp16_flags = f" --labelled {val.path}" if val else ""
        self.step("Calibrate fp16 and int8 on the validation films", f"salad calibrate {bundle} --precision fp16{fp16_flags}\n"
                  f"salad calibrate {bundle} --precision int8 --data {self.train_data}{int8_flags}", do_calibrate)

    def parity(self) -> Any:
        """Every deployable runtime × every precision in the bundle against the PyTorch reference on the test films alone
        (the bundle's reference films are validation films, so they are left out here)."""
        from salad.runtime import available_runners, compare, runner_class

        bundle, test, out, result = self.bundle, self.test, self.out, self.result
        runtimes = [name for name, why_not in available_runners().items()
                    if why_not is None and name != "torch" and not runner_class(name).required]

        def do_parity() -> tuple[Any, str]:
            report = compare(bundle, runtimes=runtimes, precisions=None, labelled=test.path if test else None,
                             reference_films=test is None)
            (out / "parity.md").write_text(report.to_markdown())
            (out / "parity.json").write_text(report.to_json())
            for row in report.rows:
                result.parity[row.name] = row.passed
            return report, ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in result.parity.items())

        return self.step("Parity against PyTorch on the test films", f"salad parity {bundle} "
                         + " ".join(f"--runtime {r}" for r in runtimes)
                         + (f" --labelled {test.path}" if test else "") + f" --markdown {out}/parity.md", do_parity)

    def bench(self) -> Any:
        from salad.runtime import run_bench

        bundle, out, result = self.bundle, self.out, self.result
        films_for_bench = self.test.path if self.test is not None else SAMPLE / "eval"
        bench_cmd = f"salad bench {bundle} --batch 1 --batch 8 --json {out}/bench.json --markdown {out}/bench.md --plot {out}/bench.png"

        def do_bench() -> tuple[Any, str]:
            report = run_bench(bundle, runtimes=("onnxruntime",), precisions=None, batches=(1, 8),
                               iters=20 if self.quick else 50, warmup=5, data=films_for_bench, command=bench_cmd)
            (out / "bench.json").write_text(report.to_json())
            (out / "bench.md").write_text(report.to_markdown())
            report.plot(out / "bench.png")
            result.headline = headline(report, result.machine_state, bench_cmd)
            return report, result.headline.summary

        return self.step("Benchmark latency", bench_cmd, do_bench)

    def score(self) -> Any:
        from salad.runtime import Scorer

        def do_score() -> tuple[Any, str]:
            films = _example_films(self.test.samples if self.test is not None else None)
            scorer = Scorer.from_bundle(self.bundle, runtime="onnxruntime", precision="fp32")
            results = scorer.score([str(f) for f, _ in films], on_error="record")
            return list(zip(films, results, strict=True)), f"scored {len(results)} films ({sum(1 for r in results if r.ok)} ok)"

        return self.step("Score example films", f"salad score {self.bundle} FILES…", do_score)

    def figures(self, manifest: dict[str, Any]) -> list[tuple[str, Path]]:
        """The report's figures: ROC, PR and score histogram of the test films (when there are any), then the bench."""
        from salad.train import write_detection_plots

        figures: list[tuple[str, Path]] = []
        thr = manifest["threshold"]
        if self.scores is not None and self.labels is not None:
            name = str(thr.get("score", "score"))
            paths = write_detection_plots(self.labels, self.scores, self.out / "plots", threshold=float(thr["value"]),
                                          score_name=name)
            figures += [(f"ROC curve of {name} on the test films", paths["roc"]),
                        (f"Precision–recall curve of {name} on the test films", paths["pr"]),
                        (f"{name} of the test films, with the bundle's threshold", paths["histogram"])]
        figures.append(("Latency per film and speed-up against PyTorch eager fp32", self.out / "bench.png"))
        return figures


def _auc_interval(labels: np.ndarray, scores: np.ndarray, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A 95 % bootstrap interval of the AUC over the films (resampled within each class): how wide so few films leave it."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    aucs = []
    for _ in range(rounds):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        aucs.append(roc_auc_score(labels[idx], scores[idx]))
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return float(lo), float(hi)


def _example_films(samples: list[Sample] | None) -> list[tuple[Path, str]]:
    """Three normal and three abnormal test films, plus the pydicom-data CR radiograph if installed."""
    films: list[tuple[Path, str]] = []
    if samples is not None:
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
