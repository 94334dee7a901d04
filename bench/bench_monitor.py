"""What monitoring costs and how much it takes: sustained ingest through NATS JetStream into chdb,
and the serving-path cost of emitting an event per call.

1. **Ingest.** A real nats-server (JetStream, temp store) and a real monitor process (chdb in a
   temp dir, consuming the stream). A publisher process publishes event batches as the chassis'
   NatsSink does (one ``EventBatch`` per message, ``Nats-Msg-Id`` = batch id, PubAck awaited) for
   ``--seconds``, as fast as the monitor keeps up with (a bounded backlog). The monitor's own
   counter of stored events and a count of the stored rows give ``stored``; ``lost = sent - stored``.
   The monitor's RSS is sampled every second: peak, and at the start and end of the sustained run.
2. **Serving overhead.** A chassis gRPC service (echo, 1 KiB) run as its own process, once plain
   and once emitting one inference event per call through ``runtime.event_emitter()`` (NATS
   transport), both running at once and driven by one client process at concurrency 16, in paired
   rounds (each round drives each variant for one window, in a random order): throughput and
   server CPU per call (the scheduler's count) are the medians over the rounds, and the overheads
   the medians of the per-round ratios, printed with their quartiles (the box's noise).
   ``serving_cpu_us_per_event`` is the server CPU per call with events minus without (one event
   per call: recording it, building and encoding its batch, publishing). Steadier on a loaded
   machine: ``emit_cpu_us_per_event`` (what the request path pays per event) and
   ``batch_cpu_us_per_event`` (building and serializing its batch, off the request path), the
   process CPU time of emitting and encoding 20,000 such events in this process.

Ends with one JSON line ``{"bench": "monitor_ingest", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from benchkit import cpu_s, free_port, peak_rss_mib, rss_mib, run_s

from infermesh_chassis.ready import wait_ready

SERVICE = "bench.Echo"
PAYLOAD = b"x" * 1024
BATCH = 1000
MODEL = "bench-churn"
SETTLE_S = 0.2
"""Seconds each serving window runs before it counts (connections and the emitter's batches settle)."""


def _wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def _read_int(path: Path) -> int:
    """The integer a file holds (0 when it does not exist yet or is being written)."""
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


# --- the publisher ----------------------------------------------------------------------------------


def _template() -> tuple[bytes, list[int]]:
    """One serialized EventBatch of BATCH model-gateway inference events, and the offset of each event id."""
    import numpy as np  # noqa: PLC0415

    from infermesh.common.v1 import events_pb2  # noqa: PLC0415
    from infermesh_chassis.events import EVENT_SCHEMA_VERSION  # noqa: PLC0415

    rng = np.random.default_rng(1)
    batch = events_pb2.EventBatch()
    now = time.time_ns()
    for i in range(BATCH):
        event = batch.events.add(
            event_id="0" * 32,
            schema_version=EVENT_SCHEMA_VERSION,
            request_id=uuid.uuid4().hex,
            time={"seconds": now // 1_000_000_000, "nanos": now % 1_000_000_000},
            source={"service": "model-gateway", "instance": "bench-gw"},
            inference={
                "model": MODEL,
                "model_version": 1 + i % 2,
                "worker": f"triton-{i % 3}",
                "latency_ms": float(rng.lognormal(0.5, 0.4)),
                "status_code": 14 if i % 200 == 0 else 0,
                "batch_size": 1,
                "hop_latencies": [{"hop": "triton", "latency_ms": 0.8}],
                "outputs": [
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": [1, 2],
                        "raw_contents": np.array([0.3, 0.7], dtype=np.float32).tobytes(),
                    }
                ],
            },
        )
        if i % 100 == 0:
            event.inference.sampled_inputs["input"].double_list.values.extend(rng.normal(size=4).tolist())
    payload = batch.SerializeToString()
    offsets, start = [], 0
    marker = b"\n\x20" + b"0" * 32
    while (found := payload.find(marker, start)) >= 0:
        offsets.append(found + 2)
        start = found + 34
    assert len(offsets) == BATCH, "event ids not found in the template"
    return payload, offsets


async def _publish(url: str, seconds: float, max_backlog: int, progress: Path) -> None:
    from infermesh_chassis.events import batch_id, connect_nats, ensure_stream  # noqa: PLC0415
    from infermesh_chassis.settings import EventSettings  # noqa: PLC0415

    settings = EventSettings(nats_url=url)
    template, offsets = _template()
    nc = await connect_nats(settings, "bench-publisher")
    js = nc.jetstream(timeout=10)
    await ensure_stream(js, settings)
    prefix = os.urandom(8).hex()
    sent = 0
    in_flight: set[asyncio.Task[object]] = set()
    began = time.monotonic()
    next_report = began
    while time.monotonic() - began < seconds:
        stored = _read_int(progress)
        if sent - stored > max_backlog or len(in_flight) >= 8:
            if in_flight:
                _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(0.01)
            continue
        payload = bytearray(template)
        ids = []
        for i, offset in enumerate(offsets):
            event_id = f"{prefix}{sent + i:016x}"
            payload[offset : offset + 32] = event_id.encode()
            ids.append(event_id)
        headers = {"Nats-Msg-Id": batch_id(ids)}
        in_flight.add(
            asyncio.ensure_future(js.publish("infermesh.events.model-gateway", bytes(payload), headers=headers))
        )
        sent += BATCH
        if time.monotonic() >= next_report:
            next_report += 1.0
    if in_flight:
        await asyncio.gather(*in_flight)
    elapsed = time.monotonic() - began
    await nc.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "sent": sent,
                "publish_s": elapsed,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mib": peak_rss_mib(os.getpid()),
            }
        ),
        flush=True,
    )


