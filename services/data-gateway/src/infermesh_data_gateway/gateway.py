"""The data gateway's core, free of protobuf: definitions, sources, and every operation of the API.

:class:`DataGateway` keeps the loaded definition versions (reloading the folder when it
changes), one connector per configured source (shared by versions that configure it the
same way), the reader with its cache, and the executors. Its methods validate their input
and raise the chassis' errors: an unknown service or view is NOT_FOUND, a malformed key or
value INVALID_ARGUMENT naming the field, a view whose sources all failed UNAVAILABLE, a
feature that has no value and no default FAILED_PRECONDITION.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from infermesh_chassis.errors import FailedPrecondition, InfermeshError, InvalidArgument, NotFound, Unavailable
from infermesh_chassis.ids import NOT_CANONICAL, canonical_int64
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_data_gateway.definitions import (
    DefinitionError,
    Definitions,
    KeyDef,
    ServiceDef,
    SourceDef,
    ViewDef,
    load_definitions,
)
from infermesh_data_gateway.executor import BatchResult, FeatureVector, OnlineExecutor, Status
from infermesh_data_gateway.offline import (
    EVENT_COLUMN,
    ROW_COLUMN,
    ParquetHistory,
    canonical_rows,
    latest_per_key,
    training_features,
)
from infermesh_data_gateway.routing import FeatureReader, ReadCache, ViewUnavailable
from infermesh_data_gateway.settings import Settings
from infermesh_data_gateway.sources import FileSource, ReadItem, Source, SourceError, SourceMetrics, create_source
from infermesh_data_gateway.types import DType, coerce

__all__ = [
    "DataGateway",
    "EntityInput",
    "FeaturesResult",
    "MaterializeResult",
    "PushInput",
    "TrainingSet",
]

_log = get_logger("infermesh_data_gateway.gateway")


def now_us() -> int:
    """Now, in UTC microseconds."""
    return time.time_ns() // 1000


@dataclass(slots=True)
class EntityInput:
    """One entity of a GetFeatures call: raw key values and request values, as the caller sent them."""

    keys: Mapping[str, Any]
    request: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class FeaturesResult:
    """The vectors of one GetFeatures call."""

    service: ServiceDef
    version: str
    vectors: list[FeatureVector]


@dataclass(slots=True)
class PushInput:
    """One pushed row: raw keys, raw field values, event time (µs; None: now)."""

    keys: Mapping[str, Any]
    values: Mapping[str, Any]
    event_time_us: int | None = None


@dataclass(slots=True)
class MaterializeResult:
    """What a materialization run did."""

    view: str
    rows_written: int
    start_us: int | None
    end_us: int
    watermark_us: int
    elapsed_s: float


@dataclass(slots=True)
class TrainingSet:
    """A point-in-time-correct training set: the entity frame (sorted by row) and its features."""

    service: ServiceDef
    version: str
    frame: pd.DataFrame
    result: BatchResult
    passthrough: list[str]


def _source_signature(source: SourceDef) -> tuple[Any, ...]:
    return (
        source.name,
        source.kind,
        repr(sorted(source.options.items())),
        source.timeout_s,
        source.pool_size,
        source.health_interval_s,
        str(source.base_dir),
    )


def _key_value(dtype: DType, value: Any) -> Any:
    """An entity key in canonical form, by one rule on every path (reads, pushes, training entities; the
    business center sends unit ids by the same rule): a non-finite number is refused like 42.5 (it is
    not missing), and text for an integer key must spell it canonically (``infermesh_chassis.ids``)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a valid key")
    if dtype.is_int and isinstance(value, str):
        number = canonical_int64(value)
        if number is None:
            raise ValueError(f"{value[:64]!r} {NOT_CANONICAL}")
        value = number
    return coerce(dtype, value)


def _key(keys: Sequence[KeyDef], given: Mapping[str, Any], where: str) -> tuple[Any, ...]:
    out = []
    for key in keys:
        if key.name not in given or given[key.name] is None:
            raise InvalidArgument(f"{where}.keys.{key.name} is required ({key.dtype.name})")
        try:
            out.append(_key_value(key.dtype, given[key.name]))
        except ValueError as exc:
            raise InvalidArgument(f"{where}.keys.{key.name}: {exc}") from None
    return tuple(out)


