"""Storage: ClickHouse embedded in the process (chdb) or a ClickHouse server (clickhouse-connect).

Both speak the same SQL, take the same ``{name:Type}`` query parameters and return rows the same
way (decoded from ``JSONCompact``), so the rest of the monitor does not know which one it has.
Calls run on a small thread pool (both clients block; chdb releases the GIL while it works), so
the event loop keeps serving. chdb allows one session per data path and per process: the
:class:`ChdbStore` opens it once and keeps it until :meth:`Store.close`.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from infermesh_chassis.errors import Unavailable
from infermesh_chassis.logs import get_logger
from infermesh_monitor.settings import StorageSettings

__all__ = ["ChdbStore", "ClickHouseStore", "Store", "StoreError", "json_rows", "open_store"]

_log = get_logger("infermesh_monitor.store")

T = TypeVar("T")

MIN_SERVER_VERSION = (25, 8)
"""Oldest ClickHouse server with the Protobuf input settings the ingest path uses."""


class StoreError(Unavailable):
    """The store refused or failed a call (UNAVAILABLE: the caller may retry)."""


class Store(Protocol):
    """What the monitor needs from ClickHouse."""

    async def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, DELETE, INSERT ... SELECT)."""
        ...

    async def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        """Run a query and return its rows (values decoded from JSON: numbers, strings, lists, dicts)."""
        ...

    async def insert(self, table: str, data: bytes, fmt: str, settings: Mapping[str, Any] | None = None) -> None:
        """Insert ``data`` encoded in ``fmt`` (``Protobuf``, ``JSONEachRow``...) into ``table``."""
        ...

    async def read_file(self, path: Path, fmt: str, limit: int) -> tuple[list[str], list[str], list[list[Any]]]:
        """Column names, ClickHouse types and up to ``limit`` uniformly sampled rows of a local file."""
        ...

    def protobuf_settings(self, schema: str, message: str) -> dict[str, Any]:
        """Insert settings that make ClickHouse read ``Protobuf`` data as ``message`` of ``schema`` (proto text)."""
        ...

    async def close(self) -> None:
        """Release the store (the chdb session, the server connection)."""
        ...


def _file_query(path: Path, fmt: str) -> str:
    return f"SELECT * FROM file({_literal(str(path))}, {_literal(fmt)}) ORDER BY rand() LIMIT {{limit:UInt64}}"


def _typed(raw: bytes) -> tuple[list[str], list[str], list[list[Any]]]:
    if not raw:
        return [], [], []
    result = json.loads(raw.decode("utf-8", "replace"))
    return [c["name"] for c in result["meta"]], [c["type"] for c in result["meta"]], result["data"]


def _settings_clause(settings: Mapping[str, Any] | None) -> str:
    if not settings:
        return ""
    parts = []
    for key, value in settings.items():
        if isinstance(value, str):
            escaped = value.replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"{key} = '{escaped}'")
        else:
            parts.append(f"{key} = {int(value) if isinstance(value, bool) else value}")
    return " SETTINGS " + ", ".join(parts)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_literal(item) for item in value) + "]"
    return repr(value)


def _chdb_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """chdb takes parameter values as text: arrays as ClickHouse literals."""
    return {key: _literal(value) if isinstance(value, list | tuple) else value for key, value in (params or {}).items()}