# --- the serving-path measurement ------------------------------------------------------------------


class _Inference:
    """The event payload a gateway records per call (plain values; see infermesh_chassis.events)."""

    __slots__ = ("latency_ms", "output", "worker")
    KIND = "inference"

    def __init__(self, worker: str, latency_ms: float, output: bytes) -> None:
        self.worker = worker
        self.latency_ms = latency_ms
        self.output = output

    def fields(self) -> dict[str, object]:
        return {
            "model": MODEL,
            "model_version": 1,
            "worker": self.worker,
            "latency_ms": self.latency_ms,
            "batch_size": 1,
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": (1, 2), "raw_contents": self.output}],
        }


async def _serve(kind: str, port_file: Path, nats_url: str) -> None:
    from infermesh_chassis.app import Runtime  # noqa: PLC0415
    from infermesh_chassis.events import EventSource  # noqa: PLC0415
    from infermesh_chassis.logs import configure_logging  # noqa: PLC0415
    from infermesh_chassis.settings import ServiceSettings  # noqa: PLC0415

    configure_logging("bench-serving", "WARNING")
    settings = ServiceSettings(service_name="bench-serving", events={"transport": "nats", "nats_url": nats_url})
    runtime = Runtime.create(settings)
    emitter = runtime.event_emitter() if kind == "emit" else None
    source = EventSource("model-gateway", "bench-1")

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        began = time.perf_counter()
        if emitter is not None:
            emitter.emit(source, _Inference("triton-0", (time.perf_counter() - began) * 1000, b"\0" * 8))
        return request

    handler = grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    runtime.server.add_generic_handlers([handler], SERVICE)
    await runtime.server.start()
    await asyncio.to_thread(port_file.write_text, str(runtime.server.port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runtime.close()


async def _drive(
    echo: grpc.aio.UnaryUnaryMultiCallable, concurrency: int, seconds: float, server_pid: int
) -> tuple[float, float]:
    """Calls per second at ``concurrency`` over one window of ``seconds`` (after a short settle), and
    the server's CPU microseconds per call in it (the scheduler's count, to the nanosecond)."""
    done = 0
    measuring = False
    stop_at = time.monotonic() + SETTLE_S + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await echo(PAYLOAD, timeout=5)
            if measuring:
                done += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    await asyncio.sleep(SETTLE_S)
    measuring = True
    began = time.monotonic()
    cpu_before = run_s(server_pid)
    await asyncio.gather(*workers)
    cpu = run_s(server_pid) - cpu_before
    return done / (time.monotonic() - began), cpu / max(1, done) * 1e6


def _start_server(kind: str, workdir: Path, nats_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / f"{kind}.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port-file", str(port_file), "--nats", nats_url]
    )
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{kind} server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


async def _serving_overhead(workdir: Path, nats_url: str, rounds: int, seconds: float) -> dict[str, float]:
    """Both variants served at once; ``rounds`` rounds, each driving every variant for one window of
    ``seconds``, in a random order: medians over the rounds of each variant's throughput and CPU per
    call, and of the per-round overheads (with their quartiles, the box's noise)."""
    servers = {kind: _start_server(kind, workdir, nats_url) for kind in ("plain", "emit")}
    runs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in servers}
    try:
        channels = {kind: grpc.aio.insecure_channel(address) for kind, (_, address) in servers.items()}
        echoes = {kind: channel.unary_unary(f"/{SERVICE}/Echo") for kind, channel in channels.items()}
        for kind, echo in echoes.items():  # warm both up before the first window
            await _drive(echo, 16, 1.0, servers[kind][0].pid)
        order = list(servers)
        for _ in range(rounds):
            random.shuffle(order)
            for kind in order:
                runs[kind].append(await _drive(echoes[kind], 16, seconds, servers[kind][0].pid))
        rss = {kind: peak_rss_mib(proc.pid) for kind, (proc, _) in servers.items()}
        for channel in channels.values():
            await channel.close()
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=20)
    plain, emit = runs["plain"], runs["emit"]
    rps_overheads = [(1 - e[0] / p[0]) * 100 for p, e in zip(plain, emit, strict=True)]
    cpu_overheads = [(e[1] / p[1] - 1) * 100 for p, e in zip(plain, emit, strict=True)]
    rps_q = statistics.quantiles(rps_overheads, n=4)
    cpu_q = statistics.quantiles(cpu_overheads, n=4)
    return {
        "plain_rps": statistics.median(r[0] for r in plain),
        "emit_rps": statistics.median(r[0] for r in emit),
        "overhead_pct": rps_q[1],
        "overhead_pct_q1": rps_q[0],
        "overhead_pct_q3": rps_q[2],
        "plain_cpu_us_per_call": statistics.median(r[1] for r in plain),
        "emit_cpu_us_per_call": statistics.median(r[1] for r in emit),
        "cpu_overhead_pct": cpu_q[1],
        "cpu_overhead_pct_q1": cpu_q[0],
        "cpu_overhead_pct_q3": cpu_q[2],
        "cpu_us_per_event": statistics.median(e[1] - p[1] for p, e in zip(plain, emit, strict=True)),
        "plain_peak_rss_mib": rss["plain"],
        "emit_peak_rss_mib": rss["emit"],
    }


