"""TensorRT lean runtime runner, for edge devices (``pip install 'segrt[tensorrt-lean]'``: PyPI's
``tensorrt-lean-cu13`` or ``-cu12``, about 45 MB of library instead of the full TensorRT's GBs).

The lean runtime runs only version-compatible engines and cannot build them: build on a machine with the full
TensorRT and the same GPU with ``segrt build <bundle> --version-compatible --exclude-lean-runtime`` and copy
the bundle. The plan carries host code, so the runner sets ``engine_host_code_allowed`` before deserializing.
Import name ``tensorrt_lean`` (what ``pip install tensorrt-lean-cu13`` gives), or ``tensorrt_lean_bindings``
where only the bindings wheel is installed. Jetson: PyPI has no aarch64 lean wheels (none for 10.16.1.11);
there the native runner uses JetPack's TensorRT 10.x, and this one a ``tensorrt_lean`` module JetPack installs.

The runner is :class:`segrt.runtime.backends._trt.TrtRunner`, shared with the native runner: written against
TensorRT's documented API, checked against the real lean bindings' classes of 10.16 and 11.4, NOT run on a GPU
in this project.
"""

from __future__ import annotations

from typing import ClassVar

from ._trt import TrtRunner


class TensorRTLeanRunner(TrtRunner):
    name: ClassVar[str] = "tensorrt-lean"
    modules: ClassVar[tuple[str, ...]] = ("tensorrt_lean", "tensorrt_lean_bindings")
    install: ClassVar[str] = "pip install 'segrt[tensorrt-lean]'"
    lean: ClassVar[bool] = True
