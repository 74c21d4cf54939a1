"""The overlay's class-colour legend: drawn in the top-right corner for the classes present only, in
the colours the overlay paints, and nothing outside its box changes."""

from __future__ import annotations

import numpy as np
import pytest

from segrt.runtime import prepost
from segrt.runtime.instance import InstanceResult
from segrt.runtime.semantic import SegmentationResult

NAMES = ("background", "sky", "road", "car", "person")

# the NumPy-twin pass (SEGRT_PREPOST=reference) runs these: their results go through the pre/post kernels
pytestmark = pytest.mark.prepost


def _outside(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether ``a`` and ``b`` are equal everywhere outside ``box`` (x, y, width, height)."""
    x, y, w, h = box
    keep = np.ones(a.shape[:2], bool)
    keep[y : y + h, x : x + w] = False
    return bool(np.array_equal(a[keep], b[keep]))


def _swatch_centre(lay: prepost.LegendLayout, row: int) -> tuple[int, int]:
    x, y = lay.box[:2]
    return y + lay.pad + row * lay.row_h + lay.swatch // 2, x + lay.pad + lay.swatch // 2


def _labels(photo: np.ndarray) -> np.ndarray:
    labels = np.zeros(photo.shape[:2], np.uint8)
    labels[200:, :] = 2
    labels[50:120, 100:300] = 3
    return labels


def test_semantic_legend_names_the_classes_present_in_their_colours(photos) -> None:
    image = photos["coffee"]  # 400x600
    res = SegmentationResult(_labels(image), NAMES)
    plain, keyed = res.overlay(image, legend=False), res.overlay(image)
    assert np.array_equal(plain, prepost.overlay_labels(image, res.label_map, len(NAMES)))
    entries = prepost.semantic_legend(res.label_map, NAMES)
    assert [e.name for e in entries] == ["road", "car"]  # not the background, not the absent sky and person
    lay = prepost.legend_layout(image.shape[:2], entries)
    assert lay is not None
    x, y, w, h = lay.box
    assert x + w < image.shape[1] and x > image.shape[1] // 2 and y < 10  # top-right corner, inside the image
    assert _outside(plain, keyed, lay.box) and not np.array_equal(plain, keyed)
    colours = prepost.palette(len(NAMES))
    for row, cid in enumerate((2, 3)):
        assert keyed[_swatch_centre(lay, row)].tolist() == colours[cid].tolist()


def test_the_legend_scales_with_the_image_and_skips_tiny_ones(photos) -> None:
    entries = prepost.semantic_legend(_labels(photos["coffee"]), NAMES)
    small, large = prepost.legend_layout((120, 160), entries), prepost.legend_layout((1080, 1920), entries)
    assert small is not None and large is not None and large.row_h > small.row_h
    assert small.box[0] >= 0 and small.box[1] + small.box[3] <= 120
    assert prepost.legend_layout((63, 500), entries) is None and prepost.legend_layout((400, 600), []) is None
    tiny = np.zeros((40, 60, 3), np.uint8)
    labels = np.full((40, 60), 2, np.uint8)
    res = SegmentationResult(labels, NAMES)
    assert np.array_equal(res.overlay(tiny), res.overlay(tiny, legend=False))


def test_background_only_draws_no_legend(photos) -> None:
    image = photos["chelsea"]
    res = SegmentationResult(np.zeros(image.shape[:2], np.uint8), NAMES)
    assert np.array_equal(res.overlay(image), image)


def test_many_classes_and_long_names_fit_inside_the_image() -> None:
    names = ("bg", *(f"a class name far too long for a small picture, number {i}" for i in range(1, 40)))
    labels = np.arange(40, dtype=np.uint8).repeat(5)[None, :].repeat(100, axis=0)  # 100x200, all 40 classes
    entries = prepost.semantic_legend(labels, names)
    assert len(entries) == 39
    lay = prepost.legend_layout(labels.shape, entries)
    assert lay is not None and lay.rows[-1].name.startswith("+") and lay.rows[-1].name.endswith(" more")
    assert len(lay.rows) < 39 and all(r.name.endswith("..") for r in lay.rows[:-1])
    x, y, w, h = lay.box
    assert x >= 0 and y >= 0 and x + w <= 200 and y + h <= 100
    image = np.full((100, 200, 3), 128, np.uint8)
    keyed = SegmentationResult(labels, names).overlay(image)
    assert _outside(keyed, SegmentationResult(labels, names).overlay(image, legend=False), lay.box)


def test_labels_beyond_the_class_names_are_named_by_number() -> None:
    labels = np.zeros((100, 100), np.uint8)
    labels[:5, :5] = 7
    assert [e.name for e in prepost.semantic_legend(labels, NAMES)] == ["7"]


def _instances(hw: tuple[int, int]) -> InstanceResult:
    masks = np.zeros((3, *hw), bool)
    masks[0, 250:300, 50:150] = True
    masks[1, 300:350, 200:260] = True
    masks[2, 220:260, 400:500] = True
    boxes = np.array([[50, 250, 150, 300], [200, 300, 260, 350], [400, 220, 500, 260]], np.float32)
    return InstanceResult(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.array([3, 4, 3]), masks, NAMES)


def test_instance_legend_per_class_with_its_instances_colours(photos) -> None:
    image = photos["coffee"]
    res = _instances(image.shape[:2])
    entries = prepost.instance_legend(res.labels, NAMES)
    colours = prepost.palette(4)
    assert [e.name for e in entries] == ["car x2", "person"]
    assert entries[0].colours == (tuple(colours[1].tolist()), tuple(colours[3].tolist()))
    assert entries[1].colours == (tuple(colours[2].tolist()),)
    plain, keyed = res.overlay(image, legend=False), res.overlay(image)
    lay = prepost.legend_layout(image.shape[:2], entries)
    assert lay is not None and _outside(plain, keyed, lay.box) and not np.array_equal(plain, keyed)
    assert keyed[_swatch_centre(lay, 1)].tolist() == colours[2].tolist()
    empty = InstanceResult(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                           np.zeros((0, *image.shape[:2]), bool), NAMES)
    assert np.array_equal(empty.overlay(image), image)


@pytest.mark.parametrize("shape", [(64, 64), (65, 300), (480, 64), (2000, 3000)])
def test_draw_legend_changes_only_its_box(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    entries = [prepost.LegendEntry("road", ((128, 0, 0),)), prepost.LegendEntry("car", ((0, 128, 0), (0, 0, 128)))]
    out = image.copy()
    box = prepost.draw_legend(out, entries)
    assert box is not None and box == prepost.legend_layout(shape, entries).box  # type: ignore[union-attr]
    assert _outside(image, out, box) and not np.array_equal(image, out)
