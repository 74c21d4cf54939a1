"""TensorRT engines: build options, optimisation profiles from the ONNX inputs, and the engine cache.

Everything here except :func:`build_engine` and :func:`gpu_identity` runs without TensorRT or a GPU,
and is tested so. An engine lives in ``<bundle>/engines/<key digest>/model.plan`` beside ``key.json``;
the key holds what breaks portability (ONNX sha256, precision, profiles, TensorRT version, GPU name and
compute capability, DLA core), and :func:`find_engine` never hands back an engine whose key differs:
it says which part did. Writes are atomic. ``build_engine`` and the runner in
``backends/tensorrt.py`` follow TensorRT 10's name-based API and have NOT been run on hardware here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import (
    BackendUnavailableError,
    EngineMismatchError,
    InvalidInputError,
    ModelFormatError,
)
from .manifest import replace_dir

log = logging.getLogger("segrt")
EnginePrecision = Literal["fp32", "fp16", "int8", "best"]
Shape = tuple[int, ...]
ENGINES_DIR = "engines"
PLAN = "model.plan"


@dataclass(frozen=True)
class BuildOptions:
    """``segrt build`` flags. Sizes are (H, W); profiles for every dynamic input derive from them."""

    precision: EnginePrecision = "fp16"
    min_hw: tuple[int, int] | None = None
    opt_hw: tuple[int, int] | None = None
    max_hw: tuple[int, int] | None = None
    max_batch: int = 1
    max_points: int = 16  # SAM decoder: prompt points per prompt (axis 1 of point_coords/labels)
    workspace_gb: float | None = None  # None: half the free device memory
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16", "int8", "best"):
            raise InvalidInputError(f"--precision must be fp32, fp16, int8 or best; got {self.precision!r}")
        if self.max_batch < 1 or self.max_points < 1:
            raise InvalidInputError(f"--max-batch and --max-points must be >= 1; got {self.max_batch}, {self.max_points}")
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise InvalidInputError(f"--workspace-gb must be > 0; got {self.workspace_gb}")
        sizes = [s for s in (self.min_hw, self.opt_hw, self.max_hw) if s is not None]
        if sizes and len(sizes) != 3:
            raise InvalidInputError("give --min, --opt and --max together (HxW each)")
        if sizes and not all(a <= b for lo, hi in ((self.min_hw, self.opt_hw), (self.opt_hw, self.max_hw))
                             for a, b in zip(lo, hi)):  # type: ignore[arg-type]
            raise InvalidInputError(f"need --min <= --opt <= --max per side; got {self.min_hw}, {self.opt_hw}, {self.max_hw}")
        if self.dla_core is not None:
            if self.dla_core < 0:
                raise InvalidInputError(f"--dla-core must be >= 0; got {self.dla_core}")
            if self.precision in ("fp32", "best"):
                raise InvalidInputError("DLA runs fp16 or int8 only: pass --precision fp16 or int8 with --dla-core")
        elif self.gpu_fallback:
            raise InvalidInputError("--gpu-fallback only applies with --dla-core")


@dataclass(frozen=True)
class Profile:
    name: str
    min: Shape
    opt: Shape
    max: Shape


def derive_profiles(inputs: list[tuple[str, tuple[int | str | None, ...]]], opts: BuildOptions) -> list[Profile]:
    """One (min, opt, max) per input from its ONNX shape: axis 0 (batch or prompts) from 1 to
    --max-batch, image sides from --min/--opt/--max, SAM's point axis from 1 to --max-points. A dynamic
    dimension with no rule is an error naming it, never a guess."""
    profiles = []
    for name, dims in inputs:
        if all(isinstance(d, int) and d > 0 for d in dims):
            shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
            profiles.append(Profile(name, shape, shape, shape))
            continue
        lo, mid, hi = [], [], []
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                lo.append(d), mid.append(d), hi.append(d)
            elif axis == 0:
                lo.append(1), mid.append(opts.max_batch), hi.append(opts.max_batch)
            elif axis == 1 and len(dims) in (2, 3):  # SAM's point axis: (B, N, 2) coords, (B, N) labels
                lo.append(1), mid.append(min(2, opts.max_points)), hi.append(opts.max_points)
            elif len(dims) == 4 and axis in (2, 3):
                if opts.min_hw is None:
                    raise InvalidInputError(f"input {name!r} has a dynamic {'height' if axis == 2 else 'width'}: "
                                            "give --min, --opt and --max (HxW)")
                k = axis - 2
                lo.append(opts.min_hw[k]), mid.append(opts.opt_hw[k]), hi.append(opts.max_hw[k])  # type: ignore[index]
            else:
                raise InvalidInputError(f"input {name!r} axis {axis} ({d!r}) is dynamic and segrt has no rule for it; "
                                        "re-export with that axis fixed")
        profiles.append(Profile(name, tuple(lo), tuple(mid), tuple(hi)))
    return profiles


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    precision: str
    profiles: tuple[Profile, ...]
    tensorrt: str
    gpu: str
    compute_capability: str
    dla_core: int | None = None
    version_compatible: bool = False

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineKey:
        try:
            profiles = tuple(Profile(p["name"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
                             for p in data["profiles"])
            return cls(**{**data, "profiles": profiles})
        except (KeyError, TypeError) as exc:
            raise ModelFormatError(f"engine key is malformed ({exc}); delete the engines folder to rebuild") from None

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable parts of the key that differ (what would break if the engine were loaded)."""
        out = []
        for name, mine in self.to_dict().items():
            theirs = other.to_dict()[name]
            if mine != theirs:
                out.append(f"{name}: engine has {theirs!r}, this machine/model needs {mine!r}")
        return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_engine(bundle: Path, key: EngineKey) -> Path | None:
    """The plan built for exactly ``key``, or None. Logs why each other engine in the bundle does not fit."""
    root = Path(bundle) / ENGINES_DIR
    exact = root / key.digest() / PLAN
    if exact.is_file() and (exact.parent / "key.json").is_file():
        stored = EngineKey.from_dict(json.loads((exact.parent / "key.json").read_text()))
        if stored == key:
            return exact
        raise EngineMismatchError(f"engine {exact.parent.name} is stored under the wrong key: "
                                  + "; ".join(key.differences(stored)))
    if root.is_dir():
        for other in sorted(root.glob("*/key.json")):
            diffs = key.differences(EngineKey.from_dict(json.loads(other.read_text())))
            log.info("engine %s does not fit (%s)", other.parent.name, "; ".join(diffs))
    return None


