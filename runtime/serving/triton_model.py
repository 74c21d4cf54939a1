"""The python-backend model ``segrt serve`` puts in its repository: Triton tensors in, a
:mod:`~segrt.runtime.serving.handlers` handler, Triton tensors out. Only Triton's python backend
imports this (it provides ``triton_python_backend_utils``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the python backend's stub

from .handlers import Response, handler_for


def _error(exc: Exception):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


def _quiet_capsule_deleter(hook=sys.unraisablehook):
    """NumPy 2's DLPack capsule deleter complains (harmlessly) about the renamed capsule the stub keeps."""

    def filtered(info) -> None:
        if not (isinstance(info.exc_value, ValueError) and "PyCapsule_GetPointer" in str(info.exc_value)):
            hook(info)

    sys.unraisablehook = filtered


_quiet_capsule_deleter()


def _tensor(name: str, array: np.ndarray):
    """Through DLPack: 2.51's stub built ``pb_utils.Tensor(name, array)`` empty under NumPy 2."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # DLPack cannot export read-only arrays (np.frombuffer's)
        array = array.copy()
    return pb_utils.Tensor.from_dlpack(name, array.__dlpack__())


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params["threads"]) if params.get("threads") else None
        self.handler = handler_for(Path(params["bundle"]), threads=threads, max_pixels=int(params["max_pixels"]))
        self.inputs = [t.name for t in self.handler.contract.inputs]

    def _request(self, request) -> dict[str, np.ndarray]:
        out = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                out[name] = np.from_dlpack(tensor)  # as_numpy() reads zeros under NumPy 2 (2.51's stub)
        return out

    @staticmethod
    def _response(result: Response):
        if isinstance(result, Exception):
            return pb_utils.InferenceResponse(output_tensors=[], error=_error(result))
        return pb_utils.InferenceResponse(output_tensors=[_tensor(k, v) for k, v in result.items()])

    def execute(self, requests: list) -> list:
        try:
            results = self.handler.run([self._request(r) for r in requests])
        except Exception as exc:  # a bug: answer every request instead of leaving clients hanging
            return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"segrt: {exc}"))
                    for _ in requests]
        return [self._response(r) for r in results]

    def finalize(self) -> None:
        self.handler = None
