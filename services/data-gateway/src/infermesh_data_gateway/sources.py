"""Connectors to data sources: Redis, PostgreSQL, SQLite, Parquet/CSV files, HTTP JSON, request values.

Every connector reads the latest record of a feature view for a batch of entity keys
(:meth:`Source.read_online`), and, where the kind allows, writes records if they are newer
than what is stored (online stores: Redis, PostgreSQL, SQLite) and reads a view's history
over a time range for batch work (SQL and files). Values leave a connector in canonical
form (:func:`types.coerce`); a value that cannot be read as its field's type is missing and
counted. Each source owns its connection pool and a :class:`Health` state.

Layouts:

- Redis: one string per (view, entity), key ``<prefix><view>:<key1>|<key2>``, value
  ``<event time µs>|<JSON of the fields>``; a Lua script writes only when not older, and the
  key expires when the view's TTL runs out. Watermarks live in the hash ``<prefix>__watermarks``.
  Reads issued in the same event-loop turn (concurrent requests) share one MGET.
- SQL: table ``binding.table`` (default: the view's name) with the key columns, the field
  columns (``binding.columns`` renames them) and the view's timestamp column; the latest row
  per key is the record. Online-store tables are created with the keys as primary key.
- Files: ``binding.path`` (default ``<view>.parquet``/``.csv`` under the source's path).
- HTTP: ``GET <url><binding.path>`` with ``{key}`` placeholders; 404 means no record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import aiosqlite
import asyncpg
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_data_gateway.definitions import SourceDef, ViewDef
from infermesh_data_gateway.types import DType, coerce, micros_to_datetime

__all__ = [
    "TS_COLUMN",
    "Health",
    "ReadItem",
    "Record",
    "Source",
    "SourceError",
    "SourceMetrics",
    "create_source",
]

TS_COLUMN = "__ts"
"""Column of the event time (UTC microseconds) in frames returned by :meth:`Source.read_offline`."""

_log = get_logger("infermesh_data_gateway.sources")

Key = tuple[Any, ...]


class SourceError(Exception):
    """A source failed to answer (down, timed out, refused, malformed answer)."""


class Health(IntEnum):
    """Health of a source (the numbers of the contract's SourceHealth)."""

    UNKNOWN = 0
    HEALTHY = 1
    DEGRADED = 2
    UNHEALTHY = 3


@dataclass(frozen=True, slots=True)
class ReadItem:
    """One entity to read: its key values (in the view's key order) and the request's values."""

    key: Key
    request: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    """A view's latest values for one key, and their event time (None when the source does not say)."""

    values: Mapping[str, Any]
    ts: int | None


class SourceMetrics:
    """Metrics shared by every source of a gateway."""

    def __init__(self, metrics: Metrics) -> None:
        self.reads = metrics.counter("source_reads", "Reads from data sources by outcome.", ("source", "outcome"))
        self.latency = metrics.histogram(
            "source_read_latency_seconds", "Latency of reads from data sources.", ("source",)
        )
        self.bad_values = metrics.counter(
            "source_bad_values", "Values a source returned that could not be read as their field's type.", ("source",)
        )
        self.health = metrics.gauge(
            "source_health",
            "Health of each data source: 1 healthy, 2 degraded, 3 down.",
            ("source",),
            multiprocess_mode="livemax",  # the worst any worker sees
        )


class Source(ABC):
    """A configured data source (see the module docstring)."""

    online_writable = False
    offline_readable = False

    def __init__(self, definition: SourceDef, metrics: SourceMetrics) -> None:
        self.definition = definition
        self.name = definition.name
        self.kind = definition.kind
        self.timeout_s = definition.timeout_s
        self.health = Health.UNKNOWN
        self._failures = 0
        self._metrics = metrics
        self._probe_task: asyncio.Task[None] | None = None

    # -- health -----------------------------------------------------------------------------

    def _set_health(self, health: Health) -> None:
        if health is not self.health:
            _log.info("source_health_changed", source=self.name, health=health.name, was=self.health.name)
        self.health = health
        self._metrics.health.labels(self.name).set(int(health))

    def succeeded(self, elapsed_s: float) -> None:
        """Count a successful read."""
        self._failures = 0
        self._metrics.reads.labels(self.name, "ok").inc()
        self._metrics.latency.labels(self.name).observe(elapsed_s)
        if self.health is not Health.HEALTHY:
            self._set_health(Health.HEALTHY)

    def failed(self, outcome: str) -> None:
        """Count a failed read (``timeout`` or ``error``): degraded at once, down after three in a row."""
        self._failures += 1
        self._metrics.reads.labels(self.name, outcome).inc()
        self._set_health(Health.UNHEALTHY if self._failures >= 3 else Health.DEGRADED)

    def start_probing(self) -> None:
        """Check the source every ``health_interval`` in the background (a down source comes back by itself)."""
        if self._probe_task is None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name=f"probe-{self.name}")

    async def _probe_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.timeout_s * 4):
                    await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # a probe that turned our cancellation into its error
                self._failures = max(self._failures, 3)
                if self.health is not Health.UNHEALTHY:
                    _log.warning("source_probe_failed", source=self.name, error=str(exc) or type(exc).__name__)
                self._set_health(Health.UNHEALTHY)
            else:
                if self.health is Health.UNHEALTHY or self.health is Health.UNKNOWN:
                    self._failures = 0
                    self._set_health(Health.HEALTHY)
            await asyncio.sleep(self.definition.health_interval_s)

    async def close(self) -> None:
        """Stop probing and release the pool."""
        await cancel_and_wait(self._probe_task)
        self._probe_task = None

    def _canonical(
        self, view: ViewDef, raw: Mapping[str, Any], columns: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, dtype in view.fields.items():
            value = raw.get(columns.get(name, name) if columns else name)
            try:
                values[name] = coerce(dtype, value)
            except ValueError:
                self._metrics.bad_values.labels(self.name).inc()
                values[name] = None
        return values

    def _offline_timestamps(self, view: ViewDef, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows with every key, and TIMESTAMP fields as nullable int64 microseconds (the batch executor's form)."""
        frame = frame.dropna(subset=[k.name for k in view.keys]).reset_index(drop=True)
        for name, dtype in view.fields.items():
            if dtype.name != "TIMESTAMP":
                continue
            micros = []
            for value in frame[name].tolist():
                try:
                    micros.append(None if pd.isna(value) else coerce(dtype, value))
                except ValueError:
                    self._metrics.bad_values.labels(self.name).inc()
                    micros.append(None)
            frame[name] = pd.array(micros, dtype="Int64")
        return frame

    # -- the operations ----------------------------------------------------------------------

    @abstractmethod
    async def probe(self) -> None:
        """Raise when the source cannot answer."""

    @abstractmethod
    async def read_online(self, view: ViewDef, items: Sequence[ReadItem]) -> list[Record | None]:
        """The latest record of ``view`` for each item (None where there is none), in order."""

    async def read_online_views(
        self, requests: Sequence[tuple[ViewDef, Sequence[ReadItem]]]
    ) -> list[list[Record | None]]:
        """:meth:`read_online` for several views at once (one round trip where the source allows)."""
        return [await self.read_online(view, items) for view, items in requests]

    async def write_online(self, view: ViewDef, rows: Sequence[tuple[Key, Mapping[str, Any], int]]) -> tuple[int, int]:
        """Write (key, canonical values, event time µs) rows, each only if not older than the stored one.

        Returns (written, skipped).
        """
        raise SourceError(f"source {self.name!r} ({self.kind}) is not an online store")

    async def read_offline(self, view: ViewDef, start_us: int | None, end_us: int | None) -> pd.DataFrame:
        """The view's rows with event time in [start, end): key columns, field columns and ``__ts``."""
        raise SourceError(f"source {self.name!r} ({self.kind}) cannot be read in batch")

    async def get_watermark(self, view: str) -> int | None:
        """The last materialization watermark of ``view`` (µs), if any."""
        raise SourceError(f"source {self.name!r} ({self.kind}) keeps no watermarks")

    async def set_watermark(self, view: str, watermark_us: int) -> None:
        """Record the materialization watermark of ``view``."""
        raise SourceError(f"source {self.name!r} ({self.kind}) keeps no watermarks")


def _latest(rows: Sequence[tuple[Key, Record]], keys: Sequence[Key], now_us: int | None = None) -> list[Record | None]:
    best: dict[Key, Record] = {}
    for key, record in rows:
        if record.ts is not None and now_us is not None and record.ts > now_us:
            continue
        current = best.get(key)
        if current is None or (record.ts or 0) >= (current.ts or 0):
            best[key] = record
    return [best.get(key) for key in keys]


def _now_us() -> int:
    return time.time_ns() // 1000


# ------------------------------------------------------------------------------------------------
# Redis
# ------------------------------------------------------------------------------------------------

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


def _iso(micros: int) -> str:
    return micros_to_datetime(micros).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


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
        now_ms = _now_us() // 1000
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
                name: _iso(value) if value is not None and view.fields[name].name == "TIMESTAMP" else value
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


# ------------------------------------------------------------------------------------------------
# SQL: PostgreSQL and SQLite
# ------------------------------------------------------------------------------------------------

_SQL_TYPES = {
    "postgres": {
        "float": "DOUBLE PRECISION",
        "int": "BIGINT",
        "BOOL": "BOOLEAN",
        "STRING": "TEXT",
        "TIMESTAMP": "TIMESTAMPTZ",
    },
    "sqlite": {"float": "REAL", "int": "INTEGER", "BOOL": "INTEGER", "STRING": "TEXT", "TIMESTAMP": "TEXT"},
}


def _quote(name: str) -> str:
    return f'"{name}"'


class SqlSource(Source):
    """PostgreSQL (asyncpg pool) or SQLite (a pool of aiosqlite connections)."""

    online_writable = True
    offline_readable = True

    def __init__(self, definition: SourceDef, metrics: SourceMetrics) -> None:
        super().__init__(definition, metrics)
        self._pg_pool: asyncpg.Pool | None = None
        self._sqlite: asyncio.Queue[aiosqlite.Connection] | None = None
        self._opened: list[aiosqlite.Connection] = []
        self._opening: asyncio.Task[asyncio.Queue[aiosqlite.Connection]] | None = None
        self._lock = asyncio.Lock()
        self._created: set[str] = set()
        self.dialect = definition.kind

    # -- connections -----------------------------------------------------------------------

    async def _pg(self) -> asyncpg.Pool:
        if self._pg_pool is None:
            async with self._lock:
                if self._pg_pool is None:
                    try:
                        self._pg_pool = await asyncpg.create_pool(
                            str(self.definition.options["dsn"]),
                            min_size=0,
                            max_size=self.definition.pool_size,
                            timeout=max(self.timeout_s, 1.0),
                            command_timeout=max(self.timeout_s * 10, 5.0),
                        )
                    except (OSError, asyncpg.PostgresError) as exc:
                        raise SourceError(f"postgres {self.name}: cannot connect: {exc}") from exc
        return self._pg_pool

    def _sqlite_path(self) -> Path:
        path = Path(str(self.definition.options["path"]))
        return path if path.is_absolute() else self.definition.base_dir / path

    async def _open_sqlite(self) -> asyncio.Queue[aiosqlite.Connection]:
        path = self._sqlite_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        queue: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for index in range(self.definition.pool_size):
            conn = await aiosqlite.connect(path, timeout=max(self.timeout_s, 1.0))
            self._opened.append(conn)
            if index == 0:  # readers beside a writer; needs the only connection, and is kept by the file
                with contextlib.suppress(aiosqlite.OperationalError):
                    await conn.execute("PRAGMA journal_mode=WAL")
            queue.put_nowait(conn)
        return queue

    @contextlib.asynccontextmanager
    async def _sqlite_conn(self) -> Any:
        if self._sqlite is None:
            if self._opening is None or (self._opening.done() and self._opening.exception() is not None):
                self._opening = asyncio.create_task(self._open_sqlite())
            # Shielded: a cancelled caller must not leave a connection thread half-open.
            self._sqlite = await asyncio.shield(self._opening)
        conn = await self._sqlite.get()
        try:
            yield conn
        finally:
            self._sqlite.put_nowait(conn)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            if self.dialect == "postgres":
                pool = await self._pg()
                rows = await pool.fetch(sql, *params)
                return [tuple(row) for row in rows]
            async with self._sqlite_conn() as conn, conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, aiosqlite.Error) as exc:
            raise SourceError(f"{self.dialect} {self.name}: {exc}") from exc

    async def probe(self) -> None:
        await self._fetch("SELECT 1", ())

    async def close(self) -> None:
        await super().close()
        if self._pg_pool is not None:
            await self._pg_pool.close()
            self._pg_pool = None
        if self._opening is not None:
            await asyncio.gather(self._opening, return_exceptions=True)
        for conn in self._opened:
            await conn.close()
        self._opened.clear()
        self._sqlite = None

    # -- layout ----------------------------------------------------------------------------

    def _table(self, view: ViewDef) -> str:
        return str(view.binding(self.name).get("table", view.name))

    def _columns(self, view: ViewDef) -> dict[str, str]:
        renames = view.binding(self.name).get("columns", {}) or {}
        return {name: str(renames.get(name, name)) for name in view.fields}

    def _ts_format(self, view: ViewDef) -> str:
        return str(view.binding(self.name).get("timestamp_format", "native" if self.dialect == "postgres" else "iso"))

    def _param(self, index: int) -> str:
        return f"${index}" if self.dialect == "postgres" else "?"

    def _ts_to_db(self, view: ViewDef, micros: int) -> Any:
        fmt = self._ts_format(view)
        if fmt == "epoch_s":
            return micros / 1_000_000
        stamp = micros_to_datetime(micros)
        if fmt == "native" and self.dialect == "postgres":
            return stamp
        return _iso(micros)

    def _ts_from_db(self, value: Any) -> int | None:
        try:
            return coerce(DType("TIMESTAMP"), value)
        except ValueError:
            self._metrics.bad_values.labels(self.name).inc()
            return None

    def _select(self, view: ViewDef) -> tuple[str, list[str], dict[str, str]]:
        columns = self._columns(view)
        key_cols = [k.name for k in view.keys]
        names = [*key_cols, *columns.values(), view.timestamp_field]
        return f"SELECT {', '.join(_quote(c) for c in names)} FROM {_quote(self._table(view))}", key_cols, columns

    # -- online ----------------------------------------------------------------------------

    async def read_online(self, view: ViewDef, items: Sequence[ReadItem]) -> list[Record | None]:
        select, key_cols, columns = self._select(view)
        keys = [item.key for item in items]
        unique = list(dict.fromkeys(keys))
        params: list[Any] = []
        if len(key_cols) == 1:
            marks = []
            for key in unique:
                params.append(key[0])
                marks.append(self._param(len(params)))
            where = f"{_quote(key_cols[0])} IN ({', '.join(marks)})"
        else:
            tuples = []
            for key in unique:
                marks = []
                for value in key:
                    params.append(value)
                    marks.append(self._param(len(params)))
                tuples.append(f"({', '.join(marks)})")
            where = f"({', '.join(_quote(c) for c in key_cols)}) IN ({', '.join(tuples)})"
        rows = await self._fetch(f"{select} WHERE {where}", params)
        width = len(key_cols)
        field_cols = list(columns.values())
        found = []
        for row in rows:
            raw = dict(zip(field_cols, row[width:-1], strict=True))
            found.append((tuple(row[:width]), Record(self._canonical(view, raw, columns), self._ts_from_db(row[-1]))))
        return _latest(found, keys, _now_us())

    async def _ensure_table(self, view: ViewDef) -> None:
        table = self._table(view)
        if table in self._created:
            return
        types = _SQL_TYPES[self.dialect]

        def sql_type(dtype: DType) -> str:
            return types["float"] if dtype.is_float else types["int"] if dtype.is_int else types[dtype.name]

        ts_type = types["float"] if self._ts_format(view) == "epoch_s" else types["TIMESTAMP"]
        columns = self._columns(view)
        defs = [f"{_quote(k.name)} {sql_type(k.dtype)} NOT NULL" for k in view.keys]
        defs += [f"{_quote(columns[name])} {sql_type(dtype)}" for name, dtype in view.fields.items()]
        defs.append(f"{_quote(view.timestamp_field)} {ts_type} NOT NULL")
        defs.append(f"PRIMARY KEY ({', '.join(_quote(k.name) for k in view.keys)})")
        await self._execute_many([(f"CREATE TABLE IF NOT EXISTS {_quote(table)} ({', '.join(defs)})", ())])
        self._created.add(table)

    async def _execute_many(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        counts = []
        try:
            if self.dialect == "postgres":
                pool = await self._pg()
                async with pool.acquire() as conn, conn.transaction():
                    for sql, params in statements:
                        status = await conn.execute(sql, *params)
                        counts.append(
                            int(status.rsplit(" ", 1)[-1]) if status.split()[0] in ("INSERT", "UPDATE") else 0
                        )
                return counts
            async with self._sqlite_conn() as conn:
                for sql, params in statements:
                    cursor = await conn.execute(sql, params)
                    counts.append(max(cursor.rowcount, 0))
                    await cursor.close()
                await conn.commit()
            return counts
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, aiosqlite.Error) as exc:
            raise SourceError(f"{self.dialect} {self.name}: {exc}") from exc

    def _db_value(self, dtype: DType, value: Any) -> Any:
        if value is None:
            return None
        if dtype.name == "TIMESTAMP":
            stamp = micros_to_datetime(value)
            return stamp if self.dialect == "postgres" else _iso(value)
        if dtype.name == "BOOL" and self.dialect == "sqlite":
            return int(value)
        return value

    async def write_online(self, view: ViewDef, rows: Sequence[tuple[Key, Mapping[str, Any], int]]) -> tuple[int, int]:
        await self._ensure_table(view)
        columns = self._columns(view)
        key_cols = [k.name for k in view.keys]
        names = [*key_cols, *columns.values(), view.timestamp_field]
        marks = ", ".join(self._param(i + 1) for i in range(len(names)))
        ts_col = _quote(view.timestamp_field)
        table = _quote(self._table(view))
        updates = ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in [*columns.values(), view.timestamp_field])
        sql = (
            f"INSERT INTO {table} ({', '.join(_quote(n) for n in names)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(_quote(k) for k in key_cols)}) DO UPDATE SET {updates} "
            f"WHERE excluded.{ts_col} >= {table}.{ts_col}"
        )
        statements = []
        for key, values, ts in rows:
            params = [*key, *(self._db_value(dtype, values.get(name)) for name, dtype in view.fields.items())]
            params.append(self._ts_to_db(view, ts))
            statements.append((sql, params))
        written = sum(1 for count in await self._execute_many(statements) if count > 0)
        return written, len(rows) - written

    async def get_watermark(self, view: str) -> int | None:
        await self._ensure_watermarks()
        rows = await self._fetch(
            f"SELECT watermark_us FROM infermesh_watermarks WHERE view_name = {self._param(1)}", (view,)
        )
        return int(rows[0][0]) if rows else None

    async def set_watermark(self, view: str, watermark_us: int) -> None:
        await self._ensure_watermarks()
        await self._execute_many(
            [
                (
                    f"INSERT INTO infermesh_watermarks (view_name, watermark_us) VALUES ({self._param(1)}, "
                    f"{self._param(2)}) ON CONFLICT (view_name) DO UPDATE SET watermark_us = excluded.watermark_us",
                    (view, watermark_us),
                )
            ]
        )

    async def _ensure_watermarks(self) -> None:
        if "infermesh_watermarks" not in self._created:
            await self._execute_many(
                [
                    (
                        "CREATE TABLE IF NOT EXISTS infermesh_watermarks "
                        "(view_name TEXT PRIMARY KEY, watermark_us BIGINT)",
                        (),
                    )
                ]
            )
            self._created.add("infermesh_watermarks")

    # -- offline ---------------------------------------------------------------------------

    async def read_offline(self, view: ViewDef, start_us: int | None, end_us: int | None) -> pd.DataFrame:
        select, key_cols, columns = self._select(view)
        fmt = self._ts_format(view)
        clauses, params = [], []
        if fmt != "iso":  # ISO text is compared after parsing: formats in one column may differ
            ts_col = _quote(view.timestamp_field)
            if start_us is not None:
                params.append(self._ts_to_db(view, start_us))
                clauses.append(f"{ts_col} >= {self._param(len(params))}")
            if end_us is not None:
                params.append(self._ts_to_db(view, end_us))
                clauses.append(f"{ts_col} < {self._param(len(params))}")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(select + where, params)
        names = [*key_cols, *columns.keys(), TS_COLUMN]
        frame = pd.DataFrame.from_records(rows, columns=names) if rows else pd.DataFrame(columns=names)
        frame[TS_COLUMN] = [self._ts_from_db(v) for v in frame[TS_COLUMN]]
        return self._offline_timestamps(view, _in_range(frame.dropna(subset=[TS_COLUMN]), start_us, end_us))


def _in_range(frame: pd.DataFrame, start_us: int | None, end_us: int | None) -> pd.DataFrame:
    frame = frame.astype({TS_COLUMN: "int64"})
    mask = pd.Series(True, index=frame.index)
    if start_us is not None:
        mask &= frame[TS_COLUMN] >= start_us
    if end_us is not None:
        mask &= frame[TS_COLUMN] < end_us
    return frame[mask].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


class FileSource(Source):
    """Parquet or CSV files; online reads come from an in-memory index reloaded when the file changes."""

    offline_readable = True

    def __init__(self, definition: SourceDef, metrics: SourceMetrics) -> None:
        super().__init__(definition, metrics)
        self.format = str(definition.options.get("format", "parquet"))
        self._index: dict[str, tuple[float, dict[Key, Record]]] = {}

    def path(self, view: ViewDef) -> Path:
        """The file (or folder of files) holding ``view``."""
        root = Path(str(self.definition.options["path"]))
        root = root if root.is_absolute() else self.definition.base_dir / root
        given = view.binding(self.name).get("path")
        if given is not None:
            path = Path(str(given))
            return path if path.is_absolute() else (root if root.is_dir() else root.parent) / path
        return root / f"{view.name}.{self.format}" if root.is_dir() else root

    def columns(self, view: ViewDef) -> dict[str, str]:
        """Column of each field of ``view`` in the files."""
        renames = view.binding(self.name).get("columns", {}) or {}
        return {name: str(renames.get(name, name)) for name in view.fields}

    def _read_table(self, path: Path) -> pa.Table:
        if self.format == "csv":
            if path.is_dir():
                return pa.concat_tables([pa_csv.read_csv(p) for p in sorted(path.glob("*.csv"))])
            return pa_csv.read_csv(path)
        return pq.read_table(path)

    def _frame(self, view: ViewDef) -> pd.DataFrame:
        path = self.path(view)
        if not path.exists():
            raise SourceError(f"file source {self.name}: {path} does not exist")
        table = self._read_table(path)
        columns = self.columns(view)
        frame = table.to_pandas()
        missing = [c for c in [*(k.name for k in view.keys), *columns.values(), view.timestamp_field] if c not in frame]
        if missing:
            raise SourceError(f"file source {self.name}: {path} lacks columns {', '.join(missing)}")
        out = pd.DataFrame({k.name: frame[k.name] for k in view.keys})
        for name, column in columns.items():
            out[name] = frame[column]
        stamps = frame[view.timestamp_field]
        if pd.api.types.is_datetime64_any_dtype(stamps.dtype):
            stamps = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
            out[TS_COLUMN] = stamps.dt.as_unit("us").astype("int64")
        else:
            out[TS_COLUMN] = [coerce(DType("TIMESTAMP"), v) for v in stamps.tolist()]
        for key in view.keys:
            out[key.name] = [coerce(key.dtype, v) for v in out[key.name].tolist()]
        return out

    def _load_index(self, view: ViewDef) -> dict[Key, Record]:
        path = self.path(view)
        mtime = path.stat().st_mtime if path.exists() else -1.0
        cached = self._index.get(view.name)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        frame = self._frame(view)
        now = _now_us()
        frame = frame[frame[TS_COLUMN] <= now].sort_values(TS_COLUMN, kind="stable")
        key_names = [k.name for k in view.keys]
        index: dict[Key, Record] = {}
        fields = list(view.fields)
        for row in frame.itertuples(index=False, name=None):
            record = dict(zip([*key_names, *fields, TS_COLUMN], row, strict=True))
            key = tuple(record[k] for k in key_names)
            index[key] = Record(self._canonical(view, record), int(record[TS_COLUMN]))
        self._index[view.name] = (mtime, index)
        return index

    async def probe(self) -> None:
        root = Path(str(self.definition.options["path"]))
        root = root if root.is_absolute() else self.definition.base_dir / root
        if not root.exists():
            raise SourceError(f"{root} does not exist")

    async def read_online(self, view: ViewDef, items: Sequence[ReadItem]) -> list[Record | None]:
        cached = self._index.get(view.name)
        path = self.path(view)
        if cached is None or not path.exists() or path.stat().st_mtime != cached[0]:
            try:
                index = await asyncio.to_thread(self._load_index, view)
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(f"file source {self.name}: {exc}") from exc
        else:
            index = cached[1]
        return [index.get(item.key) for item in items]

    async def read_offline(self, view: ViewDef, start_us: int | None, end_us: int | None) -> pd.DataFrame:
        try:
            frame = await asyncio.to_thread(self._frame, view)
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"file source {self.name}: {exc}") from exc
        return self._offline_timestamps(view, _in_range(frame, start_us, end_us))


