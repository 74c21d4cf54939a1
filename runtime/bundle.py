"""What every task's model shares: the manifest, the runner chosen for it, image intake, and the shape of
its pre / infer / post stages (:class:`Stages`, which ``segrt stream`` runs on separate threads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .backends import RunnerOptions, select_runner
from .errors import ModelFormatError
from .image import DEFAULT_MAX_PIXELS, ImageLike, InputColor, read_image, to_channels
from .manifest import Task, read_manifest


def runner_options(threads: int | None, options: RunnerOptions | None) -> RunnerOptions:
    """``options`` (I/O binding, CUDA graphs, TensorRT build options...) with ``threads`` when given."""
    from dataclasses import replace

    if options is None:
        return RunnerOptions(threads=threads)
    return replace(options, threads=threads) if threads is not None else options


class BundleModel:
    """Opens a bundle of task :attr:`task` on ``device``; subclasses add pre-, post-processing."""

    task: ClassVar[Task]

    def __init__(self, bundle: str | Path, device: str = "auto", *, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, options: RunnerOptions | None = None) -> None:
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        if self.manifest.task != self.task:
            raise ModelFormatError(f"bundle task is {self.manifest.task!r}; {type(self).__name__} needs {self.task!r}")
        self.runner, self.skipped = select_runner(self.bundle / self.manifest.model_file, device,
                                                  runner_options(threads, options))
        self.max_pixels = max_pixels

    @property
    def device(self) -> str:
        return self.runner.device

    def close(self) -> None:
        """Free the backend's session or engine, buffers and streams; idempotent."""
        self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.classes

    def prepare(self, image: ImageLike, color: InputColor = "rgb") -> np.ndarray:
        """Read and validate an image and convert it to the model's channels and colour order (HxWxC)."""
        arr = read_image(image, color=color, max_pixels=self.max_pixels)
        arr = to_channels(arr, self.manifest.input.channels)
        if self.manifest.input.color == "bgr":
            arr = arr[:, :, ::-1]
        return arr


class Stages:
    """A predictor split into three steps for the stream pipeline: ``pre`` (on the preprocess thread), ``infer``
    (on an inference worker, with that worker's own model), ``post`` (on the postprocess thread). Each task's
    stages live beside its predictor; ``Task.stages(predictor, prompts)`` makes them."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def pre(self, frame: np.ndarray) -> tuple[Any, Any]:
        """The frame -> (the worker's payload, the context ``post`` needs)."""
        raise NotImplementedError

    def infer(self, model: Any, payload: Any) -> Any:
        raise NotImplementedError

    def post(self, raw: Any, ctx: Any) -> Any:
        """The worker's output and ``pre``'s context -> the task's result (with a ``timings`` dict)."""
        raise NotImplementedError
