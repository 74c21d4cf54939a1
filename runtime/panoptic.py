"""Panoptic segmentation: a semantic bundle and an instance bundle fused (:mod:`.panoptic_fusion`).

``PanopticSegmenter(semantic_bundle, instance_bundle, things=[...])(image) -> PanopticResult``; a *panoptic
bundle* (:func:`write_panoptic_bundle`) is a folder whose ``segrt.json`` has task ``panoptic`` and whose
``panoptic.json`` names the two bundles (relative to it), the things and the thresholds, so ``segrt run``,
``stream``, ``eval`` and ``info`` open it like any other bundle.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import kernels, prepost
from .backends import RunnerOptions
from .bundle import Stages
from .errors import InvalidInputError, ModelFormatError
from .image import DEFAULT_MAX_PIXELS, ImageLike, InputColor, read_image, to_display_rgb, write_image_atomic
from .instance import InstanceSegmenter
from .manifest import MANIFEST_NAME, Manifest, OutputSpec, read_manifest, replace_dir, write_json_atomic
from .panoptic_fusion import Categories, FusedSegment, FusionConfig, fuse
from .semantic import Segmenter

RECIPE_NAME = "panoptic.json"


@dataclass
class PanopticResult:
    panoptic: np.ndarray  # (H, W) int32 segment ids, 0 = VOID
    segments: list[dict[str, Any]]  # COCO panoptic segments_info (+ category_name, score for things)
    categories: tuple[dict[str, Any], ...]  # {id, name, isthing}
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.segments)

    def to_png_rgb(self) -> np.ndarray:
        """COCO panoptic's PNG encoding: id = R + 256 G + 256^2 B (H, W, 3) uint8, RGB order."""
        ids = self.panoptic.astype(np.uint32)
        return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)

    def overlay(self, image: ImageLike, alpha: float = 0.5, *, color: InputColor = "rgb",
                legend: bool = True) -> np.ndarray:
        """8-bit RGB: every segment tinted (each thing its own colour), with a key of the categories present."""
        rgb = to_display_rgb(read_image(image, color=color))
        if rgb.shape[:2] != self.panoptic.shape:
            raise InvalidInputError(f"overlay image is {rgb.shape[1]}x{rgb.shape[0]}; the result is for "
                                    f"{self.panoptic.shape[1]}x{self.panoptic.shape[0]}")
        colours = prepost.palette(len(self.segments) + 1)
        ids = self.panoptic.astype(np.uint16 if len(self.segments) < 65535 else np.uint32)
        out = kernels.overlay_labels(rgb, ids, colours, alpha)
        if legend:
            rows: dict[str, list[tuple[int, int, int]]] = {}
            for s in self.segments:
                rows.setdefault(s["category_name"], []).append(tuple(int(v) for v in colours[s["id"]]))
            prepost.draw_legend(out, [prepost.LegendEntry(n + (f" x{len(c)}" if len(c) > 1 else ""), tuple(c))
                                      for n, c in rows.items()])
        return out

    def save(self, out_dir: str | Path, stem: str, image: ImageLike | None = None, *,
             file_name: str | None = None) -> list[Path]:
        """COCO panoptic files: ``<stem>.panoptic.png``, ``<stem>.panoptic.json`` (its annotation: file_name,
        segments_info, categories) and, given ``image``, ``<stem>.overlay.jpg``; each written atomically."""
        out = Path(out_dir)
        png, js = out / f"{stem}.panoptic.png", out / f"{stem}.panoptic.json"
        write_image_atomic(png, self.to_png_rgb()[:, :, ::-1])
        write_json_atomic(js, {"file_name": png.name, "image_file_name": file_name or f"{stem}.png",
                               "height": int(self.panoptic.shape[0]), "width": int(self.panoptic.shape[1]),
                               "segments_info": self.segments, "categories": list(self.categories)})
        paths = [png, js]
        if image is not None:
            write_image_atomic(out / f"{stem}.overlay.jpg", self.overlay(image)[:, :, ::-1])
            paths.append(out / f"{stem}.overlay.jpg")
        return paths


def segment_records(segments: Sequence[FusedSegment], cats: Categories) -> list[dict[str, Any]]:
    records = []
    for s in segments:
        cat = cats.by_id(s.category_id)
        rec: dict[str, Any] = {"id": s.id, "category_id": s.category_id, "category_name": cat.name,
                               "isthing": int(cat.isthing), "iscrowd": 0, "area": s.area, "bbox": list(s.bbox)}
        if s.score is not None:
            rec["score"] = round(s.score, 6)
        records.append(rec)
    return records


