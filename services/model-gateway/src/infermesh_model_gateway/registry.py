"""The model registry: models, versions, aliases, traffic policies and the audit log, in SQL.

SQLite by default (one file, WAL), PostgreSQL when ``registry_url`` says so; both hold the same
four tables (``models``, ``versions``, ``audit``, ``meta``), and the rules live once, in
:class:`Registry`, above a small :class:`Database` interface with one implementation per engine.

- Every change runs in one transaction, serialized across gateway instances (SQLite's
  ``BEGIN IMMEDIATE``; a PostgreSQL transaction-level advisory lock), writes its audit entry
  (who, when, what, the object before and after as JSON) in the same transaction, and bumps a
  generation counter that other gateway instances poll to refresh their routing.
- The rules: traffic weights, mirrors and aliases may only point at SERVING versions; a version
  that traffic or an alias points at cannot be undeployed; lifecycle transitions follow
  REGISTERED → DEPLOYING → SERVING → DRAINING → REGISTERED (FAILED after a failed deploy);
  ``promote`` gives a version ``production`` and all un-pinned traffic; ``rollback`` walks back
  through the versions that held ``production``.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import aiosqlite
import asyncpg

from infermesh_chassis import context as ctx
from infermesh_chassis.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from infermesh_chassis.validation import parse_uint
from infermesh_model_gateway.domain import (
    AuditRecord,
    DeploymentConfig,
    DriftBaseline,
    Mirror,
    ModelFormat,
    ModelRecord,
    ModelVersionRecord,
    Rollout,
    RolloutDecision,
    RolloutState,
    RolloutStep,
    SampleTensor,
    TensorSchema,
    TrafficPolicy,
    VersionState,
    WarmupSample,
    utc_now,
)

__all__ = ["Database", "Registry", "open_registry"]

PRODUCTION = "production"
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")

_TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    VersionState.REGISTERED: frozenset({VersionState.DEPLOYING, VersionState.RETIRED}),
    VersionState.FAILED: frozenset({VersionState.DEPLOYING, VersionState.RETIRED}),
    VersionState.DEPLOYING: frozenset({VersionState.SERVING, VersionState.FAILED}),
    VersionState.SERVING: frozenset({VersionState.DRAINING}),
    VersionState.DRAINING: frozenset({VersionState.REGISTERED, VersionState.RETIRED}),
    VersionState.RETIRED: frozenset(),
}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS versions (model TEXT NOT NULL, version BIGINT NOT NULL, doc TEXT NOT NULL, "
    "PRIMARY KEY (model, version))",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rollouts (id TEXT PRIMARY KEY, model TEXT NOT NULL, state TEXT NOT NULL, "
    "created TEXT NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "expires DOUBLE PRECISION NOT NULL)",
)
_AUDIT_SQLITE = (
    "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, actor TEXT NOT NULL, "
    "action TEXT NOT NULL, target TEXT NOT NULL, before TEXT NOT NULL, after TEXT NOT NULL, reason TEXT NOT NULL, "
    "request_id TEXT NOT NULL)"
)
_AUDIT_POSTGRES = (
    "CREATE TABLE IF NOT EXISTS audit (id BIGSERIAL PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL, "
    "action TEXT NOT NULL, target TEXT NOT NULL, before TEXT NOT NULL, after TEXT NOT NULL, reason TEXT NOT NULL, "
    "request_id TEXT NOT NULL)"
)


# --- storage -------------------------------------------------------------------------------------


class Connection(abc.ABC):
    """SQL with ``?`` placeholders, whatever the engine."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a query."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> None:
        """Run a statement."""


