"""SQL: PostgreSQL and SQLite.

Table ``binding.table`` (default: the view's name) with the key columns, the field columns
(``binding.columns`` renames them) and the view's timestamp column; the latest row per key is
the record. Online-store tables are created with the keys as primary key.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pandas as pd

from infermesh_data_gateway.definitions import SourceDef, ViewDef
from infermesh_data_gateway.sources.base import (
    TS_COLUMN,
    Key,
    ReadItem,
    Record,
    Source,
    SourceError,
    SourceMetrics,
    in_range,
    iso_text,
    latest_records,
    now_us,
)
from infermesh_data_gateway.types import DType, coerce, micros_to_datetime

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
        return iso_text(micros)

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
        return latest_records(found, keys, now_us())

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
            return stamp if self.dialect == "postgres" else iso_text(value)
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
        return self._offline_timestamps(view, in_range(frame.dropna(subset=[TS_COLUMN]), start_us, end_us))
