"""The batch executor on Spark: point-in-time joins and latest-per-key in Spark, transforms by the same code.

Spark does the distributed part: it reads Parquet histories itself (histories in other
sources are read by the gateway's connector and handed over), range-joins entity rows with
each view's history and keeps the latest record per row or per key. The features are then
computed inside Spark's Python workers by :class:`~infermesh_data_gateway.executor.BatchExecutor`
itself (``mapInArrow``), so a Spark run gives the same vectors, bit for bit, as the
in-process engine. Needs the ``spark`` extra (pyspark) and Java 17.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from infermesh_data_gateway.definitions import Definitions, ServiceDef, ViewDef
from infermesh_data_gateway.executor import BatchExecutor, BatchResult, column_from_series, found_column, ts_column
from infermesh_data_gateway.expressions import Col
from infermesh_data_gateway.offline import EVENT_COLUMN, ROW_COLUMN, ParquetHistory
from infermesh_data_gateway.settings import SparkSettings
from infermesh_data_gateway.sources import TS_COLUMN
from infermesh_data_gateway.types import DType

try:
    from py4j.protocol import Py4JError
    from pyspark import java_gateway
    from pyspark.errors import PySparkException
    from pyspark.sql import DataFrame, SparkSession, Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the Spark engine needs pyspark: install infermesh-data-gateway[spark]") from exc

__all__ = ["ENGINE_ERRORS", "SparkEngine"]

ENGINE_ERRORS: tuple[type[Exception], ...] = (PySparkException, Py4JError)
"""What Spark raises when it cannot start or run a job (the JVM exited, a job failed): the engine is
unavailable, not the caller at fault."""


def _arrow_type(dtype: DType) -> pa.DataType:
    if dtype.is_float:
        return pa.float64()
    if dtype.is_int or dtype.name == "TIMESTAMP":
        return pa.int64()
    if dtype.name == "BOOL":
        return pa.bool_()
    return pa.string()


def _arrow_column(series: pd.Series, dtype: DType) -> pa.Array:
    col = column_from_series(series, dtype)
    values = col.values.astype(bool) if dtype.name == "BOOL" else col.values
    return pa.array(values.tolist(), type=_arrow_type(dtype), mask=~col.valid)


def _spark_name(view: str, field: str) -> str:
    return f"{view}__{field}"


def _feature_type(dtype: str, shape: tuple[int, ...]) -> T.DataType:
    if shape:
        return T.ArrayType(T.DoubleType())
    if dtype.startswith("FP"):
        return T.DoubleType()
    if dtype == "BOOL":
        return T.BooleanType()
    if dtype == "BYTES":
        return T.StringType()
    return T.LongType()


def _compute_partition(
    batches: Iterator[pa.RecordBatch], definitions: Definitions, service: ServiceDef
) -> Iterator[pa.RecordBatch]:
    """Runs inside a Spark Python worker: the batch executor over one partition."""
    executor = BatchExecutor(definitions, service)
    for batch in batches:
        frame = batch.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
        renames = {}
        for view_name in service.views:
            view = definitions.views[view_name]
            renames |= {_spark_name(view_name, f): f"{view_name}.{f}" for f in view.fields}
            renames[_spark_name(view_name, TS_COLUMN)] = ts_column(view_name)
        frame = frame.rename(columns=renames)
        for view_name in service.views:
            frame[found_column(view_name)] = frame[ts_column(view_name)].notna()
        for request in service.request_values:
            frame = frame.rename(columns={f"request__{request.name}": f"request.{request.name}"})
        result = executor.compute(frame, frame[EVENT_COLUMN].to_numpy(dtype=np.int64))
        arrays: list[pa.Array] = [pa.array(frame[ROW_COLUMN].to_numpy(dtype=np.int64))]
        names = [ROW_COLUMN]
        for index, feature in enumerate(service.features):
            col = result.columns[feature.name]
            values: Any = [list(map(float, row)) for row in col.values] if feature.shape else col.values.tolist()
            arrays += [pa.array(values, mask=~col.valid), pa.array(col.valid), pa.array(result.statuses[:, index])]
            names += [f"f{index}", f"f{index}_valid", f"f{index}_status"]
        yield pa.RecordBatch.from_arrays(arrays, names=names)


def _spawn_jvm(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start pyspark's JVM gateway without a ``preexec_fn``, in a session of its own.

    pyspark passes a ``preexec_fn`` (to keep Ctrl-C from the JVM), which makes Python ``fork()`` and run
    Python in the child. In a process whose gRPC threads are running, gRPC's fork handlers then abort
    that child (SIGABRT, ``JAVA_GATEWAY_EXITED``: 1 start in about 10 on this box, with a server and
    clients up). Without it Python starts the child with ``vfork()``, which runs no fork handlers; a
    session of its own keeps the terminal's Ctrl-C away from the JVM, as the ``preexec_fn`` did.
    """
    kwargs.pop("preexec_fn", None)
    return subprocess.Popen(command, start_new_session=True, **kwargs)


