"""ConsulDiscovery against a real Consul agent and a real gRPC server with the standard health service.

Runs against ``consul agent -dev`` started here when a ``consul`` binary is on PATH, or against
the agent at ``CONSUL_HTTP_ADDR`` (it must be able to reach 127.0.0.1 of this machine to run
the gRPC check); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from infermesh_chassis.discovery import Instance
from infermesh_chassis.errors import Unavailable

_AGENT_START_S = 30.0


def _wait_for_leader(addr: str, agent: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + _AGENT_START_S
    while time.monotonic() < deadline:
        if agent is not None and agent.poll() is not None:
            output = log.read_text(errors="replace") if log else ""
            pytest.fail(f"consul agent exited with {agent.returncode}:\n{output[-4000:]}")
        try:
            with urllib.request.urlopen(f"{addr}/v1/status/leader", timeout=1) as response:
                if response.read().strip() not in (b"", b'""'):
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"Consul at {addr} elected no leader within {_AGENT_START_S:g}s")


@pytest.fixture
def consul_addr(tmp_path: Path, free_port) -> Iterator[str]:
    env_addr = os.environ.get("CONSUL_HTTP_ADDR")
    if env_addr:
        addr = env_addr if "://" in env_addr else f"http://{env_addr}"
        _wait_for_leader(addr, None, None)
        yield addr
        return
    binary = shutil.which("consul")
    if binary is None:
        pytest.skip(
            "no consul binary on PATH and CONSUL_HTTP_ADDR unset: install Consul, or point "
            "CONSUL_HTTP_ADDR at an agent, to run the real-agent tests"
        )
    http_port = free_port()
    command = [
        binary,
        "agent",
        "-dev",
        "-bind",
        "127.0.0.1",
        "-client",
        "127.0.0.1",
        "-node",
        f"infermesh-test-{uuid.uuid4().hex[:8]}",
        "-http-port",
        str(http_port),
        "-grpc-port",
        str(free_port()),
        "-dns-port",
        "-1",
        "-serf-lan-port",
        str(free_port()),
        "-serf-wan-port",
        str(free_port()),
        "-server-port",
        str(free_port()),
    ]
    help_text = subprocess.run([binary, "agent", "-h"], capture_output=True, text=True, check=False)
    if "-grpc-tls-port" in help_text.stdout + help_text.stderr:
        # Consul >= 1.14 also opens a gRPC TLS port in dev mode (8503 by default).
        command += ["-grpc-tls-port", str(free_port())]
    log = tmp_path / "consul.log"
    with log.open("wb") as output:
        agent = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    addr = f"http://127.0.0.1:{http_port}"
    try:
        _wait_for_leader(addr, agent, log)
        yield addr
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


async def test_grpc_server_becomes_passing_resolvable_and_disappears(consul_addr, make_discovery, eventually):
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    service = f"infermesh-test-{uuid.uuid4().hex[:8]}"
    instance = Instance(service, f"{service}-127.0.0.1-{port}", "127.0.0.1", port, tags=("test",), meta={"v": "1"})
    discovery = make_discovery(
        consul_addr,
        check_interval_s=1,
        check_timeout_s=1,
        deregister_critical_after_s=60,
        watch_wait_s=2,
        request_timeout_s=5,
    )

    async def resolved() -> list[Instance]:
        return await discovery.resolve(service)

    async def gone() -> bool:
        try:
            await discovery.resolve(service)
        except Unavailable:
            return True
        return False

    try:
        await discovery.register(instance)
        assert await eventually(resolved, within=15, interval=0.1) == [instance]

        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await eventually(gone, within=15, interval=0.1)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await eventually(resolved, within=15, interval=0.1) == [instance]

        await discovery.deregister(instance)
        await eventually(gone, within=10, interval=0.1)
    finally:
        await discovery.close()
        await server.stop(None)
