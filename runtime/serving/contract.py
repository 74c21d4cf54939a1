"""The request contract: one set of tensor names, types and shapes per task, the same for
``segrt serve`` (CPU, segrt inside Triton's python backend) and ``segrt triton`` (GPU repository).

Every model is named after its bundle's folder and takes ``IMAGE``, UINT8, ``[batch, H, W, 3]`` RGB.
Semantic models batch (Triton's dynamic batcher merges requests of one size); instance and SAM models
take one image per request (``[1, H, W, 3]``), since their outputs have a per-image length.
Instance masks come as COCO RLE in one JSON document, sent as its UTF-8 bytes (``MASKS_RLE``, UINT8):
the bundled python backend (2.51) cannot send string tensors from NumPy 2, only buffers via DLPack.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..manifest import Manifest
from ..tasks import task_for


@dataclass(frozen=True)
class Tensor:
    """One input or output: Triton's ``TYPE_*`` name, dims (``-1`` = any) and whether it may be left out."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False

    def config(self) -> dict:
        out: dict = {"name": self.name, "data_type": Enum(self.dtype), "dims": list(self.dims)}
        if self.optional:
            out["optional"] = True
        return out


class Enum(str):
    """A protobuf enum value in text format (written bare, not quoted)."""


@dataclass(frozen=True)
class Contract:
    task: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    batched: bool  # True: dims exclude the batch axis and Triton may batch requests (max_batch_size > 0)


def labels_dtype(manifest: Manifest) -> str:
    """Class ids as ``segrt run`` writes its label PNG: UINT8, or UINT16 past 256 classes."""
    return "TYPE_UINT8" if manifest.num_classes <= 256 else "TYPE_UINT16"


def semantic_contract(manifest: Manifest) -> Contract:
    return Contract("semantic", (Tensor("IMAGE", "TYPE_UINT8", (-1, -1, 3)),),
                    (Tensor("LABELS", labels_dtype(manifest), (-1, -1)),), batched=True)


def instance_contract(manifest: Manifest) -> Contract:
    return Contract("instance", (Tensor("IMAGE", "TYPE_UINT8", (1, -1, -1, 3)),), (
        Tensor("BOXES", "TYPE_FP32", (-1, 4)), Tensor("SCORES", "TYPE_FP32", (-1,)),
        Tensor("CLASSES", "TYPE_INT64", (-1,)), Tensor("MASKS_RLE", "TYPE_UINT8", (-1,))), batched=False)


def sam_contract(manifest: Manifest) -> Contract:
    return Contract("sam", (
        Tensor("IMAGE", "TYPE_UINT8", (1, -1, -1, 3)),
        Tensor("POINT_COORDS", "TYPE_FP32", (-1, 2), optional=True),
        Tensor("POINT_LABELS", "TYPE_INT32", (-1,), optional=True),
        Tensor("BOX", "TYPE_FP32", (4,), optional=True),
        Tensor("MULTIMASK_OUTPUT", "TYPE_BOOL", (1,), optional=True),
    ), (Tensor("MASKS", "TYPE_BOOL", (-1, -1, -1)), Tensor("SCORES", "TYPE_FP32", (-1,))), batched=False)


def contract_for(manifest: Manifest) -> Contract:
    """The bundle's contract: its task's (:meth:`segrt.runtime.tasks.Task.serving_contract`)."""
    return task_for(manifest.task).serving_contract(manifest)
