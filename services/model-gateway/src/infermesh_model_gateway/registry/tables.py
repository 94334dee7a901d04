"""The registry's tables as records: reads and writes of documents, and audit entries, in one transaction."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

from infermesh_chassis import context as ctx
from infermesh_chassis.errors import NotFound
from infermesh_model_gateway.domain import ModelRecord, ModelVersionRecord, Rollout, utc_now
from infermesh_model_gateway.registry.database import Connection
from infermesh_model_gateway.registry.documents import (
    dumps,
    model_doc,
    model_from,
    rollout_doc,
    rollout_from,
    version_doc,
    version_from,
)

__all__ = ["Tx"]


class Tx:
    """The registry's records on one connection: a write transaction, whose audit entries name
    ``actor`` and ``reason``, or a read connection (no actor, no audit)."""

    def __init__(self, conn: Connection, actor: str, reason: str) -> None:
        self.conn = conn
        self.actor = actor
        self.reason = reason

    async def model(self, name: str) -> ModelRecord:
        """One model (NOT_FOUND when unknown)."""
        rows = await self.conn.fetch("SELECT doc FROM models WHERE name = ?", name)
        if not rows:
            raise NotFound(f"model '{name}' is not registered")
        return model_from(json.loads(rows[0][0]))

    async def version(self, model: str, version: int) -> ModelVersionRecord:
        """One version (NOT_FOUND naming the model or the version missing)."""
        rows = await self.conn.fetch("SELECT doc FROM versions WHERE model = ? AND version = ?", model, version)
        if not rows:
            await self.model(model)
            raise NotFound(f"model '{model}' has no version {version}")
        return version_from(json.loads(rows[0][0]))

    async def rollout(self, rollout_id: str) -> Rollout:
        """One rollout (NOT_FOUND when unknown)."""
        rows = await self.conn.fetch("SELECT doc FROM rollouts WHERE id = ?", rollout_id)
        if not rows:
            raise NotFound(f"no rollout '{rollout_id}'")
        return rollout_from(json.loads(rows[0][0]))

    async def put_rollout(self, rollout: Rollout) -> None:
        """Insert or replace a rollout."""
        assert rollout.created_at is not None
        await self.conn.execute(
            "INSERT INTO rollouts (id, model, state, created, doc) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state, doc = excluded.doc",
            rollout.id,
            rollout.model,
            rollout.state.value,
            rollout.created_at.isoformat(),
            dumps(rollout_doc(rollout)),
        )

    async def put_model(self, record: ModelRecord) -> None:
        """Insert or replace a model."""
        await self.conn.execute(
            "INSERT INTO models (name, doc) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
            record.name,
            dumps(model_doc(record)),
        )

    async def touch_model(self, name: str, when: datetime) -> None:
        """Record that one of the model's versions changed at ``when``."""
        await self.put_model(dataclasses.replace(await self.model(name), updated_at=when))

    async def put_version(self, record: ModelVersionRecord) -> None:
        """Insert or replace a version."""
        await self.conn.execute(
            "INSERT INTO versions (model, version, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (model, version) DO UPDATE SET doc = excluded.doc",
            record.model,
            record.version,
            dumps(version_doc(record)),
        )

    async def audit(
        self, action: str, target: str, before: dict[str, Any] | None, after: dict[str, Any] | None
    ) -> None:
        """Record a change of ``target`` (its documents before and after) by this transaction's actor."""
        await self.conn.execute(
            "INSERT INTO audit (time, actor, action, target, before, after, reason, request_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            utc_now().isoformat(),
            self.actor,
            action,
            target,
            dumps(before),
            dumps(after),
            self.reason,
            ctx.current_request_id() or "",
        )
