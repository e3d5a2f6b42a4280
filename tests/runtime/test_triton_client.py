"""`salad score --triton`: the Triton client against a stand-in server that runs the exported repository.

No Triton server can be installed here, so FakeTriton plays one with the real wire protocols (KServe
v2 HTTP with binary tensors, and gRPC) for the real tritonclient. It reads the repository the way
Triton does: every config.pbtxt parsed with Triton's protobuf, each ONNX Runtime model checked
against its config (names, dtypes, dims, reshape), requests checked against dims and
max_batch_size, and the ensemble executed by following its steps' input_map / output_map.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tritonclient.http", reason="the Triton client tests need tritonclient (pip install 'tritonclient[http,grpc]')")
ort = pytest.importorskip("onnxruntime")
from google.protobuf import json_format, text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype  # noqa: E402

from salad.errors import BackendUnavailableError, BundleError, SaladError  # noqa: E402
from salad.manifest import read_manifest  # noqa: E402
from salad.runtime import Scorer  # noqa: E402
from salad.runtime.triton_client import TritonRunner, parse_url, triton_scorer  # noqa: E402

from .conftest import SAMPLE_EVAL  # noqa: E402

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64"}


class FakeTriton:
    """The models of a repository, loaded and run as Triton would (ONNX Runtime on CPU)."""

    def __init__(self, repo: Path) -> None:
        self.configs: dict[str, Any] = {}
        self.sessions: dict[str, Any] = {}
        self.batches: list[tuple[str, int]] = []
        for path in sorted(repo.glob("*/config.pbtxt")):
            config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
            assert config.name == path.parent.name, f"{path}: name {config.name!r} ≠ its folder"
            assert (path.parent / "1").is_dir(), f"{path.parent}: no version folder 1/"
            self.configs[config.name] = config
            if config.platform == "onnxruntime_onnx":
                session = ort.InferenceSession(str(path.parent / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
                self._check_model(config, session)
                self.sessions[config.name] = session

    @staticmethod
    def _check_model(config: Any, session: Any) -> None:
        """Triton's load-time check: every config tensor is a model tensor of the same type and shape."""
        model = {t.name: t for t in [*session.get_inputs(), *session.get_outputs()]}
        assert {t.name for t in session.get_inputs()} == {t.name for t in config.input}, config.name
        for t in [*config.input, *config.output]:
            assert t.name in model, f"{config.name}: {t.name} is not a model tensor"
            assert ORT_TYPES[model[t.name].type] == model_config_pb2.DataType.Name(t.data_type), (config.name, t.name)
            per_item = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
            assert model[t.name].shape[1:] == per_item, (config.name, t.name, model[t.name].shape, per_item)

    def _check_request(self, config: Any, tensors: dict[str, np.ndarray], kind: str) -> int:
        specs = config.input if kind == "input" else config.output
        assert sorted(tensors) == sorted(t.name for t in specs), (config.name, kind, sorted(tensors))
        batches = set()
        for t in specs:
            value = tensors[t.name]
            if value.dtype != triton_to_np_dtype(model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_")):
                raise ValueError(f"{config.name}: {kind} {t.name} has datatype {value.dtype}")
            if list(value.shape[1:]) != list(t.dims):
                raise ValueError(f"{config.name}: {kind} {t.name} shape {list(value.shape)}, config dims {list(t.dims)}")
            batches.add(value.shape[0])
        (batch,) = batches
        if not 1 <= batch <= config.max_batch_size:
            raise ValueError(f"{config.name}: batch {batch} > max_batch_size {config.max_batch_size}")
        return int(batch)

    def infer(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        config = self.configs[name]
        batch = self._check_request(config, inputs, "input")
        self.batches.append((name, batch))
        if config.platform == "ensemble":
            tensors = dict(inputs)
            for step in config.ensemble_scheduling.step:  # in order; a map is model tensor → ensemble tensor
                produced = self.infer(step.model_name, {model: tensors[ens] for model, ens in step.input_map.items()})
                tensors.update({ens: produced[model] for model, ens in step.output_map.items()})
            outputs = {t.name: tensors[t.name] for t in config.output}
        else:
            feed = {t.name: inputs[t.name].reshape(batch, *t.reshape.shape) if t.HasField("reshape") else inputs[t.name]
                    for t in config.input}
            session = self.sessions[name]
            raw = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
            outputs = {t.name: raw[t.name].reshape(batch, *t.dims) for t in config.output}
        self._check_request(config, outputs, "output")
        return outputs

    def config_json(self, name: str) -> dict[str, Any]:
        return json_format.MessageToDict(self.configs[name], preserving_proto_field_name=True)


# -- KServe v2 over HTTP (binary tensor extension) and gRPC ------------------------------------------------


def _http_handler(fake: FakeTriton) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {"Content-Type": "application/json"}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            m = re.fullmatch(r"/v2/models/([^/]+)(?:/versions/\d+)?/(ready|config)", self.path)
            if self.path in ("/v2/health/live", "/v2/health/ready"):
                self._send(200)
            elif m and m.group(1) in fake.configs:
                self._send(200, b"" if m.group(2) == "ready" else json.dumps(fake.config_json(m.group(1))).encode())
            else:
                self._send(400, json.dumps({"error": f"Request for unknown model: '{self.path}'"}).encode())

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            m = re.fullmatch(r"/v2/models/([^/]+)(?:/versions/\d+)?/infer", self.path)
            size = int(self.headers.get("Inference-Header-Content-Length") or len(body))
            request, blob = json.loads(body[:size]), memoryview(body)[size:]
            inputs, offset = {}, 0
            for t in request["inputs"]:
                dtype = triton_to_np_dtype(t["datatype"])
                n = t["parameters"]["binary_data_size"]
                inputs[t["name"]] = np.frombuffer(blob[offset : offset + n], dtype=dtype).reshape(t["shape"])
                offset += n
            try:
                outputs = fake.infer(m.group(1) if m else "?", inputs)
            except (ValueError, KeyError) as exc:
                self._send(400, json.dumps({"error": str(exc)}).encode())
                return
            wanted = [o["name"] for o in request.get("outputs", [])] or list(outputs)
            header = {"model_name": m.group(1) if m else "", "model_version": "1", "outputs": []}
            blobs = []
            for name in wanted:
                value = np.ascontiguousarray(outputs[name])
                header["outputs"].append({"name": name, "datatype": np_to_triton_dtype(value.dtype), "shape": list(value.shape),
                                          "parameters": {"binary_data_size": value.nbytes}})
                blobs.append(value.tobytes())
            head = json.dumps(header).encode()
            self._send(200, head + b"".join(blobs),
                       {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})

    return Handler


class _GrpcService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, fake: FakeTriton) -> None:
        self.fake = fake

    def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC service's names
        return service_pb2.ModelReadyResponse(ready=request.name in self.fake.configs)

    def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        return service_pb2.ModelConfigResponse(config=self.fake.configs[request.name])

    def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        inputs = {t.name: np.frombuffer(raw, dtype=triton_to_np_dtype(t.datatype)).reshape(list(t.shape))
                  for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)}
        outputs = self.fake.infer(request.model_name, inputs)
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1")
        for o in request.outputs or [service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs]:
            value = np.ascontiguousarray(outputs[o.name])
            response.outputs.add(name=o.name, datatype=np_to_triton_dtype(value.dtype), shape=list(value.shape))
            response.raw_output_contents.append(value.tobytes())
        return response


