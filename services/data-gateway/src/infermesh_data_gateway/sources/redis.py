"""Redis, the online store.

One string per (view, entity), key ``<prefix><view>:<key1>|<key2>``, value
``<event time µs>|<JSON of the fields>``; a Lua script writes only when not older, and the key
expires when the view's TTL runs out. Watermarks live in the hash ``<prefix>__watermarks``.
Reads issued in the same event-loop turn (concurrent requests) share one MGET.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from infermesh_data_gateway.definitions import SourceDef, ViewDef
from infermesh_data_gateway.sources.base import (
    Key,
    ReadItem,
    Record,
    Source,
    SourceError,
    SourceMetrics,
    iso_text,
    now_us,
)

_WRITE_IF_NEWER = """
local written = 0
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 3
  local ts = tonumber(ARGV[base + 1])
  local current = redis.call('GET', key)
  local stored = current and tonumber(string.match(current, '^(%-?%d+)|')) or nil
  if stored == nil or stored <= ts then
    local expire_at = tonumber(ARGV[base + 3])
    if expire_at > 0 then
      redis.call('SET', key, ARGV[base + 2], 'PXAT', expire_at)
    else
      redis.call('SET', key, ARGV[base + 2])
    end
    written = written + 1
  end
end
return written
"""


def redis_key(prefix: str, view: str, key: Key) -> str:
    """The Redis key of one entity's record of ``view``."""
    parts = (str(v).replace("\\", "\\\\").replace("|", "\\|") for v in key)
    return f"{prefix}{view}:{'|'.join(parts)}"


class RedisSource(Source):
    """Redis, the online store (``redis.asyncio`` with a blocking connection pool)."""

    online_writable = True

    def __init__(self, definition: SourceDef, metrics: SourceMetrics) -> None:
        super().__init__(definition, metrics)
        self.prefix = str(definition.options.get("key_prefix", "infermesh:"))
        pool = aioredis.BlockingConnectionPool.from_url(
            str(definition.options["url"]),
            max_connections=definition.pool_size,
            timeout=definition.timeout_s,
            socket_timeout=definition.timeout_s,
            socket_connect_timeout=definition.timeout_s,
            # One immediate retry on a broken connection: after a Redis restart the pooled ones are stale.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[aioredis.ConnectionError],
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self._pending: list[tuple[list[str], asyncio.Future[list[bytes | None]]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._script = self.client.register_script(_WRITE_IF_NEWER)

    def _prefix(self, view: ViewDef) -> str:
        return str(view.binding(self.name).get("key_prefix", self.prefix))

    async def probe(self) -> None:
        await self.client.ping()

    async def read_online(self, view: ViewDef, items: Sequence[ReadItem]) -> list[Record | None]:
        return (await self.read_online_views(((view, items),)))[0]

    async def read_online_views(
        self, requests: Sequence[tuple[ViewDef, Sequence[ReadItem]]]
    ) -> list[list[Record | None]]:
        keys = [redis_key(self._prefix(view), view.name, item.key) for view, items in requests for item in items]
        raw = await self._mget(keys)
        out: list[list[Record | None]] = []
        position = 0
        for view, items in requests:
            records: list[Record | None] = []
            for value in raw[position : position + len(items)]:
                records.append(None if value is None else self._decode(view, value))
            position += len(items)
            out.append(records)
        return out

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        """MGET ``keys``, coalesced with the other reads issued in the same event-loop turn (one round trip)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bytes | None]] = loop.create_future()
        self._pending.append((keys, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[list[str], asyncio.Future[list[bytes | None]]]]) -> None:
        keys = [key for keys, _ in batch for key in keys]
        try:
            values = await self.client.mget(keys)
        except (aioredis.RedisError, OSError) as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(SourceError(f"redis {self.name}: {exc}"))
            return
        position = 0
        for wanted, future in batch:
            if not future.done():  # its caller may have timed out
                future.set_result(values[position : position + len(wanted)])
            position += len(wanted)

    def _decode(self, view: ViewDef, value: bytes) -> Record | None:
        stamp, _, payload = value.partition(b"|")
        try:
            ts = int(stamp)
            fields = json.loads(payload)
        except ValueError:
            self._metrics.bad_values.labels(self.name).inc()
            return None
        return Record(self._canonical(view, fields), ts)

    async def write_online(self, view: ViewDef, rows: Sequence[tuple[Key, Mapping[str, Any], int]]) -> tuple[int, int]:
        prefix = self._prefix(view)
        ttl_ms = None if view.ttl_s is None else round(view.ttl_s * 1000)
        now_ms = now_us() // 1000
        keys: list[str] = []
        args: list[Any] = []
        expired = 0
        for key, values, ts in rows:
            expire_at = 0 if ttl_ms is None else ts // 1000 + ttl_ms
            if ttl_ms is not None and expire_at <= now_ms:
                expired += 1
                continue
            keys.append(redis_key(prefix, view.name, key))
            fields = {
                name: iso_text(value) if value is not None and view.fields[name].name == "TIMESTAMP" else value
                for name, value in values.items()
            }
            args += [ts, f"{ts}|{json.dumps(fields, separators=(',', ':'))}", expire_at]
        written = 0
        try:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                written += int(await self._script(keys=chunk, args=args[start * 3 : (start + len(chunk)) * 3]))
        except aioredis.RedisError as exc:
            raise SourceError(f"redis {self.name}: {exc}") from exc
        return written, len(rows) - written

    async def get_watermark(self, view: str) -> int | None:
        value = await self.client.hget(f"{self.prefix}__watermarks", view)
        return None if value is None else int(value)

    async def set_watermark(self, view: str, watermark_us: int) -> None:
        await self.client.hset(f"{self.prefix}__watermarks", view, str(watermark_us))

    async def close(self) -> None:
        await super().close()
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
