"""salad-edge: SALAD X-ray anomaly detection from PyTorch training to verified console scoring.

`import salad` pulls in neither torch nor onnx: consoles install only the runtime extra.
"""

from __future__ import annotations

__version__ = "0.1.0"

from salad.errors import (  # noqa: E402
    BackendUnavailableError,
    BundleError,
    CalibrationError,
    DataError,
    ExportValidationError,
    ParityError,
    SaladError,
)

__all__ = [
    "__version__",
    "SaladError",
    "DataError",
    "BundleError",
    "ExportValidationError",
    "ParityError",
    "CalibrationError",
    "BackendUnavailableError",
]
