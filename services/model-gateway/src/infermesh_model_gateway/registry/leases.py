"""Leases in the registry's database: a named lease has one holder until it expires or is given up.

The rollout controllers of every gateway instance (and worker process) compete for one lease per
model, so one of them drives each model's rollout; a holder renews its lease before it expires.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, select

from infermesh_chassis.docstore import Store, upsert
from infermesh_model_gateway.registry.database import leases

__all__ = ["Leases"]


class Leases:
    """Lease operations over ``db`` (the :class:`~.Registry` has them too)."""

    def __init__(self, db: Store) -> None:
        self._db = db

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` unless another holder's is still valid."""
        now = time.time()
        async with self._db.transaction() as conn:
            row = (await conn.execute(select(leases.c.holder, leases.c.expires).where(leases.c.name == name))).first()
            if row is not None and row.holder != holder and float(row.expires) > now:
                return False
            values = {"name": name, "holder": holder, "expires": now + ttl_s}
            await conn.execute(upsert(conn, leases, values, ("holder", "expires")))
        return True

    async def lease_holder(self, name: str) -> str:
        """Who holds the lease ``name`` now ("" when nobody does)."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(leases.c.holder, leases.c.expires).where(leases.c.name == name))).first()
        return str(row.holder) if row is not None and float(row.expires) > time.time() else ""

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (only if ``holder`` has it)."""
        async with self._db.transaction() as conn:
            await conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))
