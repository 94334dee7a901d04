"""Parquet or CSV files: ``binding.path`` (default ``<view>.parquet``/``.csv`` under the source's path)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

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
    now_us,
)
from infermesh_data_gateway.types import DType, coerce


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
        now = now_us()
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
        return self._offline_timestamps(view, in_range(frame, start_us, end_us))
