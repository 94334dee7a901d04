"""Fixtures of the CLI's tests: one real mesh for the whole session (see ``cli_mesh``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_mesh import Mesh, running_mesh


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The model gateway (real Triton), data gateway, business center and monitor, started once."""
    with running_mesh(tmp_path_factory.mktemp("mesh")) as running:
        yield running
