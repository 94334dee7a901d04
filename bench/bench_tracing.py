"""What tracing costs a serving hop, and how many spans a second the monitor stores.

A server process runs two chassis servers, ``front`` and ``back``: each ``Forward`` call to the front
makes one downstream call to the back through ``ServiceClient``, so a request is two server spans and
one client span, the chassis' whole tracing path. The same process is started with tracing off (twice:
the second one measures the method's own noise), with tracing off but a random ``traceparent`` beside
the request id on every downstream call (what one more metadata entry costs gRPC), at sample ratio
0.01 and at 1.0, exporting to a real monitor (chdb); all five run at once. One grpc.aio client drives
them in short windows at concurrency 16, every mode once per round in a new order, for ``ROUNDS``
rounds. The cost of a mode is the median over the rounds of its server process' CPU time per request
against tracing off in the same round (CPU, not throughput, and paired in time: the box is shared,
and its speed swings twofold between minutes); the quartiles of the rounds are printed beside it.

CPU time on a shared box still moves by several percent from one window to the next, more than the
cost at 0.01, so the same requests are also counted in machine instructions: each of off, 0.01 and
1.0 runs again under callgrind (valgrind, from Debian), which counts what the server process executes
per request at concurrency 16 whatever the box does meanwhile. Then Export calls of 512 spans each go
straight to the monitor: spans stored per second. Ends with one JSON line ``{"bench": "tracing", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import grpc
from benchkit import drive, run_s
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from infermesh_chassis.ready import wait_ready
from infermesh_chassis.testing import debian_tool

SERVICE = "bench.Echo"
PAYLOAD = b"x" * 256
CONCURRENCY = 16
MODES = ("off", "off-again", "header", "0.01", "1.0")
"""``off-again``: a second server with tracing off, measured like the others against the first: what the
method reads when nothing differs (its median should be near 0; its quartiles are the box's noise)."""
"""``header``: tracing off, but every downstream call carries a random W3C ``traceparent`` beside its
``x-request-id``: what one more metadata entry costs gRPC (at 0.01, a trace the mesh starts carries its
request id inside the ``traceparent``, so a hop sends one entry, as with tracing off)."""
ROUNDS = 24
"""Rounds of the interleaved comparison (see the module docstring)."""
WINDOW_S = 1.0
"""Measured seconds of one mode in one round (after a short warm-up of its own)."""
EXPORT_BATCH = 512
EXPORTS = 40
COUNTED = 1600
"""Requests whose instructions callgrind counts, per mode (after ``WARM_COUNTED`` uncounted ones)."""
WARM_COUNTED = 320


async def _serve(mode: str, endpoint: str, port_file: Path, export_interval_s: float) -> None:
    from infermesh_chassis.client import ChannelPool, ServiceClient  # noqa: PLC0415  (the server process only)
    from infermesh_chassis.discovery import DiscoverySettings, StaticDiscovery  # noqa: PLC0415
    from infermesh_chassis.logs import configure_logging  # noqa: PLC0415
    from infermesh_chassis.metrics import Metrics  # noqa: PLC0415
    from infermesh_chassis.server import GrpcServer  # noqa: PLC0415
    from infermesh_chassis.settings import ClientSettings, ServiceSettings, TracingSettings  # noqa: PLC0415
    from infermesh_chassis.tracing import Tracing  # noqa: PLC0415

    configure_logging("bench-tracing", "WARNING")
    traced = mode not in ("off", "off-again", "header")
    tracing_settings = TracingSettings(
        endpoint=endpoint if traced else "",
        sample_ratio=float(mode) if traced else 0.0,
        export_interval_s=export_interval_s,
    )

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    def start(name: str, handler: object) -> GrpcServer:
        metrics = Metrics(name)
        server = GrpcServer(
            ServiceSettings(service_name=name),
            metrics=metrics,
            tracing=Tracing.create(tracing_settings, name, metrics),
        )
        server.add_generic_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(handler)})],
            SERVICE,
        )
        return server

    back = start("back", echo)
    await back.start()
    metrics = Metrics("front-client")

    class Stub:
        def __init__(self, channel: grpc.aio.Channel) -> None:
            self.Echo = channel.unary_unary(f"/{SERVICE}/Echo")

    downstream = ServiceClient(
        "back",
        Stub,
        discovery=StaticDiscovery(DiscoverySettings(static={"back": [back.address]})),
        channels=ChannelPool(metrics),
        settings=ClientSettings(),
        tracing=Tracing.create(tracing_settings, "front", metrics),
    )

    async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if mode == "header":
            traceparent = f"00-{random.getrandbits(128) | 1:032x}-{random.getrandbits(64) | 1:016x}-00"
            return await downstream.call("Echo", request, metadata=(("traceparent", traceparent),))  # type: ignore[no-any-return]
        return await downstream.call("Echo", request)  # type: ignore[no-any-return]

    front = start("front", forward)
    await front.start()
    await asyncio.to_thread(port_file.write_text, str(front.port))
    await asyncio.Event().wait()


