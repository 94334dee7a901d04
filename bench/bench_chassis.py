"""What the chassis costs per call: a chassis server (interceptor: request id, RED metrics,
error mapping) against a bare grpc.aio server, same echo RPC, same client, same run.

Both servers run as their own processes; one grpc.aio client process drives each in turn at
concurrency 1 and 16. Prints both, the ratio, the added p99, the peak RSS of every process,
and ends with one JSON line ``{"bench": "chassis_overhead", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from benchkit import drive, peak_rss_mib

SERVICE = "bench.Echo"
PAYLOAD = b"x" * 1024


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})


async def _serve(kind: str, port_file: Path) -> None:
    if kind == "bare":
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
    else:
        from infermesh_chassis.logs import configure_logging  # noqa: PLC0415  (only the chassis server needs it)
        from infermesh_chassis.server import GrpcServer  # noqa: PLC0415
        from infermesh_chassis.settings import ServiceSettings  # noqa: PLC0415

        configure_logging("bench-chassis", "WARNING")
        chassis = GrpcServer(ServiceSettings(service_name="bench-chassis"))
        chassis.add_generic_handlers([_handler()], SERVICE)
        await chassis.start()
        port = chassis.port
    await asyncio.to_thread(port_file.write_text, str(port))
    await asyncio.Event().wait()


def _start(kind: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / f"{kind}.port"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port-file", str(port_file)])
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{kind} server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


async def _measure() -> None:
    figures: dict[str, dict[int, dict[str, float]]] = {}
    rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("bare", "chassis"):
            proc, address = _start(kind, Path(tmp))
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    echo = channel.unary_unary(f"/{SERVICE}/Echo")

                    async def call(_: int, echo: grpc.aio.UnaryUnaryMultiCallable = echo) -> object:
                        return await echo(PAYLOAD, timeout=5)

                    figures[kind] = {c: await drive(call, c) for c in (1, 16)}
                rss[kind] = peak_rss_mib(proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    rss["client"] = peak_rss_mib(os.getpid())
    print(f"{'server':8} {'conc':>4} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, by_conc in figures.items():
        for conc, f in by_conc.items():
            print(f"{kind:8} {conc:>4} {f['rps']:>9.0f} {f['p50_ms']:>8.3f} {f['p99_ms']:>8.3f}")
    print("peak RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    bare, chassis = figures["bare"], figures["chassis"]
    result = {
        "bench": "chassis_overhead",
        "bare_rps_c1": round(bare[1]["rps"]),
        "chassis_rps_c1": round(chassis[1]["rps"]),
        "ratio_c1": round(chassis[1]["rps"] / bare[1]["rps"], 3),
        "bare_rps_c16": round(bare[16]["rps"]),
        "chassis_rps_c16": round(chassis[16]["rps"]),
        "ratio_c16": round(chassis[16]["rps"] / bare[16]["rps"], 3),
        "p99_added_ms_c1": round(chassis[1]["p99_ms"] - bare[1]["p99_ms"], 3),
        "p99_added_ms_c16": round(chassis[16]["p99_ms"] - bare[16]["p99_ms"], 3),
        "bare_peak_rss_mib": round(rss["bare"], 1),
        "chassis_peak_rss_mib": round(rss["chassis"], 1),
        "client_peak_rss_mib": round(rss["client"], 1),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=("bare", "chassis"))
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.port_file))
    else:
        asyncio.run(_measure())


if __name__ == "__main__":
    main()
