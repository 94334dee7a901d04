"""The two executors of one feature service: online (one entity) and batch (columns).

Both take, per feature view, the view's record as of some time (its field values and
event time, or nothing), the request values and the as-of time, and both apply the same
steps in the same order:

1. a record older than the view's TTL (as-of minus its event time) counts as absent;
2. every feature's expression is evaluated (:mod:`.expressions`);
3. the value is cast to the feature's model dtype;
4. a missing value takes the feature's default (DEFAULT), or stays null (MISSING); a
   feature missing without a default and without ``allow_missing`` is *unservable*, which
   the online path turns into an error and training sets report as MISSING.

:class:`OnlineExecutor` does it with Python scalars for one entity at a time;
:class:`BatchExecutor` does it with NumPy over a pandas frame whose columns are
``<view>.<field>``, ``<view>.__found``, ``<view>.__ts`` and ``request.<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import pandas as pd

from infermesh_data_gateway.definitions import Definitions, FeatureDef, ServiceDef, ViewDef
from infermesh_data_gateway.expressions import AS_OF, VEC, BatchEnv, Col, cast_batch, cast_scalar
from infermesh_data_gateway.types import INT_RANGES, DType, coerce

__all__ = [
    "BatchExecutor",
    "BatchResult",
    "FeatureVector",
    "OnlineExecutor",
    "Status",
    "ViewLineage",
    "ViewRead",
    "column_from_series",
    "found_column",
    "ts_column",
]


class Status(IntEnum):
    """Serving status of one feature value (the numbers of the contract's FeatureStatus)."""

    OK = 1
    FALLBACK = 2
    DEFAULT = 3
    MISSING = 4


@dataclass(slots=True)
class ViewRead:
    """What routing returned for one view and one entity."""

    record: Mapping[str, Any] | None
    """Canonical field values, or None when the source has no row for the key."""
    ts: int | None = None
    """Event time of the record (UTC microseconds); None when the source does not say."""
    source: str = ""
    """The source that answered (empty when none did)."""
    from_fallback: bool = False
    from_cache: bool = False


@dataclass(slots=True)
class ViewLineage:
    """Where one view's part of a vector came from."""

    view: str
    source: str
    value_time: int | None
    from_fallback: bool
    from_cache: bool
    used_default: bool
    features: tuple[str, ...]


@dataclass(slots=True)
class FeatureVector:
    """One entity's vector: values in feature order, a status each, lineage per view."""

    values: list[Any]
    statuses: list[Status]
    lineage: list[ViewLineage]
    unservable: list[str] = field(default_factory=list)
    """Features missing with neither a default nor ``allow_missing``."""


def _ttl_us(view: ViewDef) -> int | None:
    return None if view.ttl_s is None else round(view.ttl_s * 1_000_000)


class OnlineExecutor:
    """Computes one entity's vector of one feature service, with Python scalars."""

    def __init__(self, definitions: Definitions, service: ServiceDef) -> None:
        self.service = service
        self._views = [(definitions.views[name], _ttl_us(definitions.views[name])) for name in service.views]
        self._fields = {
            name: tuple((f, f"{name}.{f}") for f in definitions.views[name].fields) for name in service.views
        }
        self._features = [
            (f, f.expression.root, f.kind, service.views.index(f.view) if f.view else -1) for f in service.features
        ]
        self._view_features = {
            v: tuple(service.features[i].name for i in service.features_of(v)) for v in service.views
        }

    def compute(self, reads: Mapping[str, ViewRead], request: Mapping[str, Any], as_of: int) -> FeatureVector:
        """The vector for one entity from its views' ``reads``, its ``request`` values and the as-of time."""
        env: dict[str, Any] = {f"request.{name}": value for name, value in request.items()}
        env[AS_OF] = as_of
        fresh: list[bool] = []
        for view, ttl in self._views:
            read = reads.get(view.name)
            record = None if read is None else read.record
            if (
                record is not None
                and ttl is not None
                and read is not None
                and read.ts is not None
                and as_of - read.ts > ttl
            ):
                record = None
            fresh.append(record is not None)
            if record is not None:
                for name, ref in self._fields[view.name]:
                    env[ref] = record.get(name)
        values: list[Any] = []
        statuses: list[Status] = []
        unservable: list[str] = []
        defaulted = [False] * len(self._views)
        served = [
            Status.FALLBACK if (read := reads.get(view.name)) is not None and read.from_fallback else Status.OK
            for view, _ in self._views
        ]
        for feature, root, kind, view_index in self._features:
            value = cast_scalar(root.scalar(env), kind, feature.dtype)
            if value is not None:
                statuses.append(served[view_index] if view_index >= 0 else Status.OK)
            elif feature.has_default:
                value = feature.default
                statuses.append(Status.DEFAULT)
                if view_index >= 0:
                    defaulted[view_index] = True
            else:
                statuses.append(Status.MISSING)
                if not feature.allow_missing:
                    unservable.append(feature.name)
            values.append(value)
        lineage = []
        for index, (view, _) in enumerate(self._views):
            read = reads.get(view.name) or ViewRead(None)
            lineage.append(
                ViewLineage(
                    view=view.name,
                    source=read.source,
                    value_time=read.ts if fresh[index] else None,
                    from_fallback=read.from_fallback,
                    from_cache=read.from_cache,
                    used_default=defaulted[index],
                    features=self._view_features[view.name],
                )
            )
        return FeatureVector(values, statuses, lineage, unservable)


# ------------------------------------------------------------------------------------------------
# Batch
# ------------------------------------------------------------------------------------------------


def found_column(view: str) -> str:
    """Column telling whether the view had a record for the row."""
    return f"{view}.__found"


def ts_column(view: str) -> str:
    """Column of the view record's event time (UTC microseconds)."""
    return f"{view}.__ts"


def _elementwise(series: pd.Series, dtype: DType) -> list[Any]:
    out = []
    micros = dtype.name == "TIMESTAMP"
    for item in series.tolist():
        if item is None or (isinstance(item, float) and np.isnan(item)) or item is pd.NA or item is pd.NaT:
            out.append(None)
        elif micros and isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
        elif micros and isinstance(item, float) and item.is_integer():  # int64 µs widened by a missing value
            out.append(int(item))
        else:
            try:
                out.append(coerce(dtype, item))
            except ValueError:
                out.append(None)
    return out


def column_from_series(series: pd.Series, dtype: DType) -> Col:
    """A pandas column of canonical values as a typed column, read as :func:`types.coerce` reads one value.

    TIMESTAMP columns hold datetimes or integer microseconds (text is read as ISO-8601). Values that cannot be read as
    ``dtype`` are missing, as a bad value from a source is online.
    """
    if dtype.is_float or dtype.name == "BOOL":
        if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
            values = np.array(series.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
        else:
            items = _elementwise(series, dtype)
            values = np.array([np.nan if v is None else float(v) for v in items], dtype=np.float64)
        valid = np.isfinite(values)
        return Col(np.where(valid, values, np.nan), valid)
    if (dtype.is_int or dtype.name == "TIMESTAMP") and pd.api.types.is_integer_dtype(series.dtype):
        valid = np.array(series.notna().to_numpy(), dtype=bool)
        values = np.array(series.to_numpy(dtype=np.int64, na_value=0), dtype=np.int64)
        if dtype.is_int:
            low, high = INT_RANGES[dtype.name]
            valid &= (values >= low) & (values <= high)
        return Col(np.where(valid, values, 0), valid)
    if dtype.name == "TIMESTAMP" and pd.api.types.is_datetime64_any_dtype(series.dtype):
        stamps = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
        valid = np.array(stamps.notna().to_numpy(), dtype=bool)
        values = stamps.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)
        return Col(np.where(valid, values, 0), valid)
    items = _elementwise(series, dtype)
    valid = np.array([v is not None for v in items], dtype=bool)
    if dtype.is_int or dtype.name == "TIMESTAMP":
        return Col(np.array([0 if v is None else v for v in items], dtype=np.int64), valid)
    values = np.empty(len(items), dtype=object)
    values[:] = items
    return Col(values, valid)


@dataclass(slots=True)
class BatchResult:
    """A batch executor's output: a typed column per feature and a status matrix (rows by features)."""

    columns: dict[str, Col]
    statuses: np.ndarray

    def rows(self, service: ServiceDef) -> list[list[Any]]:
        """The vectors as Python rows (None for missing), in feature order."""
        out: list[list[Any]] = [[] for _ in range(self.statuses.shape[0])]
        for feature in service.features:
            col = self.columns[feature.name]
            for index in range(len(out)):
                if not col.valid[index]:
                    out[index].append(None)
                elif feature.shape:
                    out[index].append(tuple(float(x) for x in col.values[index]))
                else:
                    out[index].append(_python(col.values[index]))
        return out


def _python(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class BatchExecutor:
    """Computes the vectors of one feature service over a frame, vectorized with NumPy."""

    def __init__(self, definitions: Definitions, service: ServiceDef) -> None:
        self.definitions = definitions
        self.service = service

    def input_columns(self) -> list[str]:
        """Columns :meth:`compute` reads (besides the as-of column it is given)."""
        columns = []
        for name in self.service.views:
            view = self.definitions.views[name]
            columns += [found_column(name), ts_column(name), *(f"{name}.{f}" for f in view.fields)]
        columns += [f"request.{r.name}" for r in self.service.request_values]
        return columns

    def compute(self, frame: pd.DataFrame, as_of: np.ndarray) -> BatchResult:
        """The features of every row of ``frame`` (see the module docstring) as of ``as_of`` (int64 µs)."""
        size = len(frame)
        as_of = np.asarray(as_of, dtype=np.int64)
        columns: dict[str, Col] = {}
        for name in self.service.views:
            view = self.definitions.views[name]
            fresh = self._fresh(frame, view, as_of)
            for field_name, dtype in view.fields.items():
                col = column_from_series(frame[f"{name}.{field_name}"], dtype)
                col.valid &= fresh
                if col.values.dtype == np.float64:  # num columns hold NaN wherever they are invalid
                    col.values = np.where(col.valid, col.values, np.nan)
                columns[f"{name}.{field_name}"] = col
        for request in self.service.request_values:
            columns[f"request.{request.name}"] = column_from_series(frame[f"request.{request.name}"], request.dtype)
        env = BatchEnv(columns, as_of, size)
        outputs: dict[str, Col] = {}
        statuses = np.empty((size, len(self.service.features)), dtype=np.int8)
        for index, feature in enumerate(self.service.features):
            col = cast_batch(feature.expression.root.batch(env), feature.kind, feature.dtype)
            statuses[:, index] = np.where(col.valid, int(Status.OK), int(Status.MISSING))
            if feature.has_default:
                col = _fill_default(col, feature)
                missing = statuses[:, index] == Status.MISSING
                statuses[:, index] = np.where(missing, int(Status.DEFAULT), statuses[:, index])
            outputs[feature.name] = col
        return BatchResult(outputs, statuses)

    def _fresh(self, frame: pd.DataFrame, view: ViewDef, as_of: np.ndarray) -> np.ndarray:
        found = frame[found_column(view.name)].fillna(False).to_numpy(dtype=bool)
        ttl = _ttl_us(view)
        if ttl is None:
            return found
        ts = column_from_series(frame[ts_column(view.name)], DType("TIMESTAMP"))
        stale = ts.valid & (as_of - ts.values > ttl)
        return found & ~stale


def _fill_default(col: Col, feature: FeatureDef) -> Col:
    missing = ~col.valid
    if not missing.any():
        return col
    values = col.values.copy()
    values[missing] = np.asarray(feature.default, dtype=values.dtype) if feature.kind == VEC else feature.default
    return Col(values, np.ones_like(col.valid))


def rows_equal(left: Sequence[Any], right: Sequence[Any]) -> bool:
    """Whether two vectors are identical value by value (float bits included; None only equals None)."""
    if len(left) != len(right):
        return False
    for a, b in zip(left, right, strict=True):
        if (a is None) != (b is None):
            return False
        if a is None:
            continue
        if isinstance(a, tuple) or isinstance(b, tuple):
            if not rows_equal(list(a), list(b)):
                return False
        elif isinstance(a, float) or isinstance(b, float):
            if np.float64(a).tobytes() != np.float64(b).tobytes():
                return False
        elif a != b or type(a) is not type(b):
            return False
    return True
