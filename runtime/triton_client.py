"""Score on a Triton Inference Server that serves a repository written by `salad export-triton`.

`triton_scorer(bundle, url)` is a Scorer like `Scorer.from_bundle`: the same shared preprocessing
(salad.preprocess), batching, threshold and Result rows, with a TritonRunner in place of a local
backend. The runner sends batches of images to the ensemble over HTTP (`http://host:8000`) or gRPC
(`grpc://host:8001`), and first checks that the server's model was exported from this bundle
(bank sha256, threshold, preprocessing and precision in the ensemble's parameters), so labels are
decided at the threshold the model was calibrated for. tritonclient is imported when the runner
activates; without it the error names `pip install tritonclient[http]`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np

from salad.bundle import Bundle
from salad.errors import BackendUnavailableError, BundleError, ConfigError, SaladError

from .base import BATCH, BundleGraph, Runner, importable, register_runner
from .scorer import IMAGE_INPUT, Scorer

PROTOCOLS = {"http": ("http", False), "https": ("http", True), "grpc": ("grpc", False), "grpcs": ("grpc", True)}
DEFAULT_MODEL = "salad"


def parse_url(url: str) -> tuple[str, str, bool]:
    """"http://host:8000" → ("http", "host:8000", False); "grpc://host:8001" → ("grpc", …); no scheme = http."""
    text = url.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in PROTOCOLS or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(
            f"--triton {url!r}: expected http://HOST:PORT (HTTP, port 8000) or grpc://HOST:PORT (gRPC, port 8001)."
        )
    protocol, ssl = PROTOCOLS[parts.scheme]
    return protocol, parts.netloc, ssl


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        extra = "grpc" if protocol == "grpc" else "http"
        raise BackendUnavailableError(
            f"scoring on Triton over {protocol} needs tritonclient: pip install 'tritonclient[{extra}]' ({exc})."
        ) from exc
    return module


@register_runner("triton", extra="triton", devices=("cpu",))
class TritonRunner(Runner):
    """Runs the bundle's "model" graph remotely: the ensemble a `salad export-triton` repository serves.

    Validation of feeds and results is the base class's (the bundle manifest's contract); a per-item
    scalar that Triton returns as [b, 1] is handed back as [b], the manifest's shape.
    """

    required: ClassVar[tuple[str, ...]] = ("url",)
    options: ClassVar[dict[str, str]] = {
        "url": "the server: http://host:8000 or grpc://host:8001", "model": "the served ensemble's name",
        "timeout_s": "seconds to wait for the server",
    }

    def __init__(self, graph: BundleGraph, *, url: str, model: str = DEFAULT_MODEL, max_batch: int = 32,
                 timeout_s: float = 60.0, device: str | None = None) -> None:
        super().__init__(graph, max_batch=max_batch, device=device)  # the console's side: the GPU is the server's
        self.url = url
        self.protocol, self.address, self.ssl = parse_url(url)
        self.model = model
        self.timeout_s = timeout_s
        self.client: Any = None
        self._module: Any = None
        self.server_config: dict[str, Any] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not importable("tritonclient"):
            return "tritonclient is not installed: `pip install 'salad-edge[triton]'`."
        return None

    @property
    def device(self) -> str:
        return f"triton {self.protocol}://{self.address}/{self.model}"

    def __repr__(self) -> str:
        return f"TritonRunner({self.device}, precision={self.graph.precision!r}, max_batch={self.max_batch})"

    # -- lifecycle ---------------------------------------------------------------------------------

    def _activate(self) -> None:
        self._module = _client_module(self.protocol)
        kwargs: dict[str, Any] = {"ssl": self.ssl}
        if self.protocol == "http":
            kwargs.update(connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
        self.client = self._module.InferenceServerClient(self.address, **kwargs)
        where = f"Triton at {self.url}"
        try:
            ready = self.client.is_model_ready(self.model)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises connection errors of several types
            self._close()
            raise BackendUnavailableError(
                f"cannot reach {where} ({type(exc).__name__}: {exc}). Is `tritonserver --model-repository=REPO` running, "
                "and is the URL's port its HTTP (8000) or gRPC (8001) port?"
            ) from exc
        if not ready:
            self._close()
            raise BackendUnavailableError(
                f"{where} has no ready model {self.model!r}. Start it with the repository `salad export-triton` wrote "
                "(its README shows how) and check the server log for load errors."
            )
        config = self.client.get_model_config(self.model, **({"as_json": True} if self.protocol == "grpc" else {}))
        self.server_config = config.get("config", config)
        try:
            self._check_server_model()
        except SaladError:
            self._close()
            raise

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        from tritonclient.utils import np_to_triton_dtype

        image = feed[IMAGE_INPUT]  # a bank input of a --bank-as-input bundle is bound into the served scorer
        request = self._module.InferInput(IMAGE_INPUT, list(image.shape), np_to_triton_dtype(image.dtype))
        request.set_data_from_numpy(image)
        wanted = [t.name for t in self.spec.outputs]
        result = self.client.infer(self.model, [request], outputs=[self._module.InferRequestedOutput(n) for n in wanted])
        out: dict[str, np.ndarray] = {}
        for t in self.spec.outputs:
            value = result.as_numpy(t.name)
            if value is None:
                raise BundleError(f"Triton model {self.model!r} at {self.url} returned no output {t.name!r}; expected {wanted}.")
            if t.shape == [BATCH] and value.ndim == 2 and value.shape[1] == 1:
                value = value[:, 0]  # Triton's [b, 1] for a per-item scalar
            out[t.name] = value
        return out

    def _deactivate(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            finally:
                self.client = None

    # -- the served model must be this bundle's ----------------------------------------------------

    def _check_server_model(self) -> None:
        """Compare the ensemble's parameters and batch size with the bundle; list every difference."""
        manifest = self.graph.manifest
        params = {k: (v or {}).get("string_value") for k, v in (self.server_config.get("parameters") or {}).items()}
        where = f"Triton model {self.model!r} at {self.url}"
        if "salad.bank_sha256" not in params:
            raise BundleError(f"{where} was not written by `salad export-triton` (its config has no salad.* parameters).")
        problems = []
        expected = {
            "salad.bank_sha256": manifest.bank.sha256,
            "salad.precision": self.graph.precision,
        }
        for key, want in expected.items():
            if params.get(key) != want:
                problems.append(f"{key}: server {params.get(key)!r}, bundle {want!r}")
        for key, document in (("salad.threshold", manifest.threshold.to_json()), ("salad.preprocessing", manifest.preprocessing)):
            got = _json(params.get(key))
            if got != document:
                problems.append(f"{key}: server {got!r}, bundle {document!r}")
        if problems:
            raise BundleError(
                f"{where} serves another model than the bundle {self.graph.root}:\n  " + "\n  ".join(problems)
                + f"\nExport this bundle with `salad export-triton {self.graph.root} --out REPO --precision {self.graph.precision}` "
                "and serve that repository, or pass the bundle the server was exported from."
            )
        served = int(self.server_config.get("max_batch_size") or 0)
        if served and self.max_batch > served:
            raise ConfigError(f"--batch {self.max_batch} is larger than {where}'s max_batch_size {served}; pass --batch {served} or less.")


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return text


def triton_scorer(
    bundle: str | os.PathLike[str],
    url: str,
    *,
    model: str = DEFAULT_MODEL,
    precision: str = "fp32",
    max_batch: int = 32,
    timeout_s: float = 60.0,
) -> Scorer:
    """A Scorer whose inference runs on Triton (`url`), preprocessing and deciding with `bundle`'s manifest.

    Verifies the bundle (schema, sha256) now; connects, and checks the served model is this bundle's,
    on first use.
    """
    opened = Bundle.open(Path(bundle), verify=True)
    graph = BundleGraph.from_bundle(opened, "model", precision)
    return Scorer(opened, TritonRunner(graph, url=url, model=model, max_batch=max_batch, timeout_s=timeout_s))
