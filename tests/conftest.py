"""Shared fixtures: real photos, seeded checkpoints and the bundles exported from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ._trt_lean import lean_trt  # noqa: E402, F401  (fixture: the real TensorRT lean bindings, where installed)

DATA = Path(__file__).parent / "data"
PPOCR = DATA / "ppocr_v4_det.onnx"
NUCLEI = Path(__file__).parents[1] / "benchmarks" / "data" / "nuclei_img2d.tif"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real CC0 photos of different sizes and aspect ratios."""
    import skimage.data as d

    return {"astronaut": d.astronaut(), "coffee": d.coffee(), "chelsea": d.chelsea(), "camera": d.camera()}


@dataclass
class Exported:
    bundle: Path
    module: object  # the torch module the checkpoint came from
    checkpoint: Path
    stride: int
    in_channels: int
    intensity: str = "dtype"


def recalibrate_batchnorm(module, in_channels: int) -> None:
    """Re-estimate BatchNorm statistics on real photos so a seeded model's logits vary across an
    image (plain random init often predicts one class everywhere, which makes parity meaningless)."""
    import skimage.data as d
    import torch

    crops = [d.astronaut()[:384, :384], d.coffee()[:384, 100:484], d.rocket()[:384, 128:512], d.chelsea()[:288, :384]]
    batch = np.stack([c[:288, :384] for c in crops]).astype(np.float32) / 255.0
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    module.train()
    with torch.no_grad():
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        module(x.mean(1, keepdim=True) if in_channels == 1 else x)
    module.eval()


def export_seeded(tmp: Path, arch: str, encoder: str, classes: int, in_channels: int = 3, intensity: str = "dtype") -> Exported:
    """Build a seeded model, save its checkpoint, export that checkpoint through the public API."""
    import torch

    from segrt.export.exporter import build_module, export_model
    from segrt.export.models import get_spec
    from segrt.export.spec import ExportConfig

    spec = get_spec(arch)
    cfg = ExportConfig(architecture=arch, encoder=encoder, classes=classes, in_channels=in_channels, seed=7)
    module, _ = build_module(spec, cfg)
    recalibrate_batchnorm(module, in_channels)
    ckpt = tmp / f"{arch}.pth"
    torch.save(module.state_dict(), ckpt)
    cfg = ExportConfig(
        architecture=arch, encoder=encoder, classes=classes, in_channels=in_channels, weights=ckpt, intensity=intensity
    )
    export_model(cfg, tmp / arch)
    return Exported(tmp / arch, module, ckpt, spec.stride, in_channels, intensity)


@pytest.fixture(scope="session")
def seeded(tmp_path_factory):
    """``export_seeded`` once per session for each set of arguments, so the export tests and the CLI's
    export-then-run test share one seeded checkpoint and bundle (read-only: copy before changing one)."""
    made: dict[tuple, Exported] = {}

    def get(arch: str, encoder: str, classes: int, in_channels: int = 3, intensity: str = "dtype") -> Exported:
        key = (arch, encoder, classes, in_channels, intensity)
        if key not in made:
            made[key] = export_seeded(tmp_path_factory.mktemp(arch), *key)
        return made[key]

    return get


def torch_reference(ex: Exported, image: np.ndarray) -> np.ndarray:
    """PyTorch's label map with preprocessing written in torch, independently of segrt's NumPy code."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(image.astype(np.float32))
    if x.ndim == 2:
        x = x[:, :, None]
    if ex.intensity == "minmax":
        x = (x - x.min()) / (x.max() - x.min())
    else:
        x = x / float(np.iinfo(image.dtype).max)
    if ex.in_channels == 1:
        mean, std = torch.tensor([sum(IMAGENET_MEAN) / 3]), torch.tensor([sum(IMAGENET_STD) / 3])
    else:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    x = ((x - mean) / std).permute(2, 0, 1)[None]
    h, w = image.shape[:2]
    H, W = math.ceil(h / ex.stride) * ex.stride, math.ceil(w / ex.stride) * ex.stride
    x = F.pad(x, (0, W - w, 0, H - h))
    with torch.no_grad():
        logits = ex.module(x)
    return logits[0, :, :h, :w].argmax(0).numpy()


def conv_onnx(path: Path, *, hw: tuple[int, int] | None = None, layout: str = "nchw", classes: int = 3, seed: int = 0) -> np.ndarray:
    """Write a small real ONNX network (3x3 conv, ReLU, 1x1 conv) and return its first conv weight.

    ``hw`` fixes the input size; ``layout="nhwc"`` wraps it in transposes, as TF-converted models are.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (classes, 8, 1, 1)).astype(np.float32)
    H, W = hw if hw else ("h", "w")
    shape_in = [1, 3, H, W] if layout == "nchw" else [1, H, W, 3]
    shape_out = [1, classes, H, W] if layout == "nchw" else [1, H, W, classes]
    nodes = []
    src = "image"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["image"], ["x_nchw"], perm=[0, 3, 1, 2]))
        src = "x_nchw"
    nodes += [
        helper.make_node("Conv", [src, "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["scores" if layout == "nchw" else "s_nchw"]),
    ]
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["s_nchw"], ["scores"], perm=[0, 2, 3, 1]))
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, shape_out)],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w1


@dataclass
class Trained:
    """A fixture trained for a short run: its checkpoint, eager module, bundle and validation folder."""

    bundle: Path
    module: object
    checkpoint: Path
    val: Path
    metrics: dict


from .prepare_fixtures import QUICK  # noqa: E402  (the quick recipes; `make test` trains them before pytest)


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    """Where the quick fixtures are trained: $SEGRT_TEST_CACHE to reuse them across runs, else a temp dir."""
    import os

    env = os.environ.get("SEGRT_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("fixtures")


def train_quick(root: Path, name: str) -> Trained:
    import torch

    from segrt.benchmarks.fixture_training import build_model
    from segrt.benchmarks.fixtures import build_fixture, export_fixture, get_recipe

    recipe = get_recipe(name).quick(**QUICK[name])
    fixture = build_fixture(recipe, root)
    bundle = export_fixture(fixture)
    module = build_model(recipe)  # the family's own model (training-only settings do not act in eval mode)
    module.load_state_dict(torch.load(fixture.checkpoint, map_location="cpu", weights_only=True))
    return Trained(bundle, module.eval(), fixture.checkpoint, fixture.val_dir, fixture.metrics)


@pytest.fixture(scope="session")
def maskrcnn(fixture_root: Path) -> Trained:
    return train_quick(fixture_root, "maskrcnn")


@pytest.fixture(scope="session")
def unet_trained(fixture_root: Path) -> Trained:
    return train_quick(fixture_root, "unet")


@dataclass
class SamExport:
    bundle: Path
    model: object  # segment-anything's Sam with the same (seeded) weights
    checkpoint: Path


@pytest.fixture(scope="session")
def sam_tiny(tmp_path_factory) -> SamExport:
    """The reduced SAM (segment-anything's modules, 2 blocks of width 64), seeded, saved as a
    checkpoint and exported from that checkpoint through the public API."""
    import torch

    from segrt.export.sam_export import build, export_sam

    tmp = tmp_path_factory.mktemp("sam")
    model, _ = build("tiny", None, seed=3)
    ckpt = tmp / "sam_tiny.pth"
    torch.save(model.state_dict(), ckpt)
    export_sam("tiny", ckpt, tmp / "bundle")
    return SamExport(tmp / "bundle", model, ckpt)
