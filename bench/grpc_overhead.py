"""gRPC vs HTTP per-request overhead for the v2 binary tensor: one server, both transports, interleaved.

One ``widthwise serve`` with ``--grpc-port`` (S-MobileNet v2 224x224, random weights, width pinned
so inference is the same work on both). The client sends the same FP32 ``[1, 3, 224, 224]``
tensor as an HTTP v2 binary request (stdlib keep-alive connection) and as a gRPC ``ModelInfer``
with ``raw_input_contents`` (the generated stub on one channel), in shuffled blocks. Reported per
transport: client-side latency (median, p90), the server's CPU time per request (from
``/proc/PID/stat``, per block: what the transport costs the server) and the client's own CPU time
per request. With ``--pin`` the server and the client run on different cores (``taskset``).

    python -m bench.grpc_overhead --out out/grpc_overhead [--rounds 40] [--pin]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.common import imagenet_checkpoint
from server.testing import LiveServer, free_port

BLOCK, DISCARD = 20, 2  # requests per block; the first ones of a block pay for switching transports
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads), or of one of its threads."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat") if thread is not None else Path(f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class HttpV2:
    name = "HTTP v2 binary"

    def __init__(self, port: int, x: np.ndarray, width: float) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                         "parameters": {"binary_data_size": x.nbytes}}],
                             "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
                             "parameters": {"width": width}}).encode()
        self.body = header + x.tobytes()
        self.headers = {"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"}

    def send(self) -> None:
        self.conn.request("POST", "/v2/models/v2/infer", body=self.body, headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")


class GrpcV2:
    name = "gRPC v2 raw"

    def __init__(self, port: int, x: np.ndarray, width: float) -> None:
        import grpc
        from tritonclient.grpc import service_pb2 as pb
        from tritonclient.grpc import service_pb2_grpc as pb_grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)])
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.request = pb.ModelInferRequest(model_name="v2")
        self.request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        self.request.raw_input_contents.append(x.tobytes())
        self.request.parameters["width"].double_param = width

    def send(self) -> None:
        self.stub.ModelInfer(self.request, timeout=30)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.grpc_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--width", type=float, default=0.35)
    parser.add_argument("--samples", type=int, default=1, help="images per request (8: a 4.8 MB message)")
    parser.add_argument("--pin", action="store_true", help="server on core 0, this client on core 1 (taskset)")
    parser.add_argument("--out", type=Path, default=Path("out/grpc_overhead"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = imagenet_checkpoint("s_mobilenet_v2")
    grpc_port = free_port()
    server = LiveServer("--checkpoint", str(checkpoint), "--model-name", "v2", "--profile-repeats", "5",
                        "--grpc-port", str(grpc_port), "--log-level", "warning", "--threads", "1" if args.pin else "2")
    try:
        server.wait_ready(300)
        if args.pin:
            os.sched_setaffinity(server.proc.pid, {0})
            for task in os.listdir(f"/proc/{server.proc.pid}/task"):
                os.sched_setaffinity(int(task), {0})
            os.sched_setaffinity(0, {1})
        x = np.random.default_rng(0).standard_normal((args.samples, 3, 224, 224)).astype(np.float32)
        clients = [HttpV2(server.port, x, args.width), GrpcV2(grpc_port, x, args.width)]
        latency = {c.name: [] for c in clients}
        server_cpu = {c.name: [0.0, 0] for c in clients}
        client_cpu = {c.name: [0.0, 0] for c in clients}
        rng = random.Random(0)
        for round_ in range(args.rounds):
            rng.shuffle(clients)
            for client in clients:
                for _ in range(DISCARD):
                    client.send()
                cpu0, own0 = process_cpu_s(server.proc.pid), time.process_time()
                for _ in range(BLOCK - DISCARD):
                    start = time.perf_counter()
                    client.send()
                    if round_ >= 2:
                        latency[client.name].append((time.perf_counter() - start) * 1e3)
                if round_ >= 2:
                    server_cpu[client.name][0] += process_cpu_s(server.proc.pid) - cpu0
                    server_cpu[client.name][1] += BLOCK - DISCARD
                    client_cpu[client.name][0] += time.process_time() - own0
                    client_cpu[client.name][1] += BLOCK - DISCARD
    finally:
        server.stop()
    rows = []
    n = len(next(iter(latency.values())))
    print(f"{n} interleaved requests per transport, width {args.width}, [{args.samples}, 3, 224, 224] FP32 "
          f"({args.samples * 602} KB), "
          f"{'server core 0 / client core 1' if args.pin else 'not pinned'}")
    print(f"{'transport':>16} {'p50 ms':>8} {'p90 ms':>8} {'server CPU ms/req':>18} {'client CPU ms/req':>18}")
    for name, values in latency.items():
        row = {"transport": name, "p50_ms": float(np.median(values)), "p90_ms": float(np.percentile(values, 90)),
               "server_cpu_ms_per_request": server_cpu[name][0] / server_cpu[name][1] * 1e3,
               "client_cpu_ms_per_request": client_cpu[name][0] / client_cpu[name][1] * 1e3}
        rows.append(row)
        print(f"{name:>16} {row['p50_ms']:>8.3f} {row['p90_ms']:>8.3f} {row['server_cpu_ms_per_request']:>18.3f} "
              f"{row['client_cpu_ms_per_request']:>18.3f}")
    http_row, grpc_row = (next(r for r in rows if r["transport"].startswith(t)) for t in ("HTTP", "gRPC"))
    ratio = {"p50_grpc_over_http": grpc_row["p50_ms"] / http_row["p50_ms"],
             "server_cpu_grpc_over_http": grpc_row["server_cpu_ms_per_request"] / http_row["server_cpu_ms_per_request"]}
    print(f"gRPC/HTTP: p50 {ratio['p50_grpc_over_http']:.3f}x, server CPU per request "
          f"{ratio['server_cpu_grpc_over_http']:.3f}x")
    (args.out / "grpc_overhead.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "width": args.width, "pinned": args.pin, "rows": rows, "ratios": ratio},
        indent=2))
    _plot(rows, args.out / "grpc_overhead.png")


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    names = [r["transport"] for r in rows]
    axes[0].bar(names, [r["p50_ms"] for r in rows])
    axes[0].set_ylabel("client p50 latency (ms)")
    axes[1].bar(names, [r["server_cpu_ms_per_request"] for r in rows])
    axes[1].set_ylabel("server CPU per request (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