def check_fusable(semantic: Manifest, instance: Manifest) -> None:
    """Refuse (``InvalidInputError``) two bundles that cannot be fused: wrong tasks, no masks, or inputs that
    do not see the same picture (different channel counts, e.g. a grayscale model beside an RGB one)."""
    if semantic.task != "semantic" or instance.task != "instance":
        raise InvalidInputError(f"--semantic needs a semantic bundle and --instance an instance bundle; got "
                                f"{semantic.task!r} and {instance.task!r}")
    if instance.detection is None or not instance.detection.masks:
        raise InvalidInputError("the instance bundle has no masks output; panoptic fusion needs instance masks")
    if semantic.input.channels != instance.input.channels:
        raise InvalidInputError(f"the semantic bundle takes {semantic.input.channels}-channel images and the "
                                f"instance bundle {instance.input.channels}-channel: they would not see the same "
                                "picture, so their outputs cannot be fused")


def fused_manifest(semantic: Manifest, cats: Categories, source: dict[str, Any]) -> Manifest:
    """The panoptic bundle's manifest: its categories as classes, the semantic bundle's input policy."""
    return Manifest(task="panoptic", architecture="panoptic-fpn-fusion", classes=cats.names, input=semantic.input,
                    output=OutputSpec(name="panoptic"), model_file=RECIPE_NAME, precision=semantic.precision,
                    source=source)


class PanopticSegmenter:
    """Loads a semantic and an instance bundle; ``pan(image)`` returns a :class:`PanopticResult`.

    ``things``: the instance classes fused as things, by name (None: every instance class but the first,
    torchvision's background); semantic classes of the same names are not stuff."""

    task = "panoptic"

    def __init__(self, semantic_bundle: str | Path, instance_bundle: str | Path, things: Sequence[str] | None = None,
                 config: FusionConfig = FusionConfig(), device: str = "auto", *, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, options: RunnerOptions | None = None,
                 manifest: Manifest | None = None) -> None:
        sem_m, inst_m = read_manifest(semantic_bundle), read_manifest(instance_bundle)
        check_fusable(sem_m, inst_m)
        self.categories = Categories.build(sem_m.classes, inst_m.classes, things)
        self.config = config
        self.semantic = Segmenter(semantic_bundle, device, threads=threads, max_pixels=max_pixels, options=options)
        self.instance = InstanceSegmenter(instance_bundle, self.semantic.device, threads=threads,
                                          max_pixels=max_pixels, options=options,
                                          score_threshold=self._instance_floor(inst_m, config))
        self.max_pixels = max_pixels
        self.manifest = manifest or fused_manifest(sem_m, self.categories, {
            "semantic": str(semantic_bundle), "instance": str(instance_bundle)})

    @staticmethod
    def _instance_floor(inst: Manifest, config: FusionConfig) -> float:
        floor = inst.detection.graph_score_threshold if inst.detection else 0.0
        if config.confidence_thr < floor:
            raise InvalidInputError(f"confidence_thr {config.confidence_thr} is below the instance graph's own "
                                    f"score floor {floor}: those detections never leave the graph")
        return config.confidence_thr

    @property
    def runner(self):
        """The semantic bundle's runner (``segrt eval``'s backend column); :attr:`runners` has both."""
        return self.semantic.runner

    @property
    def runners(self) -> dict[str, Any]:
        return {"semantic": self.semantic.runner, "instance": self.instance.runner}

    @property
    def device(self) -> str:
        return self.semantic.device

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.categories.names

    def close(self) -> None:
        self.semantic.close()
        self.instance.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def combine(self, label_map: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                masks: np.ndarray, timings: dict[str, float] | None = None) -> PanopticResult:
        pan, segments = fuse(label_map, masks, scores, labels, self.categories, self.config, boxes)
        cats = tuple(c.to_json() for c in self.categories.categories)
        return PanopticResult(pan, segment_records(segments, self.categories), cats, dict(timings or {}))

    def __call__(self, image: ImageLike, *, color: InputColor = "rgb") -> PanopticResult:
        arr = read_image(image, color=color, max_pixels=self.max_pixels)
        if arr.size == 0:
            raise InvalidInputError("the image is empty")
        sem = self.semantic(arr, color=color)
        inst = self.instance(arr, color=color)
        t0 = time.perf_counter()
        res = self.combine(sem.label_map, inst.boxes, inst.scores, inst.labels, inst.masks)
        res.timings = {k: sem.timings.get(k, 0.0) + inst.timings.get(k, 0.0) for k in ("pre", "infer", "post")}
        res.timings["fuse"] = (time.perf_counter() - t0) * 1e3
        res.timings["post"] += res.timings["fuse"]
        return res


