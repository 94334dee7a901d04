"""One instance served by two worker processes (``grpc.workers: 2``), as a real subprocess.

Here beside the discovery tests for their fake Consul: the instance must register once, not per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh_chassis.ready import Ready, read_ready
from infermesh_chassis.settings import ServiceSettings, SettingsError, load_settings

PROBE_DIR = Path(__file__).resolve().parents[1]
SERVING = health_pb2.HealthCheckResponse.SERVING
START_TIMEOUT_S = 120.0
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""Channels open at once would otherwise share one connection (gRPC's global subchannel pool): one worker."""


@dataclass
class Instance:
    proc: asyncio.subprocess.Process
    ready: Ready
    ready_file: Path

    @property
    def address(self) -> str:
        return self.ready.address


def _workers(parent: int) -> set[int]:
    """The worker processes (multiprocessing spawn children) of ``parent`` alive now."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except FileNotFoundError:
        return set()
    found = set()
    for child in children:
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose: its parent has not reaped it yet
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


async def _until(probe: Callable[[], Awaitable[Any]], what: str, within: float = START_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


async def _health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return -1
        return reply.status


async def _sleep_call(address: str, millis: int) -> int:
    """One Sleep call on a fresh connection (the kernel picks a worker per connection); the worker's pid."""
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        reply = await channel.unary_unary("/probe.Probe/Sleep")(str(millis).encode(), timeout=30)
        return int(reply)


async def _sleep_on(channel: grpc.aio.Channel, millis: int) -> int:
    return int(await channel.unary_unary("/probe.Probe/Sleep")(str(millis).encode(), timeout=30))


async def _channels_to_each(address: str, workers: set[int], per_worker: int = 2) -> list[grpc.aio.Channel]:
    """Open channels until ``per_worker`` of them are connected to each worker (a channel keeps its connection)."""
    kept: dict[int, list[grpc.aio.Channel]] = {pid: [] for pid in workers}
    for _ in range(200):
        if all(len(channels) >= per_worker for channels in kept.values()):
            break
        channel = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
        pid = await _sleep_on(channel, 0)
        if len(kept[pid]) < per_worker:
            kept[pid].append(channel)
        else:
            await channel.close()
    assert all(len(channels) >= per_worker for channels in kept.values()), "connections never reached each worker"
    return [channel for channels in kept.values() for channel in channels]


@contextlib.asynccontextmanager
async def _instance(tmp_path: Path, settings: dict[str, Any]) -> AsyncIterator[Instance]:
    config, ready_file = tmp_path / "probe.yaml", tmp_path / "probe.ready"
    base = {"grpc": {"port": 0, "workers": 2, "grace_period_s": 5}, "metrics": {"port": 0}, "logging": {}}
    config.write_text(json.dumps(base | settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(PROBE_DIR), env.get("PYTHONPATH"))))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers_probe", "--config", str(config), "--ready-file", str(ready_file), env=env
    )
    try:

        async def ready() -> Ready | None:
            assert proc.returncode is None, f"the instance exited with {proc.returncode}"
            found = read_ready(ready_file)
            return found if found is not None and found.pid == proc.pid else None

        yield Instance(proc, await _until(ready, "the ready file is written"), ready_file)
    finally:
        workers = _workers(proc.pid)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of ``name`` whose labels include ``labels`` (summed if several match)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total, found = total + float(value), True
    assert found, f"no {name} {labels} in /metrics"
    return total


