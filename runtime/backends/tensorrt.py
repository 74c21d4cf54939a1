"""Native TensorRT runner (``pip install 'segrt[tensorrt]'``: TensorRT 10.x or 11.x, import name ``tensorrt``).

The runner itself is :class:`segrt.runtime.backends._trt.TrtRunner`, shared with the lean runner: written
against TensorRT's documented name-based API of 10.x and 11.x, checked against the real bindings' classes of
both majors (the lean wheels, whose runtime classes these are too), NOT run on a GPU in this project.

The engine comes from the bundle's engine cache (:func:`segrt.runtime.engine.resolve_engine`): one built for
this model file (and its external data), TensorRT version and GPU, or a version-compatible one this TensorRT
can run. ``device="tensorrt"`` builds one when none fits (minutes, with a message, ``RunnerOptions.engine``
giving the build options); ``auto`` only uses an engine that already exists.
"""

from __future__ import annotations

from typing import ClassVar

from ._trt import TrtRunner


class TensorRTRunner(TrtRunner):
    name: ClassVar[str] = "tensorrt"
    modules: ClassVar[tuple[str, ...]] = ("tensorrt", "tensorrt_bindings")
    install: ClassVar[str] = "pip install 'segrt[tensorrt]'"
    lean: ClassVar[bool] = False