@pytest.fixture(scope="module")
def repository(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from salad.export.triton import export_triton

    return export_triton(tiny_bundle, tmp_path_factory.mktemp("triton") / "repo", max_batch=4)


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[tuple[FakeTriton, str, str]]:
    """FakeTriton on free localhost ports: (fake, http URL, grpc URL)."""
    grpc = pytest.importorskip("grpc")
    fake = FakeTriton(repository)
    http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(fake))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    rpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_GrpcService(fake), rpc)
    port = rpc.add_insecure_port("127.0.0.1:0")
    rpc.start()
    yield fake, f"http://127.0.0.1:{http.server_address[1]}", f"grpc://127.0.0.1:{port}"
    http.shutdown()
    rpc.stop(None)


def _films() -> list[Path]:
    return sorted(SAMPLE_EVAL.rglob("*.jpeg"))[:6]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_scores_equal_the_local_onnxruntime_scores(tiny_bundle: Path, server: tuple[FakeTriton, str, str], protocol: str) -> None:
    fake, http_url, grpc_url = server
    pytest.importorskip(f"tritonclient.{protocol}")
    fake.batches.clear()
    with triton_scorer(tiny_bundle, http_url if protocol == "http" else grpc_url, max_batch=4) as remote:
        got = remote.score(_films())
    with Scorer.from_bundle(tiny_bundle, runtime="onnxruntime") as local:
        want = local.score(_films())
    assert [r.path for r in got] == [r.path for r in want]
    assert np.allclose([r.score for r in got], [r.score for r in want], atol=1e-5)
    assert np.allclose([r.knn_angle for r in got], [r.knn_angle for r in want], atol=1e-5)
    assert [r.label for r in got] == [r.label for r in want]
    assert remote.runtime == "triton" and protocol in remote.runner.device
    # Preprocessed and sent in batches of at most --batch, through the ensemble's two steps in order.
    assert fake.batches == [
        ("salad", 4), ("salad_encoder", 4), ("salad_scorer", 4),
        ("salad", 2), ("salad_encoder", 2), ("salad_scorer", 2),
    ]