class _Threaded:
    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"storage call failed: {exc}") from exc

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class ChdbStore(_Threaded):
    """ClickHouse embedded through chdb: one session on ``settings.chdb_path`` for the whole process.

    Calls run one at a time on one thread: a chdb connection refuses a query while one of its
    streaming inserts is open. (ClickHouse itself still uses several threads inside each call.)
    """

    def __init__(self, settings: StorageSettings) -> None:
        super().__init__(1)
        from chdb import session  # noqa: PLC0415  (only the embedded backend needs it)

        settings.chdb_path.mkdir(parents=True, exist_ok=True)
        self._path = settings.chdb_path.resolve()
        self._lock = os.open(self._path / ".monitor.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise StoreError(
                f"{self._path} is used by another monitor process: give each one its own storage.chdb_path"
            ) from None
        self._session = session.Session(str(self._path))
        self._session.query(f"CREATE DATABASE IF NOT EXISTS {settings.database}")
        self._session.query(f"USE {settings.database}")
        self._session.query("SET output_format_json_quote_64bit_integers = 0")
        self._session.query("SET output_format_json_quote_denormals = 0")
        self._closed = False

    async def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """See :meth:`Store.command`."""
        await self._run(lambda: self._session.query(sql, "CSV", params=_chdb_params(params)))

    async def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        """See :meth:`Store.rows`."""

        def query() -> list[list[Any]]:
            result = self._session.query(sql, "JSONCompact", params=_chdb_params(params))
            raw = result.bytes()
            return json.loads(raw.decode("utf-8", "replace"))["data"] if raw else []  # type: ignore[no-any-return]

        return await self._run(query)

    async def insert(self, table: str, data: bytes, fmt: str, settings: Mapping[str, Any] | None = None) -> None:
        """See :meth:`Store.insert`."""

        def insert() -> None:
            with self._session.send_insert(f"INSERT INTO {table}{_settings_clause(settings)}", fmt) as inserter:
                inserter.append(data)
                inserter.finish()

        await self._run(insert)

    def protobuf_settings(self, schema: str, message: str) -> dict[str, Any]:
        """See :meth:`Store.protobuf_settings`: the schema as a file in the data directory.

        (Embedded ClickHouse would otherwise cache an inline schema under the process's working
        directory, which it takes as its ``format_schema_path``; an absolute file path avoids that.)
        """
        directory = self._path / "format_schemas"
        directory.mkdir(exist_ok=True)
        path = directory / f"{hashlib.sha256(schema.encode()).hexdigest()[:16]}.proto"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(schema)
            tmp.rename(path)
        return {"format_schema": f"{path}:{message}"}

    async def read_file(self, path: Path, fmt: str, limit: int) -> tuple[list[str], list[str], list[list[Any]]]:
        """See :meth:`Store.read_file`."""
        query = _file_query(path, fmt)
        return await self._run(
            lambda: _typed(self._session.query(query, "JSONCompact", params={"limit": limit}).bytes())
        )

    async def close(self) -> None:
        """Wait for running calls, then close the session (its data stays on disk)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)
        self._session.close()
        os.close(self._lock)


class ClickHouseStore(_Threaded):
    """A ClickHouse server through clickhouse-connect (HTTP), checked to be recent enough at start."""

    def __init__(self, settings: StorageSettings) -> None:
        super().__init__(settings.query_threads)
        import clickhouse_connect  # noqa: PLC0415  (only the server backend needs it)

        def client(database: str) -> Any:
            return clickhouse_connect.get_client(
                dsn=settings.clickhouse_url,
                username=settings.clickhouse_user,
                password=settings.clickhouse_password.get_secret_value(),
                database=database,
                settings={"output_format_json_quote_64bit_integers": 0, "output_format_json_quote_denormals": 0},
            )

        bootstrap = client("default")
        version = tuple(int(part) for part in str(bootstrap.server_version).split(".")[:2])
        if version < MIN_SERVER_VERSION:
            raise StoreError(
                f"ClickHouse server {bootstrap.server_version} at {settings.clickhouse_url} is too old: "
                f"the monitor needs {'.'.join(map(str, MIN_SERVER_VERSION))} or newer"
            )
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {settings.database}")
        bootstrap.close()
        self._client = client(settings.database)

    async def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """See :meth:`Store.command`."""
        await self._run(lambda: self._client.command(sql, parameters=dict(params or {})))

    async def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        """See :meth:`Store.rows`."""

        def query() -> list[list[Any]]:
            raw = self._client.raw_query(sql, parameters=dict(params or {}), fmt="JSONCompact")
            return json.loads(raw.decode("utf-8", "replace"))["data"] if raw else []  # type: ignore[no-any-return]

        return await self._run(query)

    async def insert(self, table: str, data: bytes, fmt: str, settings: Mapping[str, Any] | None = None) -> None:
        """See :meth:`Store.insert`."""
        await self._run(
            lambda: self._client.raw_insert(table, insert_block=data, settings=dict(settings or {}), fmt=fmt)
        )

    def protobuf_settings(self, schema: str, message: str) -> dict[str, Any]:
        """See :meth:`Store.protobuf_settings`: the schema travels with each insert."""
        return {"format_schema_source": "string", "format_schema": schema, "format_schema_message_name": message}

    async def read_file(self, path: Path, fmt: str, limit: int) -> tuple[list[str], list[str], list[list[Any]]]:
        """See :meth:`Store.read_file`; parsed by an in-memory chdb (the file is local, not the server's)."""
        from chdb import session  # noqa: PLC0415  (only needed to read local files)

        query = _file_query(path, fmt)

        def read() -> tuple[list[str], list[str], list[list[Any]]]:
            with session.Session(":memory:") as local:
                return _typed(local.query(query, "JSONCompact", params={"limit": limit}).bytes())

        return await self._run(read)

    async def close(self) -> None:
        """Wait for running calls, then close the connection."""
        await asyncio.to_thread(self._shutdown)
        self._client.close()


def open_store(settings: StorageSettings) -> Store:
    """The store ``settings`` name; raises :class:`StoreError` naming what is wrong."""
    try:
        return ChdbStore(settings) if settings.backend == "chdb" else ClickHouseStore(settings)
    except StoreError:
        raise
    except Exception as exc:
        where = settings.chdb_path if settings.backend == "chdb" else settings.clickhouse_url
        raise StoreError(f"cannot open the {settings.backend} store at {where}: {exc}") from exc


def json_rows(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """``rows`` as JSONEachRow bytes for :meth:`Store.insert`."""
    return "\n".join(json.dumps(row, separators=(",", ":")) for row in rows).encode()
