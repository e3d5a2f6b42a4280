"""Typed errors and the exit codes the command line maps them to (docs/architecture.md §8).

Every message is for a person: what was received, what was expected, the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Exit codes of every `salad` command, defined once (README "Exit codes", docs/architecture.md §8).
EXIT_OK = 0
#: Could not run (or finish): bad input, a bad bundle, a missing backend, an OS error; `salad score` when a film
#: could not be scored (the others still were).
EXIT_ERROR = 1
#: Usage: the command line asks for something impossible (click's own code for an unknown option or a bad value;
#: a ConfigError too).
EXIT_USAGE = 2
#: The checks ran and failed: parity, export or bundle validation, a calibration gate, the demo's verdicts.
EXIT_CHECKS_FAILED = 3
#: Interrupted by Ctrl-C or SIGTERM, after cleaning up (128 + SIGINT).
EXIT_INTERRUPTED = 130
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "could not run: bad input, bundle or environment (score: some films could not be scored)",
    EXIT_USAGE: "usage: an unknown option, a value out of range or an impossible combination",
    EXIT_CHECKS_FAILED: "the checks ran and failed (parity, validation, calibration gate)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); nothing half-written was kept",
}


class SaladError(Exception):
    """Base of every error the toolkit raises on purpose; the CLI turns it into a one-line exit."""

    #: The exit code the command line ends with when this error stops it.
    exit_code: int = EXIT_ERROR


class DataError(SaladError):
    """Input images, folders or manifests that cannot be used (empty, unreadable, mislabelled)."""


#: The name docs/architecture.md §8 uses for DataError: an input (film, folder, array, feed) that cannot be used.
InputError = DataError


class ConfigError(SaladError):
    """A request that cannot run as asked: an option out of range, an unknown name, a wrong combination."""

    exit_code = EXIT_USAGE


class BackendError(SaladError):
    """A backend failed while running: a CUDA call, a TensorRT build or execution, an ONNX Runtime run."""


class BundleError(SaladError):
    """A bundle that is missing files, fails a checksum or comes from an unknown schema."""


class ChecksFailedError(SaladError):
    """Checks ran and some failed; `failures` lists each as a dict (what, value, limit, …) for --json outputs."""

    exit_code = EXIT_CHECKS_FAILED

    def __init__(self, message: str, failures: Iterable[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        #: One dict per failing check, e.g. {"check": "max_abs_score_diff", "value": 2e-4, "limit": 1e-5, …}.
        self.failures: list[dict[str, Any]] = [dict(f) for f in failures]


class ExportValidationError(ChecksFailedError):
    """The exported graphs do not reproduce the PyTorch reference; lists every failing output."""


class ParityError(ChecksFailedError):
    """A runtime or precision does not make the reference's decisions within tolerance."""


class CalibrationError(SaladError):
    """A precision variant could not be calibrated (too few images, random data, unreadable films)."""


class CalibrationUsageError(ConfigError, CalibrationError):
    """A calibration request that cannot run as asked (unknown precision or method, values out of range): exit 2."""


class CalibrationRejectedError(CalibrationError, ChecksFailedError):
    """A calibrated variant missed its parity tolerances or accuracy budget; the bundle is unchanged."""


class BackendUnavailableError(SaladError):
    """An optional backend (torch, onnxruntime, tensorrt, CUDA) is not installed or has no device."""


class RunError(SaladError):
    """A training or evaluation run that went wrong while running (non-finite loss, embeddings or scores)."""
