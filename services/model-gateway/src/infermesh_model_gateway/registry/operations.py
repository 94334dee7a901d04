"""The registry's operations: reads, and writes that each run in one audited transaction.

Every write runs in one transaction (see :mod:`.database`), checks the rules of :mod:`.lifecycle`,
writes its audit entry (who, when, what, the object before and after as JSON) in the same
transaction, and moves the document store's revision on: the generation that other gateway
instances poll to refresh their routing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func

from infermesh_chassis.docstore import DocumentStore
from infermesh_chassis.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from infermesh_chassis.validation import parse_uint
from infermesh_model_gateway.domain import (
    AuditRecord,
    ModelRecord,
    ModelVersionRecord,
    Rollout,
    RolloutState,
    TrafficPolicy,
    VersionState,
    utc_now,
)
from infermesh_model_gateway.registry.database import open_database
from infermesh_model_gateway.registry.documents import (
    model_doc,
    model_from,
    model_path,
    rollout_doc,
    rollout_from,
    rollout_path,
    version_doc,
    version_from,
    version_path,
)
from infermesh_model_gateway.registry.leases import Leases
from infermesh_model_gateway.registry.lifecycle import (
    ALIAS_PATTERN,
    PRODUCTION,
    TRANSITIONS,
    check_routable,
    refuse_if_referenced,
    require_serving,
    transition_refusal,
    with_production,
)
from infermesh_model_gateway.registry.tables import MODEL, ROLLOUT, VERSION, Tx

__all__ = ["Registry", "open_registry"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def open_registry(url: str) -> Registry:
    """The registry at ``sqlite:///path`` or ``postgresql://...``."""
    return Registry(await open_database(url))