class Database(abc.ABC):
    """One engine: a read connection and serialized write transactions."""

    @abc.abstractmethod
    def read(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A connection for reads outside a transaction."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A write transaction, exclusive across every gateway sharing the database."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""


class _SqliteConnection(Connection):
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._db.execute(sql, args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def execute(self, sql: str, *args: Any) -> None:
        await self._db.execute(sql, args)


class SqliteDatabase(Database):
    """SQLite through aiosqlite: one connection, WAL, ``BEGIN IMMEDIATE`` for writes."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._conn = _SqliteConnection(db)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        """Open (creating) the database file and its tables."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # one process at a time: SQLite answers "database is locked" at once, whatever the busy timeout,
        # to a second process switching a file to WAL meanwhile (an instance's workers start together)
        opening = await asyncio.to_thread(_exclusive, path.with_name(f"{path.name}.open-lock"))
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
            try:
                await db.execute("PRAGMA busy_timeout=10000")
                await db.execute("PRAGMA journal_mode=WAL")
                await db.execute("PRAGMA synchronous=FULL")
                for statement in (*_SCHEMA, _AUDIT_SQLITE):
                    await db.execute(statement)
            except BaseException:
                await db.close()  # its thread would keep the process from exiting
                raise
        finally:
            opening.close()
        return cls(db)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self._lock:
            yield self._conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def close(self) -> None:
        await self._db.close()


def _exclusive(path: Path) -> IO[bytes]:
    """Open ``path`` and hold an exclusive lock on it (blocking) until the file is closed."""
    handle = path.open("ab")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _numbered(sql: str) -> str:
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", number, sql)


class _PostgresConnection(Connection):
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._conn.fetch(_numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_numbered(sql), *args)


class PostgresDatabase(Database):
    """PostgreSQL through an asyncpg pool; writes hold a transaction-level advisory lock."""

    _LOCK_KEY = 0x1F3A_D0C5

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresDatabase:
        """Connect and create the tables."""
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        async with pool.acquire() as conn:
            for statement in (*_SCHEMA, _AUDIT_POSTGRES):
                await conn.execute(statement)
        return cls(pool)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn:
            yield _PostgresConnection(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._LOCK_KEY)
            yield _PostgresConnection(conn)

    async def close(self) -> None:
        await self._pool.close()


async def open_registry(url: str) -> Registry:
    """The registry at ``sqlite:///path`` or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        return Registry(await SqliteDatabase.open(Path(url.removeprefix("sqlite://"))))
    if url.startswith(("postgresql://", "postgres://")):
        return Registry(await PostgresDatabase.open(url))
    raise InvalidArgument(f"registry_url '{url}' is not sqlite:///<path> or postgresql://...")


# --- documents -----------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def version_doc(record: ModelVersionRecord) -> dict[str, Any]:
    """``record`` as a JSON-able document (stored, and shown in the audit log)."""
    doc = dataclasses.asdict(record)
    doc["format"] = record.format.value
    doc["state"] = record.state.value
    doc["deployment"]["placement"] = list(record.deployment.placement)
    for sample in doc["deployment"]["warmup_samples"]:
        for tensor in sample["inputs"]:
            tensor["raw"] = base64.b64encode(tensor["raw"]).decode()
    for key in ("created_at", "updated_at", "retired_at", "deprecated_at", "deprecated_until"):
        doc[key] = _time(getattr(record, key))
    return doc


def _tensor_from(doc: dict[str, Any]) -> TensorSchema:
    return TensorSchema(
        doc["name"],
        doc["datatype"],
        tuple(doc["shape"]),
        tuple(doc.get("class_labels", ())),
        doc.get("description", ""),
    )


def _drift_baseline_from(doc: dict[str, Any] | None) -> DriftBaseline | None:
    return None if doc is None else DriftBaseline(**doc)


def _version_from(doc: dict[str, Any]) -> ModelVersionRecord:
    deployment = dict(doc["deployment"])
    deployment["placement"] = tuple(deployment.get("placement", ()))
    deployment["preferred_batch_sizes"] = tuple(deployment.get("preferred_batch_sizes", ()))
    deployment["warmup_samples"] = tuple(
        WarmupSample(
            s["name"],
            tuple(
                SampleTensor(t["name"], t["datatype"], tuple(t["shape"]), base64.b64decode(t["raw"]))
                for t in s["inputs"]
            ),
            int(s["count"]),
        )
        for s in deployment.get("warmup_samples", ())
    )
    return ModelVersionRecord(
        model=doc["model"],
        version=int(doc["version"]),
        format=ModelFormat(doc["format"]),
        artifact_uri=doc["artifact_uri"],
        artifact_sha256=doc["artifact_sha256"],
        inputs=tuple(_tensor_from(t) for t in doc["inputs"]),
        outputs=tuple(_tensor_from(t) for t in doc["outputs"]),
        trusted=bool(doc.get("trusted", False)),
        serialization=doc.get("serialization", "native"),
        artifact_size_bytes=int(doc.get("artifact_size_bytes", 0)),
        owner=doc.get("owner", ""),
        description=doc.get("description", ""),
        tags=dict(doc.get("tags", {})),
        deployment=DeploymentConfig(**deployment),
        drift_baseline=_drift_baseline_from(doc.get("drift_baseline")),
        created_by=doc.get("created_by", ""),
        state=VersionState(doc["state"]),
        state_detail=doc.get("state_detail", ""),
        created_at=_parse_time(doc.get("created_at")),
        updated_at=_parse_time(doc.get("updated_at")),
        retired_at=_parse_time(doc.get("retired_at")),
        deprecated_at=_parse_time(doc.get("deprecated_at")),
        retired_by=doc.get("retired_by", ""),
        successor=doc.get("successor"),
        successor_model=doc.get("successor_model", ""),
        deprecated_until=_parse_time(doc.get("deprecated_until")),
        retire_reason=doc.get("retire_reason", ""),
    )


def rollout_doc(rollout: Rollout) -> dict[str, Any]:
    """``rollout`` as a JSON-able document."""
    doc = dataclasses.asdict(rollout)
    doc["state"] = rollout.state.value
    for key in ("step_started_at", "next_decision_at", "created_at", "updated_at", "ended_at"):
        doc[key] = _time(getattr(rollout, key))
    doc["decisions"] = [{**dataclasses.asdict(d), "time": _time(d.time)} for d in rollout.decisions]
    return doc


def _rollout_from(doc: dict[str, Any]) -> Rollout:
    return Rollout(
        id=doc["id"],
        model=doc["model"],
        candidate=int(doc["candidate"]),
        baseline=int(doc["baseline"]),
        steps=tuple(RolloutStep(**s) for s in doc["steps"]),
        gates=doc["gates"],
        min_dwell_s=float(doc["min_dwell_s"]),
        min_requests=int(doc["min_requests"]),
        evaluation_interval_s=float(doc["evaluation_interval_s"]),
        state=RolloutState(doc["state"]),
        current_step=int(doc["current_step"]),
        step_started_at=_parse_time(doc.get("step_started_at")),
        next_decision_at=_parse_time(doc.get("next_decision_at")),
        last_evaluation=doc.get("last_evaluation", ""),
        decisions=tuple(
            RolloutDecision(**{**d, "time": datetime.fromisoformat(d["time"])}) for d in doc.get("decisions", ())
        ),
        created_by=doc.get("created_by", ""),
        created_at=_parse_time(doc.get("created_at")),
        updated_at=_parse_time(doc.get("updated_at")),
        ended_at=_parse_time(doc.get("ended_at")),
        state_detail=doc.get("state_detail", ""),
        controller=doc.get("controller", ""),
    )


def model_doc(record: ModelRecord) -> dict[str, Any]:
    """``record`` as a JSON-able document."""
    traffic = record.traffic
    return {
        "name": record.name,
        "owner": record.owner,
        "description": record.description,
        "aliases": dict(record.aliases),
        "traffic": {
            "weights": {str(v): w for v, w in traffic.weights.items()},
            "sticky_key": traffic.sticky_key,
            "mirror": None if traffic.mirror is None else dataclasses.asdict(traffic.mirror),
            "revision": traffic.revision,
        },
        "production_history": list(record.production_history),
        "created_at": _time(record.created_at),
        "updated_at": _time(record.updated_at),
    }


def _model_from(doc: dict[str, Any]) -> ModelRecord:
    traffic = doc["traffic"]
    mirror = traffic.get("mirror")
    return ModelRecord(
        name=doc["name"],
        owner=doc.get("owner", ""),
        description=doc.get("description", ""),
        aliases={k: int(v) for k, v in doc.get("aliases", {}).items()},
        traffic=TrafficPolicy(
            weights={int(v): int(w) for v, w in traffic.get("weights", {}).items()},
            sticky_key=traffic.get("sticky_key", ""),
            mirror=None if mirror is None else Mirror(int(mirror["version"]), float(mirror["fraction"])),
            revision=int(traffic.get("revision", 0)),
        ),
        production_history=tuple(doc.get("production_history", ())),
        created_at=_parse_time(doc.get("created_at")),
        updated_at=_parse_time(doc.get("updated_at")),
    )


def _dumps(doc: dict[str, Any] | None) -> str:
    return "" if doc is None else json.dumps(doc, sort_keys=True)


# --- the registry --------------------------------------------------------------------------------


class _Tx:
    """The registry's view of one write transaction."""

    def __init__(self, conn: Connection, actor: str, reason: str) -> None:
        self.conn = conn
        self.actor = actor
        self.reason = reason

    async def model(self, name: str) -> ModelRecord:
        rows = await self.conn.fetch("SELECT doc FROM models WHERE name = ?", name)
        if not rows:
            raise NotFound(f"model '{name}' is not registered")
        return _model_from(json.loads(rows[0][0]))

    async def version(self, model: str, version: int) -> ModelVersionRecord:
        rows = await self.conn.fetch("SELECT doc FROM versions WHERE model = ? AND version = ?", model, version)
        if not rows:
            await self.model(model)
            raise NotFound(f"model '{model}' has no version {version}")
        return _version_from(json.loads(rows[0][0]))

    async def rollout(self, rollout_id: str) -> Rollout:
        rows = await self.conn.fetch("SELECT doc FROM rollouts WHERE id = ?", rollout_id)
        if not rows:
            raise NotFound(f"no rollout '{rollout_id}'")
        return _rollout_from(json.loads(rows[0][0]))

    async def put_rollout(self, rollout: Rollout) -> None:
        assert rollout.created_at is not None
        await self.conn.execute(
            "INSERT INTO rollouts (id, model, state, created, doc) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state, doc = excluded.doc",
            rollout.id,
            rollout.model,
            rollout.state.value,
            rollout.created_at.isoformat(),
            _dumps(rollout_doc(rollout)),
        )

    async def put_model(self, record: ModelRecord) -> None:
        await self.conn.execute(
            "INSERT INTO models (name, doc) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
            record.name,
            _dumps(model_doc(record)),
        )

    async def touch_model(self, name: str, when: datetime) -> None:
        """Record that one of the model's versions changed at ``when``."""
        await self.put_model(dataclasses.replace(await self.model(name), updated_at=when))

    async def put_version(self, record: ModelVersionRecord) -> None:
        await self.conn.execute(
            "INSERT INTO versions (model, version, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (model, version) DO UPDATE SET doc = excluded.doc",
            record.model,
            record.version,
            _dumps(version_doc(record)),
        )

    async def audit(
        self, action: str, target: str, before: dict[str, Any] | None, after: dict[str, Any] | None
    ) -> None:
        await self.conn.execute(
            "INSERT INTO audit (time, actor, action, target, before, after, reason, request_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            utc_now().isoformat(),
            self.actor,
            action,
            target,
            _dumps(before),
            _dumps(after),
            self.reason,
            ctx.current_request_id() or "",
        )


class Registry:
    """Registry operations and their rules (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    @contextlib.asynccontextmanager
    async def _write(self, actor: str, reason: str) -> AsyncIterator[_Tx]:
        async with self._db.transaction() as conn:
            yield _Tx(conn, actor, reason)
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('generation', 1) "
                "ON CONFLICT (key) DO UPDATE SET value = meta.value + 1"
            )

    # --- reads -----------------------------------------------------------------------------------

    async def generation(self) -> int:
        """A counter that changes with every write (other instances poll it)."""
        async with self._db.read() as conn:
            rows = await conn.fetch("SELECT value FROM meta WHERE key = 'generation'")
        return int(rows[0][0]) if rows else 0

    async def snapshot(self) -> list[tuple[ModelRecord, list[ModelVersionRecord]]]:
        """Every model with its versions (oldest first): what the router and reconciliation need."""
        async with self._db.read() as conn:
            models = await conn.fetch("SELECT doc FROM models ORDER BY name")
            versions = await conn.fetch("SELECT doc FROM versions ORDER BY model, version")
        by_model: dict[str, list[ModelVersionRecord]] = {}
        for (doc,) in versions:
            record = _version_from(json.loads(doc))
            by_model.setdefault(record.model, []).append(record)
        return [(m, by_model.get(m.name, [])) for m in (_model_from(json.loads(doc)) for (doc,) in models)]

    async def model_versions(self, model: str) -> list[ModelVersionRecord]:
        """Every version of ``model``, oldest first."""
        async with self._db.read() as conn:
            rows = await conn.fetch("SELECT doc FROM versions WHERE model = ? ORDER BY version", model)
        return [_version_from(json.loads(doc)) for (doc,) in rows]

    async def get_model(self, name: str) -> ModelRecord:
        """One model (NOT_FOUND when unknown)."""
        async with self._db.read() as conn:
            return await _Tx(conn, "", "").model(name)

    async def get_version(self, model: str, version: int) -> ModelVersionRecord:
        """One version (NOT_FOUND naming what is missing)."""
        async with self._db.read() as conn:
            return await _Tx(conn, "", "").version(model, version)

    async def resolve_alias(self, model: str, alias: str) -> int:
        """The version an alias points at (NOT_FOUND listing the aliases there are)."""
        record = await self.get_model(model)
        if alias not in record.aliases:
            known = ", ".join(sorted(record.aliases)) or "none"
            raise NotFound(f"model '{model}' has no alias '{alias}' (aliases: {known})")
        return record.aliases[alias]

    async def list_models(self, *, page_size: int, page_token: str = "") -> tuple[list[ModelRecord], str]:
        """Models ordered by name, after ``page_token``; the next token ("" at the end)."""
        async with self._db.read() as conn:
            rows = await conn.fetch(
                "SELECT name, doc FROM models WHERE name > ? ORDER BY name LIMIT ?", page_token, page_size + 1
            )
        more = len(rows) > page_size
        rows = rows[:page_size]
        return [_model_from(json.loads(doc)) for _, doc in rows], (rows[-1][0] if more else "")

    async def list_versions(
        self, model: str, *, page_size: int, page_token: str = ""
    ) -> tuple[list[ModelVersionRecord], str]:
        """Versions of ``model``, newest first, before ``page_token``; the next token."""
        before = _token_int(page_token, "page.page_token")
        async with self._db.read() as conn:
            await _Tx(conn, "", "").model(model)
            rows = await conn.fetch(
                "SELECT version, doc FROM versions WHERE model = ? AND version < ? ORDER BY version DESC LIMIT ?",
                model,
                before or 2**62,
                page_size + 1,
            )
        more = len(rows) > page_size
        rows = rows[:page_size]
        return [_version_from(json.loads(doc)) for _, doc in rows], (str(rows[-1][0]) if more else "")

    async def list_audit(
        self, *, target_prefix: str = "", page_size: int, page_token: str = ""
    ) -> tuple[list[AuditRecord], str]:
        """Audit entries, newest first, whose target starts with ``target_prefix``."""
        before = _token_int(page_token, "page.page_token")
        async with self._db.read() as conn:
            rows = await conn.fetch(
                "SELECT id, time, actor, action, target, before, after, reason, request_id FROM audit "
                "WHERE id < ? AND substr(target, 1, ?) = ? ORDER BY id DESC LIMIT ?",
                before or 2**62,
                len(target_prefix),
                target_prefix,
                page_size + 1,
            )
        more = len(rows) > page_size
        rows = rows[:page_size]
        records = [
            AuditRecord(int(r[0]), datetime.fromisoformat(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows
        ]
        return records, (str(rows[-1][0]) if more else "")

    # --- writes ----------------------------------------------------------------------------------

    async def register_version(self, record: ModelVersionRecord, *, actor: str, reason: str = "") -> ModelVersionRecord:
        """Store a new version (numbered after the model's highest), creating the model if needed."""
        now = utc_now()
        async with self._write(actor, reason) as tx:
            rows = await tx.conn.fetch("SELECT doc FROM models WHERE name = ?", record.model)
            if rows:
                await tx.touch_model(record.model, now)
            else:
                model = ModelRecord(
                    name=record.model,
                    owner=record.owner,
                    description=record.description,
                    created_at=now,
                    updated_at=now,
                )
                await tx.put_model(model)
                await tx.audit("model.create", _model_path(record.model), None, model_doc(model))
            highest = await tx.conn.fetch("SELECT MAX(version) FROM versions WHERE model = ?", record.model)
            number = int(highest[0][0] or 0) + 1
            stored = dataclasses.replace(
                record,
                version=number,
                state=VersionState.REGISTERED,
                created_by=actor,
                created_at=now,
                updated_at=now,
            )
            await tx.put_version(stored)
            await tx.audit("model_version.register", _version_path(record.model, number), None, version_doc(stored))
        return stored

    async def set_state(
        self,
        model: str,
        version: int,
        state: VersionState,
        *,
        detail: str = "",
        actor: str,
        reason: str = "",
    ) -> ModelVersionRecord:
        """Move a version along its lifecycle (FAILED_PRECONDITION for a transition that is not allowed)."""
        async with self._write(actor, reason) as tx:
            before = await tx.version(model, version)
            if state not in _TRANSITIONS[before.state]:
                raise FailedPrecondition(_transition_refusal(before, state))
            if state is VersionState.DRAINING:
                _refuse_if_referenced(await tx.model(model), version, "undeploy")
            now = utc_now()
            after = dataclasses.replace(before, state=state, state_detail=detail, updated_at=now)
            if state is VersionState.RETIRED:
                after = dataclasses.replace(after, retired_at=now)
            await tx.put_version(after)
            await tx.touch_model(model, now)
            await tx.audit(
                f"model_version.{state.value}", _version_path(model, version), version_doc(before), version_doc(after)
            )
        return after

    async def _serving(self, tx: _Tx, model: str, version: int, what: str) -> ModelVersionRecord:
        record = await tx.version(model, version)
        if record.state is not VersionState.SERVING:
            raise FailedPrecondition(
                f"{what}: version {version} of model '{model}' is {record.state.value}, not serving; deploy it first"
            )
        if record.deprecated_until is not None:
            raise FailedPrecondition(
                f"{what}: version {version} of model '{model}' is deprecated and retires at "
                f"{record.deprecated_until.isoformat()}"
            )
        return record

    async def _check_routable(self, tx: _Tx, model: ModelRecord, what: str) -> None:
        """Every version the model's traffic or ``production`` points at is SERVING."""
        versions = {v for v, w in model.traffic.weights.items() if w > 0}
        if model.traffic.mirror is not None:
            versions.add(model.traffic.mirror.version)
        if PRODUCTION in model.aliases:
            versions.add(model.aliases[PRODUCTION])
        for version in sorted(versions):
            await self._serving(tx, model.name, version, what)

    async def _update_model(self, tx: _Tx, action: str, before: ModelRecord, after: ModelRecord) -> ModelRecord:
        now = utc_now()
        if after != before:
            after = dataclasses.replace(after, updated_at=now)
        await tx.put_model(after)
        await tx.audit(action, _model_path(before.name), model_doc(before), model_doc(after))
        await _touch_realiased(tx, before, after, now)
        return after

    async def set_traffic(
        self,
        model: str,
        policy: TrafficPolicy,
        *,
        expected_revision: int | None = None,
        actor: str,
        reason: str = "",
    ) -> ModelRecord:
        """Replace the traffic policy; every weighted or mirrored version must be SERVING."""
        async with self._write(actor, reason) as tx:
            before = await tx.model(model)
            if expected_revision is not None and expected_revision != before.traffic.revision:
                raise Aborted(
                    f"the traffic policy of '{model}' is at revision {before.traffic.revision}, not "
                    f"{expected_revision}: re-read it and apply your change again"
                )
            weights = {v: w for v, w in policy.weights.items() if w > 0}
            if policy.weights and not weights:
                raise InvalidArgument("policy.weights: at least one weight must be above 0 (or send no weights)")
            for version in weights:
                await self._serving(tx, model, version, "policy.weights")
            if policy.mirror is not None:
                await self._serving(tx, model, policy.mirror.version, "policy.mirror")
            if not weights and PRODUCTION not in before.aliases:
                raise FailedPrecondition(
                    f"model '{model}' has no production version: give weights, or promote a version first"
                )
            traffic = dataclasses.replace(policy, weights=weights, revision=before.traffic.revision + 1)
            after = dataclasses.replace(before, traffic=traffic)
            return await self._update_model(tx, "traffic_policy.set", before, after)

    async def set_alias(self, model: str, alias: str, version: int, *, actor: str, reason: str = "") -> ModelRecord:
        """Point ``alias`` at a SERVING version."""
        if not ALIAS_PATTERN.match(alias) or alias.isdigit():
            raise InvalidArgument(f"alias '{alias}' is invalid: a letter, then letters, digits, '_' or '-'")
        async with self._write(actor, reason) as tx:
            before = await tx.model(model)
            await self._serving(tx, model, version, f"alias '{alias}'")
            after = dataclasses.replace(before, aliases={**before.aliases, alias: version})
            if alias == PRODUCTION and before.aliases.get(PRODUCTION) != version:
                after = dataclasses.replace(after, production_history=(*before.production_history, version))
            return await self._update_model(tx, "alias.set", before, after)

    async def delete_alias(self, model: str, alias: str, *, actor: str, reason: str = "") -> ModelRecord:
        """Remove an alias (not ``production`` while un-pinned traffic relies on it)."""
        async with self._write(actor, reason) as tx:
            before = await tx.model(model)
            if alias not in before.aliases:
                raise NotFound(f"model '{model}' has no alias '{alias}'")
            if alias == PRODUCTION and not before.traffic.weights:
                raise FailedPrecondition(
                    f"un-pinned traffic of '{model}' goes to 'production': set traffic weights before deleting it"
                )
            aliases = {k: v for k, v in before.aliases.items() if k != alias}
            return await self._update_model(tx, "alias.delete", before, dataclasses.replace(before, aliases=aliases))

    async def promote(self, model: str, version: int, *, actor: str, reason: str = "") -> ModelRecord:
        """``production`` → ``version`` with all un-pinned traffic (a mirror onto it is dropped)."""
        async with self._write(actor, reason) as tx:
            before = await tx.model(model)
            await self._serving(tx, model, version, "promote")
            return await self._update_model(tx, "model.promote", before, _with_production(before, version, append=True))

    async def rollback(self, model: str, *, to_version: int | None = None, actor: str, reason: str = "") -> ModelRecord:
        """``production`` back to the previous production version (or ``to_version``), with all traffic."""
        async with self._write(actor, reason) as tx:
            before = await tx.model(model)
            current = before.aliases.get(PRODUCTION)
            if to_version is None:
                history = list(before.production_history)
                while history and history[-1] == current:
                    history.pop()
                if not history:
                    raise FailedPrecondition(f"model '{model}' has no previous production version to roll back to")
                target = history[-1]
                await self._serving(tx, model, target, "rollback")
                after = _with_production(before, target, append=False)
                after = dataclasses.replace(after, production_history=tuple(history))
            else:
                await self._serving(tx, model, to_version, "rollback")
                after = _with_production(before, to_version, append=True)
            return await self._update_model(tx, "model.rollback", before, after)

    # --- rollouts ---------------------------------------------------------------------------------

    async def create_rollout(self, rollout: Rollout, *, actor: str, reason: str = "") -> Rollout:
        """Store a new PENDING rollout (at most one active rollout per model)."""
        async with self._write(actor, reason) as tx:
            await tx.model(rollout.model)
            active = await tx.conn.fetch(
                "SELECT id FROM rollouts WHERE model = ? AND state IN (?, ?, ?)",
                rollout.model,
                *(s.value for s in RolloutState if s.active),
            )
            if active:
                raise FailedPrecondition(
                    f"model '{rollout.model}' already has an active rollout ({active[0][0]}): abort it first"
                )
            await self._serving(tx, rollout.model, rollout.candidate, "candidate_version")
            await self._serving(tx, rollout.model, rollout.baseline, "baseline_version")
            now = utc_now()
            stored = dataclasses.replace(rollout, created_by=actor, created_at=now, updated_at=now)
            await tx.put_rollout(stored)
            await tx.audit("rollout.create", _rollout_path(stored), None, rollout_doc(stored))
        return stored

    async def get_rollout(self, rollout_id: str) -> Rollout:
        """One rollout (NOT_FOUND when unknown)."""
        async with self._db.read() as conn:
            return await _Tx(conn, "", "").rollout(rollout_id)

    async def list_rollouts(
        self, *, model: str = "", states: frozenset[RolloutState] = frozenset(), page_size: int, page_token: str = ""
    ) -> tuple[list[Rollout], str]:
        """Rollouts, newest first, optionally of one model and in some states."""
        offset = _token_int(page_token, "page.page_token")
        wanted = sorted(s.value for s in states)
        sql = "SELECT doc FROM rollouts WHERE (? = '' OR model = ?)"
        if wanted:
            sql += f" AND state IN ({', '.join('?' for _ in wanted)})"
        sql += " ORDER BY created DESC, id DESC LIMIT ? OFFSET ?"
        async with self._db.read() as conn:
            rows = await conn.fetch(sql, model, model, *wanted, page_size + 1, offset)
        more = len(rows) > page_size
        records = [_rollout_from(json.loads(doc)) for (doc,) in rows[:page_size]]
        return records, (str(offset + page_size) if more else "")

    async def change_rollout(
        self,
        rollout_id: str,
        change: Callable[[Rollout, ModelRecord], tuple[Rollout, ModelRecord]],
        *,
        action: str,
        actor: str,
        reason: str = "",
    ) -> Rollout:
        """Apply ``change`` to a rollout and its model in one transaction, audited.

        The model's traffic may only point at SERVING versions afterwards; an unchanged model is not
        written.
        """
        async with self._write(actor, reason) as tx:
            before = await tx.rollout(rollout_id)
            model = await tx.model(before.model)
            after, new_model = change(before, model)
            after = dataclasses.replace(after, updated_at=utc_now())
            if new_model != model:
                if new_model.traffic != model.traffic:
                    new_model = dataclasses.replace(
                        new_model, traffic=dataclasses.replace(new_model.traffic, revision=model.traffic.revision + 1)
                    )
                await self._check_routable(tx, new_model, f"rollout {rollout_id}")
                await self._update_model(tx, "traffic_policy.set", model, new_model)
            await tx.put_rollout(after)
            await tx.audit(f"rollout.{action}", _rollout_path(after), rollout_doc(before), rollout_doc(after))
        return after

    async def record_evaluation(self, rollout_id: str, *, evaluation: str, next_decision_at: datetime) -> None:
        """Store a gate evaluation that changed nothing, and when to evaluate again (no audit entry)."""
        async with self._db.transaction() as conn:
            tx = _Tx(conn, "", "")
            rollout = await tx.rollout(rollout_id)
            if rollout.state is RolloutState.RUNNING:
                await tx.put_rollout(
                    dataclasses.replace(rollout, last_evaluation=evaluation, next_decision_at=next_decision_at)
                )

    # --- leases ------------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` unless another holder's is still valid."""
        now = time.time()
        async with self._db.transaction() as conn:
            rows = await conn.fetch("SELECT holder, expires FROM leases WHERE name = ?", name)
            if rows and rows[0][0] != holder and float(rows[0][1]) > now:
                return False
            await conn.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires",
                name,
                holder,
                now + ttl_s,
            )
        return True

    async def lease_holder(self, name: str) -> str:
        """Who holds the lease ``name`` now ("" when nobody does)."""
        async with self._db.read() as conn:
            rows = await conn.fetch("SELECT holder, expires FROM leases WHERE name = ?", name)
        return str(rows[0][0]) if rows and float(rows[0][1]) > time.time() else ""

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (only if ``holder`` has it)."""
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", name, holder)

    # --- retirement --------------------------------------------------------------------------------

    async def schedule_retirement(
        self,
        model: str,
        version: int,
        *,
        retire_at: datetime,
        successor: int | None,
        successor_model: str,
        actor: str,
        reason: str = "",
    ) -> ModelVersionRecord:
        """Deprecate a version until ``retire_at`` (refused while traffic or an alias points at it)."""
        async with self._write(actor, reason) as tx:
            before = await tx.version(model, version)
            if before.state is VersionState.RETIRED:
                raise FailedPrecondition(f"version {version} of model '{model}' is already retired")
            _refuse_if_referenced(await tx.model(model), version, "retire")
            if successor is not None:
                target = successor_model or model
                if target == model and successor == version:
                    raise InvalidArgument("successor_version: a version cannot succeed itself")
                await tx.version(target, successor)
            elif successor_model:
                await tx.model(successor_model)
            now = utc_now()
            after = dataclasses.replace(
                before,
                deprecated_at=before.deprecated_at or now,
                deprecated_until=retire_at,
                retired_by=actor,
                successor=successor,
                successor_model=successor_model,
                retire_reason=reason,
                updated_at=now,
            )
            await tx.put_version(after)
            await tx.touch_model(model, now)
            path = _version_path(model, version)
            await tx.audit("model_version.retire", path, version_doc(before), version_doc(after))
        return after


async def _touch_realiased(tx: _Tx, before: ModelRecord, after: ModelRecord, now: datetime) -> None:
    """Stamp ``updated_at`` on the versions an alias moved onto or away from (the model's audit
    entry already records the move)."""
    changed = {
        version
        for alias in before.aliases.keys() | after.aliases.keys()
        if before.aliases.get(alias) != after.aliases.get(alias)
        for version in (before.aliases.get(alias), after.aliases.get(alias))
        if version is not None
    }
    for version in sorted(changed):
        record = await tx.version(after.name, version)
        await tx.put_version(dataclasses.replace(record, updated_at=now))


def _rollout_path(rollout: Rollout) -> str:
    return f"models/{rollout.model}/rollouts/{rollout.id}"


def _with_production(model: ModelRecord, version: int, *, append: bool) -> ModelRecord:
    mirror = model.traffic.mirror
    traffic = dataclasses.replace(
        model.traffic,
        weights={},
        mirror=None if mirror is not None and mirror.version == version else mirror,
        revision=model.traffic.revision + 1,
    )
    history = model.production_history
    if append and model.aliases.get(PRODUCTION) != version:
        history = (*history, version)
    aliases = {**model.aliases, PRODUCTION: version}
    return dataclasses.replace(model, aliases=aliases, traffic=traffic, production_history=history)


def _model_path(model: str) -> str:
    return f"models/{model}"


def _version_path(model: str, version: int) -> str:
    return f"models/{model}/versions/{version}"


def _refuse_if_referenced(model: ModelRecord, version: int, what: str) -> None:
    reasons = [f"alias '{a}'" for a, v in sorted(model.aliases.items()) if v == version]
    if model.traffic.weights.get(version, 0) > 0:
        reasons.append(f"a traffic weight of {model.traffic.weights[version]}")
    if model.traffic.mirror is not None and model.traffic.mirror.version == version:
        reasons.append("the mirror")
    if reasons:
        raise FailedPrecondition(
            f"cannot {what} version {version} of model '{model.name}': {', '.join(reasons)} still point at it; "
            "move them to another version first"
        )


def _transition_refusal(record: ModelVersionRecord, state: VersionState) -> str:
    where = f"version {record.version} of model '{record.model}'"
    if record.state is state:
        return f"{where} is already {state.value}"
    hints = {
        VersionState.DEPLOYING: "it can be deployed from registered or failed",
        VersionState.DRAINING: "only a serving version can be undeployed",
    }
    hint = hints.get(state, "")
    return f"{where} is {record.state.value}; it cannot become {state.value}" + (f" ({hint})" if hint else "")


def _token_int(token: str, field: str) -> int:
    return parse_uint(token, field, what="a token this API returned") if token else 0
