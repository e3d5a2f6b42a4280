"""Device clocks: CUDA events on the stream a GPU runner works on."""

from __future__ import annotations

from typing import Any, Protocol

from ..scorer import Scorer

# -- clocks ---------------------------------------------------------------------------------------


class DeviceTimer(Protocol):
    """Times work on a GPU stream with CUDA events (the GPU's own clock)."""

    def start(self) -> None: ...
    def stop_ms(self) -> float: ...
    def close(self) -> None: ...


class _CudaRuntimeEvents:
    """CUDA events (cuda.bindings) on the TensorRT runner's stream."""

    def __init__(self, cudart: Any, stream: Any) -> None:
        from .tensorrt_runner import cuda_check

        self._check = cuda_check
        self._cudart, self._stream = cudart, stream
        self._start = cuda_check(cudart.cudaEventCreate(), "cudaEventCreate")
        self._end = cuda_check(cudart.cudaEventCreate(), "cudaEventCreate")

    def start(self) -> None:
        self._check(self._cudart.cudaEventRecord(self._start, self._stream), "cudaEventRecord")

    def stop_ms(self) -> float:
        self._check(self._cudart.cudaEventRecord(self._end, self._stream), "cudaEventRecord")
        self._check(self._cudart.cudaEventSynchronize(self._end), "cudaEventSynchronize")
        return float(self._check(self._cudart.cudaEventElapsedTime(self._start, self._end), "cudaEventElapsedTime"))

    def close(self) -> None:
        for event in (self._start, self._end):
            self._cudart.cudaEventDestroy(event)


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


def device_timer(scorer: Scorer) -> DeviceTimer | None:
    """CUDA events for a runner on a GPU whose stream we can reach (tensorrt, torch); None on CPU.

    `infer` returns host arrays, so the events bracket the copies as well as the engine: the figure
    is the same call as the wall-clock one, read from the GPU's clock. ONNX Runtime's CUDA stream is
    not exposed, so its GPU rows have wall-clock figures only.
    """
    runner = scorer.runner
    if runner.device_kind != "cuda":
        return None
    if runner.name == "tensorrt":
        stream = getattr(runner, "_stream", None)
        cudart = getattr(runner, "_cudart", None)
        return _CudaRuntimeEvents(cudart, stream) if stream is not None and cudart is not None else None
    if runner.name == "torch":
        return _TorchCudaEvents(runner.device)
    return None