async def _event_cost(events: int = 20_000) -> dict[str, float]:
    """CPU per event, in this process, of what the serving code pays (``emit``) and of what the
    emitter's background task pays (building and serializing the batch), with the echo's payload.
    Process CPU time of a tight loop: steadier on a loaded machine than the throughput difference."""
    from infermesh_chassis.events import EventEmitter, EventSource, encode_events  # noqa: PLC0415
    from infermesh_chassis.metrics import Metrics  # noqa: PLC0415
    from infermesh_chassis.settings import EventSettings  # noqa: PLC0415

    settings = EventSettings(buffer_size=events)
    emitter = EventEmitter(sink=None, settings=settings, metrics=Metrics("bench-cost"))  # type: ignore[arg-type]
    source = EventSource("model-gateway", "bench-1")
    output = b"\0" * 8
    began = time.process_time()
    for i in range(events):
        emitter.emit(source, _Inference("triton-0", 0.01 * i, output))
    emitted = time.process_time()
    records = list(emitter._buffer)  # what the background task takes, batch by batch
    batch_began = time.process_time()
    for start in range(0, events, settings.batch_size):
        await encode_events(records[start : start + settings.batch_size])
    built = time.process_time()
    return {
        "emit_us": (emitted - began) / events * 1e6,
        "batch_us": (built - batch_began) / events * 1e6,
    }


# --- the ingest measurement ------------------------------------------------------------------------


def _scrape(port: int, name: str) -> float:
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def _stored_rows(address: str) -> int:
    from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc  # noqa: PLC0415

    async with grpc.aio.insecure_channel(address) as channel:
        reply = await monitor_pb2_grpc.MonitorServiceStub(channel).QueryStats(
            monitor_pb2.QueryStatsRequest(
                window=monitor_pb2.STATS_WINDOW_1H, filter=monitor_pb2.StatsFilter(model=MODEL)
            ),
            timeout=60,
        )
    return sum(row.count for row in reply.rows)


