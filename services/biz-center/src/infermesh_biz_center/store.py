"""Durable scenes, experiments and audit log in SQLite.

Objects are stored as the contract's JSON (``json_format``) under ``(kind, name)`` with their
config version. Every change runs in one ``BEGIN IMMEDIATE`` transaction: it re-reads the
stored object, checks the expected config version (optimistic concurrency, ABORTED on a
mismatch), writes, appends the audit entry and bumps the store's revision, so several instances
sharing one database file serialize their writes and see each other's changes by polling
:meth:`ConfigStore.revision`. All methods block: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infermesh.common.v1 import common_pb2
from infermesh_chassis.errors import Aborted, InvalidArgument, NotFound

__all__ = ["AuditRecord", "ConfigStore", "Stored", "WriteCheck", "decode_token", "encode_token"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  config_version INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL,
  time_us INTEGER NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  before_json TEXT NOT NULL,
  after_json TEXT NOT NULL,
  reason TEXT NOT NULL,
  request_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored object: its JSON body and config version."""

    kind: str
    name: str
    config_version: int
    body: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What a change records besides the object itself."""

    actor: str
    reason: str
    request_id: str


WriteCheck = Callable[[sqlite3.Connection, Stored | None], None]
"""Runs inside a write's transaction with the stored object (None if absent); raises to refuse."""


def encode_token(value: str) -> str:
    """An opaque page token for ``value``."""
    return base64.urlsafe_b64encode(value.encode()).decode()


def decode_token(token: str) -> str:
    """The value inside a page token (INVALID_ARGUMENT when it is not one)."""
    try:
        value = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        value = ""
    if not value:
        raise InvalidArgument("page.page_token: not a token this service issued")
    return value


class ConfigStore:
    """The SQLite database behind the registry (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def revision(self) -> int:
        """A number that changes with every write, by any instance."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0]) if row else 0

    def meta(self, key: str) -> str | None:
        """A stored meta value (e.g. the last applied seed file version)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a meta value."""
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def all(self, kind: str) -> list[Stored]:
        """Every stored object of ``kind``, by name."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, config_version, body FROM objects WHERE kind = ? ORDER BY name", (kind,)
            ).fetchall()
        return [Stored(kind, name, version, body) for name, version, body in rows]

    def get(self, kind: str, name: str) -> Stored:
        """One stored object (NOT_FOUND when absent)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT config_version, body FROM objects WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
        if row is None:
            raise NotFound(f"{kind} '{name}' does not exist")
        return Stored(kind, name, row[0], row[1])

    @staticmethod
    def _read(conn: sqlite3.Connection, kind: str, name: str) -> Stored | None:
        row = conn.execute(
            "SELECT config_version, body FROM objects WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        return None if row is None else Stored(kind, name, row[0], row[1])

    @staticmethod
    def _expect(kind: str, name: str, current: Stored | None, expected: int | None) -> None:
        if expected is None:
            return
        have = 0 if current is None else current.config_version
        if have != expected:
            state = "does not exist" if current is None else f"is at config version {have}"
            raise Aborted(f"{kind} '{name}' {state}, not {expected}: re-read it and retry")

    @staticmethod
    def _audit(
        conn: sqlite3.Connection, action: str, target: str, *, before: str, after: str, who: AuditRecord
    ) -> common_pb2.AuditEntry:
        entry = common_pb2.AuditEntry(
            id=uuid.uuid4().hex,
            actor=who.actor,
            action=action,
            target=target,
            before_json=before,
            after_json=after,
            reason=who.reason,
            request_id=who.request_id,
        )
        time_us = time.time_ns() // 1000
        entry.time.FromMicroseconds(time_us)
        conn.execute(
            "INSERT INTO audit (id, time_us, actor, action, target, before_json, after_json, reason, request_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.id, time_us, who.actor, action, target, before, after, who.reason, who.request_id),
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', '1')"
            " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )
        return entry

    def put(
        self,
        kind: str,
        name: str,
        render: Callable[[int], str],
        *,
        expected: int | None,
        who: AuditRecord,
        check: WriteCheck | None = None,
        unchanged: Callable[[Stored], bool] | None = None,
    ) -> tuple[Stored, common_pb2.AuditEntry | None]:
        """Create or replace ``(kind, name)`` with ``render(new config version)``; returns what is
        stored and the audit entry written (None when nothing changed).

        Nothing is written (no version spent, no audit entry) when ``unchanged(stored)`` says the
        stored object already is what is asked for.
        """
        with self._transaction() as conn:
            current = self._read(conn, kind, name)
            self._expect(kind, name, current, expected)
            if check is not None:
                check(conn, current)
            if current is not None and unchanged is not None and unchanged(current):
                return current, None
            version = 1 if current is None else current.config_version + 1
            body = render(version)
            conn.execute(
                "INSERT OR REPLACE INTO objects (kind, name, config_version, body) VALUES (?, ?, ?, ?)",
                (kind, name, version, body),
            )
            before = current.body if current else ""
            entry = self._audit(conn, f"{kind}.upsert", f"{kind}s/{name}", before=before, after=body, who=who)
            return Stored(kind, name, version, body), entry

    def delete(
        self, kind: str, name: str, *, expected: int | None, who: AuditRecord, check: WriteCheck | None = None
    ) -> tuple[Stored, common_pb2.AuditEntry]:
        """Delete ``(kind, name)``; returns what it was and the audit entry (NOT_FOUND when absent)."""
        with self._transaction() as conn:
            current = self._read(conn, kind, name)
            if current is None:
                raise NotFound(f"{kind} '{name}' does not exist")
            self._expect(kind, name, current, expected)
            if check is not None:
                check(conn, current)
            conn.execute("DELETE FROM objects WHERE kind = ? AND name = ?", (kind, name))
            entry = self._audit(conn, f"{kind}.delete", f"{kind}s/{name}", before=current.body, after="", who=who)
            return current, entry

    def audit(
        self, query: common_pb2.AuditFilter, page_size: int, after_seq: int | None
    ) -> tuple[list[common_pb2.AuditEntry], int | None]:
        """Audit entries matching ``query``, newest first, after ``after_seq``; returns (entries, next seq)."""
        clauses, args = ["1 = 1"], []
        if after_seq is not None:
            clauses.append("seq < ?")
            args.append(after_seq)
        if query.target_prefix:
            clauses.append("substr(target, 1, ?) = ?")
            args += [len(query.target_prefix), query.target_prefix]
        if query.actor:
            clauses.append("actor = ?")
            args.append(query.actor)
        if query.actions:
            clauses.append(f"action IN ({', '.join('?' * len(query.actions))})")
            args += list(query.actions)
        if query.HasField("start_time"):
            clauses.append("time_us >= ?")
            args.append(query.start_time.ToMicroseconds())
        if query.HasField("end_time"):
            clauses.append("time_us < ?")
            args.append(query.end_time.ToMicroseconds())
        sql = (
            "SELECT seq, id, time_us, actor, action, target, before_json, after_json, reason, request_id"
            f" FROM audit WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?"
        )
        with self._lock:
            rows = self._conn.execute(sql, (*args, page_size + 1)).fetchall()
        entries = []
        for _, entry_id, time_us, actor, action, target, before, after, reason, request_id in rows[:page_size]:
            entry = common_pb2.AuditEntry(
                id=entry_id,
                actor=actor,
                action=action,
                target=target,
                before_json=before,
                after_json=after,
                reason=reason,
                request_id=request_id,
            )
            entry.time.FromMicroseconds(time_us)
            entries.append(entry)
        next_seq = rows[page_size - 1][0] if len(rows) > page_size else None
        return entries, next_seq
