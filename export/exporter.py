"""``export_bundle(spec, config, out)``: PyTorch model + local checkpoint to a verified bundle, for every family.

The sequence is the same for all of them: build the model (and load its weights), trace each graph to ONNX,
write the manifest, verify the bundle against PyTorch, gate on that, and write the manifest again with the
verification. What differs (graphs, manifest, verification, gate) is the spec's :class:`~.spec.ExportFamily`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from segrt.export.flops import export_compute
from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import Manifest, write_manifest

from .bundle import atomic_dir, tool_versions
from .models import get_spec
from .onnx_io import export_onnx
from .progress import Progress
from .spec import ExportConfig, ModelSpec, require_export_deps
from .weights import apply_state_dict, read_state_dict, sha256_file

log = logging.getLogger("segrt")
__all__ = ["build_module", "check_classes", "export_bundle", "export_model", "tool_versions"]


def build_module(spec: ModelSpec, cfg: ExportConfig) -> tuple[Any, dict[str, Any]]:
    """The eval-mode module with its weights, and the manifest's ``source`` record."""
    require_export_deps(spec.deps)
    spec.check_encoder(cfg.encoder)
    import torch

    torch.manual_seed(cfg.seed)
    module = spec.build(cfg)
    if cfg.weights is None:
        source: dict[str, Any] = {"weights": None, "sha256": None, "trained": False, "seed": cfg.seed}
    else:
        state = read_state_dict(cfg.weights)
        check_classes(spec, cfg, state)
        if spec.check_state is not None:
            spec.check_state(cfg, state, cfg.weights)
        apply_state_dict(module, state, spec.drop_prefixes)
        source = {"weights": cfg.weights.name, "sha256": sha256_file(cfg.weights), "trained": True, "seed": None}
    return module.eval(), source


def check_classes(spec: ModelSpec, cfg: ExportConfig, state: dict[str, Any]) -> None:
    """Name the class-count mismatch before the generic shape report buries it."""
    tensor = state.get(spec.classes_key) if spec.classes_key else None
    if tensor is not None and tensor.shape[0] != cfg.classes:
        raise ExportError(f"checkpoint {cfg.weights.name if cfg.weights else ''} has {tensor.shape[0]} classes "
                          f"({spec.classes_key}); you asked for --classes {cfg.classes}")


def export_bundle(spec: ModelSpec, cfg: ExportConfig, out: Path, *, force: bool = False) -> Manifest:
    """Build, trace, verify against PyTorch, gate, write: the bundle appears at ``out`` only if all pass.
    One progress line per step goes to stderr."""
    family = spec.family
    family.check(spec, cfg)
    require_export_deps(spec.deps)  # what the user must fix comes before any progress line
    spec.check_encoder(cfg.encoder)
    progress = Progress(f"{spec.name}/{cfg.encoder}")
    progress("building the model" + (" and loading its weights" if cfg.weights else ""))
    model, source = build_module(spec, cfg)
    if not source["trained"]:
        log.warning("exporting %s/%s with seeded random weights (seed %d): the model is untrained",
                    spec.name, cfg.encoder, cfg.seed)
    graphs = family.graphs(spec, model, cfg)
    with atomic_dir(out, force=force) as tmp:
        facts = {}
        for g in graphs:
            progress(f"tracing {g.file} to ONNX, checking and simplifying it")
            facts[g.role] = export_onnx(g.module, g.example, g.io, tmp / g.file, cfg.opset)
        export = facts[graphs[0].role] if len(graphs) == 1 else facts
        versions = tool_versions(spec.deps.values())
        progress("counting FLOPs (torch.utils.flop_counter)")
        manifest = replace(family.manifest(spec, cfg, {**source, "export": export}, versions),
                           compute=export_compute(graphs))
        write_manifest(tmp, manifest)
        progress("verifying the bundle against PyTorch")
        verification = family.verify(spec, model, tmp, cfg)
        progress("gating on the verification")
        family.gate(spec, cfg, source, verification)
        manifest = Manifest.from_dict({**manifest.to_dict(), "verification": verification})
        progress(f"writing the bundle to {out}")
        write_manifest(tmp, manifest)
    progress("done")
    return manifest


def export_model(cfg: ExportConfig, out: Path, *, force: bool = False, score_threshold: float | None = None) -> Manifest:
    """``export_bundle`` for the spec ``cfg.architecture`` names; ``score_threshold`` overrides the config's."""
    if score_threshold is not None:
        cfg = replace(cfg, score_threshold=score_threshold)
    return export_bundle(get_spec(cfg.architecture), cfg, out, force=force)
