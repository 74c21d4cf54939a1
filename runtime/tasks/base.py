"""The task extension point: what differs between kinds of result, in one object per task.

Models (``export/models/``) and backends (``runtime/backends/``) are the other two extension points. A task
is one module in this folder defining a :class:`Task` subclass and its ``TASK`` instance, plus one entry in
``TASKS`` (``__init__.py``). The CLI (``segrt run``, ``info``, ``stream``, ``eval``, ``bench``), the stream
pipeline, the serving stages, the quantize gate and the benchmarks look the task up with :func:`task_for` and
call it; none of them branches on the task's name. detectron2's meta-architectures and transformers'
``post_process_*`` family are the anchors: one result contract per task, many models behind it.

Every hook here raises :class:`NotImplementedError` naming the task, so a new task that skips one fails
with a message that says which, not with an ``AttributeError`` somewhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..backends import Runner
    from ..manifest import Manifest
    from ..serving.contract import Contract
    from ..serving.handlers import Handler
    from ..serving.stages import Stages as ServingStages


class Task:
    """One kind of result (semantic label maps, instances, SAM masks...) and everything that differs for it."""

    #: the manifest's ``task`` value
    name: ClassVar[str]
    #: one line for ``segrt info`` and error messages
    summary: ClassVar[str] = ""

    def _missing(self, hook: str) -> NotImplementedError:
        return NotImplementedError(f"task {self.name!r} does not implement {hook}")

    # -- the bundle and its manifest ------------------------------------------------------------------
    #: the manifest section only this task's bundles have (``"detection"``, ``"sam"``), or None
    section: ClassVar[str | None] = None

    def check_manifest(self, manifest: Manifest) -> None:
        """Refuse (``ModelFormatError``) a manifest this task cannot run: missing sections, no classes..."""
        raise self._missing("check_manifest")

    def check_sections(self, manifest: Manifest) -> None:
        """Every task's ``section`` is in the manifest exactly when that task is the manifest's (for check_manifest)."""
        from ..errors import ModelFormatError
        from . import TASKS

        for task in TASKS:
            if task.section is not None and (task is self) != (getattr(manifest, task.section) is not None):
                raise ModelFormatError(f"a manifest has a {task.section} section exactly when its task is {task.name!r}")

    def check_run(self, bundle: Path) -> None:
        """Refuse (``InvalidInputError``) a bundle ``segrt run`` cannot segment from images alone (SAM needs
        prompts); most tasks accept every bundle, so this default does nothing."""

    def load(self, bundle: Path, device: str = "auto", **kwargs: Any) -> Any:
        """The predictor for ``bundle`` on ``device`` (``Segmenter``, ``InstanceSegmenter``, ``SamPredictor``...)."""
        raise self._missing("load")

    def runners(self, predictor: Any) -> dict[str, Runner]:
        """The predictor's model runners by role (``{"model": ...}``, SAM: encoder and decoder): ``segrt info``."""
        raise self._missing("runners")

    # -- segrt run and segrt stream ------------------------------------------------------------------
    def run_inputs(self, path: Path) -> list[Path] | None:
        """What ``segrt run --input PATH`` segments one by one when this task reads its own inputs (volumes: a
        file, or a DICOM series folder, is one input); None, the default: images (a file or a folder of them)."""
        return None

    def run_one(self, predictor: Any, path: Path, out_dir: Path) -> list[Path]:
        """``segrt run`` for one input of :meth:`run_inputs`: segment it, write what it saves (atomically)."""
        raise self._missing("run_one")

    def write(self, result: Any, image: np.ndarray, out_dir: Path, stem: str, source: Path) -> list[Path]:
        """What ``segrt run`` saves for one image (atomically), beside ``<stem>.overlay.jpg``; the paths written."""
        raise self._missing("write")

    def stages(self, predictor: Any, prompts: dict[str, Any] | None = None) -> Any:
        """The pre / infer / post stages the stream pipeline runs."""
        raise self._missing("stages")

    @staticmethod
    def refuse_prompts(prompts: dict[str, Any] | None) -> None:
        """For the ``stages`` of a task that takes no prompts: refuse points or a box (``InvalidInputError``)."""
        if prompts and (prompts.get("points") is not None or prompts.get("box") is not None):
            from ..errors import InvalidInputError

            raise InvalidInputError("--point/--box prompts apply to SAM bundles only")

    def for_stream(self, predictor: Any) -> None:
        """Tune a predictor the stream loaded itself (SAM: no embedding cache, every frame is new); by default
        nothing. A predictor the caller passed in is left as configured."""

    def frame_record(self, result: Any) -> dict[str, Any]:
        """What one frame of ``segrt stream --log`` says was found (beside its frame number and timings)."""
        raise self._missing("frame_record")

    # -- quantization: calibration and the accuracy gate ----------------------------------------------
    def calibration_feeds(self, predictor: Any, image: np.ndarray) -> dict[str, np.ndarray]:
        """The model file's input feeds for one calibration image, by the runtime's own preprocessing."""
        raise self._missing("calibration_feeds")

    #: the quantize gate's metric name (the mean of ``gate_score(...)[gate_metric]`` over the gate images)
    gate_metric: ClassVar[str] = ""

    def gate_score(self, reference: Any, variant: Any, image: np.ndarray) -> dict[str, float]:
        """A variant's predictor against the FP32 one on one image: ``{gate_metric: ..., other facts}``."""
        raise self._missing("gate_score")

    # -- segrt eval --------------------------------------------------------------------------------------
    def eval_dataset(self, data: Path) -> Any | None:
        """This task's own reader of ``segrt eval --data`` (volumes come with label volumes), or None: the
        images/ + labels/, COCO or COCO-panoptic layout ``benchmarks/eval_run.Dataset`` reads."""
        return None

    def evaluator(self, dataset: Any, tolerances: Any) -> Any:
        """Accumulates one row's accuracy (and agreement with a reference row) over ``segrt eval``'s images:
        ``start(model)``, ``step(state, model, image, path, reference)``, ``accuracy(state, model)``,
        ``agreement(state)``, and for the table ``columns``, ``cells(accuracy)``, ``versus(agreement)``
        (see ``benchmarks/eval_run.py``). It refuses a dataset without this task's ground truth; ``dataset``
        None: the table of a finished run only."""
        raise self._missing("evaluator")

    # -- segrt bench and gpu-check -------------------------------------------------------------------
    #: ``segrt bench BUNDLE`` times this task's bundles row by row; otherwise the one line that says what
    #: times them instead (refused before anything is timed)
    bench_instead: ClassVar[str | None] = None
    #: the predictor resizes every image to its graph's own input size (Mask R-CNN, SAM), so gpu-check's
    #: parity and CUDA-graph photos go in at their own sizes; False: resized to one fixed shape first
    resizes_input: ClassVar[bool] = False
    #: segrt bench and gpu-check's timing resize their photos to the bench size (False: their own sizes)
    timed_at_bench_size: ClassVar[bool] = True
    #: INT8 variants are calibrated on images (False: quantized dynamically, no calibration photos)
    int8_calibrated: ClassVar[bool] = True

    #: gpu-check: timed rounds per family on the GPU (fewer where one call takes long)
    gpu_check_rounds: ClassVar[int] = 30
    #: gpu-check: FP32 on the device against FP32 on the CPU, the gate metric's minimum (segrt eval's tolerances)
    fp32_device_min: ClassVar[float] = 0.99
    #: gpu-check: I/O binding on against off changes where tensors live, not the arithmetic: near-identical
    binding_min: ClassVar[float] = 0.999
    #: ``segrt bench``'s row bench against PyTorch, as ``"module:function"`` (:func:`resolve`: a task module never
    #: imports torch or the benchmarks): ``(bundle, config, precision, torch_cache) -> row | None``; None: not timed
    bench_row: ClassVar[str | None] = None
    #: gpu-check's PyTorch side, as ``"module:function"``: ``(bundle, autocast, device) -> call``; None: none
    gpu_check_torch: ClassVar[str | None] = None

    def uncached(self) -> dict[str, Any]:
        """``load()`` options that turn the predictor's own result cache off, so every timed call computes
        (SAM: its embedding cache); none by default."""
        return {}

    def timed_call(self, predictor: Any, image: np.ndarray) -> Any:
        """One end-to-end call as a user makes it (gpu-check's timing): by default, segment the image."""
        return predictor(image)

    # -- serving (segrt triton / segrt serve) ---------------------------------------------------------
    # A task that is not served leaves these: each refuses with a one-line InvalidInputError.
    def _not_served(self, what: str) -> Exception:
        from ..errors import InvalidInputError

        return InvalidInputError(f"{what} does not serve {self.name!r} bundles yet")

    def serving_contract(self, manifest: Manifest) -> Contract:
        """The request's tensors (names, types, dims) for ``segrt serve`` and ``segrt triton`` alike."""
        raise self._not_served("segrt serve")

    def serving_handler(self, bundle: Path, **kwargs: Any) -> Handler:
        """``segrt serve``'s handler (inside Triton's python backend, on the CPU) for ``bundle``."""
        raise self._not_served("segrt serve")

    def serving_stages(self, manifest: Manifest, **kwargs: Any) -> ServingStages:
        """``segrt triton``'s pre and post python-backend steps around the networks (their ``links``)."""
        raise self._not_served("segrt triton")

    def serving_networks(self, manifest: Manifest) -> tuple[tuple[str, str], ...]:
        """``segrt triton``'s networks in ensemble order: ``(model name suffix, file in the bundle)``."""
        raise self._not_served("segrt triton")

    # -- export ----------------------------------------------------------------------------------------
    #: ``segrt import`` can wrap a plain ONNX model of this task (one image input, one output) in a bundle
    importable: ClassVar[bool] = False
    #: its inputs are 3-D volumes: ``segrt import`` takes the 3-D flags (``VolumeImport``), not the image ones
    volumetric: ClassVar[bool] = False
    #: ``segrt quantize``'s default tolerance on ``gate_metric`` (what ``--min-score`` overrides); None: no default
    quantize_min_score: ClassVar[float | None] = None


def resolve(ref: str) -> Any:
    """The function a hook names as ``"package.module:function"``, imported when first needed."""
    import importlib

    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
