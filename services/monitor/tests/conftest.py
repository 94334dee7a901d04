"""Fixtures of the monitor's tests: a real NATS server and a real monitor (helpers in ``monitor_support``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from infermesh.monitor.v1 import monitor_pb2_grpc
from infermesh_monitor.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from monitor_support import UNIT_HASH_KEY, MonitorThread

from infermesh_chassis.testing import NatsServer


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server for the session."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def monitor(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorThread]:
    """The in-process monitor, consuming the session's NATS server."""
    settings = Settings(
        storage={"chdb_path": tmp_path_factory.mktemp("monitor") / "chdb"},
        ingest={"nats_enabled": True, "fetch_timeout_s": 0.2},
        events={"nats_url": nats_server.url, "unit_id_hash_key": UNIT_HASH_KEY},
        analysis={"export_interval_s": 0.5, "bootstrap_resamples": 300},
        metrics={"enabled": False},
    )
    thread = MonitorThread(settings)
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
async def stub(monitor: MonitorThread) -> AsyncIterator[monitor_pb2_grpc.MonitorServiceStub]:
    """A client of the in-process monitor."""
    async with grpc.aio.insecure_channel(monitor.address) as channel:
        yield monitor_pb2_grpc.MonitorServiceStub(channel)
