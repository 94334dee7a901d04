"""The registry's records as documents: reads and writes of them, and audit entries, in one transaction.

Kinds and keys: a model is ``model`` under its name; a version is ``version`` under
``<model>/<number>``, with the model as its ``parent`` and its number as its ``ordinal``; a rollout
is ``rollout`` under its id, with its model as ``parent``, its state as ``label`` and its creation
time (microseconds since the epoch) as ``ordinal``. Those index columns keep the registry's queries
(a model's versions in order, its highest number, rollouts newest first, a model's active rollout)
on the shared table's indexes.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from infermesh_chassis import context as ctx
from infermesh_chassis.docstore import Documents
from infermesh_chassis.errors import NotFound
from infermesh_model_gateway.domain import ModelRecord, ModelVersionRecord, Rollout
from infermesh_model_gateway.registry.documents import (
    dumps,
    model_doc,
    model_from,
    rollout_doc,
    rollout_from,
    version_doc,
    version_from,
)

__all__ = ["MODEL", "ROLLOUT", "VERSION", "Tx", "micros", "version_key"]

MODEL = "model"
VERSION = "version"
ROLLOUT = "rollout"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(when: datetime) -> int:
    """``when`` in microseconds since the epoch (a time without a zone is UTC)."""
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


def version_key(model: str, version: int) -> str:
    """A version's document key."""
    return f"{model}/{version}"


class Tx:
    """The registry's records on one connection's documents: a write (:meth:`DocumentStore.write`),
    whose audit entries name ``actor`` and ``reason``, or a read (no actor, no audit)."""

    def __init__(self, documents: Documents, actor: str, reason: str) -> None:
        self.documents = documents
        self.actor = actor
        self.reason = reason

    async def model(self, name: str) -> ModelRecord:
        """One model (NOT_FOUND when unknown)."""
        document = await self.documents.get(MODEL, name)
        if document is None:
            raise NotFound(f"model '{name}' is not registered")
        return model_from(json.loads(document.body))

    async def version(self, model: str, version: int) -> ModelVersionRecord:
        """One version (NOT_FOUND naming the model or the version missing)."""
        document = await self.documents.get(VERSION, version_key(model, version))
        if document is None:
            await self.model(model)
            raise NotFound(f"model '{model}' has no version {version}")
        return version_from(json.loads(document.body))

    async def rollout(self, rollout_id: str) -> Rollout:
        """One rollout (NOT_FOUND when unknown)."""
        document = await self.documents.get(ROLLOUT, rollout_id)
        if document is None:
            raise NotFound(f"no rollout '{rollout_id}'")
        return rollout_from(json.loads(document.body))

    async def put_rollout(self, rollout: Rollout) -> None:
        """Insert or replace a rollout."""
        assert rollout.created_at is not None
        await self.documents.put(
            ROLLOUT,
            rollout.id,
            dumps(rollout_doc(rollout)),
            parent=rollout.model,
            label=rollout.state.value,
            ordinal=micros(rollout.created_at),
        )

    async def put_model(self, record: ModelRecord) -> None:
        """Insert or replace a model."""
        await self.documents.put(MODEL, record.name, dumps(model_doc(record)))

    async def touch_model(self, name: str, when: datetime) -> None:
        """Record that one of the model's versions changed at ``when``."""
        await self.put_model(dataclasses.replace(await self.model(name), updated_at=when))

    async def put_version(self, record: ModelVersionRecord) -> None:
        """Insert or replace a version."""
        key = version_key(record.model, record.version)
        await self.documents.put(VERSION, key, dumps(version_doc(record)), parent=record.model, ordinal=record.version)

    async def audit(
        self, action: str, target: str, before: dict[str, Any] | None, after: dict[str, Any] | None
    ) -> None:
        """Record a change of ``target`` (its documents before and after) by this transaction's actor."""
        await self.documents.audit(
            action,
            target,
            before=dumps(before),
            after=dumps(after),
            actor=self.actor,
            reason=self.reason,
            request_id=ctx.current_request_id() or "",
        )
