"""What a served model does with a batch of requests, in NumPy: no Triton import, so the same code
runs inside Triton's python backend and in a test. One handler per task; each turns a list of
requests (``{input name: array}``) into a list of responses (``{output name: array}`` or the
:class:`~segrt.runtime.errors.SegrtError` that request earned, answered as a 400-class error)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, SegrtError
from ..image import DEFAULT_MAX_PIXELS
from ..manifest import read_manifest
from .contract import Contract, contract_for

Request = dict[str, np.ndarray]
Response = dict[str, np.ndarray] | SegrtError
NUMPY = {"TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
         "TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_, "TYPE_STRING": np.object_}


def check_image(image: np.ndarray | None, batched: bool, max_pixels: int) -> np.ndarray:
    """``IMAGE`` as the contract wants it: UINT8 [batch, H, W, 3] (batch 1 where not batched)."""
    if image is None:
        raise InvalidInputError("input IMAGE is missing: send UINT8 [batch, H, W, 3] RGB")
    if image.dtype != np.uint8:
        raise InvalidInputError(f"IMAGE must be UINT8 RGB; got {image.dtype}")
    if image.ndim != 4 or image.shape[3] != 3:
        raise InvalidInputError(f"IMAGE must be [batch, H, W, 3] RGB; got shape {list(image.shape)}")
    if not batched and image.shape[0] != 1:
        raise InvalidInputError(f"this model takes one image per request ([1, H, W, 3]); got batch {image.shape[0]}")
    if min(image.shape[1:3]) < 1 or image.shape[1] * image.shape[2] > max_pixels:
        raise InvalidInputError(f"IMAGE is {image.shape[2]}x{image.shape[1]}; sides must be >= 1 and the area at "
                                f"most {max_pixels} pixels (resize it)")
    return image


class Handler:
    """Loads the bundle once; ``run`` answers a batch of requests (one response each)."""

    def __init__(self, bundle: Path, *, threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        from ..loader import load

        self.contract: Contract = contract_for(read_manifest(bundle))
        self.max_pixels = max_pixels
        self.model = load(bundle, "auto", threads=threads, max_pixels=max_pixels)

    def image(self, request: Request) -> np.ndarray:
        return check_image(request.get("IMAGE"), self.contract.batched, self.max_pixels)

    def run(self, requests: list[Request]) -> list[Response]:
        out: list[Response] = []
        for request in requests:
            try:
                out.append(self.one(request))
            except SegrtError as exc:
                out.append(exc)
        return out

    def one(self, request: Request) -> dict[str, np.ndarray]:
        raise NotImplementedError


class SemanticHandler(Handler):
    """Every image of every request in one ``Segmenter.batch`` call (one inference per input size)."""

    def run(self, requests: list[Request]) -> list[Response]:
        out: list[Response] = [None] * len(requests)  # type: ignore[list-item]
        images, owners = [], []
        for i, request in enumerate(requests):
            try:
                batch = self.image(request)
            except SegrtError as exc:
                out[i] = exc
                continue
            images += list(batch)
            owners += [i] * len(batch)
        if images:
            self._segment(images, owners, out)
        return out

    def _segment(self, images: list[np.ndarray], owners: list[int], out: list[Response]) -> None:
        dtype = NUMPY[self.contract.outputs[0].dtype]
        try:
            results = self.model.batch(images)
        except SegrtError as exc:
            for i in set(owners):
                out[i] = exc
            return
        for i in sorted(set(owners)):
            maps = [r.label_map for r, o in zip(results, owners) if o == i]
            out[i] = {"LABELS": np.stack(maps).astype(dtype)}


class InstanceHandler(Handler):
    def one(self, request: Request) -> dict[str, np.ndarray]:
        res = self.model(self.image(request)[0])
        rles = [d["segmentation"] for d in res.to_coco(image_id=0)]
        return {"BOXES": res.boxes.astype(np.float32).reshape(-1, 4), "SCORES": res.scores.astype(np.float32),
                "CLASSES": res.labels.astype(np.int64), "MASKS_RLE": np.frombuffer(json.dumps(rles).encode(), np.uint8)}


def _optional(request: Request, name: str, dtype: type) -> np.ndarray | None:
    value = request.get(name)
    return None if value is None else np.asarray(value).astype(dtype, copy=False)


class SamHandler(Handler):
    """``set_image`` (embeddings cached by image content, so re-prompting skips the encoder), ``predict``."""

    def one(self, request: Request) -> dict[str, np.ndarray]:
        image = self.image(request)[0]
        coords = _optional(request, "POINT_COORDS", np.float64)
        labels = _optional(request, "POINT_LABELS", np.int64)
        box = _optional(request, "BOX", np.float64)
        multi = request.get("MULTIMASK_OUTPUT")
        self.model.set_image(image)
        masks, scores, _ = self.model.predict(coords, labels, box, multimask_output=bool(multi is None or multi.all()))
        return {"MASKS": masks.astype(np.bool_), "SCORES": scores.astype(np.float32)}


def handler_for(bundle: Path, **kwargs) -> Handler:
    """The bundle's handler: its task's (:meth:`segrt.runtime.tasks.Task.serving_handler`)."""
    from ..tasks import task_for

    return task_for(read_manifest(bundle).task).serving_handler(bundle, **kwargs)
