"""The whole mesh, started once per test run as users run it: ``LocalStack`` (NATS, the monitor, the
model gateway with an embedded Triton, the data gateway, the business center) with the demo's churn
models deployed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermesh_cli.demo import deploy_churn_models
from infermesh_cli.stack import LocalStack

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path_factory.mktemp("mesh"))
    stack.start()
    try:
        asyncio.run(deploy_churn_models(stack, stack.workdir / "models"))
        yield stack
    finally:
        codes = stack.stop()
        assert set(codes.values()) == {0}, f"unclean exits: {codes}"
