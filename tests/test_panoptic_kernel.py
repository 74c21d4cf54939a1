"""The panoptic fusion kernel: the C++ ``panoptic_fuse`` against its NumPy twin (``fuse_reference``, the NumPy
path tests/test_panoptic.py checks against an independent loop on real photos), equal in ids, areas, bboxes and
order on random and adversarial cases, with boxes given or not; and a case worked out by hand, run through
whichever implementation is active (the Makefile's second pass runs this module on the twin).
"""

from __future__ import annotations

import numpy as np
import pytest
from segrt.runtime import kernels
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.panoptic_fusion import Categories, FusedSegment, FusionConfig, fuse, fuse_reference

pytestmark = pytest.mark.prepost
needs_native = pytest.mark.skipif(not kernels.native_available(), reason="C++ extension not built (no compiler)")

SEMANTIC = ("background", "ellipse", "rectangle", "cutout")
INSTANCE = ("__background__", "ellipse", "rectangle", "cutout")
CATS = Categories.build(SEMANTIC, INSTANCE, ["ellipse", "rectangle"])  # stuff: background 1, cutout 2


@pytest.fixture(autouse=True)
def restore_impl():
    before = kernels.active()
    yield
    kernels.use(before)


def both(*args, **kwargs):
    """``fuse`` under the C++ kernel, then under the NumPy twin."""
    out = []
    for name in ("native", "reference"):
        kernels.use(name)
        out.append(fuse(*args, **kwargs))
    return out


def assert_same(*args, **kwargs) -> tuple[np.ndarray, list[FusedSegment]]:
    (pan_c, seg_c), (pan_np, seg_np) = both(*args, **kwargs)
    np.testing.assert_array_equal(pan_c, pan_np)
    assert repr(seg_c) == repr(seg_np)  # exact (repr round-trips a float), and a NaN score equals a NaN
    return pan_c, seg_c


# -- a case worked out by hand ------------------------------------------------------------------------
def worked_case():
    """6x8: background (class 0) on the left half, cutout (class 3) on the right, one ellipse-class pixel.
    A (0.9, ellipse) rows 1-2 x cols 1-4; B (0.8, rectangle) rows 2-3 x cols 3-6 overlaps A on 2 of 8 pixels;
    C (0.7, ellipse) rows 1-2 x cols 2-3 lies wholly on A; D (0.4) is under the confidence; E (0.8, a tie with
    B) is a cutout, no thing."""
    semantic = np.zeros((6, 8), np.uint8)
    semantic[:, 4:] = 3
    semantic[5, 0] = 1
    masks = np.zeros((5, 6, 8), bool)
    masks[0, 1:3, 1:5] = True
    masks[1, 2:4, 3:7] = True
    masks[2, 1:3, 2:4] = True
    masks[3, 0:6, 0:8] = True
    masks[4, 4:6, 4:8] = True
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.8], np.float32)
    labels = np.array([1, 2, 1, 1, 3])
    return semantic, masks, scores, labels


def worked_expectation(limit: int) -> tuple[np.ndarray, list[FusedSegment]]:
    pan = np.zeros((6, 8), np.int32)
    pan[1:3, 1:5] = 1
    pan[2, 5:7] = 2
    pan[3, 3:7] = 2
    things = [FusedSegment(1, 3, 8, (1, 1, 4, 2), 0.8999999761581421),
              FusedSegment(2, 4, 6, (3, 2, 4, 2), 0.800000011920929)]
    # free pixels: background 24 - 6 (A) - 1 (B) - 1 (the ellipse pixel) = 16; cutout 24 - 2 (A) - 5 (B) = 17
    stuff = []
    if limit <= 16:
        free_left = (pan[:, :4] == 0)
        free_left[5, 0] = False
        pan[:, :4][free_left] = 3
        stuff.append(FusedSegment(3, 1, 16, (0, 0, 4, 6), None))
    if limit <= 17:
        seg_id = len(things) + len(stuff) + 1
        pan[:, 4:][pan[:, 4:] == 0] = seg_id
        stuff.append(FusedSegment(seg_id, 2, 17, (4, 0, 4, 6), None))
    return pan, things + stuff


