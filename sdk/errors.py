"""The exceptions the SDK raises. Every message says what was expected, what came, and the fix."""

from __future__ import annotations


class SdkError(Exception):
    """Base class of every error this SDK raises on purpose."""


class BundleError(SdkError):
    """A bundle folder is missing, incomplete, corrupt or was built for something else."""


class BackendError(SdkError):
    """A back end is unavailable or failed to load or run a graph."""


class StaleEngineError(BackendError):
    """A TensorRT engine was built for another TensorRT release or GPU: rebuild it on this machine."""


class InputError(SdkError, ValueError):
    """An input array or argument does not match what the model expects."""