# -- panoptic bundles ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """``panoptic.json``: the two bundles (relative to the panoptic bundle, or absolute), things, thresholds."""

    semantic: str
    instance: str
    things: tuple[str, ...]
    config: FusionConfig

    def to_json(self) -> dict[str, Any]:
        return {"semantic": self.semantic, "instance": self.instance, "things": list(self.things),
                **asdict(self.config)}

    @classmethod
    def read(cls, bundle: Path) -> Recipe:
        path = bundle / RECIPE_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            cfg = FusionConfig(float(data["confidence_thr"]), float(data["overlap_thr"]), int(data["stuff_area_limit"]))
            return cls(str(data["semantic"]), str(data["instance"]), tuple(str(t) for t in data["things"]), cfg)
        except FileNotFoundError:
            raise ModelFormatError(f"panoptic bundle {str(bundle)!r} has no {RECIPE_NAME}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{path} is malformed ({type(exc).__name__}: {exc})") from None


def load_panoptic_bundle(bundle: str | Path, device: str = "auto", *, score_threshold: float | None = None,
                         **kwargs: Any) -> PanopticSegmenter:
    """A :class:`PanopticSegmenter` from a panoptic bundle; ``score_threshold`` overrides its confidence_thr."""
    bundle = Path(bundle)
    manifest, recipe = read_manifest(bundle), Recipe.read(bundle)
    cfg = recipe.config
    if score_threshold is not None:
        cfg = FusionConfig(score_threshold, cfg.overlap_thr, cfg.stuff_area_limit)
    return PanopticSegmenter(bundle / recipe.semantic, bundle / recipe.instance, recipe.things, cfg, device,
                             manifest=manifest, **kwargs)


def write_panoptic_bundle(out: str | Path, semantic_bundle: str | Path, instance_bundle: str | Path,
                          things: Sequence[str] | None = None, config: FusionConfig = FusionConfig(), *,
                          force: bool = False) -> Path:
    """A panoptic bundle at ``out`` naming the two bundles; checked (fusable, things known) before anything is
    written, and written whole or not at all. An existing ``out`` is refused unless ``force``."""
    out = Path(out)
    if out.exists() and not force:
        raise InvalidInputError(f"output {str(out)!r} already exists; pass --force to replace it")
    sem_m, inst_m = read_manifest(semantic_bundle), read_manifest(instance_bundle)
    check_fusable(sem_m, inst_m)
    cats = Categories.build(sem_m.classes, inst_m.classes, things)
    thing_names = tuple(c.name for c in cats.categories if c.isthing)
    sem_rel, inst_rel = (os.path.relpath(Path(p).resolve(), out.resolve()) for p in (semantic_bundle, instance_bundle))
    recipe = Recipe(sem_rel, inst_rel, thing_names, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write_json_atomic(tmp / RECIPE_NAME, recipe.to_json())
        write_json_atomic(tmp / MANIFEST_NAME, fused_manifest(sem_m, cats, recipe.to_json()).to_dict())
        replace_dir(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class PanopticStages(Stages):
    """:class:`PanopticSegmenter`'s steps for ``segrt stream``: both networks on the worker, fusion in post."""

    model: PanopticSegmenter

    def pre(self, frame):
        sem, inst = self.model.semantic, self.model.instance
        tensor, frames = sem.preprocess([sem.prepare(frame)])
        feeds, inst_frame = inst.preprocess(inst.prepare(frame))
        return (tensor, feeds), (frames[0], inst_frame)

    def infer(self, model, payload):
        tensor, feeds = payload
        return model.semantic.infer(tensor), model.instance.infer(feeds)

    def post(self, raw, ctx):
        scores, outputs = raw
        labels = self.model.semantic.postprocess(scores[0], ctx[0])
        boxes, det_scores, det_labels, masks = self.model.instance.postprocess(outputs, ctx[1])
        return self.model.combine(labels, boxes, det_scores, det_labels, masks)
