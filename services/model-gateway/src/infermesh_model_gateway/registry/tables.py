"""The registry's tables as records: reads and writes of documents, and audit entries, in one transaction."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select

from infermesh_chassis import context as ctx
from infermesh_chassis.docstore import Connection, upsert
from infermesh_chassis.errors import NotFound
from infermesh_model_gateway.domain import ModelRecord, ModelVersionRecord, Rollout, utc_now
from infermesh_model_gateway.registry.database import audit, models, rollouts, versions
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

# built once: the reads every write and most reads begin with
_MODEL = select(models.c.doc).where(models.c.name == bindparam("name"))
_VERSION = select(versions.c.doc).where(
    versions.c.model == bindparam("model"), versions.c.version == bindparam("version")
)
_ROLLOUT = select(rollouts.c.doc).where(rollouts.c.id == bindparam("id"))


class Tx:
    """The registry's records on one connection: a write transaction, whose audit entries name
    ``actor`` and ``reason``, or a read connection (no actor, no audit)."""

    def __init__(self, conn: Connection, actor: str, reason: str) -> None:
        self.conn = conn
        self.actor = actor
        self.reason = reason

    async def model(self, name: str) -> ModelRecord:
        """One model (NOT_FOUND when unknown)."""
        doc = await self.conn.scalar(_MODEL, {"name": name})
        if doc is None:
            raise NotFound(f"model '{name}' is not registered")
        return model_from(json.loads(doc))

    async def version(self, model: str, version: int) -> ModelVersionRecord:
        """One version (NOT_FOUND naming the model or the version missing)."""
        doc = await self.conn.scalar(_VERSION, {"model": model, "version": version})
        if doc is None:
            await self.model(model)
            raise NotFound(f"model '{model}' has no version {version}")
        return version_from(json.loads(doc))

    async def rollout(self, rollout_id: str) -> Rollout:
        """One rollout (NOT_FOUND when unknown)."""
        doc = await self.conn.scalar(_ROLLOUT, {"id": rollout_id})
        if doc is None:
            raise NotFound(f"no rollout '{rollout_id}'")
        return rollout_from(json.loads(doc))

    async def put_rollout(self, rollout: Rollout) -> None:
        """Insert or replace a rollout."""
        assert rollout.created_at is not None
        values = {
            "id": rollout.id,
            "model": rollout.model,
            "state": rollout.state.value,
            "created": rollout.created_at.isoformat(),
            "doc": dumps(rollout_doc(rollout)),
        }
        await self.conn.execute(upsert(self.conn, rollouts, values, ("state", "doc")))

    async def put_model(self, record: ModelRecord) -> None:
        """Insert or replace a model."""
        values = {"name": record.name, "doc": dumps(model_doc(record))}
        await self.conn.execute(upsert(self.conn, models, values, ("doc",)))

    async def touch_model(self, name: str, when: datetime) -> None:
        """Record that one of the model's versions changed at ``when``."""
        await self.put_model(dataclasses.replace(await self.model(name), updated_at=when))

    async def put_version(self, record: ModelVersionRecord) -> None:
        """Insert or replace a version."""
        values = {"model": record.model, "version": record.version, "doc": dumps(version_doc(record))}
        await self.conn.execute(upsert(self.conn, versions, values, ("doc",)))

    async def audit(
        self, action: str, target: str, before: dict[str, Any] | None, after: dict[str, Any] | None
    ) -> None:
        """Record a change of ``target`` (its documents before and after) by this transaction's actor."""
        await self.conn.execute(
            insert(audit).values(
                time=utc_now().isoformat(),
                actor=self.actor,
                action=action,
                target=target,
                before=dumps(before),
                after=dumps(after),
                reason=self.reason,
                request_id=ctx.current_request_id() or "",
            )
        )
