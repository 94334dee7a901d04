"""Streaming inference against PredictBatch: the same scene scored from a JetStream stream and through
the ``PredictBatch`` RPC, same mesh, same run.

The mesh is bench_mesh's, from meshkit.py (each service its own process: the data gateway on the churn example, the
model gateway with one embedded ``tritonserver`` serving a logistic regression, the business center
on the example scene with its experiment paused), with a ``nats-server`` (JetStream on disk) beside
it and the scene bound to the stream ``BENCH_TXN`` (protobuf ``PredictRequest`` per message on
``bench.txn``, results on ``bench.txn.scored``, batches of 128). Events are off in every process.

- **PredictBatch** (the reference): one grpc.aio client sends PredictBatch calls of 128 items at
  concurrency 4 for a few seconds: items per second, and the CPU each process spent per item.
- **Stream throughput**: a burst of messages published to the input (publication acknowledged by
  JetStream, several in flight) while the business center consumes: messages per second from the first
  publication to the last result, and the CPU each process spent per message.
- **End to end**: messages published at half that rate for a few seconds; the time from each
  publication to its result arriving at a subscriber of the output subject (p50, p99).
- **Nothing lost or doubled**: the output stream is read back and counted by ``Nats-Msg-Id``.
- **Degraded**: the answers flagged degraded in each run (``degraded``, ``predict_batch_degraded``):
  fallbacks cost less than the scoring they stand in for, so CPU figures of runs with many do not
  compare (a starved machine misses deadlines).

Prints both beside each other, the ratio stream/PredictBatch, CPU per message per process and the peak
RSS (VmHWM) of the business center and NATS, and ends with one JSON line ``{"bench": "streaming", ...}``.
Goal (issue 16): at least 5,000 messages/s with nothing lost or doubled.

``--profile PREFIX`` also samples the business center, the data gateway and the model gateway with
``py-spy record --nonblocking`` (Python frames, never pausing them) from the burst's first publication
to its last result, and writes their flame graphs to ``PREFIX-<process>.svg``
(``bench/profiles/streaming/``). The bench's own process (publisher and result subscriber) shares the
cores too: its CPU per message is reported as ``client``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.errors
import yaml
from benchkit import children, cpu_s, drive, free_port, peak_rss_mib, process_name
from google.protobuf import json_format
from meshkit import API_KEY, CUSTOMERS, Service, biz_settings, start_mesh
from nats.js import api as js_api

from infermesh.bizcenter.v1 import biz_center_pb2 as bz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as bz_grpc

STREAM = "BENCH_TXN"
SUBJECT = "bench.txn"
OUTPUT = "bench.txn.scored"
BATCH = 128
BATCH_CONCURRENCY = 4
BURST = int(os.environ.get("BENCH_STREAM_MESSAGES", "20000"))
PACED_S = 3.0
DURATION_S = 4.0
WARMUP_S = 1.0
WAIT_S = 180.0
GOAL_MSGS_PER_S = 5000
PY_SPY = Path(sys.executable).with_name("py-spy")


def _start_nats(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    binary = Path(sys.executable).parent / "nats-server"
    argv = [str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir / "jetstream")]
    process = subprocess.Popen(argv, stdout=(workdir / "nats.log").open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"nats://127.0.0.1:{port}"
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"nats-server did not start: {(workdir / 'nats.log').read_text()[-2000:]}")
        time.sleep(0.05)


def _bound_seed(seed: Path) -> Path:
    """The bench scene file with the scene bound to ``bench.txn``."""
    data = yaml.safe_load(seed.read_text())
    binding = bz.StreamBinding(
        name="txn",
        stream=STREAM,
        subjects=[SUBJECT],
        format=bz.STREAM_FORMAT_PROTOBUF,
        output_subject=OUTPUT,
        batch_size=BATCH,
        max_ack_pending=4 * BATCH,
        enabled=True,
    )
    scene = data["scenes"][0]
    scene["stream_bindings"] = [json_format.MessageToDict(binding, preserving_proto_field_name=True)]
    # the example's rate limit (2,000/s) and concurrency cap (64) would refuse part of both runs
    scene.pop("rate_limit", None)
    scene.pop("max_concurrency", None)
    data["version"] = int(data.get("version", 1)) + 1
    path = seed.with_name("scenes-stream.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_s(pid) for name, pid in pids.items()}


def _per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    return {name: (after[name] - before[name]) / count * 1000 for name in before}


async def _predict_batch(address: str, pids: dict[str, int]) -> tuple[dict[str, float], dict[str, float]]:
    """PredictBatch of BATCH items at BATCH_CONCURRENCY: figures per call, CPU ms per item per process."""
    units = [[str(CUSTOMERS[(k + i) % len(CUSTOMERS)]) for i in range(BATCH)] for k in range(8)]
    requests = [
        bz.PredictBatchRequest(items=[bz.PredictRequest(scene="churn-score", unit_id=u) for u in batch])
        for batch in units
    ]
    metadata = (("x-api-key", API_KEY),)
    async with grpc.aio.insecure_channel(address) as channel:
        call_batch = bz_grpc.BizCenterServiceStub(channel).PredictBatch

        failed = degraded = 0

        async def call(n: int) -> object:
            nonlocal failed, degraded
            reply = await call_batch(requests[n % len(requests)], metadata=metadata, timeout=30)
            failed += sum(r.HasField("error") for r in reply.results)
            degraded += sum(r.response.degradation.degraded for r in reply.results)
            return reply

        before = _cpu(pids)
        figures = await drive(call, BATCH_CONCURRENCY, warmup_s=WARMUP_S, duration_s=DURATION_S)
        after = _cpu(pids)
    if failed:
        raise SystemExit(f"PredictBatch answered {failed} items with an error")
    items = figures["rps"] * (WARMUP_S + DURATION_S) * BATCH
    figures["items_per_s"] = figures["rps"] * BATCH
    figures["degraded"] = degraded
    return figures, _per(before, after, round(items))


class _Results:
    """Arrival time of each result on the output subject, by input id."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.latencies_ms: list[float] = []
        self.last = 0.0
        self.degraded = 0
        self.waiting: set[str] = set()
        self.done = asyncio.Event()

    async def on_result(self, msg: Any) -> None:
        headers = msg.headers or {}
        began = self.sent.pop(headers.get("Infermesh-Input-Id", ""), None)
        if began is None:
            return
        msg_id = headers["Infermesh-Input-Id"]
        self.degraded += headers.get("Infermesh-Degraded") == "true"
        now = time.perf_counter()
        self.latencies_ms.append((now - began) * 1000)
        self.last = now
        self.waiting.discard(msg_id)
        if not self.waiting:
            self.done.set()


