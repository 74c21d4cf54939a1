"""Serving segrt bundles with NVIDIA Triton Inference Server (KServe v2 HTTP/gRPC).

- :mod:`.contract`: the request contract (tensor names, types, shapes) per task.
- :mod:`.repository` / :mod:`.server`: ``segrt serve``, a real ``tritonserver`` (from the
  ``nvidia-pytriton`` wheel) running segrt's runtime in Triton's python backend.
- :mod:`.gpu_repo` / :mod:`.stages`: ``segrt triton``, a repository for GPU servers: the network on
  ONNX Runtime/TensorRT, segrt's pre/post on the python backend, joined by an ensemble.

Needs ``pip install 'segrt[serve]'`` plus ``pip install --no-deps nvidia-pytriton`` (see docs/serving.md);
nothing here imports torch or Triton's client at import time.
"""

from .contract import Contract, Tensor, contract_for
from .repository import ServeOptions, write_serve_repository

__all__ = ["Contract", "ServeOptions", "Tensor", "contract_for", "write_serve_repository"]
