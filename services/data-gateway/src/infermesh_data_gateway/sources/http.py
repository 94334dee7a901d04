"""HTTP JSON: ``GET <url><binding.path>`` with ``{key}`` placeholders, one per entity; 404 means no record."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from infermesh_data_gateway.definitions import SourceDef, ViewDef
from infermesh_data_gateway.sources.base import ReadItem, Record, Source, SourceError, SourceMetrics
from infermesh_data_gateway.types import DType, coerce


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