# ------------------------------------------------------------------------------------------------
# HTTP JSON
# ------------------------------------------------------------------------------------------------


class HttpSource(Source):
    """An HTTP JSON endpoint per entity (aiohttp, a connection pool of ``pool_size``)."""

    def __init__(self, definition: SourceDef, metrics: SourceMetrics) -> None:
        super().__init__(definition, metrics)
        self.url = str(definition.options["url"]).rstrip("/")
        self.headers = {str(k): str(v) for k, v in (definition.options.get("headers") or {}).items()}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.definition.pool_size),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers=self.headers,
            )
        return self._session

    async def probe(self) -> None:
        async with self._client().get(self.url + "/") as reply:
            if reply.status >= 500:
                raise SourceError(f"http {self.name}: status {reply.status}")

    async def _one(self, view: ViewDef, item: ReadItem) -> Record | None:
        binding = view.binding(self.name)
        template = str(binding.get("path", f"/{view.name}/" + "/".join(f"{{{k.name}}}" for k in view.keys)))
        path = template.format(**{k.name: quote(str(v), safe="") for k, v in zip(view.keys, item.key, strict=True)})
        async with self._client().get(self.url + path) as reply:
            if reply.status == 404:
                return None
            if reply.status != 200:
                raise SourceError(f"http {self.name}: GET {path} answered {reply.status}")
            body = await reply.json(content_type=None)
        if not isinstance(body, dict):
            raise SourceError(f"http {self.name}: GET {path} did not answer a JSON object")
        fields_key = binding.get("fields_key")
        fields = body.get(fields_key, {}) if fields_key else body
        stamp = body.get(str(binding.get("timestamp_key", view.timestamp_field)))
        return Record(self._canonical(view, fields if isinstance(fields, dict) else {}), self._stamp(stamp))

    def _stamp(self, value: Any) -> int | None:
        try:
            return coerce(DType("TIMESTAMP"), value)
        except ValueError:
            self._metrics.bad_values.labels(self.name).inc()
            return None

    async def read_online(self, view: ViewDef, items: Sequence[ReadItem]) -> list[Record | None]:
        try:
            return list(await asyncio.gather(*(self._one(view, item) for item in items)))
        except (aiohttp.ClientError, ValueError) as exc:
            raise SourceError(f"http {self.name}: {exc}") from exc

    async def close(self) -> None:
        await super().close()
        if self._session is not None:
            await self._session.close()
            self._session = None


# ------------------------------------------------------------------------------------------------
# Request values
# ------------------------------------------------------------------------------------------------


class RequestSource(Source):
    """Values the caller sent with the request (``EntityRow.request_values``), as a view's fields."""

    async def probe(self) -> None:
        return None

    async def read_online(self, view: ViewDef, items: Sequence[ReadItem]) -> list[Record | None]:
        renames = view.binding(self.name).get("columns", {}) or {}
        out: list[Record | None] = []
        for item in items:
            raw = {name: item.request.get(str(renames.get(name, name))) for name in view.fields}
            out.append(None if all(v is None for v in raw.values()) else Record(self._canonical(view, raw), None))
        return out


_KINDS: dict[str, type[Source]] = {
    "redis": RedisSource,
    "postgres": SqlSource,
    "sqlite": SqlSource,
    "file": FileSource,
    "http": HttpSource,
    "request": RequestSource,
}


def create_source(definition: SourceDef, metrics: SourceMetrics) -> Source:
    """The connector for ``definition`` (nothing is connected until first use)."""
    return _KINDS[definition.kind](definition, metrics)
