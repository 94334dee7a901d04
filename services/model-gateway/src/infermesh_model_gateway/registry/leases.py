"""Leases in the registry's database: a named lease has one holder until it expires or is given up.

The rollout controllers of every gateway instance (and worker process) compete for one lease per
model, so one of them drives each model's rollout; a holder renews its lease before it expires.
"""

from __future__ import annotations

import time

from infermesh_model_gateway.registry.database import Database

__all__ = ["Leases"]


class Leases:
    """Lease operations over ``db`` (the :class:`~.Registry` has them too)."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
