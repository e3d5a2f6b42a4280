"""Typed errors. Every message is for a person: what was received, what was expected, the fix."""

from __future__ import annotations


class SaladError(Exception):
    """Base of every error the toolkit raises on purpose; the CLI turns it into a one-line exit."""


class DataError(SaladError):
    """Input images, folders or manifests that cannot be used (empty, unreadable, mislabelled)."""


#: The name docs/architecture.md §8 uses for DataError: an input (film, folder, array, feed) that cannot be used.
InputError = DataError


class ConfigError(SaladError):
    """A request that cannot run as asked: an option out of range, an unknown name, a wrong combination."""


class BackendError(SaladError):
    """A backend failed while running: a CUDA call, a TensorRT build or execution, an ONNX Runtime run."""


class BundleError(SaladError):
    """A bundle that is missing files, fails a checksum or comes from an unknown schema."""


class ExportValidationError(SaladError):
    """The exported graphs do not reproduce the PyTorch reference; lists every failing output."""


class ParityError(SaladError):
    """A runtime or precision does not make the reference's decisions within tolerance."""


class CalibrationError(SaladError):
    """A precision variant could not be calibrated (too few images, random data, accuracy budget)."""


class BackendUnavailableError(SaladError):
    """An optional backend (torch, onnxruntime, tensorrt, CUDA) is not installed or has no device."""


class RunError(SaladError):
    """A training or evaluation run that went wrong while running (non-finite loss, embeddings or scores)."""