def test_a_server_with_another_bundle_is_refused(bundle_copy: Path, server: tuple[FakeTriton, str, str]) -> None:
    _, url, _ = server
    manifest = read_manifest(bundle_copy, verify=False)
    manifest.threshold = dataclasses.replace(manifest.threshold, value=0.5)
    manifest.write(bundle_copy)
    with pytest.raises(BundleError, match=r"serves another model than the bundle(.|\n)*salad.threshold: server .*bundle"):
        triton_scorer(bundle_copy, url).activate()


def test_unreachable_server_and_unknown_model_say_what_to_do(tiny_bundle: Path, server: tuple[FakeTriton, str, str]) -> None:
    _, url, _ = server
    with pytest.raises(BackendUnavailableError, match="has no ready model 'chest'. Start it"):
        triton_scorer(tiny_bundle, url, model="chest").activate()
    with pytest.raises(BackendUnavailableError, match="cannot reach Triton at http://127.0.0.1:9"):
        triton_scorer(tiny_bundle, "http://127.0.0.1:9", timeout_s=2).activate()
    with pytest.raises(SaladError, match="larger than .*max_batch_size 4"):
        triton_scorer(tiny_bundle, url, max_batch=8).activate()


def test_missing_tritonclient_names_the_pip_command(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tritonclient.http", None)  # as if not installed
    with pytest.raises(BackendUnavailableError, match=r"pip install 'tritonclient\[http\]'"):
        triton_scorer(tiny_bundle, "http://127.0.0.1:8000").activate()


def test_urls() -> None:
    assert parse_url("http://gpu-box:8000") == ("http", "gpu-box:8000", False)
    assert parse_url("gpu-box:8000") == ("http", "gpu-box:8000", False)
    assert parse_url("grpcs://gpu-box:8001") == ("grpc", "gpu-box:8001", True)
    with pytest.raises(SaladError, match="expected http://HOST:PORT"):
        parse_url("ftp://gpu-box")
    assert TritonRunner.name == "triton"


def test_the_repository_readme_example_runs(
    tiny_bundle: Path, repository: Path, server: tuple[FakeTriton, str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's tritonclient snippet, as written, against the server (only its address and film changed)."""
    _, url, _ = server
    readme = (repository / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code is not None
    film = _films()[0]
    source = code.group(1).replace('"localhost:8000"', repr(url.removeprefix("http://"))).replace('"film.png"', repr(str(film)))
    exec(compile(source, "README.md", "exec"), {})  # noqa: S102 - the repository's own documentation
    with Scorer.from_bundle(tiny_bundle) as local:
        want, operating = local.score([film])[0], local.threshold_score
    assert capsys.readouterr().out.strip() == f"{operating} {getattr(want, operating):.4f}: {'abnormal' if want.label else 'normal'}"


def score_on_triton(command: Any, bundle: Path, folder: Path, url: str, out: Path) -> dict[str, Any]:
    """`salad score BUNDLE FOLDER --triton URL --json OUT` through click; the JSON it wrote."""
    from click.testing import CliRunner

    result = CliRunner().invoke(command, [str(bundle), str(folder), "--triton", url, "--batch", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    return dict(json.loads(out.read_text(encoding="utf-8")))


def test_salad_score_triton(tiny_bundle: Path, server: tuple[FakeTriton, str, str], film_folder: Path, tmp_path: Path) -> None:
    from salad.onsite.score import score_command

    _, url, _ = server
    payload = score_on_triton(score_command, tiny_bundle, film_folder, url, tmp_path / "scores.json")
    assert payload["runtime"] == "triton" and payload["device"].startswith("triton http://127.0.0.1:")
    with Scorer.from_bundle(tiny_bundle) as local:
        want = {r.path: r for r in local.score(sorted(str(p) for p in film_folder.rglob("*.jpeg")))}
    assert len(payload["results"]) == len(want) == 6
    for row in payload["results"]:
        assert abs(row["score"] - want[row["path"]].score) <= 1e-5 and row["label"] == want[row["path"]].label


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_calibrated_variant_served_by_triton_scores_as_it_does_locally(
    calibrated_bundle: Any, precision: str, tmp_path: Path,
) -> None:
    """The real fp16 / int8 encoders written by `salad calibrate`, served, give the local ONNX Runtime scores."""
    grpc = pytest.importorskip("grpc")
    from salad.export.triton import export_triton

    bundle = calibrated_bundle(precision)
    repo = export_triton(bundle, tmp_path / "repo", precision=precision, max_batch=4, tensorrt_accelerator=True)
    fake = FakeTriton(repo)  # loads and checks every model against its config
    rpc = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_GrpcService(fake), rpc)
    port = rpc.add_insecure_port("127.0.0.1:0")
    rpc.start()
    try:
        with triton_scorer(bundle, f"grpc://127.0.0.1:{port}", precision=precision, max_batch=4) as remote:
            got = remote.score(_films())
    finally:
        rpc.stop(None)
    with Scorer.from_bundle(bundle, runtime="onnxruntime", precision=precision) as local:
        want = local.score(_films())
    assert np.allclose([r.score for r in got], [r.score for r in want], atol=1e-5)
    assert [r.label for r in got] == [r.label for r in want]


def test_triton_is_a_registered_runtime(tiny_bundle: Path, server: tuple[FakeTriton, str, str], film_folder: Path,
                                        tmp_path: Path) -> None:
    """`salad score --runtime triton --url URL` is `--triton URL`; without --url the error names the option."""
    from click.testing import CliRunner

    from salad.onsite.score import score_command
    from salad.runtime import runner_names

    assert "triton" in runner_names()
    _, url, _ = server
    out = tmp_path / "scores.json"
    args = [str(tiny_bundle), str(film_folder), "--runtime", "triton", "--batch", "4", "--json", str(out)]
    result = CliRunner().invoke(score_command, [*args, "--url", url])
    assert result.exit_code == 0, result.output
    by_option = json.loads(out.read_text(encoding="utf-8"))["results"]
    by_alias = score_on_triton(score_command, tiny_bundle, film_folder, url, tmp_path / "again.json")["results"]
    assert [{k: v for k, v in r.items() if k != "ms"} for r in by_option] == [
        {k: v for k, v in r.items() if k != "ms"} for r in by_alias]
    missing = CliRunner().invoke(score_command, args)
    assert missing.exit_code == 2 and "the triton runtime needs option(s) ['url']" in missing.output  # usage
    misplaced = CliRunner().invoke(score_command, [str(tiny_bundle), str(film_folder), "--url", url])
    assert misplaced.exit_code == 2 and "--url is for a remote runtime" in misplaced.output
