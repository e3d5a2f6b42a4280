"""The OpenVINO runner on real bundles: ONNX Runtime's fp32 scores, the f32 pin, parity and bench unchanged.

The runner is one file (runtime/openvino_runner.py) plus its registration; parity and bench reach it
through their existing code paths, which these tests run end to end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import salad
from salad.bundle import Bundle
from salad.runtime import RUNNERS, BundleGraph, OpenVinoRunner, Scorer, compare, create_runner
from salad.runtime.bench import bench_command
from salad.runtime.cli import parity_command
from salad.scoring import SCORES
from tests.conftest import FIXTURE_DECISION_TOLERANCES
from tests.runtime.test_cli import run_python

SAMPLE_EVAL = Path(salad.__file__).parent / "sample" / "eval"
FILMS = sorted(SAMPLE_EVAL.rglob("*.jpeg"))
#: The fp32 parity tolerance (docs/architecture.md): the same graph in f32 on two runtimes.
FP32_MAX_ABS_SCORE_DIFF = 1e-5


def score_films(
    bundle: Path, runtime: str, precision: str = "fp32", batch: int = 8
) -> tuple[np.ndarray, list[int]]:
    """Every score of the registry for the shipped films (rows), and the labels, with `runtime`."""
    with Scorer.from_bundle(
        bundle, runtime=runtime, precision=precision, max_batch=batch, threads=1
    ) as scorer:
        results = scorer.score(FILMS)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    scores = np.array([[r.scores[name] for name in SCORES] for r in results])
    return scores, [int(r.label) for r in results if r.label is not None]


def test_registered_like_the_other_backends() -> None:
    assert RUNNERS["openvino"] is OpenVinoRunner
    assert OpenVinoRunner.extra == "openvino" and OpenVinoRunner.devices == ("cpu",)
    assert "threads" in OpenVinoRunner.options
    assert OpenVinoRunner.unavailable_reason() is None  # the dev extra installs it


def test_runtime_imports_without_openvino_and_names_the_extra(tiny_bundle: Path) -> None:
    body = (
        "import sys\n"
        "from salad.runtime import create_runner, BundleGraph\n"
        "from salad.bundle import Bundle\n"
        "from salad.errors import BackendUnavailableError\n"
        "assert 'openvino' not in sys.modules\n"
        f"root = {str(tiny_bundle)!r}\n"
        "runner = create_runner('openvino', BundleGraph.from_bundle(Bundle.open(root)))\n"
        "try:\n"
        "    runner.activate()\n"
        "except BackendUnavailableError as exc:\n"
        "    print('refused:', exc)\n"
    )
    proc = run_python(body, blocked=("openvino",))
    assert proc.returncode == 0, proc.stderr
    assert "refused: the openvino runtime is unavailable: openvino is not installed." in proc.stdout
    assert "pip install 'salad-edge[openvino]'" in proc.stdout


def test_fp32_scores_equal_onnxruntime_and_labels_agree(tiny_bundle: Path) -> None:
    ov_scores, ov_labels = score_films(tiny_bundle, "openvino")
    ort_scores, ort_labels = score_films(tiny_bundle, "onnxruntime")
    assert len(ov_labels) == len(FILMS) == len(ort_labels)
    assert float(np.max(np.abs(ov_scores - ort_scores))) <= FP32_MAX_ABS_SCORE_DIFF
    assert ov_labels == ort_labels


@pytest.mark.parametrize("fixture", ["tiny_bundle", "bank_input_bundle", "external_bank_bundle"])
def test_dynamic_batch_matches_onnxruntime_on_every_bundle_form(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    """Batches 1, 3 and 8 through one compiled model; the bank as initializer, as input, as external data."""
    bundle: Path = request.getfixturevalue(fixture)
    graph = BundleGraph.from_bundle(Bundle.open(bundle))
    with np.load(bundle / "reference.npz", allow_pickle=False) as ref:
        images = ref["image"]
    static = graph.static_feed()
    with (
        create_runner("openvino", graph, max_batch=8) as ov,
        create_runner("onnxruntime", graph, max_batch=8) as ort,
    ):
        for batch in (1, 3, 8):
            feed = {"image": np.ascontiguousarray(images[:batch]), **static}
            got, want = ov.infer(feed), ort.infer(feed)
            assert list(got) == [t.name for t in graph.spec.outputs]
            for name, value in want.items():
                assert got[name].shape == value.shape and got[name].dtype == value.dtype
                assert float(np.max(np.abs(got[name] - value))) <= FP32_MAX_ABS_SCORE_DIFF, (
                    fixture,
                    batch,
                    name,
                )


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_graph_is_compiled_for_f32_arithmetic(
    precision: str, calibrated_bundle: Callable[[str], Path]
) -> None:
    """Read back from the compiled model: on an AVX512-BF16/AMX CPU the default would be bf16."""
    import openvino as ov
    import openvino.properties.hint as hints

    bundle = calibrated_bundle(precision)
    graph = BundleGraph.from_bundle(Bundle.open(bundle), "model", precision)
    with create_runner("openvino", graph, threads=1) as runner:
        assert isinstance(runner, OpenVinoRunner)
        assert runner.compiled.get_property(hints.inference_precision) == ov.Type.f32
        info = runner.info()
    assert info["inference_precision"] == "f32"
    assert info["inference_num_threads"] == 1 and info["library"].startswith("openvino ")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_pass_parity_beside_onnxruntime(
    precision: str, calibrated_bundle: Callable[[str], Path]
) -> None:
    """The variants run and stay within the fixtures' tolerances, like ONNX Runtime's, through compare()."""
    bundle = calibrated_bundle(precision)
    report = compare(bundle, ["onnxruntime", "openvino"], [precision])
    assert report.passed, "\n".join(report.failures)
    row = report.row("openvino", precision)
    assert row.metrics["nonfinite"] == 0
    agreement = row.metrics["label_agreement"]
    assert agreement is not None and agreement >= FIXTURE_DECISION_TOLERANCES[precision]["label_agreement"]


def test_salad_parity_runs_openvino(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "parity.json"
    result = CliRunner().invoke(
        parity_command, [str(tiny_bundle), "--runtime", "openvino", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    rows = report.get("rows", [report])
    assert [(r["runtime"], r["precision"]) for r in rows] == [("openvino", "fp32")]
    assert rows[0]["passed"] and rows[0]["label_agreement"] == 1.0
    assert rows[0]["max_abs_score_diff"] <= FP32_MAX_ABS_SCORE_DIFF


def test_salad_bench_runs_openvino(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        bench_command,
        [
            str(tiny_bundle),
            "--runtime",
            "openvino",
            "--batch",
            "1,2",
            "--iters",
            "3",
            "--warmup",
            "1",
            "--films",
            "4",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert [(r["runtime"], r["batch"]) for r in rows] == [
        ("torch", 1),
        ("torch", 2),
        ("openvino", 1),
        ("openvino", 2),
    ]
    for r in rows[2:]:
        assert r["p50_ms"] > 0 and r["speedup_vs_torch"] > 0
        info = r["runtime_info"]
        assert info["library"].startswith("openvino ") and info["inference_precision"] == "f32"
        assert (
            info["inference_num_threads"] == 1
        )  # bench's --threads reached the runner through Runner.options