@pytest.mark.parametrize("limit", [16, 17, 18])
@pytest.mark.parametrize("with_boxes", [True, False])
def test_worked_case_on_the_active_implementation(limit, with_boxes) -> None:
    """Stuff at exactly the area limit is kept, one pixel short it is VOID; both with and without boxes."""
    semantic, masks, scores, labels = worked_case()
    boxes = np.array([[1, 1, 4, 2], [3, 2, 6, 3], [2, 1, 3, 2], [0, 0, 7, 5], [4, 4, 7, 5]], np.float32)
    pan, segments = fuse(semantic, masks, scores, labels, CATS, FusionConfig(0.5, 0.5, limit),
                         boxes if with_boxes else None)
    want_pan, want_segments = worked_expectation(limit)
    np.testing.assert_array_equal(pan, want_pan)
    assert segments == want_segments


@needs_native
@pytest.mark.parametrize("limit", [0, 16, 17, 18])
def test_worked_case_native_equals_twin(limit) -> None:
    semantic, masks, scores, labels = worked_case()
    for boxes in (None, np.array([[1, 1, 4, 2], [3, 2, 6, 3], [2, 1, 3, 2], [0, 0, 7, 5], [4, 4, 7, 5]])):
        assert_same(semantic, masks, scores, labels, CATS, FusionConfig(0.5, 0.5, limit), boxes)


# -- adversarial cases -----------------------------------------------------------------------------------
def _square(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@needs_native
@pytest.mark.parametrize("top, kept", [(2, True), (1, False)])
def test_overlap_at_exactly_the_threshold_is_kept(top, kept) -> None:
    """B (8 pixels) lies on A by 4 of its pixels (0.5, not above overlap_thr: pasted) or by 6 (0.75: dropped)."""
    masks = np.stack([_square(8, 8, 0, 4, 0, 4), _square(8, 8, top, top + 4, 2, 4)])
    for boxes in (None, np.array([[0, 0, 3, 3], [2, top, 3, top + 3]])):
        pan, segments = assert_same(np.zeros((8, 8), np.uint8), masks, np.array([0.9, 0.8]), np.array([1, 2]), CATS,
                                    FusionConfig(0.5, 0.5, 0), boxes)
        assert [s.area for s in segments if s.score is not None] == ([16, 4] if kept else [16])


@needs_native
def test_ties_in_score_keep_the_input_order_and_nan_goes_last() -> None:
    masks = np.stack([_square(10, 10, 0, 6, 0, 6), _square(10, 10, 2, 8, 2, 8), _square(10, 10, 4, 10, 4, 10),
                      _square(10, 10, 0, 3, 7, 10)])
    scores = np.array([0.7, 0.7, np.nan, 0.7], np.float32)
    pan, segments = assert_same(np.zeros((10, 10), np.uint8), masks, scores, np.array([2, 1, 1, 2]), CATS,
                                FusionConfig(0.5, 0.9, 0))
    assert [s.area for s in segments if s.score is not None] == [36, 20, 8, 20]  # 0, 1, 3, then the NaN


@needs_native
def test_empty_masks_outside_windows_and_boxes_that_cut_the_mask() -> None:
    h, w = 20, 30
    masks = np.stack([np.zeros((h, w), bool), _square(h, w, 5, 15, 5, 15), _square(h, w, 0, 20, 20, 30),
                      _square(h, w, 2, 18, 2, 28)])
    boxes = np.array([[0, 0, 29, 19],      # an empty mask in a full box
                      [9, 9, 10, 10],      # a box cutting the mask: only the window (8..11)^2 is read
                      [31, 0, 40, 19],     # a box wholly right of the image: an empty window
                      [-50, -50, 1e6, 1e6]])  # a box far larger than the image
    semantic = (np.arange(h * w).reshape(h, w) % 4).astype(np.uint8)
    for b in (boxes, None):
        pan, segments = assert_same(semantic, masks, np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 2, 2]), CATS,
                                    FusionConfig(0.5, 0.5, 0), b)
    pan, segments = assert_same(semantic, masks, np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 2, 2]), CATS,
                                FusionConfig(0.5, 0.5, 0), boxes)
    assert segments[0] == FusedSegment(1, 3, 16, (8, 8, 4, 4), float(np.float32(0.8)))