def _start_nats(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js",
         "-sd", str(workdir / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_port(port)
    return proc, f"nats://127.0.0.1:{port}"


def _start_monitor(workdir: Path, nats_url: str) -> tuple[subprocess.Popen[bytes], int, int]:
    config, ready_file = workdir / "monitor.yaml", workdir / "monitor.ready"
    config.write_text(
        json.dumps(
            {
                "grpc": {"port": 0},
                "metrics": {"port": 0},
                "logging": {"level": "WARNING"},
                "storage": {"chdb_path": str(workdir / "chdb")},
                "events": {"nats_url": nats_url, "unit_id_hash_key": secrets.token_hex(16)},
                "ingest": {"nats_enabled": True, "fetch_batch": 128, "fetch_timeout_s": 0.5},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    argv = [sys.executable, "-m", "infermesh_monitor", "--config", str(config), "--ready-file", str(ready_file)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    ready = wait_ready(ready_file, proc.pid, 120, exited=proc.poll)
    return proc, ready.grpc_port, ready.metrics_port or 0


def _ingest(workdir: Path, nats: subprocess.Popen[bytes], nats_url: str, seconds: float) -> dict[str, float]:
    """Publish for ``seconds`` and wait until the monitor stored everything; figures of the run."""
    monitor, grpc_port, metrics_port = _start_monitor(workdir, nats_url)
    try:
        progress = workdir / "stored"
        publisher = subprocess.Popen(
            [sys.executable, __file__, "--publish", nats_url, "--seconds", str(seconds),
             "--progress", str(progress), "--backlog", str(300 * BATCH)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        began = time.monotonic()
        cpu_before = {"monitor": cpu_s(monitor.pid), "nats": cpu_s(nats.pid)}
        rss: list[tuple[float, float]] = []
        stored = 0.0
        while publisher.poll() is None:
            stored = _scrape(metrics_port, "infermesh_monitor_events_ingested_total")
            progress.write_text(str(int(stored)))
            rss.append((time.monotonic() - began, rss_mib(monitor.pid)))
            time.sleep(0.25)
        out, _ = publisher.communicate()
        published = json.loads(out.strip().splitlines()[-1])
        deadline = time.monotonic() + 300
        while stored < published["sent"] and time.monotonic() < deadline:
            time.sleep(0.2)
            stored = _scrape(metrics_port, "infermesh_monitor_events_ingested_total")
            rss.append((time.monotonic() - began, rss_mib(monitor.pid)))
        ingest_s = time.monotonic() - began
        steady = [value for t, value in rss if t >= 2.0]
        third = max(1, len(steady) // 3)
        return {
            "sent": published["sent"],
            "stored": stored,
            "rows": asyncio.run(_stored_rows(f"127.0.0.1:{grpc_port}")),
            "ingest_s": ingest_s,
            "publish_s": published["publish_s"],
            "monitor_cpu_s": cpu_s(monitor.pid) - cpu_before["monitor"],
            "nats_cpu_s": cpu_s(nats.pid) - cpu_before["nats"],
            "publisher_cpu_s": published["cpu_s"],
            "publisher_peak_rss_mib": published["peak_rss_mib"],
            "monitor_rss_start_mib": sum(steady[:third]) / third if steady else float("nan"),
            "monitor_rss_end_mib": sum(steady[-third:]) / third if steady else float("nan"),
            "monitor_peak_rss_mib": peak_rss_mib(monitor.pid),
            "nats_peak_rss_mib": peak_rss_mib(nats.pid),
        }
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=60)


def _measure(seconds: float, rounds: int, serving_seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        nats, nats_url = _start_nats(workdir)
        try:
            ingest = _ingest(workdir, nats, nats_url, seconds)
            serving = asyncio.run(_serving_overhead(workdir, nats_url, rounds, serving_seconds))
            cost = asyncio.run(_event_cost())
        finally:
            nats.terminate()
            nats.wait(timeout=20)

    sent, stored, rows = int(ingest["sent"]), int(ingest["stored"]), int(ingest["rows"])
    result = {
        "bench": "monitor_ingest",
        "events_per_s": round(stored / ingest["ingest_s"]),
        "sent": sent,
        "stored": stored,
        "stored_rows": rows,
        "lost": sent - rows,
        "duplicates": stored - sent,
        "ingest_s": round(ingest["ingest_s"], 1),
        "publish_events_per_s": round(sent / ingest["publish_s"]),
        "monitor_cpu_us_per_event": round(ingest["monitor_cpu_s"] / max(1, stored) * 1e6, 2),
        "nats_cpu_us_per_event": round(ingest["nats_cpu_s"] / max(1, stored) * 1e6, 2),
        "publisher_cpu_us_per_event": round(ingest["publisher_cpu_s"] / max(1, sent) * 1e6, 2),
        "monitor_rss_start_mib": round(ingest["monitor_rss_start_mib"], 1),
        "monitor_rss_end_mib": round(ingest["monitor_rss_end_mib"], 1),
        "monitor_peak_rss_mib": round(ingest["monitor_peak_rss_mib"], 1),
        "nats_peak_rss_mib": round(ingest["nats_peak_rss_mib"], 1),
        "publisher_peak_rss_mib": round(ingest["publisher_peak_rss_mib"], 1),
        "serving_plain_rps": round(serving["plain_rps"]),
        "serving_emit_rps": round(serving["emit_rps"]),
        "serving_overhead_pct": round(serving["overhead_pct"], 2),
        "serving_plain_cpu_us_per_call": round(serving["plain_cpu_us_per_call"], 1),
        "serving_emit_cpu_us_per_call": round(serving["emit_cpu_us_per_call"], 1),
        "serving_cpu_overhead_pct": round(serving["cpu_overhead_pct"], 2),
        "serving_cpu_us_per_event": round(serving["cpu_us_per_event"], 1),
        "emit_cpu_us_per_event": round(cost["emit_us"], 2),
        "batch_cpu_us_per_event": round(cost["batch_us"], 2),
        "serving_overhead_pct_q1": round(serving["overhead_pct_q1"], 2),
        "serving_overhead_pct_q3": round(serving["overhead_pct_q3"], 2),
        "serving_cpu_overhead_pct_q1": round(serving["cpu_overhead_pct_q1"], 2),
        "serving_cpu_overhead_pct_q3": round(serving["cpu_overhead_pct_q3"], 2),
        "serving_rounds": rounds,
        "serving_plain_peak_rss_mib": round(serving["plain_peak_rss_mib"], 1),
        "serving_emit_peak_rss_mib": round(serving["emit_peak_rss_mib"], 1),
        "bench_peak_rss_mib": round(peak_rss_mib(os.getpid()), 1),
    }
    print(f"ingest: {result['sent']} sent, {result['stored']} stored in {result['ingest_s']} s"
          f" = {result['events_per_s']} events/s (publisher {result['publish_events_per_s']}/s),"
          f" lost {result['lost']}")  # fmt: skip
    print(f"monitor RSS MiB: start {result['monitor_rss_start_mib']}, end {result['monitor_rss_end_mib']},"
          f" peak {result['monitor_peak_rss_mib']}; nats {result['nats_peak_rss_mib']}")  # fmt: skip
    print(f"serving at concurrency 16 ({rounds} paired rounds, medians): plain {result['serving_plain_rps']} rps,"
          f" with emitter {result['serving_emit_rps']} rps, overhead {result['serving_overhead_pct']}%"
          f" (rounds' quartiles {result['serving_overhead_pct_q1']} / {result['serving_overhead_pct_q3']});"
          f" server CPU per call {result['serving_plain_cpu_us_per_call']} vs"
          f" {result['serving_emit_cpu_us_per_call']} us, +{result['serving_cpu_overhead_pct']}%"
          f" ({result['serving_cpu_overhead_pct_q1']} / {result['serving_cpu_overhead_pct_q3']})")  # fmt: skip
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the publisher publishes")
    parser.add_argument("--rounds", type=int, default=16, help="paired serving rounds (one window per variant each)")
    parser.add_argument("--serving-seconds", type=float, default=1.5, help="length of one serving window")
    parser.add_argument("--serve", choices=("plain", "emit"))
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--nats")
    parser.add_argument("--publish")
    parser.add_argument("--progress", type=Path)
    parser.add_argument("--backlog", type=int, default=40 * BATCH)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.port_file, args.nats))
    elif args.publish:
        asyncio.run(_publish(args.publish, args.seconds, args.backlog, args.progress))
    else:
        _measure(args.seconds, args.rounds, args.serving_seconds)


if __name__ == "__main__":
    main()