async def _publish(js: Any, results: _Results, ids: list[str], payloads: list[bytes], in_flight: int = 256) -> None:
    results.waiting.update(ids)
    results.done.clear()
    for start in range(0, len(ids), in_flight):
        chunk = range(start, min(start + in_flight, len(ids)))
        for i in chunk:
            results.sent[ids[i]] = time.perf_counter()
        await asyncio.gather(
            *(js.publish(SUBJECT, payloads[i % len(payloads)], headers={"Nats-Msg-Id": ids[i]}) for i in chunk)
        )


async def _read_ids(js: Any) -> list[str]:
    """Every Nats-Msg-Id stored on the output subject."""
    subscription = await js.pull_subscribe(OUTPUT, stream=f"{STREAM}_RESULTS", config=js_api.ConsumerConfig(
        ack_policy=js_api.AckPolicy.NONE, deliver_policy=js_api.DeliverPolicy.ALL))  # fmt: skip
    ids: list[str] = []
    try:
        while True:
            try:
                messages = await subscription.fetch(2000, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                return ids
            ids.extend((m.headers or {}).get("Nats-Msg-Id", "") for m in messages)
    finally:
        await subscription.unsubscribe()


PROFILED = ("biz-center", "data-gateway", "model-gateway")
"""The processes ``--profile`` samples."""


async def _spy(pids: dict[str, int], profile: str | None) -> list[asyncio.subprocess.Process]:
    """``py-spy record`` on each of :data:`PROFILED` until :func:`_spied` stops them (none without ``profile``)."""
    if profile is None:
        return []
    Path(profile).parent.mkdir(parents=True, exist_ok=True)
    args = ["record", "--nonblocking", "--rate", "200", "--format", "flamegraph"]
    return [
        await asyncio.create_subprocess_exec(
            str(PY_SPY), *args, "--pid", str(pids[name]), "--output", f"{profile}-{name}.svg"
        )
        for name in PROFILED
    ]


async def _spied(spies: list[asyncio.subprocess.Process]) -> None:
    """Stop each ``py-spy record`` (SIGINT: it writes the flame graph) and wait for it."""
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        if await spy.wait() != 0:
            raise SystemExit(f"py-spy exited with {spy.returncode}: is ptrace allowed here (root, or CAP_SYS_PTRACE)?")


async def _stream(url: str, pids: dict[str, int], profile: str | None) -> dict[str, Any]:
    payloads = [bz.PredictRequest(scene="churn-score", unit_id=str(c)).SerializeToString() for c in CUSTOMERS]
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=30)
        results = _Results()
        await nc.subscribe(OUTPUT, cb=results.on_result)
        warm = [f"warm-{i}" for i in range(2 * BATCH)]
        await _publish(js, results, warm, payloads)
        await asyncio.wait_for(results.done.wait(), WAIT_S)
        results.latencies_ms.clear()

        burst = [f"burst-{i}" for i in range(BURST)]
        spies = await _spy(pids, profile)
        before = _cpu(pids)
        began = time.perf_counter()
        await _publish(js, results, burst, payloads)
        published_s = time.perf_counter() - began
        await asyncio.wait_for(results.done.wait(), WAIT_S)
        after = _cpu(pids)
        await _spied(spies)
        elapsed = results.last - began
        rate = BURST / elapsed
        cpu_ms = _per(before, after, BURST)

        results.latencies_ms.clear()
        paced_rate = rate / 2
        paced: list[str] = []
        tick = 0.01
        per_tick = max(1, round(paced_rate * tick))
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < PACED_S:
            ids = [f"paced-{n + i}" for i in range(per_tick)]
            n += per_tick
            paced.extend(ids)
            await _publish(js, results, ids, payloads)
            await asyncio.sleep(max(0.0, start + n / paced_rate - time.perf_counter()))
        await asyncio.wait_for(results.done.wait(), WAIT_S)
        latencies = sorted(results.latencies_ms)

        stored = await _read_ids(js)
        expected = set(warm) | set(burst) | set(paced)
        unique = set(stored)
        return {
            "msgs_per_s": rate,
            "publish_per_s": BURST / published_s,
            "cpu_ms": cpu_ms,
            "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[int(len(latencies) * 0.99)],
            "paced_rate": paced_rate,
            "paced_messages": len(paced),
            "lost": len(expected - unique),
            "duplicates": len(stored) - len(unique),
            "unexpected": len(unique - expected),
            "degraded": results.degraded,
        }
    finally:
        await nc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", metavar="PREFIX", help="flame graphs PREFIX-<process>.svg of the burst")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    services: list[Service] = []
    nats_process: subprocess.Popen[bytes] | None = None
    try:
        nats_process, url = _start_nats(workdir)
        data, model, reference, _ = start_mesh(workdir, services)
        reference.stop()  # the mesh's own business center: the bound one below serves both runs
        settings = biz_settings(workdir, data, model, "biz-stream.db")
        settings["config"]["seed_file"] = str(_bound_seed(Path(settings["config"]["seed_file"])))
        settings["streaming"] = {"nats_url": url}
        biz = Service("biz-center-stream", "infermesh_biz_center", workdir, settings)
        services.append(biz)
        biz.wait_serving()
        triton = next(p for p in children(model.process.pid) if process_name(p) == "tritonserver")
        pids = {
            "biz-center": biz.process.pid,
            "data-gateway": data.process.pid,
            "model-gateway": model.process.pid,
            "tritonserver": triton,
            "nats": nats_process.pid,
            "client": os.getpid(),
        } | {f"triton stub {stub}": stub for stub in children(triton)}
        batch, batch_cpu = asyncio.run(_predict_batch(biz.address, pids))
        stream = asyncio.run(_stream(url, pids, args.profile))
        rss = {"biz-center": peak_rss_mib(biz.process.pid), "nats": peak_rss_mib(nats_process.pid)}
        rss["client"] = peak_rss_mib(os.getpid())
    finally:
        for service in reversed(services):
            service.stop()
        if nats_process is not None:
            nats_process.terminate()
            nats_process.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)

    def triton_cpu(cpu: dict[str, float]) -> float:
        return cpu["tritonserver"] + sum(v for k, v in cpu.items() if k.startswith("triton stub"))

    ratio = stream["msgs_per_s"] / batch["items_per_s"]

    def mesh_cpu(cpu: dict[str, float]) -> float:
        return sum(v for k, v in cpu.items() if k != "client")

    print(
        f"{'path':12} {'msgs/s':>9} {'biz ms/msg':>10} {'dg ms/msg':>10} {'mg ms/msg':>10} {'triton':>8} {'nats':>8} "
        f"{'mesh':>8} {'client':>8}"
    )
    for name, rate, cpu in (
        ("PredictBatch", batch["items_per_s"], batch_cpu),
        ("stream", stream["msgs_per_s"], stream["cpu_ms"]),
    ):
        print(
            f"{name:12} {rate:>9.0f} {cpu['biz-center']:>10.3f} {cpu['data-gateway']:>10.3f} "
            f"{cpu['model-gateway']:>10.3f} {triton_cpu(cpu):>8.3f} {cpu['nats']:>8.3f} {mesh_cpu(cpu):>8.3f} "
            f"{cpu['client']:>8.3f}"
        )
    print(
        f"stream/PredictBatch {ratio:.2f}; burst of {BURST} published at {stream['publish_per_s']:.0f}/s; "
        f"end to end at {stream['paced_rate']:.0f} msgs/s: p50 {stream['p50_ms']:.1f} ms, "
        f"p99 {stream['p99_ms']:.1f} ms; "
        f"lost {stream['lost']}, duplicates {stream['duplicates']}, degraded {stream['degraded']} "
        f"(PredictBatch {batch['degraded']}); PredictBatch of {BATCH} at c{BATCH_CONCURRENCY}: "
        f"p99 {batch['p99_ms']:.1f} ms per call"
    )
    print("peak RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    result = {
        "bench": "streaming",
        "msgs_per_s": round(stream["msgs_per_s"]),
        "p99_ms_end_to_end": round(stream["p99_ms"], 2),
        "p50_ms_end_to_end": round(stream["p50_ms"], 2),
        "lost": stream["lost"],
        "duplicates": stream["duplicates"],
        "messages": BURST + stream["paced_messages"] + 2 * BATCH,
        "predict_batch_items_per_s": round(batch["items_per_s"]),
        "ratio": round(ratio, 3),
        "goal_msgs_per_s": GOAL_MSGS_PER_S,
        "end_to_end_at_msgs_per_s": round(stream["paced_rate"]),
        "cpu_ms_per_msg_biz_center": round(stream["cpu_ms"]["biz-center"], 3),
        "cpu_ms_per_item_batch_biz_center": round(batch_cpu["biz-center"], 3),
        "cpu_ms_per_msg_data_gateway": round(stream["cpu_ms"]["data-gateway"], 3),
        "cpu_ms_per_msg_model_gateway": round(stream["cpu_ms"]["model-gateway"], 3),
        "cpu_ms_per_msg_triton": round(triton_cpu(stream["cpu_ms"]), 3),
        "cpu_ms_per_msg_nats": round(stream["cpu_ms"]["nats"], 3),
        "cpu_ms_per_msg_mesh": round(mesh_cpu(stream["cpu_ms"]), 3),
        "cpu_ms_per_item_batch_mesh": round(mesh_cpu(batch_cpu), 3),
        "cpu_ms_per_msg_client": round(stream["cpu_ms"]["client"], 3),
        "degraded": stream["degraded"],
        "predict_batch_degraded": batch["degraded"],
        "biz_center_peak_rss_mib": round(rss["biz-center"]),
        "nats_peak_rss_mib": round(rss["nats"]),
    }
    print(json.dumps(result))
    return 0 if stream["lost"] == 0 and stream["duplicates"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