@needs_native
def test_no_instances_all_void_and_zero_limits() -> None:
    semantic = np.repeat(np.array([0, 3, 1, 2], np.uint8), 25).reshape(10, 10)
    none = (np.zeros((0, 10, 10), bool), np.zeros(0, np.float32), np.zeros(0, np.int64))
    pan, segments = assert_same(semantic, *none, CATS, FusionConfig(0.5, 0.5, 0))
    assert [(s.category_id, s.area) for s in segments] == [(1, 25), (2, 25)]
    all_things = np.full((10, 10), 1, np.uint8)  # every pixel a thing class with no instance: all VOID
    pan, segments = assert_same(all_things, *none, CATS, FusionConfig())
    assert segments == [] and not pan.any()
    cover = np.ones((1, 10, 10), bool)  # one instance over everything: no stuff pixel left, even at limit 0
    pan, segments = assert_same(semantic, cover, np.ones(1), np.ones(1, np.int64), CATS, FusionConfig(0.5, 1.0, 0))
    assert len(segments) == 1 and (pan == 1).all()
    twice = np.ones((2, 10, 10), bool)  # at overlap 1 the second has no free pixel: no segment
    pan, segments = assert_same(semantic, twice, np.ones(2), np.ones(2, np.int64), CATS, FusionConfig(0.0, 1.0, 0))
    assert len(segments) == 1


@needs_native
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64])
def test_label_dtypes_and_labels_without_a_class(dtype) -> None:
    rng = np.random.default_rng(3)
    semantic = rng.integers(0, 4, (30, 40)).astype(dtype)
    masks = np.stack([_square(30, 40, 0, 15, 0, 20)])
    assert_same(semantic, masks, np.ones(1), np.ones(1, np.int64), CATS, FusionConfig(0.5, 0.5, 10))
    covered = semantic.copy()
    covered[0:15, 0:20] = 99  # a label with no class under an instance: never read
    assert_same(covered, masks, np.ones(1), np.ones(1, np.int64), CATS, FusionConfig(0.5, 0.5, 10))
    bad = semantic.copy()
    bad[20, 30] = 9 if np.dtype(dtype).kind == "u" else -5
    messages = []
    for name in ("native", "reference"):
        kernels.use(name)
        with pytest.raises(InvalidInputError, match="semantic labels run to") as err:
            fuse(bad, masks, np.ones(1), np.ones(1, np.int64), CATS, FusionConfig())
        messages.append(str(err.value))
    assert messages[0] == messages[1]


@needs_native
@pytest.mark.parametrize("classes, dtype", [(5, np.uint8), (16, np.uint8), (17, np.uint8), (70, np.uint8),
                                            (70, np.int16)])
def test_class_counts_on_each_side_of_the_kernels_paths(classes, dtype) -> None:
    """uint8 labels of up to 16 classes are counted class by class (and, up to 4 stuff segments, assigned so);
    up to 64 classes each class's rows and columns are marked; past that bboxes are found pixel by pixel."""
    rng = np.random.default_rng(classes)
    names = [f"c{i}" for i in range(classes)]
    cats = Categories.build(names, ["bg", "c3", "c4"], ["c3", "c4"])
    semantic = np.repeat(np.repeat(rng.integers(0, classes, (12, 16)), 5, 0), 5, 1).astype(dtype)
    masks, scores, labels, boxes = random_instances(rng, 60, 80, 12, 3)
    counts = []
    for limit in (0, 20, 50, 120, 400):
        for b in (boxes, None):
            pan, segments = assert_same(semantic, masks, scores, labels, cats, FusionConfig(0.3, 0.5, limit), b)
        counts.append(sum(s.score is None for s in segments))
    assert min(counts) <= 4 and (classes < 16 or max(counts) > 4), counts  # both sides of the 4-segment path


# -- random cases ----------------------------------------------------------------------------------------
def random_instances(rng, h, w, n, classes):
    masks = np.zeros((n, h, w), bool)
    yy, xx = np.ogrid[:h, :w]
    for i in range(n):
        kind = rng.integers(0, 4)
        cy, cx, r = rng.uniform(-5, h + 5), rng.uniform(-5, w + 5), rng.uniform(1, max(h, w) / 3)
        if kind == 0:
            masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif kind == 1:
            masks[i, max(int(cy - r), 0): int(cy + r), max(int(cx - r), 0): int(cx + r)] = True
        elif kind == 2:
            masks[i] = (rng.random((h, w)) < 0.3) & ((yy - cy) ** 2 + (xx - cx) ** 2 <= 4 * r * r)
    scores = rng.choice([0.2, 0.5, 0.6, 0.75, 0.75, 0.9, 1.0], n).astype(np.float32)  # ties on purpose
    labels = rng.integers(0, classes, n)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        ys, xs = np.nonzero(masks[i])
        if len(ys):
            boxes[i] = xs.min(), ys.min(), xs.max(), ys.max()
        boxes[i] += rng.normal(0, 1.5, 4) if rng.random() < 0.5 else 0.0  # some boxes cut their mask
    return masks, scores, labels, boxes


