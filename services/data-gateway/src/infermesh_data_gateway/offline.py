"""Batch work in process: point-in-time joins for training sets, latest values for materialization.

A training set's entity frame has the key columns, ``__row`` (its row number) and
``__event_us`` (the label's event time, UTC microseconds). For every feature view, each row
gets the view's latest record whose event time is at or before the row's event time, never
after (no leakage); the batch executor then applies TTLs and transforms exactly as online.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infermesh_data_gateway.definitions import Definitions, ServiceDef, ViewDef
from infermesh_data_gateway.executor import BatchExecutor, BatchResult, column_from_series, found_column, ts_column
from infermesh_data_gateway.sources import TS_COLUMN

__all__ = [
    "EVENT_COLUMN",
    "ROW_COLUMN",
    "ParquetHistory",
    "canonical_rows",
    "latest_per_key",
    "point_in_time_join",
    "training_features",
]

ROW_COLUMN = "__row"
EVENT_COLUMN = "__event_us"


@dataclass(frozen=True, slots=True)
class ParquetHistory:
    """A view's history in Parquet files, for an engine that reads them itself (Spark) instead of the gateway."""

    path: Path
    columns: dict[str, str]
    """Column of each field."""
    timestamp_field: str
    start_us: int | None
    end_us: int | None


def _key_series(series: pd.Series, dtype_name: str) -> pd.Series:
    if dtype_name == "INT64":
        return series.astype("int64")
    return series.astype(object)


def point_in_time_join(entities: pd.DataFrame, view: ViewDef, history: pd.DataFrame) -> pd.DataFrame:
    """Per entity row (by ``__row``), the view's latest record at or before its event time.

    Columns: ``__row``, ``<view>.<field>``, ``<view>.__ts`` and ``<view>.__found``.
    """
    keys = [k.name for k in view.keys]
    left = entities[[ROW_COLUMN, *keys, EVENT_COLUMN]].copy()
    right = history[[*keys, *view.fields, TS_COLUMN]].copy()
    for key in view.keys:
        left[key.name] = _key_series(left[key.name], key.dtype.name)
        right[key.name] = _key_series(right[key.name], key.dtype.name)
    left = left.sort_values(EVENT_COLUMN, kind="stable")
    right = right.rename(columns={f: f"{view.name}.{f}" for f in view.fields} | {TS_COLUMN: ts_column(view.name)})
    right["__join_us"] = right[ts_column(view.name)].astype("int64")
    right = right.sort_values("__join_us", kind="stable")
    merged = pd.merge_asof(
        left,
        right,
        left_on=EVENT_COLUMN,
        right_on="__join_us",
        by=keys,
        direction="backward",
        allow_exact_matches=True,
    )
    merged[found_column(view.name)] = merged["__join_us"].notna()
    merged[ts_column(view.name)] = merged[ts_column(view.name)].astype("Int64")  # NaN made it float
    columns = [ROW_COLUMN, found_column(view.name), ts_column(view.name), *(f"{view.name}.{f}" for f in view.fields)]
    return merged[columns].sort_values(ROW_COLUMN).reset_index(drop=True)


def training_features(
    definitions: Definitions,
    service: ServiceDef,
    entities: pd.DataFrame,
    histories: dict[str, pd.DataFrame],
) -> tuple[pd.DataFrame, BatchResult]:
    """Join every view of ``service`` as of each row's event time and compute the features.

    Returns the joined frame (sorted by ``__row``) and the batch executor's result in that order.
    """
    frame = entities.sort_values(ROW_COLUMN).reset_index(drop=True)
    for name in service.views:
        joined = point_in_time_join(entities, definitions.views[name], histories[name])
        frame = frame.merge(joined, on=ROW_COLUMN, how="left")
    for request in service.request_values:
        column = f"request.{request.name}"
        if column not in frame:
            frame[column] = None
    result = BatchExecutor(definitions, service).compute(frame, frame[EVENT_COLUMN].to_numpy(dtype=np.int64))
    return frame, result


def latest_per_key(view: ViewDef, history: pd.DataFrame) -> pd.DataFrame:
    """The latest row of every key in ``history`` (the view's state at the end of the range)."""
    keys = [k.name for k in view.keys]
    ordered = history.sort_values(TS_COLUMN, kind="stable")
    return ordered.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)


def canonical_rows(view: ViewDef, frame: pd.DataFrame) -> list[tuple[tuple[Any, ...], dict[str, Any], int]]:
    """(key, canonical values, event time) rows of ``frame``, read field by field by the batch executor's rules."""
    columns = {}
    for name, dtype in view.fields.items():
        col = column_from_series(frame[name], dtype)
        values = col.values.tolist()
        columns[name] = [v if ok else None for v, ok in zip(values, col.valid.tolist(), strict=True)]
    names = list(view.fields)
    key_columns = [frame[k.name].tolist() for k in view.keys]
    stamps = frame[TS_COLUMN].astype("int64").tolist()
    rows = []
    for index, ts in enumerate(stamps):
        key = tuple(column[index] for column in key_columns)
        values = {name: _bool_or(view, name, columns[name][index]) for name in names}
        rows.append((key, values, ts))
    return rows


def _bool_or(view: ViewDef, name: str, value: Any) -> Any:
    if value is not None and view.fields[name].name == "BOOL":
        return bool(value)
    if value is not None and view.fields[name].is_int:
        return int(value)
    return value
