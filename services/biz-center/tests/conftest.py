"""Fixtures of the business center's tests; the doubles and harness live in ``bizcenter_support``."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bizcenter_support import Doubles, Harness, biz_settings, run_biz, run_doubles

from infermesh_chassis.testing import NatsServer


@pytest.fixture
async def doubles() -> AsyncIterator[Doubles]:
    """The data gateway, model gateway and monitor doubles, started."""
    async with run_doubles() as started:
        yield started


@pytest.fixture
async def biz(tmp_path: Path, doubles: Doubles) -> AsyncIterator[Harness]:
    """A business center with the example config in front of the doubles."""
    async with run_biz(biz_settings(tmp_path, doubles.static())) as harness:
        yield harness


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream server of the test's own (its store under the test's directory)."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()