def explain_mismatch(bundle: Path, key: EngineKey) -> str:
    """Why no stored engine fits, part by part, for the error a caller raises when it may not build."""
    root = Path(bundle) / ENGINES_DIR
    lines = [f"{p.parent.name}: " + "; ".join(key.differences(EngineKey.from_dict(json.loads(p.read_text()))))
             for p in sorted(root.glob("*/key.json"))] if root.is_dir() else []
    return " | ".join(lines) if lines else "no engines built yet"


def store_engine(bundle: Path, key: EngineKey, plan: bytes, facts: dict[str, Any] | None = None) -> Path:
    """Write plan and key under a temporary folder, then rename: never a half-written engine."""
    root = Path(bundle) / ENGINES_DIR
    root.mkdir(exist_ok=True)
    final = root / key.digest()
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key.digest()}.tmp-"))
    try:
        (tmp / PLAN).write_bytes(plan)
        (tmp / "key.json").write_text(json.dumps({**key.to_dict()}, indent=2) + "\n")
        (tmp / "build.json").write_text(json.dumps(facts or {}, indent=2) + "\n")
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / PLAN


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str
    free_bytes: int = field(compare=False, default=0)


def gpu_identity(device_id: int = 0) -> GpuIdentity:
    """Name, compute capability and free memory of a CUDA device, through cuda-python (or pycuda)."""
    try:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 layout
        except ImportError:
            from cuda import cudart  # type: ignore[no-redef]
    except ImportError:
        try:
            import pycuda.driver as drv  # Jetson images often carry pycuda instead

            drv.init()
            dev = drv.Device(device_id)
            ctx = dev.make_context()
            try:
                free, _ = drv.mem_get_info()
            finally:
                ctx.pop()
            major, minor = dev.compute_capability()
            return GpuIdentity(dev.name(), f"{major}.{minor}", int(free))
        except ImportError:
            raise BackendUnavailableError("neither cuda-python nor pycuda is installed: pip install 'segrt[tensorrt]'") from None
    err, prop = cudart.cudaGetDeviceProperties(device_id)
    if int(err) != 0:
        raise BackendUnavailableError(f"no CUDA device {device_id} (cudaGetDeviceProperties error {int(err)})")
    err, free, _total = cudart.cudaMemGetInfo()
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return GpuIdentity(name, f"{prop.major}.{prop.minor}", int(free))


def workspace_bytes(opts: BuildOptions, free_bytes: int) -> int:
    """The builder's workspace: what was asked, capped by free device memory (Jetsons share it with
    the CPU), or half the free memory when nothing was asked."""
    if opts.workspace_gb is None:
        return max(free_bytes // 2, 1 << 28)
    asked = int(opts.workspace_gb * (1 << 30))
    if free_bytes and asked > free_bytes:
        log.warning("--workspace-gb %.1f exceeds the %.1f GB free on the device; capping it", opts.workspace_gb,
                    free_bytes / (1 << 30))
        return int(free_bytes * 0.9)
    return asked


def _shapes_arg(profiles: list[Profile], which: str) -> str:
    """ONNX Runtime's profile syntax: ``name:1x3x256x256,other:1x2``."""
    return ",".join(f"{p.name}:{'x'.join(str(d) for d in getattr(p, which))}" for p in profiles)


def ort_tensorrt_options(bundle: Path, inputs: list[tuple[str, tuple[int | str | None, ...]]], opts: BuildOptions,
                         free_bytes: int = 0, cuda_graph: bool = False) -> dict[str, str]:
    """The same ``segrt build`` options for ONNX Runtime's TensorRT execution provider: precision flags,
    explicit profiles for every dynamic input (the same :func:`derive_profiles`), the engine cache and
    timing cache inside the bundle (``engines/onnxruntime-trt/``), workspace, DLA. Pure: tested without
    a GPU; the provider itself has NOT been run on hardware here."""
    cache = Path(bundle) / ENGINES_DIR / "onnxruntime-trt"
    out = {
        "trt_fp16_enable": str(int(opts.precision in ("fp16", "best"))),
        # a QDQ (INT8) bundle is explicit quantization: TensorRT takes the scales from the graph, no table
        "trt_int8_enable": str(int(opts.precision in ("int8", "best"))),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(opts.timing_cache.parent if opts.timing_cache else cache),
    }
    if opts.workspace_gb is not None or free_bytes:  # else the provider's own default
        out["trt_max_workspace_size"] = str(workspace_bytes(opts, free_bytes))
    if any(not (isinstance(d, int) and d > 0) for _, dims in inputs for d in dims):
        profiles = derive_profiles(inputs, opts)
        out |= {f"trt_profile_{w}_shapes": _shapes_arg(profiles, w) for w in ("min", "opt", "max")}
    if opts.dla_core is not None:
        out |= {"trt_dla_enable": "1", "trt_dla_core": str(opts.dla_core)}
    if cuda_graph:
        out["trt_cuda_graph_enable"] = "1"
    return out
