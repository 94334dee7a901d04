"""Chaos on the local mesh as ``infermesh up`` runs it: each of NATS, the monitor, the data gateway,
the model gateway and its Triton worker is killed (SIGKILL) under a bounded Predict load. The stack's
supervisor restarts a service on its address with its data, the model gateway restarts its worker
and reloads its versions; meanwhile every answer is an answer (degraded and flagged
when a hop it needs is down, never an error); once it is back, answers are normal again within 10 s;
and the monitor stores exactly one event per Predict answered, none lost, none doubled."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from mesh_support import API_KEY

from infermesh.bizcenter.v1 import biz_center_pb2 as biz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as biz_grpc
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_cli.stack import LocalStack

RECOVERY_S = 10.0
"""Longest answers may stay degraded once the killed process is back."""
CONCURRENCY = 4
"""Predict calls in flight: a bounded load."""
STEADY = 20
"""Consecutive normal answers that say the mesh has recovered."""


@dataclass
class Load:
    """A closed loop of Predict calls, each answer stamped with when it came."""

    stack: LocalStack
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    answers: list[tuple[float, bool]] = field(default_factory=list)
    """(monotonic time, degraded) per answer."""
    errors: list[str] = field(default_factory=list)

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.stack.process("biz-center").address) as channel:
            predict = biz_grpc.BizCenterServiceStub(channel).Predict

            async def worker(offset: int) -> None:
                i = offset
                while not self.stop.is_set():
                    i += CONCURRENCY
                    request = biz.PredictRequest(scene="churn-score", unit_id=str(1 + i % 200))
                    try:
                        response = await predict(request, metadata=API_KEY, timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        self.errors.append(f"{exc.code().name}: {exc.details()}")
                        continue
                    self.answers.append((time.monotonic(), response.degradation.degraded))

            await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))

    def recovered_at(self, since: float) -> float | None:
        """When the first of STEADY consecutive normal answers after ``since`` came, if they have."""
        run: list[float] = []
        for at, degraded in self.answers:
            if at < since:
                continue
            run = [] if degraded else [*run, at]
            if len(run) >= STEADY:
                return run[0]
        return None


async def _events_stored(stack: LocalStack) -> int:
    """Predict events of the business center the monitor holds (the session's mesh runs < 1 h)."""
    async with grpc.aio.insecure_channel(stack.process("monitor").address) as channel:
        stats = await monitor_pb2_grpc.MonitorServiceStub(channel).QueryStats(
            monitor_pb2.QueryStatsRequest(
                window=monitor_pb2.STATS_WINDOW_1H,
                filter=monitor_pb2.StatsFilter(scene="churn-score", source_service="biz-center"),
            ),
            timeout=10,
        )
    return sum(row.count for row in stats.rows)


async def _settled_events(stack: LocalStack) -> int:
    """The stored count once it stops moving (what earlier tests sent has landed)."""
    last = await _events_stored(stack)
    while True:
        await asyncio.sleep(1.0)
        now = await _events_stored(stack)
        if now == last:
            return now
        last = now


async def _until(probe: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def _triton_pid(gateway_pid: int) -> int | None:
    """The embedded ``tritonserver`` the model gateway runs (its child), if one runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        if comm.endswith("(tritonserver") and int(fields[1]) == gateway_pid and fields[0] != "Z":
            return int(stat.parent.name)
    return None


@pytest.mark.parametrize("victim", ["nats", "monitor", "data-gateway", "model-gateway", "triton"])
async def test_a_process_killed_under_load_comes_back_and_no_answer_fails(mesh: LocalStack, victim: str):
    before = await _settled_events(mesh)
    load = Load(mesh)
    running = asyncio.ensure_future(load.run())
    gateway = mesh.process("model-gateway")
    try:
        await _until(lambda: load.recovered_at(0.0) is not None, 60, "the mesh answers normally before the kill")
        if victim == "triton":  # the model gateway restarts its worker itself; the stack restarts nothing
            worker = _triton_pid(gateway.pid)
            assert worker is not None, "the model gateway runs no tritonserver"
            os.kill(worker, signal.SIGKILL)

            def restarted() -> bool:
                return _triton_pid(gateway.pid) not in (None, worker)

        else:
            killed = mesh.process(victim)
            os.kill(killed.pid, signal.SIGKILL)

            def restarted() -> bool:
                now = mesh.process(victim)
                return now.restarts > killed.restarts

        killed_at = time.monotonic()
        await _until(restarted, 120, f"{victim} was not restarted")
        back_at = time.monotonic()  # the stack restarts a process once it is ready and SERVING
        await _until(lambda: load.recovered_at(back_at) is not None, RECOVERY_S + 5, "answers stayed degraded")
    finally:
        load.stop.set()
        await running
    if victim == "triton":
        assert mesh.process("model-gateway").pid == gateway.pid, "the stack restarted the model gateway"
    else:
        process = mesh.process(victim)
        assert (process.address, process.last_exit_code) == (killed.address, -signal.SIGKILL)
    assert not load.errors, load.errors[:5]
    recovered = load.recovered_at(back_at)
    assert recovered is not None
    assert recovered - back_at <= RECOVERY_S, f"normal answers {recovered - back_at:.1f} s after {victim} was back"
    if victim in ("data-gateway", "model-gateway", "triton"):
        assert any(degraded and at > killed_at for at, degraded in load.answers), "no answer came degraded"
    answered = len(load.answers)
    degraded = sum(d for _, d in load.answers)
    print(
        f"\n{victim}: back {back_at - killed_at:.1f} s after the kill, normal answers {recovered - back_at:.1f} s"
        f" later; {answered} answers, {degraded} degraded, 0 errors"
    )
    stored = await _events_stored(mesh) - before
    deadline = time.monotonic() + 60
    while stored < answered and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        stored = await _events_stored(mesh) - before
    assert stored == answered, f"{stored} events stored for {answered} Predicts answered"
