"""The machine a figure was measured on and the library versions it depends on, read without importing a runtime.

One implementation for `salad bench`, calibration's latency report and the benchmark harnesses.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from salad.errors import ConfigError

#: Distributions whose versions go into a benchmark's header (absent ones are left out).
LIBRARIES = (
    "salad-edge", "numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "onnxruntime-gpu", "torch",
    "onnx", "tensorrt", "cuda-python", "faiss-cpu", "matplotlib",
)

#: Device kinds a runtime may run on; a device is "cpu", "cuda" or "cuda:N" (parse_device).
DEVICE_KINDS = ("cpu", "cuda")


def parse_device(device: str) -> tuple[str, int]:
    """"cpu" → ("cpu", 0); "cuda" → ("cuda", 0); "cuda:1" → ("cuda", 1); anything else is an error."""
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in DEVICE_KINDS or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ConfigError(f"device {device!r}; expected 'cpu', 'cuda' or 'cuda:N' (N = GPU index).")
    return kind, int(index or 0)


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags from /proc/cpuinfo (platform's names where it is absent)."""
    model: str = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
                if flags and model not in ("", platform.machine(), platform.processor()):
                    break
    except OSError:
        pass
    return model, flags


def machine_info() -> dict[str, Any]:
    """CPU and GPU model and core counts, read without importing any runtime library."""
    cpu, _ = cpu_model_and_flags()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            gpu = "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or None
        except (OSError, subprocess.SubprocessError):
            gpu = None
    return {
        "cpu": cpu, "cpus_logical": os.cpu_count(), "cpus_usable": usable, "cpus_physical": physical, "gpu": gpu,
        "platform": platform.platform(), "python": platform.python_version(),
    }


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of `names` (the distributions a figure depends on); absent ones are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
