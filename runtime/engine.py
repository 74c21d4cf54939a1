"""TensorRT engines: build options, optimisation profiles from the ONNX inputs, and the one engine cache.

An engine lives in ``<bundle>/engines/<key digest>/model.plan`` beside ``key.json`` and ``build.json``.
The key (:class:`EngineKey`) holds what breaks an engine: the model file's name and the digest of its
bytes *and* its external data (:func:`..onnx_files.model_digest`), the precision its graph carries,
the optimisation profiles, the TensorRT version, GPU name, compute capability, DLA core (and GPU
fallback), version compatibility and whether the lean runtime was left out of the plan.
:func:`resolve_engine` is the only matcher (``segrt build`` and both TensorRT runners use it); it never
hands back an engine whose key does not fit and says, in one line, what differs. Writes are atomic.

Which plan a TensorRT runtime of version R may load (:func:`version_fit`), from NVIDIA's documentation:
an ordinary plan needs R equal to the version that built it; a ``--version-compatible`` plan, which
carries a lean runtime, runs on R >= its build version (built with 8.6 or later; "engines built with
TensorRT 10 work with TensorRT 11", Engine Compatibility, TensorRT 11.1 docs); one built with
``--exclude-lean-runtime`` as well runs only with the lean runtime of the version that built it
(``IRuntime::loadRuntime``, NvInferRuntime.h, TensorRT 11.1). The lean runtime (``lean=True``) runs
version-compatible plans only.

Only :func:`gpu_identity` and the build itself need a GPU; the rest is tested on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .errors import BackendUnavailableError, InvalidInputError, ModelFormatError
from .gpu import GpuIdentity, gpu_identity  # noqa: F401  (re-exported: callers use engine.gpu_identity)
from .manifest import replace_dir
from .onnx_files import model_digest

log = logging.getLogger("segrt")
EnginePrecision = Literal["fp32", "fp16", "int8", "best"]
Shape = tuple[int, ...]
ENGINES_DIR = "engines"
PLAN = "model.plan"
#: ``segrt build``'s image sides when a caller gives none (the runner's build on first use)
DEFAULT_SIDES = {"min_hw": (256, 256), "opt_hw": (512, 512), "max_hw": (1024, 1024)}


@dataclass(frozen=True)
class BuildOptions:
    """``segrt build`` flags. Sizes are (H, W); profiles for every dynamic input derive from them.

    ``precision`` names the graph the engine is built from, never a builder flag: fp32 the bundle's FP32
    graph, fp16 an FP16 graph (the bundle's own or its gated FP16 variant), int8 a Q/DQ graph; ``best``
    is the lowest precision among the gated graphs already present (see ``engine_build.concrete``)."""

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
    exclude_lean_runtime: bool = False
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
        if self.exclude_lean_runtime and not self.version_compatible:
            raise InvalidInputError("--exclude-lean-runtime only applies with --version-compatible")


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
    model_file: str
    model_sha256: str  # the ONNX file and its external data (onnx_files.model_digest)
    precision: str  # the graph's: fp32, fp16 (own graph or FP16 variant), int8 (Q/DQ)
    profiles: tuple[Profile, ...]
    tensorrt: str
    gpu: str
    compute_capability: str
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    exclude_lean_runtime: bool = False

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
            raise ModelFormatError(f"engine key is malformed or from an older segrt ({exc}); rebuild with "
                                   "`segrt build --force`") from None

    def differences(self, other: EngineKey, skip: tuple[str, ...] = ()) -> list[str]:
        """The parts where the stored key ``other`` differs from this (needed) one: ``part: engine has X,
        needed Y``."""
        theirs = other.to_dict()
        short = {"model_sha256": lambda v: v[:12]}  # a digest: enough to tell two exports apart
        return [f"{name}: engine has {short.get(name, repr)(theirs[name])}, needed {short.get(name, repr)(mine)}"
                for name, mine in self.to_dict().items() if name not in skip and mine != theirs[name]]


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def version_fit(key: EngineKey, runtime_version: str, lean: bool) -> str | None:
    """None when a TensorRT runtime of ``runtime_version`` (the lean one when ``lean``) can load the plan
    ``key`` describes, else why not (the rule is in this module's docstring)."""
    if lean and not key.version_compatible:
        return "not version-compatible (the lean runtime loads only plans built with --version-compatible)"
    if _version(key.tensorrt) == _version(runtime_version):
        return None
    if not key.version_compatible:
        return f"tensorrt: engine has {key.tensorrt!r}, needed {runtime_version!r} (not version-compatible)"
    if key.exclude_lean_runtime:
        return (f"tensorrt: engine has {key.tensorrt!r} without its lean runtime, which only a TensorRT "
                f"{key.tensorrt} lean runtime loads; this one is {runtime_version!r}")
    if _version(key.tensorrt) < (8, 6) or _version(runtime_version) < _version(key.tensorrt):
        return (f"tensorrt: version-compatible engine has {key.tensorrt!r}, which a TensorRT {runtime_version} "
                "runtime cannot load (only the same or a later version can)")
    return None


def sha256_file(path: Path) -> str:
    """sha256 of one file's bytes (the quantizer's source checksum; engine keys use ``model_digest``)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def stored_engines(bundle: Path, model_file: str) -> list[tuple[EngineKey, Path]]:
    """The engines in the bundle's cache built from ``model_file``, sorted by digest. A folder whose key is
    unreadable, from an older segrt, or does not hash to the folder's name is skipped with a log line."""
    out = []
    for key_file in sorted((Path(bundle) / ENGINES_DIR).glob("*/key.json")):
        try:
            key = EngineKey.from_dict(json.loads(key_file.read_text()))
        except (ModelFormatError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.info("engine %s skipped: %s", key_file.parent.name, exc)
            continue
        if key.digest() != key_file.parent.name or not (key_file.parent / PLAN).is_file():
            log.info("engine %s skipped: its key does not match its folder, or it has no plan", key_file.parent.name)
            continue
        if key.model_file == model_file:
            out.append((key, key_file.parent / PLAN))
    return out


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


def engine_key(model_path: Path, opts: BuildOptions, runtime_version: str, gpu: GpuIdentity,
               digest: str | None = None) -> EngineKey:
    """The key an engine built from ``model_path`` (its graph for ``opts.precision``) with ``opts`` has."""
    from .engine_build import onnx_inputs

    if opts.precision == "best":
        raise InvalidInputError("resolve --precision best to fp32, fp16 or int8 before making a key")
    model_path = Path(model_path)
    return EngineKey(model_file=model_path.name, model_sha256=digest or model_digest(model_path),
                     precision=opts.precision, profiles=tuple(derive_profiles(onnx_inputs(model_path), opts)),
                     tensorrt=runtime_version, gpu=gpu.name, compute_capability=gpu.compute_capability,
                     dla_core=opts.dla_core, gpu_fallback=opts.gpu_fallback,
                     version_compatible=opts.version_compatible, exclude_lean_runtime=opts.exclude_lean_runtime)


_PRECISION_RANK = {"int8": 0, "fp16": 1, "fp32": 2}


def _preference(key: EngineKey, runtime_version: str) -> tuple[Any, ...]:
    """The order :func:`resolve_engine` picks in when no options are given (smallest first)."""
    volume = sum(math.prod(p.max) for p in key.profiles)
    return (key.dla_core is not None, _version(key.tensorrt) != _version(runtime_version),
            _PRECISION_RANK.get(key.precision, 3), -volume, key.digest())


def _misfit(key: EngineKey, want: EngineKey | None, digest: str, gpu: GpuIdentity, runtime_version: str,
            lean: bool) -> list[str]:
    """Why the stored ``key`` does not fit (empty: it fits). ``want`` None: any options will do."""
    if want is not None:
        diffs = want.differences(key, skip=("tensorrt",))
    else:
        needed = replace(key, model_sha256=digest, gpu=gpu.name, compute_capability=gpu.compute_capability)
        diffs = needed.differences(key)
    version = version_fit(key, runtime_version, lean)
    return diffs + ([version] if version else [])


def default_build_options(bundle: Path) -> BuildOptions:
    """What the runners build on first use: the bundle's own precision (its graph carries it; no variant is
    made on a runtime-only install), image sides 256..1024, batch 1."""
    from .manifest import read_manifest

    try:
        precision = read_manifest(bundle).precision
    except ModelFormatError:  # a bare .onnx outside a bundle
        precision = "fp32"
    return BuildOptions(precision=precision, **DEFAULT_SIDES)


def build_command(bundle: Path, opts: BuildOptions | None, lean: bool) -> str:
    opts = opts or default_build_options(bundle)
    cmd = f"segrt build {bundle} --precision {opts.precision}"
    if opts.min_hw is not None:
        cmd += "".join(f" --{n} {hw[0]}x{hw[1]}" for n, hw in (("min", opts.min_hw), ("opt", opts.opt_hw),
                                                                 ("max", opts.max_hw)))  # type: ignore[index]
    if lean or opts.version_compatible:
        cmd += " --version-compatible" + (" --exclude-lean-runtime" if lean or opts.exclude_lean_runtime else "")
    return cmd


def resolve_engine(model_path: Path, *, runtime_version: str, gpu: GpuIdentity, lean: bool, build: bool,
                   build_options: BuildOptions | None = None) -> tuple[Path, EngineKey]:
    """The cached plan that fits this model file (its bytes and external data), this TensorRT runtime and GPU.

    ``build_options`` given: exactly that key (``best`` resolved first), loadable by ``runtime_version``.
    Otherwise any engine of this model file, GPU and compute capability that this runtime can load, picked
    deterministically: GPU before DLA, this exact TensorRT version before a version-compatible one from an
    earlier version, then the lowest precision (int8, fp16, fp32: each passed its accuracy gate), then the
    largest profile, then the key digest. ``lean``: only version-compatible plans the lean runtime of
    ``runtime_version`` loads (:func:`version_fit`). None fits: build when ``build`` (never for ``lean``;
    default options from the bundle's own precision, :func:`default_build_options`), else raise
    :class:`BackendUnavailableError` whose one line says what differs and which ``segrt build`` to run."""
    model_path = Path(model_path)
    bundle = model_path.parent
    digest = model_digest(model_path)
    want = None
    if build_options is not None:
        from .engine_build import concrete

        build_options = concrete(bundle, model_path.name, build_options)
        want = engine_key(model_path, build_options, runtime_version, gpu, digest)
    stored = stored_engines(bundle, model_path.name)
    why = {key.digest(): _misfit(key, want, digest, gpu, runtime_version, lean) for key, _ in stored}
    fits = [(key, plan) for key, plan in stored if not why[key.digest()]]
    if fits:
        key, plan = min(fits, key=lambda kp: _preference(kp[0], runtime_version))
        log.info("engine %s fits %s (%s, TensorRT %s)", key.digest(), model_path.name, key.precision, key.tensorrt)
        return plan, key
    if build and not lean:
        from .engine_build import build_engine

        return build_engine(bundle, build_options or default_build_options(bundle), model_path.name, gpu=gpu)
    shown = [f"{d[:8]}: " + "; ".join(r) for d, r in sorted(why.items())][:3]
    more = f" (+{len(why) - 3} more)" if len(why) > 3 else ""
    what = " | ".join(shown) + more if shown else "no engine built yet"
    where = "this machine" if not lean else f"a machine with TensorRT {runtime_version}"
    raise BackendUnavailableError(
        f"no TensorRT engine for {model_path.name} fits {'the lean ' if lean else ''}TensorRT {runtime_version} on "
        f"{gpu.name} (sm {gpu.compute_capability}): {what}; "
        f"run `{build_command(bundle, build_options, lean)}` on {where}")
