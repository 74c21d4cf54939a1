"""PyTorch to a checked, simplified ONNX file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from segrt.runtime.errors import ExportError

from .spec import ModelSpec

log = logging.getLogger("segrt")
PROTO_LIMIT = 2**31 - 1  # protobuf's 2 GB ceiling: larger models keep weights as external data


def _torch_export(module: Any, example: tuple[Any, ...], spec: ModelSpec, path: Path, opset: int) -> None:
    import torch

    kwargs: dict[str, Any] = dict(
        input_names=list(spec.input_names),
        output_names=list(spec.output_names),
        opset_version=opset,
        dynamic_axes={k: dict(v) for k, v in spec.dynamic_axes.items()},
        dynamo=spec.exporter == "dynamo",
    )
    if spec.exporter == "dynamo":
        kwargs.update(external_data=True, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), **kwargs)


def save_onnx(model: Any, path: Path, force_external: bool = False) -> None:
    """Save, moving weights to ``<name>.data`` only when the protobuf would pass 2 GB."""
    import onnx

    large = force_external or model.ByteSize() > PROTO_LIMIT
    onnx.save_model(
        model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
        # tensors under 128 bytes (axes, shapes, scalars) stay in the graph: shape inference must read them
        location=f"{path.name}.data" if large else None, size_threshold=128,
    )
    if large and path.with_name(f"{path.name}.data").is_file():  # onnx makes it 0600: the graph's mode instead
        import os

        from segrt.runtime.manifest import default_mode

        os.chmod(path.with_name(f"{path.name}.data"), default_mode())


def export_onnx(module: Any, example: tuple[Any, ...], spec: ModelSpec, path: Path, opset: int) -> dict[str, Any]:
    """Export, check, infer shapes and simplify. Returns facts for the manifest.

    Above protobuf's 2 GB (SAM vit_h) PyTorch writes the weights as external data files beside the graph,
    and neither onnxslim nor in-memory shape inference can serialise the model: those graphs get the
    path-based shape inference only and are saved as ``<name>`` + ``<name>.data``. The raw export lives in
    its own temporary folder, removed whatever happens."""
    import shutil

    import onnx
    import onnxslim

    rawdir = path.parent / f".{path.stem}.raw"
    shutil.rmtree(rawdir, ignore_errors=True)
    rawdir.mkdir(parents=True)
    raw = rawdir / "model.onnx"
    try:
        try:
            _torch_export(module, example, spec, raw, opset)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {spec.name}: {type(exc).__name__}: {str(exc)[:300]}") from None
        large = sum(f.stat().st_size for f in rawdir.iterdir()) > PROTO_LIMIT
        if large:
            shaped = rawdir / "shaped.onnx"
            onnx.shape_inference.infer_shapes_path(str(raw), str(shaped))
            model = onnx.load(str(shaped))  # external data resolved from rawdir
            n_raw = len(model.graph.node)
            log.warning("%s is over 2 GB: weights go to %s.data; onnxslim skipped", spec.name, path.name)
        else:
            model = onnx.load(str(raw))
            n_raw = len(model.graph.node)
            try:
                model = onnxslim.slim(model)
            except Exception as exc:  # simplification is an optimisation, never a reason to fail
                log.warning("onnxslim could not simplify %s (%s); keeping the unsimplified graph", spec.name, exc)
            model = onnx.shape_inference.infer_shapes(model)
        save_onnx(model, path, force_external=large)
    finally:
        shutil.rmtree(rawdir, ignore_errors=True)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported {spec.name} graph fails ONNX's checker: {str(exc).splitlines()[0][:300]}") from None
    return {"opset": opset, "exporter": spec.exporter, "nodes_exported": n_raw, "nodes_simplified": len(model.graph.node),
            "external_data": f"{path.name}.data" if (path.parent / f"{path.name}.data").is_file() else None}
