"""Typed errors. Every message says what was expected, what was received and what to do.

The CLI maps :class:`SegrtError` to a one-line message and exit code 2; any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations


class SegrtError(Exception):
    """Base class of every error segrt raises on purpose."""


class InvalidInputError(SegrtError, ValueError):
    """An image, array, path or argument given by the caller is not usable."""


class ModelFormatError(SegrtError):
    """A bundle, manifest or ONNX file is missing, corrupt, or disagrees with itself."""


class BackendUnavailableError(SegrtError):
    """The requested device or backend cannot run on this machine."""


class EngineMismatchError(BackendUnavailableError):
    """A serialized engine does not match this model, precision, TensorRT version or GPU, or does not deserialize.
    A reason to fall back (``device="auto"`` goes on to ONNX Runtime, saying why), hence the subclass."""


class ExportError(SegrtError):
    """Exporting a PyTorch model, or loading its checkpoint, failed."""


class InferenceError(SegrtError):
    """A backend that started fine failed while running (a CUDA or TensorRT call returned an error), or was
    used after ``close()``. Unlike :class:`BackendUnavailableError` it is not a reason to fall back to another
    backend: the device is there, the run went wrong."""
