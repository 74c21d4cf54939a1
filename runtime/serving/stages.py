"""segrt's pre- and post-processing as the two python-backend steps of a GPU ensemble
(``segrt triton``): IMAGE (and prompts) -> the network's input tensors; the network's outputs -> the
contract's results. NumPy only, reusing the runtime's own functions, so the ensemble answers what
``segrt run`` answers. Each stage class names the tensors it passes between steps (``links``)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from .. import kernels, prepost
from ..errors import InvalidInputError
from ..image import DEFAULT_MAX_PIXELS, to_channels
from ..instance import MIN_RESIZED_SIDE, InstanceSegmenter
from ..manifest import Manifest
from ..sam import Embedding, SamPredictor, to_uint8_rgb, upscale_taps
from .contract import Tensor, contract_for
from .handlers import NUMPY, Request, check_image

ORIG_HW = Tensor("ORIG_HW", "TYPE_INT64", (2,))


class Stages:
    #: what the pre step hands the post step past the networks (INT64 [2] each)
    links: ClassVar[tuple[str, ...]] = ("ORIG_HW",)

    def __init__(self, manifest: Manifest, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.manifest, self.max_pixels = manifest, max_pixels
        self.contract = contract_for(manifest)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """``BundleModel.prepare`` for an array: the model's channels and colour order."""
        arr = to_channels(image, self.manifest.input.channels)
        return arr[:, :, ::-1] if self.manifest.input.color == "bgr" else arr

    def images(self, request: Request) -> np.ndarray:
        return check_image(request.get("IMAGE"), self.contract.batched, self.max_pixels)


class SemanticStages(Stages):
    def pre(self, request: Request) -> dict[str, np.ndarray]:
        images = [self.prepare(im) for im in self.images(request)]
        tensor, _ = prepost.preprocess(images, self.manifest.input)
        hw = np.array([im.shape[:2] for im in images], np.int64)
        return {self.manifest.input.name: tensor, "ORIG_HW": hw}

    def post(self, request: Request) -> dict[str, np.ndarray]:
        out = request[self.manifest.output.name]
        if out.ndim == 3:  # Segmenter.infer: one score channel, or NHWC scores
            out = out[:, None]
        elif self.manifest.output.layout == "nhwc":
            out = out.transpose(0, 3, 1, 2)
        maps = []
        for scores, (h, w) in zip(out, request["ORIG_HW"].tolist()):
            frame = prepost.plan_frame(h, w, self.manifest.input)
            maps.append(prepost.labels_from_scores(scores, frame, self.manifest.output, self.manifest.num_classes))
        return {"LABELS": np.stack(maps).astype(NUMPY[self.contract.outputs[0].dtype])}


class InstanceStages(Stages):
    def pre(self, request: Request) -> dict[str, np.ndarray]:
        image = self.prepare(self.images(request)[0])
        frame = prepost.plan_frame(image.shape[0], image.shape[1], self.manifest.input)
        h, w = frame.content[2:]
        if min(h, w) < MIN_RESIZED_SIDE:
            raise InvalidInputError(f"image is {image.shape[1]}x{image.shape[0]}: resized for this model it would be "
                                    f"{w}x{h}, below the {MIN_RESIZED_SIDE}-pixel minimum side")
        tensor, _ = prepost.preprocess([image], self.manifest.input)
        det = self.manifest.detection
        return {self.manifest.input.name: tensor, det.size_input: np.array([h, w], np.int64),
                "ORIG_HW": np.array(image.shape[:2], np.int64)}

    def post(self, request: Request) -> dict[str, np.ndarray]:
        det = self.manifest.detection
        h, w = request["ORIG_HW"].tolist()
        frame = prepost.plan_frame(h, w, self.manifest.input)
        # InstanceSegmenter.postprocess reads only these two attributes: the same filter, scaling, paste
        view = SimpleNamespace(score_threshold=det.score_threshold, detection=det)
        boxes, scores, labels, masks = InstanceSegmenter.postprocess(view, tuple(request[n] for n in det.outputs), frame)
        rles = json.dumps(prepost.rle_encode(masks)).encode()
        return {"BOXES": boxes.reshape(-1, 4), "SCORES": scores, "CLASSES": labels,
                "MASKS_RLE": np.frombuffer(rles, np.uint8)}


class _Prompts(SamPredictor):
    """SamPredictor's preprocessing and prompt encoding without its two runners."""

    def __init__(self, manifest: Manifest) -> None:  # super().__init__ would open the graphs
        self.manifest, self.spec = manifest, manifest.sam
        self.image_size = manifest.input.size[0] if manifest.input.size else 1024
        self._mean = np.asarray(manifest.input.mean, np.float32) * 255.0
        self._std = np.asarray(manifest.input.std, np.float32) * 255.0
        self.timings, self._embedding = {}, None


class SamStages(Stages):
    links = ("ORIG_HW", "INPUT_HW")

    def __init__(self, manifest: Manifest, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(manifest, max_pixels)
        self.prompts = _Prompts(manifest)

    def pre(self, request: Request) -> dict[str, np.ndarray]:
        rgb = to_uint8_rgb(self.images(request)[0])
        x, input_hw = self.prompts.preprocess(rgb)
        self.prompts._embedding = Embedding(np.empty(0, np.float32), input_hw, rgb.shape[:2])
        coords, labels, box = (request.get(n) for n in ("POINT_COORDS", "POINT_LABELS", "BOX"))
        coords, labels = self.prompts.encode_prompts(
            None if coords is None else coords[None].astype(np.float64), None if labels is None else labels[None],
            None if box is None else box.reshape(1, 4).astype(np.float64))
        s = self.manifest.sam.low_res_size
        return {self.manifest.input.name: x, "point_coords": coords, "point_labels": labels,
                "mask_input": np.zeros((1, 1, s, s), np.float32), "has_mask_input": np.zeros(1, np.float32),
                "ORIG_HW": np.array(rgb.shape[:2], np.int64), "INPUT_HW": np.array(input_hw, np.int64)}

    def post(self, request: Request) -> dict[str, np.ndarray]:
        multi = request.get("MULTIMASK_OUTPUT")
        pick = slice(1, None) if multi is None or multi.all() else slice(0, 1)
        low_res, iou = request["low_res_masks"][0, pick], request["iou_predictions"][0, pick]
        taps = upscale_taps(low_res.shape[1:], tuple(request["INPUT_HW"].tolist()),
                            tuple(request["ORIG_HW"].tolist()), self.prompts.image_size)
        masks, _ = kernels.upsample_threshold(low_res, *taps, self.manifest.sam.mask_threshold)
        return {"MASKS": masks.astype(np.bool_), "SCORES": iou.astype(np.float32)}


def stages_for(manifest: Manifest, **kwargs) -> Stages:
    """The bundle's pre/post steps: its task's (:meth:`segrt.runtime.tasks.Task.serving_stages`)."""
    from ..tasks import task_for

    return task_for(manifest.task).serving_stages(manifest, **kwargs)
