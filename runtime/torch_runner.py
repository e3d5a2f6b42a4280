"""PyTorch reference backend: the trained model rebuilt from the bundle's checkpoint.pt.

It exists for parity checks and benchmarks (the eager baseline), not for consoles: it needs the
`train` extra, and `salad.train` is imported only when the runner activates. It computes the score
with the same shared maths (salad.scoring) that export traced into scorer.onnx, with the bundle's K.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from salad.bundle import CHECKPOINT_FILE
from salad.errors import BundleError, ConfigError

from .base import BundleGraph, DeviceTimer, Runner, importable, register_runner

GRAPHS = ("model", "encoder", "scorer")


@register_runner("torch", extra="train", devices=("cpu", "cuda"))
class TorchRunner(Runner):
    """Runs the manifest contract of "model", "encoder" or "scorer" with the checkpoint's PyTorch model.

    Only the fp32 reference exists in PyTorch; precision variants are compared against it.
    Option `threads` sets torch's intra-op threads (a process-wide torch setting).
    """

    options: ClassVar[dict[str, str]] = {"threads": "torch intra-op threads (torch.set_num_threads, process-wide)"}

    def __init__(self, graph: BundleGraph, *, max_batch: int = 32, device: str | None = None, threads: int | None = None) -> None:
        super().__init__(graph, max_batch=max_batch, device=device)
        if graph.precision != "fp32":
            raise ConfigError(
                f"the torch runtime is the fp32 reference; received precision {graph.precision!r}. "
                "Run precision variants with --runtime onnxruntime or tensorrt and compare them with torch at fp32."
            )
        if graph.name not in GRAPHS:
            raise ConfigError(f"the torch runtime runs graphs {GRAPHS}; received {graph.name!r}.")
        self.threads = threads
        self.model: Any = None
        self.bank: Any = None
        self.k = 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not importable("torch"):
            return (
                "PyTorch is not installed. The torch reference needs `pip install 'salad-edge[train]'`; "
                "consoles use --runtime onnxruntime."
            )
        return None

    def _activate(self) -> None:
        bundle = self.graph.bundle
        ckpt = self.graph.root / CHECKPOINT_FILE
        if not bundle.has_checkpoint:  # an unlisted checkpoint is unverified
            raise BundleError(
                f"{self.graph.root}: bundle has no {CHECKPOINT_FILE} (exported with --slim?). The torch reference runtime "
                "rebuilds the model from it: re-export without --slim, or use --runtime onnxruntime."
            )
        import torch

        from salad.train.evaluate import load_run

        if self.threads:
            torch.set_num_threads(int(self.threads))
        loaded = load_run(bundle.checkpoint_path)
        manifest = self.graph.manifest
        rows = manifest.bank.rows
        if rows is not None and int(rows) != int(loaded.bank.shape[0]):
            raise BundleError(
                f"{ckpt}: checkpoint has {int(loaded.bank.shape[0])} normal bank rows, the manifest says {rows}. "
                "The checkpoint and the graphs come from different runs; re-export the bundle."
            )
        if loaded.preprocessing != manifest.preprocess_config:
            raise BundleError(
                f"{ckpt}: checkpoint preprocessing {loaded.preprocessing} differs from the manifest's "
                f"{manifest.preprocess_config}; re-export the bundle."
            )
        device = torch.device(self.device)
        self.model = loaded.model.to(device).eval()
        self.bank = loaded.bank.to(device)
        self.k = int(manifest.k)  # the bundle's K (the graphs were exported with it), not the run default

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        import torch

        from salad.scoring import KNN_ANGLE, SCORE, score_torch

        device = torch.device(self.device)
        with torch.inference_mode():
            out: dict[str, Any] = {}
            if self.graph.name == "scorer":
                z = torch.from_numpy(feed["embedding"]).to(device)
            else:
                z = self.model.embed(torch.from_numpy(feed["image"]).to(device))
                out["embedding"] = z
            if self.graph.name != "encoder":
                bank = torch.from_numpy(feed["bank"]).to(device) if "bank" in feed else self.bank
                out[SCORE], out[KNN_ANGLE] = score_torch(z, bank, self.k)
            return {k: v.detach().cpu().numpy() for k, v in out.items()}

    def _deactivate(self) -> None:
        self.model = None
        self.bank = None

    def info(self) -> dict[str, Any]:
        import torch

        return {
            **super().info(), "library": f"torch {torch.__version__}", "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(), "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "mode": "eager, inference_mode",
        }

    def device_timer(self) -> DeviceTimer | None:
        return _TorchCudaEvents(self.device) if self.device_kind == "cuda" else None


class _TorchCudaEvents:
    """torch.cuda events on the current stream (the torch runner's)."""

    def __init__(self, device: str) -> None:
        import torch

        self._torch = torch
        self._device = device
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record(self._torch.cuda.current_stream(self._device))

    def stop_ms(self) -> float:
        self._end.record(self._torch.cuda.current_stream(self._device))
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def close(self) -> None:
        pass