def _start_monitor(workdir: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    config, ready_file = workdir / "monitor.yaml", workdir / "monitor.ready"
    config.write_text(
        json.dumps(
            {
                "grpc": {"port": 0},
                "metrics": {"port": 0},
                "logging": {"level": "WARNING"},
                "storage": {"chdb_path": str(workdir / "chdb")},
                "events": {"unit_id_hash_key": secrets.token_hex(16)},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    argv = [sys.executable, "-m", "infermesh_monitor", "--config", str(config), "--ready-file", str(ready_file)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    ready = wait_ready(ready_file, proc.pid, 120, exited=proc.poll)
    return proc, f"127.0.0.1:{ready.grpc_port}", ready.metrics_port or 0


def _start_server(
    mode: str, endpoint: str, workdir: Path, under: tuple[str, ...] = (), export_interval_s: float = 1.0
) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / f"{mode}-{time.monotonic_ns()}.port"
    argv = [*under, sys.executable, __file__, "--serve", mode, "--endpoint", endpoint, "--port-file", str(port_file)]
    proc = subprocess.Popen(
        [*argv, "--export-interval-s", str(export_interval_s)], stderr=subprocess.DEVNULL if under else None
    )
    deadline = time.monotonic() + (300 if under else 30)
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the {mode} server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


async def _window(echo: grpc.aio.UnaryUnaryMultiCallable, pid: int) -> dict[str, float]:
    """One mode's figures over one window: throughput, latency, and its server's CPU per request."""

    async def call(_: int) -> object:
        return await echo(PAYLOAD, timeout=5)

    await drive(call, CONCURRENCY, warmup_s=0.0, duration_s=0.2)
    cpu_before = run_s(pid)
    figures = await drive(call, CONCURRENCY, warmup_s=0.0, duration_s=WINDOW_S)
    figures["cpu_us_per_request"] = (run_s(pid) - cpu_before) / (figures["rps"] * WINDOW_S) * 1e6
    return figures


async def _rounds(servers: dict[str, tuple[subprocess.Popen[bytes], str]]) -> dict[str, list[dict[str, float]]]:
    """Every mode's figures in each round, the modes in a new order each round."""
    order = random.Random(15)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    channels = {mode: grpc.aio.insecure_channel(address) for mode, (_, address) in servers.items()}
    try:
        echoes = {mode: channel.unary_unary(f"/{SERVICE}/Echo") for mode, channel in channels.items()}
        for mode in MODES:  # connections up and code warm before the first round
            await _window(echoes[mode], servers[mode][0].pid)
        for _ in range(ROUNDS):
            for mode in order.sample(MODES, len(MODES)):
                runs[mode].append(await _window(echoes[mode], servers[mode][0].pid))
    finally:
        for channel in channels.values():
            await channel.close()
    return runs


async def _instructions_per_request(mode: str, endpoint: str, workdir: Path, valgrind: str) -> float:
    """Machine instructions the server process runs per request (callgrind counts them, the same on a
    busy box as on an idle one), over ``COUNTED`` requests at concurrency 16 after a warm-up.

    Under callgrind the process runs about 50 times slower, so its export interval is stretched as
    much: spans reach the exporter at the same rate per request as at full speed."""
    out = workdir / f"callgrind.{mode}"
    under = (valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
    proc, address = await asyncio.to_thread(_start_server, mode, endpoint, workdir, under, 50.0)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            echo = channel.unary_unary(f"/{SERVICE}/Echo")

            async def calls(count: int) -> None:
                async def caller() -> None:
                    for _ in range(count // CONCURRENCY):
                        await echo(PAYLOAD, timeout=120)

                await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))

            await calls(WARM_COUNTED)
            for step in ("-i on", "", "-i off", "-d"):
                if not step:
                    await calls(COUNTED)
                    continue
                await asyncio.to_thread(
                    subprocess.run, ["callgrind_control", *step.split(), str(proc.pid)], check=True, capture_output=True
                )
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 120)
    return await asyncio.to_thread(_counted, workdir, mode)


def _counted(workdir: Path, mode: str) -> float:
    """Instructions per counted request, from the dump callgrind wrote when told (``-d``)."""
    totals = [
        int(line.split()[1])
        for dump in workdir.glob(f"callgrind.{mode}*")
        for line in dump.read_text().splitlines()
        if line.startswith("totals:")
    ]
    return max(totals) / COUNTED


async def _instructions(endpoint: str, workdir: Path) -> dict[str, float]:
    """Instructions per request of tracing off, 0.01 and 1.0, two at a time; empty without valgrind."""
    valgrind = await asyncio.to_thread(debian_tool, "valgrind", "valgrind")
    if valgrind is None:
        print("valgrind is not installed and apt-get could not install it: no instruction counts")
        return {}
    counted: dict[str, float] = {}
    for pair in (("off", "0.01"), ("1.0",)):
        figures = await asyncio.gather(*(_instructions_per_request(m, endpoint, workdir, valgrind) for m in pair))
        counted.update(zip(pair, figures, strict=True))
    return counted


def _export_request(batch: int) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "bench"
    spans = resource.scope_spans.add().spans
    now = time.time_ns()
    trace_id = os.urandom(16)
    for i in range(EXPORT_BATCH):
        span = spans.add(
            trace_id=trace_id if i % 8 else os.urandom(16),
            span_id=os.urandom(8),
            name="bench.Echo/Echo",
            kind=2,
            start_time_unix_nano=now + i * 1000,
            end_time_unix_nano=now + i * 1000 + 250_000 + batch,
        )
        span.attributes.add(key="infermesh.request_id").value.string_value = os.urandom(8).hex()
        span.attributes.add(key="infermesh.scene").value.string_value = "bench"
    return request


async def _stored_per_s(address: str) -> float:
    requests = [_export_request(i) for i in range(EXPORTS)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        await stub.Export(requests[0], timeout=30)  # the first insert warms the table up
        began = time.perf_counter()
        for request in requests[1:]:
            await stub.Export(request, timeout=30)
        return (EXPORTS - 1) * EXPORT_BATCH / (time.perf_counter() - began)


def _unsampled_path_us() -> float:
    """Microseconds tracing adds to one unsampled request of this bench (two server calls, one client
    call), measured in this process without the noise of the shared box: the steady-state cost at 0.01."""
    from infermesh_chassis import context as ctx  # noqa: PLC0415
    from infermesh_chassis.settings import TracingSettings  # noqa: PLC0415
    from infermesh_chassis.tracing import Tracing  # noqa: PLC0415

    tracing = Tracing.create(TracingSettings(endpoint="127.0.0.1:9", sample_ratio=0.0), "bench")
    assert tracing is not None

    def request() -> None:
        front = ctx.CallContext("rid", None, "/bench.Echo/Echo", tracing)
        token = ctx.bind(front)
        tracing.start_server("bench.Echo/Echo", None, "rid", front)
        _, traceparent = tracing.start_client("bench.Echo/Echo", "127.0.0.1:1", front)
        tracing.start_server("bench.Echo/Echo", traceparent, "rid", ctx.CallContext("rid", None, "", tracing))
        ctx.unbind(token)

    def baseline() -> None:
        token = ctx.bind(ctx.CallContext("rid", None, "/bench.Echo/Echo", None))
        ctx.CallContext("rid", None, "", None)
        ctx.unbind(token)

    n = 20_000
    best = min(timeit.timeit(request, number=n) - timeit.timeit(baseline, number=n) for _ in range(5))
    return best / n * 1e6


async def _measure() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        monitor, address, _ = _start_monitor(workdir)
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for mode in MODES:
                servers[mode] = _start_server(mode, address, workdir)
            runs = await _rounds(servers)
            instructions = await _instructions(address, workdir)
            figures = {mode: {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]} for mode in MODES}
            stored_per_s = await _stored_per_s(address)
        finally:
            for proc in [*(proc for proc, _ in servers.values()), monitor]:
                proc.terminate()
                proc.wait(timeout=30)

    def overheads(mode: str) -> list[float]:
        """The mode's CPU per request against tracing off in the same round, %, one per round (sorted)."""
        paired = zip(runs[mode], runs["off"], strict=True)
        return sorted((m["cpu_us_per_request"] / o["cpu_us_per_request"] - 1) * 100 for m, o in paired)

    def overhead(mode: str) -> float:
        return round(statistics.median(overheads(mode)), 1)

    print(f"{'tracing':8} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}  CPU vs off, % (rounds' quartiles)")
    for mode, f in figures.items():
        row = f"{mode:8} {f['rps']:>8.0f} {f['p50_ms']:>8.3f} {f['p99_ms']:>8.3f} {f['cpu_us_per_request']:>11.1f}"
        if mode == "off":
            print(row)
            continue
        q1, q2, q3 = statistics.quantiles(overheads(mode), n=4)
        print(f"{row}  {q1:+.1f} / {q2:+.1f} / {q3:+.1f}")
    print(f"spans stored by the monitor: {stored_per_s:.0f}/s (Export calls of {EXPORT_BATCH})")
    off = figures["off"]["cpu_us_per_request"]
    unsampled_us = _unsampled_path_us()
    print(f"an unsampled request's tracing path: {unsampled_us:.1f} us ({unsampled_us / off * 100:.2f}% of its CPU)")

    if instructions:
        print(f"instructions per request (callgrind): {', '.join(f'{m} {n:,.0f}' for m, n in instructions.items())}")

    def counted_overhead(mode: str) -> float | None:
        return round((instructions[mode] / instructions["off"] - 1) * 100, 2) if instructions else None

    result = {
        "bench": "tracing",
        "overhead_pct_ratio_001": overhead("0.01"),
        "overhead_pct_ratio_1": overhead("1.0"),
        "overhead_pct_traceparent_only": overhead("header"),
        "overhead_pct_off_again": overhead("off-again"),
        "spans_per_s_stored": round(stored_per_s),
        "cpu_us_per_request_off": round(off, 1),
        "unsampled_added_us_per_request": round(unsampled_us, 2),
        "rps_off": round(figures["off"]["rps"]),
        "rps_ratio_001": round(figures["0.01"]["rps"]),
        "rps_ratio_1": round(figures["1.0"]["rps"]),
        "instructions_per_request_off": round(instructions["off"]) if instructions else None,
        "overhead_pct_ratio_001_instructions": counted_overhead("0.01"),
        "overhead_pct_ratio_1_instructions": counted_overhead("1.0"),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=MODES)
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--export-interval-s", type=float, default=1.0)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.endpoint, args.port_file, args.export_interval_s))
    else:
        asyncio.run(_measure())


if __name__ == "__main__":
    main()