async def test_two_workers_serve_one_port_register_once_and_restart(tmp_path, fake_consul):
    settings = {"discovery": {"backend": "consul", "consul_addr": fake_consul.addr}}
    async with _instance(tmp_path, settings) as instance:
        parent = instance.proc.pid
        assert await _health(instance.address) == SERVING
        workers = _workers(parent)
        assert len(workers) == 2

        # one registration, for the instance's one port, made by the parent (not one per worker)
        registrations = [{k.lower(): v for k, v in r.items()} for r in fake_consul.registrations]
        assert [r["port"] for r in registrations] == [instance.ready.grpc_port]
        assert registrations[0]["meta"]["workers"] == "2"

        # both workers serve the port: fresh connections spread over them
        seen = [await _sleep_call(instance.address, 0) for _ in range(24)]
        assert set(seen) == workers

        # one /metrics for the instance, summing both workers' counts
        text = await asyncio.to_thread(_scrape, instance.ready.metrics_port)
        total = _sample(text, "infermesh_probe_grpc_server_requests_total", grpc_method="Sleep")
        assert total == len(seen)

        async def core_counted() -> bool:  # each worker writes gRPC core's counts to its files every second
            text = await asyncio.to_thread(_scrape, instance.ready.metrics_port)
            return _sample(text, "infermesh_probe_grpc_core_calls_succeeded_total") >= len(seen)

        await _until(core_counted, "gRPC core's counts of both workers' calls summed in /metrics")

        # a worker that dies: NOT_SERVING until the parent restarted it, then SERVING with a new worker
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)

        async def not_serving() -> bool:
            return await _health(instance.address) not in (SERVING, -1)

        await _until(not_serving, "the instance reports NOT_SERVING with one worker down", within=30)

        async def replaced() -> bool:
            now = _workers(parent)
            return len(now) == 2 and victim not in now and await _health(instance.address) == SERVING

        await _until(replaced, "the parent restarted the worker and the instance serves again")
        assert len(fake_consul.registrations) == 1  # a restarted worker does not register again
        text = await asyncio.to_thread(_scrape, instance.ready.metrics_port)
        assert _sample(text, "infermesh_probe_worker_process_restarts_total") == 1
        assert _sample(text, "infermesh_probe_worker_processes") == 2
        assert _sample(text, "infermesh_probe_worker_processes_up") == 2
        # the dead worker's calls still count; its live gauges are gone
        assert _sample(text, "infermesh_probe_grpc_server_requests_total", grpc_method="Sleep") == total

        # graceful shutdown: calls in flight on both workers finish, then everything exits
        workers = _workers(parent)
        channels = await _channels_to_each(instance.address, workers)
        calls = [asyncio.create_task(_sleep_on(channel, 1500)) for channel in channels]

        async def in_flight() -> bool:
            text = await asyncio.to_thread(_scrape, instance.ready.metrics_port)
            return _sample(text, "infermesh_probe_sleeping") == len(calls)  # livesum over both workers

        await _until(in_flight, "the slow calls reached the workers", within=30)
        instance.proc.send_signal(signal.SIGTERM)
        served_by = await asyncio.gather(*calls)
        assert set(served_by) == workers  # both workers had calls in flight, and each finished them
        for channel in channels:
            await channel.close()
        assert await asyncio.wait_for(instance.proc.wait(), 60) == 0
        assert not any(_alive(pid) for pid in workers)
        assert fake_consul.deregistrations == [registrations[0]["id"]]
        assert not instance.ready_file.exists()


async def test_workers_die_with_a_killed_parent(tmp_path):
    async with _instance(tmp_path, {}) as instance:
        workers = _workers(instance.proc.pid)
        assert len(workers) == 2
        instance.proc.kill()
        await instance.proc.wait()

        async def gone() -> bool:
            return not any(_alive(pid) for pid in workers)

        await _until(gone, "the workers of a killed parent exit", within=30)


@pytest.mark.parametrize("workers", [1, 2])
async def test_each_serving_process_has_frozen_its_startup_objects(tmp_path, workers: int):
    """A full collection must not walk the modules, settings and stubs startup built (gc.freeze)."""
    async with _instance(tmp_path, {"grpc": {"port": 0, "workers": workers}}) as instance:
        frozen: dict[int, int] = {}
        for _ in range(200):
            if len(frozen) == workers:
                break
            async with grpc.aio.insecure_channel(instance.address, options=OWN_CONNECTION) as channel:
                pid, count = (await channel.unary_unary("/probe.Probe/Frozen")(b"", timeout=30)).split()
                frozen[int(pid)] = int(count)
        assert len(frozen) == workers
        assert all(count > 10_000 for count in frozen.values()), frozen


class _Settings(ServiceSettings):
    service_name: str = "probe"


@pytest.mark.parametrize("workers", ["0", "-1", "many"])
def test_workers_setting_is_validated(workers: str):
    with pytest.raises(SettingsError, match=r"grpc\.workers"):
        load_settings(_Settings, None, grpc={"workers": workers})
    assert load_settings(_Settings, None, grpc={"workers": "auto"}).grpc.worker_count == len(os.sched_getaffinity(0))
    assert load_settings(_Settings, None, grpc={"workers": "3"}).grpc.worker_count == 3
