"""Connectors to data sources: Redis, PostgreSQL, SQLite, Parquet/CSV files, HTTP JSON, request values.

Every connector reads the latest record of a feature view for a batch of entity keys
(:meth:`Source.read_online`), and, where the kind allows, writes records if they are newer
than what is stored (online stores: Redis, PostgreSQL, SQLite) and reads a view's history
over a time range for batch work (SQL and files). Values leave a connector in canonical
form (:func:`types.coerce`); a value that cannot be read as its field's type is missing and
counted. Each source owns its connection pool and a :class:`Health` state.

One module per connector, each with its layout in its docstring: ``base`` (the interface,
health, metrics), ``redis``, ``sql`` (PostgreSQL and SQLite), ``files`` (Parquet and CSV),
``http`` (HTTP JSON), ``request`` (request values) and ``registry`` (the connector of each kind).
"""

from infermesh_data_gateway.sources.base import (
    TS_COLUMN,
    Health,
    Key,
    ReadItem,
    Record,
    Source,
    SourceError,
    SourceMetrics,
)
from infermesh_data_gateway.sources.files import FileSource
from infermesh_data_gateway.sources.http import HttpSource
from infermesh_data_gateway.sources.redis import RedisSource, redis_key
from infermesh_data_gateway.sources.registry import create_source
from infermesh_data_gateway.sources.request import RequestSource
from infermesh_data_gateway.sources.sql import SqlSource

__all__ = [
    "TS_COLUMN",
    "FileSource",
    "Health",
    "HttpSource",
    "Key",
    "ReadItem",
    "Record",
    "RedisSource",
    "RequestSource",
    "Source",
    "SourceError",
    "SourceMetrics",
    "SqlSource",
    "create_source",
    "redis_key",
]