@contextmanager
def _jvm_spawned_safely() -> Iterator[None]:
    """pyspark's gateway launch uses :func:`_spawn_jvm` for the block (the one Popen it makes)."""
    original = java_gateway.Popen
    java_gateway.Popen = _spawn_jvm
    try:
        yield
    finally:
        java_gateway.Popen = original


class SparkEngine:
    """A Spark session (started on first use) running the gateway's batch work."""

    def __init__(self, settings: SparkSettings) -> None:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = (
            SparkSession.builder.master(settings.master)
            .appName("infermesh-data-gateway")
            .config("spark.driver.bindAddress", settings.bind_address)
            .config("spark.driver.host", settings.bind_address)
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        )
        for key, value in settings.config.items():
            builder = builder.config(key, value)
        with _jvm_spawned_safely():
            self.session = builder.getOrCreate()

    def stop(self) -> None:
        """Stop the session."""
        self.session.stop()

    def _history(self, view: ViewDef, history: pd.DataFrame | ParquetHistory, prefix: bool) -> DataFrame:
        """The view's history as a Spark frame: keys, raw fields, ``__ts`` (µs), names prefixed for a join."""
        key_name = (lambda k: f"h__{k}") if prefix else (lambda k: k)
        field_name = (lambda f: _spark_name(view.name, f)) if prefix else (lambda f: f)
        if isinstance(history, ParquetHistory):
            return self._parquet(view, history, key_name, field_name)
        arrays, names = [], []
        for key in view.keys:
            arrays.append(_arrow_column(history[key.name], key.dtype))
            names.append(key_name(key.name))
        for name, dtype in view.fields.items():
            arrays.append(_arrow_column(history[name], dtype))
            names.append(field_name(name))
        arrays.append(pa.array(history[TS_COLUMN].to_numpy(dtype=np.int64)))
        names.append(field_name(TS_COLUMN))
        return self.session.createDataFrame(pa.Table.from_arrays(arrays, names=names))

    def _parquet(
        self,
        view: ViewDef,
        history: ParquetHistory,
        key_name: Callable[[str], str],
        field_name: Callable[[str], str],
    ) -> DataFrame:
        """Parquet read by Spark itself: only keys and event times are interpreted here, fields stay raw
        (the batch executor reads them in the workers exactly as in process)."""
        frame = self.session.read.parquet(str(history.path))
        types = dict(frame.dtypes)
        stamp = history.timestamp_field
        missing = [c for c in [*(k.name for k in view.keys), *history.columns.values(), stamp] if c not in types]
        if missing:
            raise ValueError(f"{history.path} lacks columns {', '.join(missing)}")
        if types.get(stamp) in ("timestamp", "timestamp_ntz"):
            micros = F.unix_micros(F.col(stamp).cast("timestamp"))
        elif types.get(stamp) in ("bigint", "int", "smallint", "tinyint"):
            micros = F.col(stamp).cast("long") * 1_000_000  # integers are epoch seconds, as in process
        else:
            raise ValueError(f"{history.path}: event time column {stamp!r} is {types.get(stamp)}, not a timestamp")
        columns = []
        for key in view.keys:
            kind = types.get(key.name)
            if key.dtype.name == "INT64" and kind not in ("bigint", "int", "smallint", "tinyint"):
                raise ValueError(f"{history.path}: key {key.name!r} is {kind}, not an integer")
            if key.dtype.name == "STRING" and kind != "string":
                raise ValueError(f"{history.path}: key {key.name!r} is {kind}, not text")
            columns.append(
                F.col(key.name).cast("long" if key.dtype.name == "INT64" else "string").alias(key_name(key.name))
            )
        columns += [F.col(column).alias(field_name(name)) for name, column in history.columns.items()]
        columns.append(micros.alias(field_name(TS_COLUMN)))
        selected = frame.select(*columns).where(F.col(field_name(TS_COLUMN)).isNotNull())
        for key in view.keys:
            selected = selected.where(F.col(key_name(key.name)).isNotNull())
        if history.start_us is not None:
            selected = selected.where(F.col(field_name(TS_COLUMN)) >= history.start_us)
        if history.end_us is not None:
            selected = selected.where(F.col(field_name(TS_COLUMN)) < history.end_us)
        return selected

    def latest_per_key(self, view: ViewDef, history: pd.DataFrame | ParquetHistory) -> pd.DataFrame:
        """The latest row of every key, computed by Spark (same result as the in-process engine)."""
        frame = self._history(view, history, prefix=False)
        keys = [k.name for k in view.keys]
        window = Window.partitionBy(*keys).orderBy(F.col(TS_COLUMN).desc())
        latest = frame.withColumn("__rn", F.row_number().over(window)).where(F.col("__rn") == 1).drop("__rn")
        table = latest.toArrow()
        return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)

    def training_features(
        self,
        definitions: Definitions,
        service: ServiceDef,
        entities: pd.DataFrame,
        histories: Mapping[str, pd.DataFrame | ParquetHistory],
    ) -> tuple[pd.DataFrame, BatchResult]:
        """Point-in-time join in Spark, then the batch executor in Spark's workers."""
        arrays = [pa.array(entities[ROW_COLUMN].to_numpy(dtype=np.int64))]
        names = [ROW_COLUMN]
        for key in service.keys:
            arrays.append(_arrow_column(entities[key.name], key.dtype))
            names.append(key.name)
        arrays.append(pa.array(entities[EVENT_COLUMN].to_numpy(dtype=np.int64)))
        names.append(EVENT_COLUMN)
        for request in service.request_values:
            column = f"request.{request.name}"
            series = entities[column] if column in entities else pd.Series([None] * len(entities), dtype=object)
            arrays.append(_arrow_column(series, request.dtype))
            names.append(f"request__{request.name}")
        rows = self.session.createDataFrame(pa.Table.from_arrays(arrays, names=names))
        joined = rows
        for view_name in service.views:
            view = definitions.views[view_name]
            history = self._history(view, histories[view_name], prefix=True)
            ts = _spark_name(view_name, TS_COLUMN)
            condition = [rows[k.name] == history[f"h__{k.name}"] for k in view.keys]
            condition.append(history[ts] <= rows[EVENT_COLUMN])
            matched = rows.select(ROW_COLUMN, *(k.name for k in view.keys), EVENT_COLUMN).join(
                history, condition, "left"
            )
            window = Window.partitionBy(ROW_COLUMN).orderBy(F.col(ts).desc_nulls_last())
            latest = (
                matched.withColumn("__rn", F.row_number().over(window))
                .where(F.col("__rn") == 1)
                .select(ROW_COLUMN, ts, *(_spark_name(view_name, f) for f in view.fields))
            )
            joined = joined.join(latest, ROW_COLUMN, "left")
        schema = [T.StructField(ROW_COLUMN, T.LongType())]
        for index, feature in enumerate(service.features):
            schema += [
                T.StructField(f"f{index}", _feature_type(feature.dtype, feature.shape)),
                T.StructField(f"f{index}_valid", T.BooleanType()),
                T.StructField(f"f{index}_status", T.ByteType()),
            ]
        computed = joined.mapInArrow(
            lambda batches: _compute_partition(batches, definitions, service), T.StructType(schema)
        )
        table = computed.toArrow().sort_by(ROW_COLUMN)
        return entities.sort_values(ROW_COLUMN).reset_index(drop=True), self._result(service, table)

    @staticmethod
    def _result(service: ServiceDef, table: pa.Table) -> BatchResult:
        columns: dict[str, Col] = {}
        statuses = np.empty((table.num_rows, len(service.features)), dtype=np.int8)
        for index, feature in enumerate(service.features):
            valid = np.asarray(table.column(f"f{index}_valid").to_numpy(zero_copy_only=False), dtype=bool)
            raw = table.column(f"f{index}").to_pylist()
            if feature.shape:
                values: np.ndarray = np.array(
                    [row if row is not None else [0.0] * feature.shape[0] for row in raw], dtype=np.float64
                )
            elif feature.dtype == "BYTES":
                values = np.empty(len(raw), dtype=object)
                values[:] = raw
            elif feature.dtype == "BOOL":
                values = np.array([bool(v) for v in raw], dtype=bool)
            elif feature.dtype.startswith("FP"):
                values = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
            else:
                values = np.array([0 if v is None else v for v in raw], dtype=np.int64)
            columns[feature.name] = Col(values, valid)
            statuses[:, index] = table.column(f"f{index}_status").to_numpy(zero_copy_only=False)
        return BatchResult(columns, statuses)