class Registry(Leases):
    """Registry operations and their rules (see the module docstring), with :class:`.Leases`' too."""

    def __init__(self, docs: DocumentStore) -> None:
        super().__init__(docs.store)
        self._docs = docs

    async def close(self) -> None:
        """Close the database."""
        await self._docs.close()

    @contextlib.asynccontextmanager
    async def _write(self, actor: str, reason: str) -> AsyncIterator[Tx]:
        async with self._docs.write() as documents:
            yield Tx(documents, actor, reason)

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        async with self._docs.read() as documents:
            yield Tx(documents, "", "")

    # --- reads -----------------------------------------------------------------------------------

    async def generation(self) -> int:
        """A counter that changes with every write (other instances poll it)."""
        return await self._docs.revision()

    async def snapshot(self) -> list[tuple[ModelRecord, list[ModelVersionRecord]]]:
        """Every model with its versions (oldest first): what the router and reconciliation need."""
        async with self._docs.read() as documents:
            model_docs = await documents.list(MODEL)
            version_docs = await documents.list(VERSION, order_by=[documents.c.parent, documents.c.ordinal])
        by_model: dict[str, list[ModelVersionRecord]] = {}
        for doc in version_docs:
            record = version_from(json.loads(doc.body))
            by_model.setdefault(record.model, []).append(record)
        return [(m, by_model.get(m.name, [])) for m in (model_from(json.loads(doc.body)) for doc in model_docs)]

    async def model_versions(self, model: str) -> list[ModelVersionRecord]:
        """Every version of ``model``, oldest first."""
        async with self._docs.read() as documents:
            c = documents.c
            docs = await documents.list(VERSION, c.parent == model, order_by=[c.ordinal])
        return [version_from(json.loads(doc.body)) for doc in docs]

    async def get_model(self, name: str) -> ModelRecord:
        """One model (NOT_FOUND when unknown)."""
        async with self._read() as tx:
            return await tx.model(name)

    async def get_version(self, model: str, version: int) -> ModelVersionRecord:
        """One version (NOT_FOUND naming what is missing)."""
        async with self._read() as tx:
            return await tx.version(model, version)

    async def resolve_alias(self, model: str, alias: str) -> int:
        """The version an alias points at (NOT_FOUND listing the aliases there are)."""
        record = await self.get_model(model)
        if alias not in record.aliases:
            known = ", ".join(sorted(record.aliases)) or "none"
            raise NotFound(f"model '{model}' has no alias '{alias}' (aliases: {known})")
        return record.aliases[alias]

    async def list_models(self, *, page_size: int, page_token: str = "") -> tuple[list[ModelRecord], str]:
        """Models ordered by name, after ``page_token``; the next token ("" at the end)."""
        async with self._docs.read() as documents:
            docs = await documents.list(MODEL, documents.c.key > page_token, limit=page_size + 1)
        more = len(docs) > page_size
        docs = docs[:page_size]
        return [model_from(json.loads(doc.body)) for doc in docs], (docs[-1].key if more else "")

    async def list_versions(
        self, model: str, *, page_size: int, page_token: str = ""
    ) -> tuple[list[ModelVersionRecord], str]:
        """Versions of ``model``, newest first, before ``page_token``; the next token."""
        before = _token_int(page_token, "page.page_token")
        async with self._read() as tx:
            await tx.model(model)
            c = tx.documents.c
            docs = await tx.documents.list(
                VERSION,
                c.parent == model,
                c.ordinal < (before or 2**62),
                order_by=[c.ordinal.desc()],
                limit=page_size + 1,
            )
        more = len(docs) > page_size
        docs = docs[:page_size]
        return [version_from(json.loads(doc.body)) for doc in docs], (str(docs[-1].ordinal) if more else "")

    async def list_audit(
        self, *, target_prefix: str = "", page_size: int, page_token: str = ""
    ) -> tuple[list[AuditRecord], str]:
        """Audit entries, newest first, whose target starts with ``target_prefix``."""
        before = _token_int(page_token, "page.page_token")
        entries, next_seq = await self._docs.audit_page(
            limit=page_size, before_seq=before or None, target_prefix=target_prefix
        )
        records = [
            AuditRecord(
                e.seq,
                _EPOCH + timedelta(microseconds=e.time_us),
                e.actor,
                e.action,
                e.target,
                e.before,
                e.after,
                e.reason,
                e.request_id,
            )
            for e in entries
        ]
        return records, ("" if next_seq is None else str(next_seq))

    # --- writes ----------------------------------------------------------------------------------

    async def register_version(self, record: ModelVersionRecord, *, actor: str, reason: str = "") -> ModelVersionRecord:
        """Store a new version (numbered after the model's highest), creating the model if needed."""
        now = utc_now()
        async with self._write(actor, reason) as tx:
            if await tx.documents.get(MODEL, record.model) is not None:
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
                await tx.audit("model.create", model_path(record.model), None, model_doc(model))
            c = tx.documents.c
            highest = await tx.documents.scalar(VERSION, func.max(c.ordinal), c.parent == record.model)
            number = int(highest or 0) + 1
            stored = dataclasses.replace(
                record,
                version=number,
                state=VersionState.REGISTERED,
                created_by=actor,
                created_at=now,
                updated_at=now,
            )
            await tx.put_version(stored)
            await tx.audit("model_version.register", version_path(record.model, number), None, version_doc(stored))
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
            if state not in TRANSITIONS[before.state]:
                raise FailedPrecondition(transition_refusal(before, state))
            if state is VersionState.DRAINING:
                refuse_if_referenced(await tx.model(model), version, "undeploy")
            now = utc_now()
            after = dataclasses.replace(before, state=state, state_detail=detail, updated_at=now)
            if state is VersionState.RETIRED:
                after = dataclasses.replace(after, retired_at=now)
            await tx.put_version(after)
            await tx.touch_model(model, now)
            await tx.audit(
                f"model_version.{state.value}", version_path(model, version), version_doc(before), version_doc(after)
            )
        return after

    async def _update_model(self, tx: Tx, action: str, before: ModelRecord, after: ModelRecord) -> ModelRecord:
        now = utc_now()
        if after != before:
            after = dataclasses.replace(after, updated_at=now)
        await tx.put_model(after)
        await tx.audit(action, model_path(before.name), model_doc(before), model_doc(after))
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
                await require_serving(tx, model, version, "policy.weights")
            if policy.mirror is not None:
                await require_serving(tx, model, policy.mirror.version, "policy.mirror")
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
            await require_serving(tx, model, version, f"alias '{alias}'")
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
            await require_serving(tx, model, version, "promote")
            return await self._update_model(tx, "model.promote", before, with_production(before, version, append=True))

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
                await require_serving(tx, model, target, "rollback")
                after = with_production(before, target, append=False)
                after = dataclasses.replace(after, production_history=tuple(history))
            else:
                await require_serving(tx, model, to_version, "rollback")
                after = with_production(before, to_version, append=True)
            return await self._update_model(tx, "model.rollback", before, after)

    # --- rollouts ---------------------------------------------------------------------------------

    async def create_rollout(self, rollout: Rollout, *, actor: str, reason: str = "") -> Rollout:
        """Store a new PENDING rollout (at most one active rollout per model)."""
        async with self._write(actor, reason) as tx:
            await tx.model(rollout.model)
            c = tx.documents.c
            active = [s.value for s in RolloutState if s.active]
            running = await tx.documents.list(ROLLOUT, c.parent == rollout.model, c.label.in_(active), limit=1)
            if running:
                raise FailedPrecondition(
                    f"model '{rollout.model}' already has an active rollout ({running[0].key}): abort it first"
                )
            await require_serving(tx, rollout.model, rollout.candidate, "candidate_version")
            await require_serving(tx, rollout.model, rollout.baseline, "baseline_version")
            now = utc_now()
            stored = dataclasses.replace(rollout, created_by=actor, created_at=now, updated_at=now)
            await tx.put_rollout(stored)
            await tx.audit("rollout.create", rollout_path(stored), None, rollout_doc(stored))
        return stored

    async def get_rollout(self, rollout_id: str) -> Rollout:
        """One rollout (NOT_FOUND when unknown)."""
        async with self._read() as tx:
            return await tx.rollout(rollout_id)

    async def list_rollouts(
        self, *, model: str = "", states: frozenset[RolloutState] = frozenset(), page_size: int, page_token: str = ""
    ) -> tuple[list[Rollout], str]:
        """Rollouts, newest first, optionally of one model and in some states."""
        offset = _token_int(page_token, "page.page_token")
        async with self._docs.read() as documents:
            c = documents.c
            where = [c.parent == model] if model else []
            if states:
                where.append(c.label.in_(sorted(s.value for s in states)))
            docs = await documents.list(
                ROLLOUT, *where, order_by=[c.ordinal.desc(), c.key.desc()], limit=page_size + 1, offset=offset
            )
        more = len(docs) > page_size
        records = [rollout_from(json.loads(doc.body)) for doc in docs[:page_size]]
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
                await check_routable(tx, new_model, f"rollout {rollout_id}")
                await self._update_model(tx, "traffic_policy.set", model, new_model)
            await tx.put_rollout(after)
            await tx.audit(f"rollout.{action}", rollout_path(after), rollout_doc(before), rollout_doc(after))
        return after

    async def record_evaluation(self, rollout_id: str, *, evaluation: str, next_decision_at: datetime) -> None:
        """Store a gate evaluation that changed nothing, and when to evaluate again (no audit entry)."""
        async with self._docs.write(revise=False) as documents:
            tx = Tx(documents, "", "")
            rollout = await tx.rollout(rollout_id)
            if rollout.state is RolloutState.RUNNING:
                await tx.put_rollout(
                    dataclasses.replace(rollout, last_evaluation=evaluation, next_decision_at=next_decision_at)
                )

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
            refuse_if_referenced(await tx.model(model), version, "retire")
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
            path = version_path(model, version)
            await tx.audit("model_version.retire", path, version_doc(before), version_doc(after))
        return after


async def _touch_realiased(tx: Tx, before: ModelRecord, after: ModelRecord, now: datetime) -> None:
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


def _token_int(token: str, field: str) -> int:
    return parse_uint(token, field, what="a token this API returned") if token else 0
