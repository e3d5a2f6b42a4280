"""The machine and library versions every figure is recorded with, read without importing a runtime."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from .settings import LIBRARIES


def machine_info() -> dict[str, Any]:
    """CPU and GPU model and core counts, read without importing any runtime library."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
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
