"""The python-backend model of an ensemble's ``NAME_pre`` / ``NAME_post`` step (``segrt triton``):
the bundle's manifest sits beside this file's copy; parameter ``stage`` says which half it runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the python backend's stub

from ..errors import SegrtError
from ..manifest import read_manifest
from .stages import stages_for
from .triton_model import _error, _tensor


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        stages = stages_for(read_manifest(folder), max_pixels=int(params["max_pixels"]))
        self.run = stages.pre if params["stage"] == "pre" else stages.post
        self.inputs = [t["name"] for t in config["input"]]

    def _one(self, request):
        feeds = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                feeds[name] = np.from_dlpack(tensor)
        try:
            out = self.run(feeds)
        except SegrtError as exc:
            return pb_utils.InferenceResponse(output_tensors=[], error=_error(exc))
        return pb_utils.InferenceResponse(output_tensors=[_tensor(k, v) for k, v in out.items()])

    def execute(self, requests: list) -> list:
        return [self._one(r) for r in requests]
