"""Serving benchmark: one bundle through a real Triton server (``segrt serve``'s) over HTTP and gRPC
with 1 and N concurrent clients, against in-process segrt on the same images, in the same run.

Rounds interleave the modes (in-process, HTTP, gRPC, in-process, ...), each a short burst at one
concurrency, so a shared machine's drift hits every mode alike; each round gives a ratio of a
served mode's p50 latency to in-process p50, and the table reports the median ratio and its range.

    segrt bench --serving BUNDLE --json OUT.json --markdown OUT.md [--size 256x256 --clients 1,8 --rounds 5]

(``python -m segrt.benchmarks.bench_serving BUNDLE --json OUT.json --markdown OUT.md`` is the same run.)
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from segrt.benchmarks.bench import percentiles, photos
from segrt.benchmarks.machine import describe
from segrt.runtime import load
from segrt.runtime.manifest import write_json_atomic, write_text_atomic
from segrt.runtime.serving.repository import ServeOptions, write_serve_repository
from segrt.runtime.serving.server import ServerConfig, TritonServer

MODES = ("inprocess", "http", "grpc")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def http_call(url: str, model: str) -> Callable[[np.ndarray], Any]:
    import tritonclient.http as th

    local = threading.local()

    def call(image: np.ndarray) -> Any:
        if not hasattr(local, "client"):
            local.client = th.InferenceServerClient(url, network_timeout=120)
        t = th.InferInput("IMAGE", [1, *image.shape], "UINT8")
        t.set_data_from_numpy(image[None])
        return local.client.infer(model, [t]).as_numpy("LABELS")

    return call


def grpc_call(url: str, model: str) -> Callable[[np.ndarray], Any]:
    import tritonclient.grpc as tg

    local = threading.local()

    def call(image: np.ndarray) -> Any:
        if not hasattr(local, "client"):
            local.client = tg.InferenceServerClient(url)
        t = tg.InferInput("IMAGE", [1, *image.shape], "UINT8")
        t.set_data_from_numpy(image[None])
        return local.client.infer(model, [t], client_timeout=120).as_numpy("LABELS")

    return call


def burst(call: Callable[[np.ndarray], Any], images: list[np.ndarray], clients: int, per_client: int
          ) -> tuple[list[float], float]:
    """``clients`` threads, each sending ``per_client`` requests back to back: latencies (ms), wall (s)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        mine = []
        for i in range(per_client):
            t0 = time.perf_counter()
            call(images[(k + i) % len(images)])
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def run(bundle: Path, sizes: tuple[int, int], concurrency: tuple[int, ...], rounds: int, per_round: int,
        options: ServeOptions) -> dict[str, Any]:
    images = photos(sizes)
    seg = load(bundle, "cpu")
    http, grpc = free_ports(2)
    name = bundle.name
    with TritonServer(lambda root: write_serve_repository([bundle], root, options),
                      ServerConfig("127.0.0.1", http, grpc)) as server:
        calls = {"inprocess": lambda im: seg(im).label_map, "http": http_call(f"127.0.0.1:{http}", name),
                 "grpc": grpc_call(server.config.grpc_url, name)}
        for mode in MODES:  # warm-up: sessions, connections, first-call allocations
            np.testing.assert_array_equal(np.asarray(calls[mode](images[0])).reshape(sizes), seg(images[0]).label_map)
            burst(calls[mode], images, max(concurrency), 1)
        rows = [measure(calls, images, c, rounds, per_round) for c in concurrency]
    return {"bundle": str(bundle), "model": name, "image_hw": list(sizes), "rounds": rounds, "per_round": per_round,
            "server": {"max_batch": options.max_batch, "max_queue_delay_us": options.max_queue_delay_us,
                       "instances": options.instances, "threads": options.threads}, "rows": rows}


def measure(calls: dict[str, Callable], images: list[np.ndarray], clients: int, rounds: int, per_round: int
            ) -> dict[str, Any]:
    per_client = max(1, per_round // clients) if clients > 1 else per_round
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    fps: dict[str, list[float]] = {m: [] for m in MODES}
    ratios: dict[str, list[float]] = {m: [] for m in MODES[1:]}
    for _ in range(rounds):
        p50 = {}
        for mode in MODES:
            got, wall = burst(calls[mode], images, clients, per_client)
            lat[mode] += got
            fps[mode].append(len(got) / wall)
            p50[mode] = float(np.median(got))
        for mode in MODES[1:]:
            ratios[mode].append(p50[mode] / p50["inprocess"])
    out: dict[str, Any] = {"clients": clients, "requests_per_mode": len(lat["inprocess"])}
    for mode in MODES:
        pct = percentiles(lat[mode])
        out[mode] = {"p50_ms": pct["p50"], "p99_ms": pct["p99"], "throughput_rps": float(np.median(fps[mode]))}
    for mode in MODES[1:]:
        out[mode]["p50_vs_inprocess"] = {"median": float(np.median(ratios[mode])), "min": min(ratios[mode]),
                                         "max": max(ratios[mode])}
    return out


def markdown(result: dict[str, Any], machine: dict[str, Any], lscpu: str) -> str:
    h, w = result["image_hw"]
    s = result["server"]
    lines = [f"# Serving benchmark: {result['model']} ({w}x{h} images) through Triton vs in-process segrt", "",
             f"{machine['date']}, {machine['cpu']}, {machine['cores']} cores, onnxruntime {machine['onnxruntime']}, "
             f"segrt {machine['segrt']} ({machine['commit']}). Server: tritonserver 2.51 (nvidia-pytriton), python "
             f"backend, max_batch {s['max_batch']}, max_queue_delay {s['max_queue_delay_us']} us, "
             f"{s['instances']} instance(s). {result['rounds']} interleaved rounds of ~{result['per_round']} "
             "requests per mode and concurrency; ratio = served p50 / in-process p50 per round (median, range).", "",
             "| clients | mode | p50 ms | p99 ms | throughput req/s | p50 vs in-process |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for mode in MODES:
            r = row[mode]
            ratio = r.get("p50_vs_inprocess")
            rtext = f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else "1"
            lines.append(f"| {row['clients']} | {mode} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{r['throughput_rps']:.1f} | {rtext} |")
    lines += ["", "Machine (`lscpu | head`):", "", "```", lscpu.strip(), "```", ""]
    return "\n".join(lines)


def record(bundle: Path, size: tuple[int, int], concurrency: tuple[int, ...], rounds: int, per_round: int,
           options: ServeOptions) -> tuple[dict[str, Any], str]:
    """:func:`run` with the machine it ran on: the JSON record and its Markdown table."""
    result = run(bundle.absolute(), size, concurrency, rounds, per_round, options)
    machine = describe(threads=0)
    lscpu = subprocess.run("lscpu | head", shell=True, capture_output=True, text=True).stdout
    return {"machine": machine, "lscpu": lscpu, **result}, markdown(result, machine, lscpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segrt.benchmarks.bench_serving", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--markdown", type=Path, required=True)
    p.add_argument("--size", default="256x256", help="image HxW (real photos resized); default 256x256")
    p.add_argument("--clients", default="1,8", help="concurrencies; default 1,8")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=8, help="requests per mode per round")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--instances", type=int, default=1)
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    options = ServeOptions(max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
                           instances=args.instances)
    result, table = record(args.bundle, (h, w), tuple(int(c) for c in args.clients.split(",")), args.rounds,
                           args.per_round, options)
    write_json_atomic(args.json, result)
    write_text_atomic(args.markdown, table)
    print(args.markdown.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
