"""Request values: what the caller sent with the request, read as a view's fields."""

from __future__ import annotations

from collections.abc import Sequence

from infermesh_data_gateway.definitions import ViewDef
from infermesh_data_gateway.sources.base import ReadItem, Record, Source


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
