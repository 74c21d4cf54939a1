"""``segrt triton``: a Triton model repository for GPU production (NVIDIA's NGC Triton image).

Per bundle ``NAME``: the network as ``NAME_net`` (SAM: ``NAME_encoder`` and ``NAME_decoder``), an
``onnxruntime``-backend model on the GPU with ONNX Runtime's TensorRT accelerator (FP16 where the
bundle is FP16), or a ``tensorrt_plan`` model from the bundle's engine cache when one was built for
the named GPU; ``NAME_pre`` and ``NAME_post``, segrt's pre/post-processing on Triton's python backend
(:mod:`~segrt.runtime.serving.stages`); and ``NAME``, the ensemble joining them, which takes and
returns the request contract of :mod:`~segrt.runtime.serving.contract`. Written, not run here.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from ..manifest import MANIFEST_NAME, Manifest, read_manifest
from ..onnx_files import model_files
from ..tasks import task_for
from .contract import Tensor, contract_for
from .pbtxt import parameters, render
from .repository import Enum, ServeOptions, atomic_dir, io_config, model_names
from .stages import stages_for

log = logging.getLogger("segrt")
STAGE_PY = "from segrt.runtime.serving.stage_model import TritonPythonModel  # noqa: F401\n"
ONNX_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64",
              "tensor(int32)": "TYPE_INT32", "tensor(uint8)": "TYPE_UINT8", "tensor(bool)": "TYPE_BOOL"}


@dataclass(frozen=True)
class Net:
    """One network of a bundle: its model name, ONNX file and tensors (dims with -1 for dynamic axes)."""

    name: str
    onnx: Path
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def onnx_tensors(path: Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def conv(args) -> tuple[Tensor, ...]:
        return tuple(Tensor(a.name, ONNX_TYPES[a.type], tuple(d if isinstance(d, int) else -1 for d in a.shape))
                     for a in args)

    return conv(sess.get_inputs()), conv(sess.get_outputs())


def nets(name: str, bundle: Path, manifest: Manifest) -> list[Net]:
    files = task_for(manifest.task).serving_networks(manifest)
    return [Net(f"{name}_{suffix}", bundle / file, *onnx_tensors(bundle / file)) for suffix, file in files]


def config_dims(net: Net, batched: bool) -> Net:
    """Config dims leave out the batch axis where Triton batches (``max_batch_size > 0``)."""
    if not batched:
        return net
    strip = lambda ts: tuple(Tensor(t.name, t.dtype, t.dims[1:], t.optional) for t in ts)  # noqa: E731
    return Net(net.name, net.onnx, strip(net.inputs), strip(net.outputs))


def _engine(bundle: Path, model_file: str, gpu: str | None, batch: int) -> Path | None:
    """The cached TensorRT plan built from this very ``model_file`` (its bytes and external data) for GPU ``gpu``
    (``segrt build`` on it), on the GPU rather than a DLA, whose profiles take ``batch`` images; else None (the
    ONNX model is served)."""
    if gpu is None:
        return None
    from ..engine import stored_engines
    from ..onnx_files import model_digest

    digest = model_digest(bundle / model_file)
    for key, plan in stored_engines(bundle, model_file):
        if key.gpu == gpu and key.model_sha256 == digest and key.dla_core is None \
                and all(p.max[0] >= max(batch, 1) for p in key.profiles):
            return plan
    log.info("no engine of %s fits %s at batch %d (segrt build --max-batch %d); serving the ONNX model",
             model_file, gpu, batch, max(batch, 1))
    return None


def accelerator(manifest: Manifest) -> dict:
    params = {"precision_mode": "FP16" if manifest.precision == "fp16" else "FP32",
              "max_workspace_size_bytes": str(1 << 30), "trt_engine_cache_enable": "true",
              "trt_engine_cache_path": "/tmp/segrt-trt-cache"}
    return {"execution_accelerators": {"gpu_execution_accelerator": [
        {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in params.items()]}]}}


def net_config(net: Net, manifest: Manifest, batch: int, options: ServeOptions, plan: Path | None) -> dict:
    batched = batch > 0
    config = {"name": net.name, **({"platform": "tensorrt_plan"} if plan else {"backend": "onnxruntime"}),
              "max_batch_size": batch, "input": [t.config() for t in net.inputs],
              "output": [t.config() for t in net.outputs],
              "instance_group": [{"count": options.instances, "kind": Enum("KIND_GPU")}]}
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    if plan is None:
        config["optimization"] = accelerator(manifest)
    return config


def write_net(root: Path, net: Net, manifest: Manifest, batch: int, options: ServeOptions, gpu: str | None) -> None:
    plan = _engine(net.onnx.parent, net.onnx.name, gpu, batch)
    version = root / net.name / "1"
    version.mkdir(parents=True)
    if plan is not None:
        shutil.copy2(plan, version / "model.plan")
    else:
        shutil.copy2(net.onnx, version / "model.onnx")
        for data in model_files(net.onnx)[1:]:  # every external data file, where the graph names it
            target = version / data.relative_to(net.onnx.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data, target)
    (root / net.name / "config.pbtxt").write_text(render(net_config(net, manifest, batch, options, plan)))


def link_tensors(manifest: Manifest) -> list[Tensor]:
    """What the task's pre step passes its post step beside the networks (the serving stages' ``links``)."""
    return [Tensor(n, "TYPE_INT64", (2,)) for n in stages_for(manifest).links]


def stage_io(manifest: Manifest, networks: list[Net]) -> tuple[list[Tensor], list[Tensor]]:
    """What the pre step produces (the networks' inputs no network makes, plus links) and what the
    post step reads (the last network's outputs, the links, optional pass-through prompts)."""
    made = {t.name for n in networks for t in n.outputs}
    pre_out = [t for n in networks for t in n.inputs if t.name not in made] + link_tensors(manifest)
    passthrough = [t for t in contract_for(manifest).inputs if t.name == "MULTIMASK_OUTPUT"]
    return pre_out, list(networks[-1].outputs) + link_tensors(manifest) + passthrough


def stage_config(name: str, stage: str, inputs: list[Tensor], outputs: list[Tensor], batch: int,
                 options: ServeOptions) -> dict:
    return {"name": name, "backend": "python", "max_batch_size": batch,
            "input": [t.config() for t in inputs], "output": [t.config() for t in outputs],
            "instance_group": [{"count": options.instances, "kind": Enum("KIND_CPU")}],
            "parameters": parameters(stage=stage, max_pixels=str(options.max_pixels))}


def write_stage(root: Path, name: str, manifest_file: Path, config: dict) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(STAGE_PY)
    shutil.copy2(manifest_file, root / name / "1" / MANIFEST_NAME)
    (root / name / "config.pbtxt").write_text(render(config))


def step(model: str, inputs: list[str], outputs: list[str]) -> dict:
    return {"model_name": model, "model_version": -1,
            "input_map": [{"key": n, "value": n} for n in inputs],
            "output_map": [{"key": n, "value": n} for n in outputs]}


def ensemble_config(name: str, manifest: Manifest, networks: list[Net], pre_out: list[Tensor],
                    post_in: list[Tensor], options: ServeOptions) -> dict:
    contract = contract_for(manifest)
    steps = [step(f"{name}_pre", [t.name for t in contract.inputs if t.name != "MULTIMASK_OUTPUT"],
                  [t.name for t in pre_out])]
    steps += [step(n.name, [t.name for t in n.inputs], [t.name for t in n.outputs if t in post_in or n is not networks[-1]])
              for n in networks]
    steps.append(step(f"{name}_post", [t.name for t in post_in], [t.name for t in contract.outputs]))
    return {"name": name, "platform": "ensemble", **io_config(contract, options.max_batch),
            "ensemble_scheduling": {"step": steps}}


def write_bundle(root: Path, name: str, bundle: Path, options: ServeOptions, gpu: str | None) -> None:
    manifest = read_manifest(bundle)
    contract = contract_for(manifest)
    networks = nets(name, bundle, manifest)
    if contract.batched and networks[0].inputs[0].dims[0] != -1:
        raise InvalidInputError(f"{bundle}: the model's batch axis is fixed at {networks[0].inputs[0].dims[0]}; "
                                "Triton's dynamic batcher needs a dynamic one (re-export the bundle)")
    batch = options.max_batch if contract.batched else 0
    networks = [config_dims(n, contract.batched) for n in networks]
    for net in networks:
        write_net(root, net, manifest, batch, options, gpu)
    pre_out, post_in = stage_io(manifest, networks)
    pre_in = [t for t in contract.inputs if t.name != "MULTIMASK_OUTPUT"]
    write_stage(root, f"{name}_pre", bundle / MANIFEST_NAME, stage_config(f"{name}_pre", "pre", pre_in, pre_out,
                                                                         batch, options))
    write_stage(root, f"{name}_post", bundle / MANIFEST_NAME, stage_config(f"{name}_post", "post", post_in,
                                                                           list(contract.outputs), batch, options))
    (root / name).mkdir()
    (root / name / "1").mkdir()
    (root / name / "config.pbtxt").write_text(render(ensemble_config(name, manifest, networks, pre_out, post_in,
                                                                     options)))


def write_triton_repository(bundles: Sequence[Path], out: Path, options: ServeOptions = ServeOptions(), *,
                            gpu: str | None = None, force: bool = False) -> Path:
    names = model_names(bundles)
    with atomic_dir(out, force=force) as tmp:
        for name, bundle in names.items():
            write_bundle(tmp, name, bundle, options, gpu)
    return Path(out)
