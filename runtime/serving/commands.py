"""``segrt serve`` (a real Triton server on this machine) and ``segrt triton`` (a GPU model repository)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from ..cli import int_at_least
from ..image import DEFAULT_MAX_PIXELS


def _port(text: str) -> int:
    try:
        return int_at_least(1, 65535)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a port must be in 1-65535; got {text!r}") from None


def _batching_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", nargs="+", type=Path, metavar="BUNDLE", help="model name = the bundle's folder name")
    p.add_argument("--max-batch", type=int_at_least(1), default=8,
                   help="images per execution for semantic models (Triton's dynamic batcher); default 8")
    p.add_argument("--max-queue-delay-us", type=int_at_least(0), default=2000,
                   help="how long the batcher waits to fill a batch, microseconds; default 2000")
    p.add_argument("--instances", type=int_at_least(1), default=1,
                   help="model instances per bundle (processes on the CPU, copies on the GPU); default 1")
    p.add_argument("--max-pixels", type=int_at_least(1), default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (HTTP 400); default {DEFAULT_MAX_PIXELS}")


def _options(args: argparse.Namespace):
    from .repository import ServeOptions

    return ServeOptions(max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
                        instances=args.instances, threads=getattr(args, "threads", None), max_pixels=args.max_pixels)


def cmd_serve(args: argparse.Namespace) -> int:
    from .repository import model_names, write_serve_repository
    from .server import ServerConfig, TritonServer

    config = ServerConfig(args.host, args.http_port, args.grpc_port)
    options = _options(args)
    names = model_names(args.bundles)  # typed errors before anything starts
    server = TritonServer(lambda root: write_serve_repository(list(names.values()), root, options), config)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        if not server.wait_ready(args.ready_timeout, stop):  # Ctrl-C or SIGTERM while the models load
            return 0
        print(f"segrt: serving {', '.join(names)} at {config.url} (gRPC {config.grpc_url}); "
              f"ready at {config.url}/v2/health/ready; Ctrl-C or SIGTERM stops", flush=True)
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                print(f"segrt: error: tritonserver exited: {server.log_tail(3)}", flush=True)
                return 1
        return 0
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_triton(args: argparse.Namespace) -> int:
    from .gpu_repo import write_triton_repository

    out = write_triton_repository(args.bundles, args.out, _options(args), gpu=args.gpu, force=args.force)
    models = sorted(p.name for p in out.iterdir() if (p / "config.pbtxt").is_file())
    print(f"segrt: wrote {len(models)} Triton models to {out}: {', '.join(models)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve bundles with a real Triton Inference Server (KServe v2 HTTP/gRPC)")
    _batching_args(p)
    p.add_argument("--host", default="127.0.0.1", help="the only address bound; default 127.0.0.1")
    p.add_argument("--http-port", type=_port, default=8000)
    p.add_argument("--grpc-port", type=_port, default=8001)
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="ONNX Runtime threads per model instance (default: ONNX Runtime's)")
    p.add_argument("--ready-timeout", type=int_at_least(1), default=120,
                   help="seconds to wait for the models to load; default 120")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("triton", help="write a Triton model repository for GPU servers (NGC image): "
                                      "network + segrt pre/post, joined by an ensemble")
    _batching_args(p)
    p.add_argument("--out", type=Path, required=True, help="the repository folder (written atomically)")
    p.add_argument("--gpu", default=None, metavar="NAME",
                   help="use the bundle's cached TensorRT engine built on this GPU (as `segrt build` recorded "
                        "its name) as a tensorrt_plan model; default: ONNX Runtime with its TensorRT accelerator")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=cmd_triton)
