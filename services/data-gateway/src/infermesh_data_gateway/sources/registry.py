"""The connector class of each source kind."""

from __future__ import annotations

from infermesh_data_gateway.definitions import SourceDef
from infermesh_data_gateway.sources.base import Source, SourceMetrics
from infermesh_data_gateway.sources.files import FileSource
from infermesh_data_gateway.sources.http import HttpSource
from infermesh_data_gateway.sources.redis import RedisSource
from infermesh_data_gateway.sources.request import RequestSource
from infermesh_data_gateway.sources.sql import SqlSource

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