@needs_native
@pytest.mark.parametrize("seed", range(12))
def test_random_cases_native_equals_twin(seed) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 90)), int(rng.integers(1, 120))
    block = int(rng.integers(1, 12))
    semantic = np.repeat(np.repeat(rng.integers(0, 4, (h // block + 1, w // block + 1)), block, 0), block, 1)[:h, :w]
    semantic = semantic.astype((np.uint8, np.uint16, np.int32, np.int64)[seed % 4])
    masks, scores, labels, boxes = random_instances(rng, h, w, int(rng.integers(0, 40)), len(INSTANCE))
    free_sizes = [int(c) for c in np.bincount(semantic.ravel().astype(np.int64), minlength=4)]
    for cfg in (FusionConfig(), FusionConfig(0.0, 0.0, 0), FusionConfig(0.6, 1.0, 1), FusionConfig(0.75, 0.3, 37),
                FusionConfig(0.5, 0.5, int(rng.choice(free_sizes)))):
        for b in (boxes, None):
            assert_same(semantic, masks, scores, labels, CATS, cfg, b)


@needs_native
def test_the_benchmark_case_native_equals_twin() -> None:
    """`segrt bench --prepost`'s case: 100 discs (radius 20-100 px, boxes given) into a 1080p map of 4 classes."""
    import skimage.data

    from segrt.benchmarks.bench_prepost import FRAME, fusion_inputs

    semantic, masks, scores, labels, cats, boxes = fusion_inputs(skimage.data.astronaut(), FRAME)
    pan, segments = assert_same(semantic, masks, scores, labels, cats, FusionConfig(), boxes)
    things = sum(s.score is not None for s in segments)
    assert 50 <= things < 100 and len(segments) > things  # instances dropped by the overlap rule; stuff kept


def test_the_switch_selects_the_twin() -> None:
    kernels.use("reference")
    assert kernels._fusion_impl() is fuse_reference
    if kernels.native_available():
        kernels.use("native")
        assert kernels._fusion_impl() is not fuse_reference


def test_bad_arguments_are_typed_errors() -> None:
    semantic, masks, scores, labels = worked_case()
    with pytest.raises(InvalidInputError, match="boxes must be finite"):
        fuse(semantic, masks, scores, labels, CATS, FusionConfig(), np.full((5, 4), np.nan))
    with pytest.raises(InvalidInputError, match=r"boxes must be \(N, 4\)"):
        fuse(semantic, masks, scores, labels, CATS, FusionConfig(), np.zeros((5, 3)))
    with pytest.raises(InvalidInputError, match="integer class ids"):
        fuse(semantic.astype(np.float32), masks, scores, labels, CATS)
    with pytest.raises(InvalidInputError, match="do not cover"):
        fuse(semantic[:, :7], masks, scores, labels, CATS)


def test_bench_row_states_the_10_ms_verdict() -> None:
    from segrt.benchmarks.bench_prepost import FUSION, markdown_prepost

    def table(native_ms: float) -> str:
        stats = {"median": 2.0, "q1": 1.9, "q3": 2.1, "min": 1.8, "max": 2.2, "pairs": 5}
        row = {"kernel": f"{FUSION} (100 instances, boxes given, 4 classes, 1080p)", "native": {"p50": native_ms},
               "reference": {"p50": 2 * native_ms}, "pairs": {"reference": stats}, "speedup_vs_reference": 2.0}
        machine = {"date": "today", "cpu": "a CPU", "cores": 2, "segrt": "0", "commit": "abc"}
        return markdown_prepost({"machine": machine, "native_threads": 2, "kernels": [row], "end_to_end": []})

    assert "within 10 ms: met (native p50 10.00 ms, NumPy twin 20.0 ms)" in table(10.0)
    assert "within 10 ms: NOT met (native p50 10.01 ms" in table(10.01)
    assert "| 2.0x [1.9-2.1] | - |" in table(10.0)