class DataGateway:
    """The data gateway (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._source_metrics = SourceMetrics(metrics)
        self._versions: dict[str, Definitions] = {}
        self._current: Definitions | None = None
        self._sources: dict[tuple[Any, ...], Source] = {}
        self._by_version: dict[str, dict[str, Source]] = {}
        self._readers: dict[str, FeatureReader] = {}
        self._executors: dict[tuple[str, str], OnlineExecutor] = {}
        self.cache = ReadCache(metrics)
        self._reload_task: asyncio.Task[None] | None = None
        self._mtime = 0.0
        self._locks: dict[str, asyncio.Lock] = {}
        self._spark: Any = None
        self._closing: set[asyncio.Future[None]] = set()
        self._served = metrics.counter(
            "features_served", "Feature values served, by feature service and status.", ("service", "status")
        )
        self._versions_gauge = metrics.gauge(
            "definition_versions", "Definition versions loaded.", multiprocess_mode="livemax"
        )
        self._fallbacks = metrics.counter(
            "fallback_reads", "Entities of a view served by a fallback source.", ("view", "source")
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the definitions (a bad file stops the start with its file and line) and open the sources."""
        if self.settings.definitions is None:
            _log.warning("no_definitions", hint="set DATA_GATEWAY_DEFINITIONS to a folder of feature definitions")
            return
        definitions = await asyncio.to_thread(load_definitions, self.settings.definitions, self._variables())
        self._install(definitions)
        self._mtime = self._definitions_mtime()
        if self.settings.definitions_reload_s > 0:
            self._reload_task = asyncio.create_task(self._reload_loop(), name="definitions-reload")
        for view in self.settings.materialize_on_start or ():
            try:
                await self.materialize(view, None, None, incremental=True)
            except InfermeshError as exc:
                _log.error("materialize_on_start_failed", view=view, error=exc.message)

    def _variables(self) -> dict[str, str]:
        """What definitions may name in source options besides the environment."""
        return {"DATA_GATEWAY_STATE_DIR": str(self.settings.state_dir.resolve())}

    async def stop(self) -> None:
        """Stop reloading, close every source, stop Spark."""
        if self._reload_task is not None:
            self._reload_task.cancel()
            await asyncio.gather(self._reload_task, return_exceptions=True)
        for source in self._sources.values():
            await source.close()
        self._sources.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._spark is not None:
            await asyncio.to_thread(self._spark.stop)
            self._spark = None

    def _install(self, definitions: Definitions) -> None:
        if definitions.version in self._versions:  # a loaded version never changes meaning
            return
        sources: dict[str, Source] = {}
        for name, source_def in definitions.sources.items():
            signature = _source_signature(source_def)
            source = self._sources.get(signature)
            if source is None:
                source = create_source(source_def, self._source_metrics)
                self._sources[signature] = source
                source.start_probing()
            sources[name] = source
        self._versions[definitions.version] = definitions
        self._by_version[definitions.version] = sources
        self._readers[definitions.version] = FeatureReader(sources, self.cache, self._fallbacks)
        self._current = definitions
        while len(self._versions) > self.settings.keep_versions:
            oldest = next(iter(self._versions))
            del self._versions[oldest], self._by_version[oldest], self._readers[oldest]
            self._executors = {k: v for k, v in self._executors.items() if k[0] != oldest}
        in_use = {id(source) for sources_of in self._by_version.values() for source in sources_of.values()}
        for signature, source in list(self._sources.items()):
            if id(source) not in in_use:  # no loaded version configures it any more
                del self._sources[signature]
                self._closing.add(asyncio.ensure_future(source.close()))
                self._closing = {task for task in self._closing if not task.done()}
        self._versions_gauge.set(len(self._versions))
        _log.info(
            "definitions_loaded",
            version=definitions.version,
            services=sorted(definitions.services),
            views=sorted(definitions.views),
            sources=sorted(definitions.sources),
        )

    def _definitions_mtime(self) -> float:
        root = self.settings.definitions
        if root is None or not root.exists():
            return 0.0
        paths = [root] if root.is_file() else [root, *root.rglob("*.y*ml")]
        return max(p.stat().st_mtime for p in paths)

    async def reload(self) -> bool:
        """Load the definitions again if their files changed; True when a new version became current.

        A changed file that no longer validates, or that reuses a loaded version for different
        content, is refused (logged) and the current version stays.
        """
        mtime = self._definitions_mtime()
        if mtime == self._mtime or self.settings.definitions is None:
            return False
        self._mtime = mtime
        try:
            definitions = await asyncio.to_thread(load_definitions, self.settings.definitions, self._variables())
        except (DefinitionError, OSError) as exc:
            _log.error("definitions_reload_refused", error=str(exc))
            return False
        if self._current is not None and definitions.version == self._current.version:
            if definitions.files == self._current.files and definitions != self._current:
                _log.error(
                    "definitions_reload_refused",
                    error=f"version {definitions.version} is already loaded with other content; bump project.version",
                )
            return False
        self._install(definitions)
        return True

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.definitions_reload_s)
            try:
                await self.reload()
            except Exception:
                _log.exception("definitions_reload_failed")

    # -- lookups ---------------------------------------------------------------------------

    def definitions(self, version: str = "") -> Definitions:
        """The definitions of ``version`` (empty: the current one)."""
        if not version:
            if self._current is None:
                raise NotFound("no feature definitions are loaded")
            return self._current
        found = self._versions.get(version)
        if found is None:
            raise NotFound(
                f"definition version {version!r} is not loaded (loaded: {', '.join(self._versions) or 'none'})"
            )
        return found

    def service(self, name: str, version: str = "") -> tuple[Definitions, ServiceDef]:
        """The definitions and the feature service ``name``."""
        if not name:
            raise InvalidArgument("feature_service is required")
        definitions = self.definitions(version)
        service = definitions.services.get(name)
        if service is None:
            known = ", ".join(sorted(definitions.services)) or "none"
            raise NotFound(f"unknown feature service {name!r} in version {definitions.version} (defined: {known})")
        return definitions, service

    def view(self, name: str, version: str = "") -> tuple[Definitions, ViewDef]:
        """The definitions and the feature view ``name``."""
        if not name:
            raise InvalidArgument("feature_view is required")
        definitions = self.definitions(version)
        view = definitions.views.get(name)
        if view is None:
            known = ", ".join(sorted(definitions.views)) or "none"
            raise NotFound(f"unknown feature view {name!r} in version {definitions.version} (defined: {known})")
        return definitions, view

    def sources(self, version: str = "") -> dict[str, Source]:
        """The connectors of ``version``'s sources, by name."""
        return self._by_version[self.definitions(version).version]

    def list_services(self, prefix: str = "") -> list[tuple[Definitions, ServiceDef]]:
        """The current version's feature services whose name starts with ``prefix``, by name."""
        if self._current is None:
            return []
        definitions = self._current
        return [(definitions, definitions.services[n]) for n in sorted(definitions.services) if n.startswith(prefix)]

    def _executor(self, definitions: Definitions, service: ServiceDef) -> OnlineExecutor:
        executor = self._executors.get((definitions.version, service.name))
        if executor is None:
            executor = OnlineExecutor(definitions, service)
            self._executors[(definitions.version, service.name)] = executor
        return executor

    # -- GetFeatures -----------------------------------------------------------------------

    def _request_values(self, service: ServiceDef, given: Mapping[str, Any], where: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for request in service.request_values:
            raw = given.get(request.name)
            try:
                value = None if raw is None else coerce(request.dtype, raw)
            except ValueError as exc:
                raise InvalidArgument(f"{where}.request_values.{request.name}: {exc}") from None
            if value is None and request.required:
                raise InvalidArgument(f"{where}.request_values.{request.name} is required ({request.dtype.name})")
            values[request.name] = value
        return values

    @staticmethod
    def _check_request_fields(view: ViewDef, sources: Mapping[str, Source], entities: Sequence[EntityInput]) -> None:
        """Request values a request-kind source of ``view`` will read must have the field's type."""
        chains = [view.chain, *(route.chain for route in view.routes)]
        for name in {s for chain in chains for s in chain if sources[s].kind == "request"}:
            renames = view.binding(name).get("columns", {}) or {}
            for index, entity in enumerate(entities):
                for field_name, dtype in view.fields.items():
                    column = str(renames.get(field_name, field_name))
                    try:
                        coerce(dtype, entity.request.get(column))
                    except ValueError as exc:
                        raise InvalidArgument(f"entities[{index}].request_values.{column}: {exc}") from None

    async def get_features(
        self,
        name: str,
        entities: Sequence[EntityInput],
        attributes: Mapping[str, str] | None = None,
        version: str = "",
    ) -> FeaturesResult:
        """The vectors of feature service ``name`` for ``entities``, in order."""
        definitions, service = self.service(name, version)
        if not entities:
            raise InvalidArgument("entities: at least one entity is required")
        if len(entities) > self.settings.max_entities:
            raise InvalidArgument(f"entities: {len(entities)} entities, at most {self.settings.max_entities} per call")
        attributes = attributes or {}
        keys = []
        requests = []
        for index, entity in enumerate(entities):
            where = f"entities[{index}]"
            values = {}
            for key in service.keys:
                values[key.name] = _key((key,), entity.keys, where)[0]
            keys.append(values)
            requests.append(self._request_values(service, entity.request, where))
        reader = self._readers[definitions.version]
        views = [definitions.views[v] for v in service.views]

        sources = self._by_version[definitions.version]
        for view in views:
            self._check_request_fields(view, sources, entities)
        items = [
            [ReadItem(tuple(k[key.name] for key in view.keys), e.request) for k, e in zip(keys, entities, strict=True)]
            for view in views
        ]
        try:
            if len(views) == 1:
                reads_by_view = [await reader.read(views[0], items[0], keys, attributes)]
            else:
                reads_by_view = await reader.read_views(views, items, keys, attributes)
        except ViewUnavailable as exc:
            raise Unavailable(str(exc)) from None
        executor = self._executor(definitions, service)
        as_of = now_us()
        vectors = []
        counts = [0] * 5
        for index in range(len(entities)):
            reads = {view.name: reads_by_view[v][index] for v, view in enumerate(views)}
            vector = executor.compute(reads, requests[index], as_of)
            if vector.unservable:
                raise FailedPrecondition(
                    f"entities[{index}]: no value and no default for {', '.join(vector.unservable)} "
                    f"(keys {keys[index]}); give the features a default or allow_missing, or fix the source"
                )
            for status in vector.statuses:
                counts[status] += 1
            vectors.append(vector)
        for status in Status:
            if counts[status]:
                self._served.labels(service.name, status.name).inc(counts[status])
        return FeaturesResult(service, definitions.version, vectors)

    # -- PushFeatures ----------------------------------------------------------------------

    def _store(self, definitions: Definitions, view: ViewDef) -> Source:
        if view.online_store is None:
            raise FailedPrecondition(f"feature view {view.name!r} has no online store (set project.online_store)")
        return self._by_version[definitions.version][view.online_store]

    async def push(self, view_name: str, rows: Sequence[PushInput]) -> tuple[int, int]:
        """Validate ``rows`` against the view and write them to its online store; (written, skipped)."""
        definitions, view = self.view(view_name)
        if not rows:
            raise InvalidArgument("rows: at least one row is required")
        store = self._store(definitions, view)
        now = now_us()
        canonical = []
        for index, row in enumerate(rows):
            where = f"rows[{index}]"
            key = _key(view.keys, row.keys, where)
            values: dict[str, Any] = {}
            for field_name in row.values:
                if field_name not in view.fields:
                    raise InvalidArgument(
                        f"{where}.values.{field_name} is not a field of view {view.name!r} ({', '.join(view.fields)})"
                    )
            for field_name, dtype in view.fields.items():
                try:
                    values[field_name] = coerce(dtype, row.values.get(field_name))
                except ValueError as exc:
                    raise InvalidArgument(f"{where}.values.{field_name}: {exc}") from None
            canonical.append((key, values, row.event_time_us if row.event_time_us is not None else now))
        written, skipped = await self._write(store, view, canonical)
        self.cache.invalidate(view, [key for key, _, _ in canonical])
        return written, skipped

    async def _write(
        self, store: Source, view: ViewDef, rows: list[tuple[tuple[Any, ...], dict[str, Any], int]]
    ) -> tuple[int, int]:
        try:
            async with asyncio.timeout(self.settings.write_timeout_s):
                return await store.write_online(view, rows)
        except TimeoutError:
            raise Unavailable(
                f"online store {store.name!r} did not answer within {self.settings.write_timeout_s} s"
            ) from None
        except SourceError as exc:
            raise Unavailable(f"online store {store.name!r}: {exc}") from None

    # -- batch -----------------------------------------------------------------------------

    def _engine(self, engine: str) -> str:
        return engine or self.settings.batch_engine

    def spark(self) -> Any:
        """The Spark engine, started on first use."""
        if self._spark is None:
            from infermesh_data_gateway.spark import SparkEngine  # noqa: PLC0415  (pyspark is an optional extra)

            self._spark = SparkEngine(self.settings.spark)
        return self._spark

    def _spark_call(self, method: str, *args: Any) -> Any:
        """A SparkEngine method (run in a thread). A file Spark cannot read as it is, and Spark failing to
        start or to run the job, become UNAVAILABLE (a failed start is tried again by the next call)."""
        from infermesh_data_gateway.spark import ENGINE_ERRORS  # noqa: PLC0415  (pyspark is an optional extra)

        try:
            return getattr(self.spark(), method)(*args)
        except ValueError as exc:
            raise Unavailable(f"spark: {exc}") from None
        except ENGINE_ERRORS as exc:
            _log.error("spark_failed", method=method, exc_info=exc)
            raise Unavailable(
                f"spark could not run {method}: {type(exc).__name__} (details in the gateway log)"
            ) from None

    async def _history(
        self, definitions: Definitions, view: ViewDef, start: int | None, end: int | None, engine: str = "local"
    ) -> pd.DataFrame | ParquetHistory:
        """The view's offline rows in [start, end); for Spark, Parquet files are left for Spark to read."""
        if view.offline_source is None:
            raise FailedPrecondition(f"feature view {view.name!r} has no offline source (set offline:)")
        source = self._by_version[definitions.version][view.offline_source]
        if engine == "spark" and isinstance(source, FileSource) and source.format == "parquet":
            path = source.path(view)
            if not path.exists():
                raise Unavailable(f"offline source {source.name!r} of view {view.name!r}: {path} does not exist")
            return ParquetHistory(path, source.columns(view), view.timestamp_field, start, end)
        try:
            return await source.read_offline(view, start, end)
        except SourceError as exc:
            raise Unavailable(f"offline source {source.name!r} of view {view.name!r}: {exc}") from None

    async def materialize(
        self, view_name: str, start_us: int | None, end_us: int | None, incremental: bool, engine: str = ""
    ) -> MaterializeResult:
        """Write the view's latest values in [start, end) (or since its watermark) to its online store."""
        started = time.perf_counter()
        definitions, view = self.view(view_name)
        store = self._store(definitions, view)
        end = end_us if end_us is not None else now_us()
        lock = self._locks.setdefault(view.name, asyncio.Lock())
        async with lock:
            start = start_us
            if incremental:
                try:
                    watermark = await store.get_watermark(view.name)
                except SourceError as exc:
                    raise Unavailable(f"online store {store.name!r}: {exc}") from None
                if watermark is not None:
                    start = watermark
            if start is not None and start >= end:
                raise InvalidArgument(f"start_time must be before end_time (got {start} >= {end} µs)")
            history = await self._history(definitions, view, start, end, self._engine(engine))
            if isinstance(history, pd.DataFrame) and self._engine(engine) != "spark":
                latest = latest_per_key(view, history)
            else:
                latest = await asyncio.to_thread(self._spark_call, "latest_per_key", view, history)
            rows = canonical_rows(view, latest)
            written = 0
            for chunk in range(0, len(rows), 1000):
                done, _ = await self._write(store, view, rows[chunk : chunk + 1000])
                written += done
            self.cache.invalidate(view, [key for key, _, _ in rows])
            try:
                await store.set_watermark(view.name, end)
            except SourceError as exc:
                raise Unavailable(f"online store {store.name!r}: {exc}") from None
        elapsed = time.perf_counter() - started
        _log.info("materialized", view=view.name, rows=written, start_us=start, end_us=end, elapsed_s=round(elapsed, 3))
        return MaterializeResult(view.name, written, start, end, end, elapsed)

    def _entity_frame(self, service: ServiceDef, entities: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
        if "event_time" not in entities:
            raise InvalidArgument("entities: an event_time column is required")
        frame = pd.DataFrame({ROW_COLUMN: np.arange(len(entities), dtype=np.int64)})
        for key in service.keys:
            if key.name not in entities:
                raise InvalidArgument(f"entities: key column {key.name!r} is required ({key.dtype.name})")
            values = []
            for index, raw in enumerate(entities[key.name].tolist()):
                values.append(_key((key,), {key.name: None if pd.isna(raw) else raw}, f"entities[{index}]")[0])
            frame[key.name] = pd.Series(values, dtype="int64" if key.dtype.name == "INT64" else object)
        stamps = []
        for index, raw in enumerate(entities["event_time"].tolist()):
            try:
                stamp = None if pd.isna(raw) else coerce(DType("TIMESTAMP"), raw)
            except ValueError as exc:
                raise InvalidArgument(f"entities[{index}].event_time: {exc}") from None
            if stamp is None:
                raise InvalidArgument(f"entities[{index}].event_time is required")
            stamps.append(stamp)
        frame[EVENT_COLUMN] = np.array(stamps, dtype=np.int64)
        for request in service.request_values:
            if request.name not in entities:
                if request.required:
                    raise InvalidArgument(f"entities: request value column {request.name!r} is required")
                continue
            values = []  # read as GetFeatures reads them (an integer TIMESTAMP is epoch seconds)
            for index, raw in enumerate(entities[request.name].tolist()):
                try:
                    value = None if raw is None or (isinstance(raw, float) and np.isnan(raw)) else raw
                    values.append(None if value is None else coerce(request.dtype, value))
                except ValueError as exc:
                    raise InvalidArgument(f"entities[{index}].{request.name}: {exc}") from None
                if values[-1] is None and request.required:
                    raise InvalidArgument(f"entities[{index}].{request.name} is required ({request.dtype.name})")
            frame[f"request.{request.name}"] = pd.Series(values, dtype=object)
        taken = {*(k.name for k in service.keys), "event_time", *(r.name for r in service.request_values)}
        passthrough = [c for c in entities.columns if c not in taken]
        for column in passthrough:
            frame[column] = entities[column].to_numpy()
        return frame, passthrough

    async def training_set(self, name: str, entities: pd.DataFrame, version: str = "", engine: str = "") -> TrainingSet:
        """Features of every entity row as of its event time (never later), computed by the batch executor."""
        definitions, service = self.service(name, version)
        if entities.empty:
            raise InvalidArgument("entities: at least one row is required")
        frame, passthrough = self._entity_frame(service, entities)
        end = int(frame[EVENT_COLUMN].max()) + 1
        chosen = self._engine(engine)
        histories = {}
        for view_name in service.views:
            view = definitions.views[view_name]
            histories[view_name] = await self._history(definitions, view, None, end, chosen)
        if chosen == "spark":
            joined, result = await asyncio.to_thread(
                self._spark_call, "training_features", definitions, service, frame, histories
            )
        else:
            joined, result = await asyncio.to_thread(training_features, definitions, service, frame, histories)
        return TrainingSet(service, definitions.version, joined, result, passthrough)
