"""Feature definitions: YAML files → validated, immutable, versioned definitions.

A definitions folder holds ``*.yaml`` files; each may declare any of the top-level sections
``project``, ``statistics``, ``entities``, ``sources``, ``feature_views`` and
``feature_services`` (a name declared twice, in one file or two, is an error naming both
places). The shape of every file (which keys, of which types) is checked by the pydantic models
below, strictly, unknown keys refused, every problem of every file reported together; what a
model cannot say alone (references between definitions, expressions, bindings that depend on a
source's kind) is checked after. Every error names the file and line of the offending value and
its field path. The version of a set of definitions is ``project.version`` when declared,
otherwise a digest of the files' contents; a version, once loaded, never changes meaning. See the
service README for the format.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, model_validator

from infermesh_chassis.documents import Document, DocumentError, Loc, format_loc, load_yaml
from infermesh_data_gateway.expressions import (
    NUM,
    STR,
    TS,
    VEC,
    Compiled,
    ExpressionError,
    cast_scalar,
    compile_expression,
)
from infermesh_data_gateway.types import FEATURE_DTYPES, KEY_DTYPES, DType, coerce, parse_duration

__all__ = [
    "SOURCE_KINDS",
    "DefinitionError",
    "Definitions",
    "EntityDef",
    "FeatureDef",
    "KeyDef",
    "RequestValueDef",
    "Route",
    "ServiceDef",
    "SourceDef",
    "ViewDef",
    "load_definitions",
]

SOURCE_KINDS = ("redis", "postgres", "sqlite", "file", "http", "request")
"""Kinds of data source a definition may declare."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECTIONS = ("project", "statistics", "entities", "sources", "feature_views", "feature_services")

T = TypeVar("T")


class DefinitionError(ValueError):
    """The definitions are not valid; one line per problem, each starting with ``file:line:``."""


# ------------------------------------------------------------------------------------------------
# The shape of a file, as pydantic models
# ------------------------------------------------------------------------------------------------


def _valid_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} is not a valid name (letters, digits, underscores; not starting with a digit)")
    return value


def _as_text(value: Any) -> Any:
    """Numbers are text too (``version: 7``); null is the empty text."""
    if value is None:
        return ""
    return str(value) if isinstance(value, int | float) else value


def _as_names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _as_duration(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


def _field_dtype(value: Any) -> DType:
    if not isinstance(value, str):
        raise ValueError(f"a dtype is text such as FP64 or STRING, not {value!r}")
    return DType.field(value)


def _key_dtype(value: Any) -> DType:
    parsed = _field_dtype(value)
    if parsed.name not in KEY_DTYPES:
        raise ValueError(f"a key is INT64 or STRING, not {value}")
    return parsed


def _feature_dtype(value: Any) -> str:
    dtype = str(value).upper()
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(sorted(FEATURE_DTYPES))}, not {dtype!r}")
    return dtype


Name = Annotated[str, AfterValidator(_valid_name)]
"""Letters, digits and underscores, not starting with a digit."""
Names = Annotated[list[Name], BeforeValidator(_as_names)]
"""A name, or a list of names."""
Text = Annotated[str, BeforeValidator(_as_text)]
Duration = Annotated[float | None, BeforeValidator(_as_duration)]
"""Seconds, or text such as ``250ms``, ``30s``, ``7d``."""
FieldDType = Annotated[DType, PlainValidator(_field_dtype)]
KeyDType = Annotated[DType, PlainValidator(_key_dtype)]
FeatureDType = Annotated[str, BeforeValidator(_feature_dtype)]
Required = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    """Strict types, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Project(_Model):
    name: Text = "default"
    version: Text = ""
    online_store: Name | None = None
    description: Text = ""


class _Statistics(_Model):
    mean: float
    std: float = Field(gt=0)
    computed_from: Any = None
    computed_at: Any = None


class _Entity(_Model):
    keys: dict[Name, KeyDType] = Field(min_length=1)
    """Key name → dtype, e.g. ``{customer_id: INT64}``."""
    description: Text = ""


class _Source(_Model):
    """What every kind of source takes; each kind adds its own options."""

    kind: str
    timeout: Duration = None
    pool_size: int = Field(default=8, gt=0)
    health_interval: Duration = None
    description: Text = ""


class _RedisSource(_Source):
    url: Required
    key_prefix: str | None = None


class _PostgresSource(_Source):
    dsn: Required


class _SqliteSource(_Source):
    path: Required


class _FileSource(_Source):
    path: Required
    format: Literal["parquet", "csv"] = "parquet"


class _HttpSource(_Source):
    url: Required
    headers: dict[str, Text] | None = None


_SOURCE_MODELS: dict[str, type[_Source]] = {
    "redis": _RedisSource,
    "postgres": _PostgresSource,
    "sqlite": _SqliteSource,
    "file": _FileSource,
    "http": _HttpSource,
    "request": _Source,
}
_COMMON_SOURCE_KEYS = tuple(_Source.model_fields)
_KINDS = ", ".join(SOURCE_KINDS)


class _Cache(_Model):
    ttl: Duration = None
    max_entries: int = Field(default=100_000, gt=0)


class _RouteIn(_Model):
    when: dict[str, Any] | None = None
    """Routing attribute → glob pattern, and ``keys``: entity key → regular expression."""
    source: Name
    fallbacks: Names = []


class _View(_Model):
    entities: Names
    fields: dict[Name, FieldDType] = Field(min_length=1)
    ttl: Duration = None
    owner: Text = ""
    description: Text = ""
    source: Name
    fallbacks: Names = []
    routes: list[_RouteIn] = []
    offline: Name | None = None
    online_store: Name | None = None
    timestamp_field: Name = "event_time"
    bindings: dict[Name, dict[str, Any]] | None = None
    """Source → how it stores the view; checked by the source's kind (:data:`_BINDING_MODELS`)."""
    cache: _Cache | None = None
    unavailable: Literal["fail", "default"] = "fail"


class _Binding(_Model):
    """How a source of a kind stores a view."""


class _ColumnsBinding(_Binding):
    columns: dict[str, Name] | None = None
    """Field → column, where they differ."""


class _RedisBinding(_Binding):
    key_prefix: str | None = None


class _SqlBinding(_ColumnsBinding):
    table: Name | None = None
    timestamp_format: Literal["iso", "epoch_s", "native"] | None = None


class _FileBinding(_ColumnsBinding):
    path: str | None = None


class _HttpBinding(_Binding):
    path: str | None = None
    fields_key: str | None = None
    timestamp_key: str | None = None


_BINDING_MODELS: dict[str, type[_Binding]] = {
    "redis": _RedisBinding,
    "postgres": _SqlBinding,
    "sqlite": _SqlBinding,
    "file": _FileBinding,
    "http": _HttpBinding,
    "request": _ColumnsBinding,
}


class _RequestValue(_Model):
    dtype: FieldDType
    required: bool = False


def _as_request_value(value: Any) -> Any:
    return {"dtype": value} if isinstance(value, str) else value


class _Feature(_Model):
    name: Name
    dtype: FeatureDType = "FP32"
    shape: list[Annotated[int, Field(gt=0)]] | None = None
    expr: Annotated[str, BeforeValidator(_as_text)] | None = None
    field: Annotated[str, BeforeValidator(_as_text)] | None = None
    default: Any = None
    allow_missing: bool = False
    description: Text = ""

    @model_validator(mode="after")
    def _one_source(self) -> _Feature:
        if ("expr" in self.model_fields_set) == ("field" in self.model_fields_set):
            raise ValueError("give exactly one of expr (an expression) or field (<view>.<field>)")
        return self


class _Service(_Model):
    description: Text = ""
    owner: Text = ""
    entities: Names
    request_values: dict[Name, Annotated[_RequestValue, BeforeValidator(_as_request_value)]] | None = None
    features: list[_Feature] = Field(min_length=1)


class _File(_Model):
    """One definitions file: any of the sections."""

    project: _Project | None = None
    statistics: dict[Name, _Statistics] | None = None
    entities: dict[Name, _Entity] | None = None
    sources: dict[Name, dict[str, Any]] | None = None
    """Name → source; checked by its kind (:data:`_SOURCE_MODELS`)."""
    feature_views: dict[Name, _View] | None = None
    feature_services: dict[Name, _Service] | None = None


@dataclass(frozen=True, slots=True)
class _At:
    """Where a value is: its document and position, and the dotted path shown in messages."""

    doc: Document
    loc: Loc
    path: str

    @property
    def file(self) -> str:
        return self.doc.file

    @property
    def line(self) -> int:
        return self.doc.line(self.loc)

    def problem(self, message: str) -> str:
        return f"{self.file}:{self.line}: {self.path}: {message}"

    def error(self, message: str) -> DefinitionError:
        return DefinitionError(self.problem(message))

    def key(self, key: str | int) -> _At:
        sep = f"[{key}]" if isinstance(key, int) else f".{key}"
        return _At(self.doc, (*self.loc, key), f"{self.path}{sep}" if self.path else str(key))

    def named(self, name: str) -> _At:
        """The same place, its path suffixed with ``(name)`` (a feature in a list)."""
        return _At(self.doc, self.loc, f"{self.path}({name})")


def _at(doc: Document, loc: Loc) -> _At:
    return _At(doc, loc, format_loc(loc))


def _expand_env(value: Any, at: _At, variables: Mapping[str, str]) -> Any:
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if name in variables:
            return variables[name]
        if default is not None:
            return default
        raise at.error(f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    return _ENV.sub(replace, value)


# ------------------------------------------------------------------------------------------------
# The definitions
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyDef:
    """One key column of an entity."""

    name: str
    dtype: DType


@dataclass(frozen=True, slots=True)
class EntityDef:
    """What features are about (customer, merchant), and its key columns."""

    name: str
    keys: tuple[KeyDef, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class SourceDef:
    """A data source: its kind, connection options, timeout and pool size."""

    name: str
    kind: str
    options: Mapping[str, Any]
    timeout_s: float
    pool_size: int
    health_interval_s: float
    base_dir: Path


@dataclass(frozen=True, slots=True)
class Route:
    """A routing rule: when the request matches, read the view from ``chain`` (primary, then fallbacks)."""

    chain: tuple[str, ...]
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Routing attribute → glob pattern (``tenant: acme``, ``region: "eu-*"``)."""
    keys: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    """Entity key name → regular expression its value (as text) must match."""

    def matches(self, attributes: Mapping[str, str], keys: Mapping[str, Any]) -> bool:
        """Whether a request with these routing attributes and entity keys takes this route."""
        for name, pattern in self.attributes.items():
            value = attributes.get(name)
            if value is None or not fnmatch.fnmatchcase(value, pattern):
                return False
        for name, regex in self.keys.items():
            value = keys.get(name)
            if value is None or not regex.search(str(value)):
                return False
        return True


@dataclass(frozen=True, slots=True)
class ViewDef:
    """A feature view: typed fields of some entities, read from routed sources."""

    name: str
    entities: tuple[str, ...]
    keys: tuple[KeyDef, ...]
    fields: Mapping[str, DType]
    ttl_s: float | None
    owner: str
    description: str
    chain: tuple[str, ...]
    routes: tuple[Route, ...]
    offline_source: str | None
    online_store: str | None
    timestamp_field: str
    bindings: Mapping[str, Mapping[str, Any]]
    cache_ttl_s: float | None
    cache_max_entries: int
    defaults_when_unavailable: bool

    def binding(self, source: str) -> Mapping[str, Any]:
        """How ``source`` stores this view (table, path, columns...); empty for the defaults."""
        return self.bindings.get(source, {})

    def chain_for(self, attributes: Mapping[str, str], keys: Mapping[str, Any]) -> tuple[str, ...]:
        """The sources to try, in order, for a request (the first matching route, else the default chain)."""
        for route in self.routes:
            if route.matches(attributes, keys):
                return route.chain
        return self.chain


@dataclass(frozen=True, slots=True)
class RequestValueDef:
    """A value the caller sends with the request."""

    name: str
    dtype: DType
    required: bool


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """One feature of a feature service: an expression, its model dtype and what happens when it is missing."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    view: str | None
    expression: Compiled
    default: Any
    has_default: bool
    allow_missing: bool
    description: str

    @property
    def kind(self) -> str:
        """Kind of the expression's value (num, int, str, vec)."""
        return self.expression.root.kind


@dataclass(frozen=True, slots=True)
class ServiceDef:
    """A feature service: the ordered, typed features one model consumes."""

    name: str
    description: str
    owner: str
    entities: tuple[str, ...]
    keys: tuple[KeyDef, ...]
    request_values: tuple[RequestValueDef, ...]
    features: tuple[FeatureDef, ...]
    views: tuple[str, ...]
    file: str

    def features_of(self, view: str) -> tuple[int, ...]:
        """Indexes of the features that read ``view``."""
        return tuple(i for i, f in enumerate(self.features) if f.view == view)


@dataclass(frozen=True, slots=True)
class Definitions:
    """One loaded, validated version of every definition."""

    version: str
    project: str
    root: Path
    entities: Mapping[str, EntityDef]
    sources: Mapping[str, SourceDef]
    views: Mapping[str, ViewDef]
    services: Mapping[str, ServiceDef]
    statistics: Mapping[str, tuple[float, float]]
    files: tuple[str, ...]


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


@dataclass
class _Section:
    """One declared item: its validated shape and where it is."""

    name: str
    model: Any
    at: _At


def _read_files(root: Path) -> tuple[list[Document], list[str], str]:
    """The parsed files, the problems of those that are not valid YAML, and a digest of them all."""
    if root.is_file():
        paths = [root]
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    else:
        raise DefinitionError(f"{root}: no such definitions file or folder")
    if not paths:
        raise DefinitionError(f"{root}: no *.yaml definition files")
    digest = hashlib.sha256()
    docs, problems = [], []
    for path in paths:
        text = path.read_text()
        digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode() + b"\0" + text.encode())
        try:
            docs.append(load_yaml(text, str(path)))
        except DocumentError as exc:
            problems.extend(exc.problems)
    return docs, problems, digest.hexdigest()[:12]


def _collect(docs: list[Document], problems: list[str]) -> tuple[dict[str, dict[str, _Section]], dict[str, _Source]]:
    """Every file's sections and sources, each checked by its model; a name declared twice is a problem."""
    sections: dict[str, dict[str, _Section]] = {s: {} for s in _SECTIONS}
    shapes: dict[str, _Source] = {}
    for doc in docs:
        found: list[str] = []
        parsed = None
        try:
            parsed = doc.validate(_File)
        except DocumentError as exc:
            found.extend(exc.problems)
        file_shapes = _source_shapes(doc, found)
        problems.extend(sorted(found, key=lambda problem: _line_of(doc, problem)))
        if parsed is None:
            continue
        for section in _SECTIONS:
            items = getattr(parsed, section)
            if items is None:
                continue
            if section == "project":
                items = {"project": items}
            for name, model in items.items():
                at = _at(doc, (section,) if section == "project" else (section, name))
                first = sections[section].get(name)
                if first is not None:
                    problems.append(at.problem(f"declared twice (first at {first.at.file}:{first.at.line})"))
                    continue
                sections[section][name] = _Section(name, model, at)
                if section == "sources" and name in file_shapes:
                    shapes[name] = file_shapes[name]
    return sections, shapes


def _line_of(doc: Document, problem: str) -> int:
    """The line a problem of ``doc`` names (every problem starts with ``file:line:``)."""
    return int(problem.removeprefix(f"{doc.file}:").split(":", 1)[0])


def _source_shapes(doc: Document, problems: list[str]) -> dict[str, _Source]:
    """The sources of a file, each checked by the model of its kind (the rest of the file is :class:`_File`'s)."""
    shapes = {}
    declared = doc.data.get("sources") if isinstance(doc.data, dict) else None
    for name, raw in (declared if isinstance(declared, dict) else {}).items():
        if not isinstance(raw, dict):
            continue
        kind = raw.get("kind")
        if kind not in SOURCE_KINDS:
            given = f"not {kind!r}" if "kind" in raw else "required"
            problems.append(_at(doc, ("sources", name, "kind")).problem(f"kind must be one of {_KINDS}; {given}"))
            continue
        try:
            shapes[name] = doc.validate(_SOURCE_MODELS[kind], ("sources", name))
        except DocumentError as exc:
            problems.extend(exc.problems)
    return shapes


def _entity(item: _Section) -> EntityDef:
    entity: _Entity = item.model
    return EntityDef(item.name, tuple(KeyDef(n, d) for n, d in entity.keys.items()), entity.description)


def _source(item: _Section, shape: _Source, base_dir: Path, variables: Mapping[str, str]) -> SourceDef:
    raw: dict[str, Any] = item.model
    options = {k: _expand_env(v, item.at.key(k), variables) for k, v in raw.items() if k not in _COMMON_SOURCE_KEYS}
    return SourceDef(
        name=item.name,
        kind=shape.kind,
        options=options,
        timeout_s=shape.timeout or 0.5,
        pool_size=shape.pool_size,
        health_interval_s=shape.health_interval or 2.0,
        base_dir=base_dir,
    )


def _entity_keys(names: list[str], at: _At, entities: Mapping[str, EntityDef]) -> tuple[tuple[str, ...], list[KeyDef]]:
    """The ``entities`` a view or a service names (at ``at``), and their key columns in order."""
    keys: list[KeyDef] = []
    for index, name in enumerate(names):
        if name not in entities:
            raise at.key(index).error(f"unknown entity {name!r}")
        keys.extend(entities[name].keys)
    return tuple(names), keys


def _view(
    item: _Section, entities: Mapping[str, EntityDef], sources: Mapping[str, SourceDef], online: str | None
) -> ViewDef:
    raw: _View = item.model
    at = item.at

    def known_source(name: str, where: _At) -> str:
        if name not in sources:
            raise where.error(f"unknown source {name!r} (declared: {', '.join(sorted(sources)) or 'none'})")
        return name

    view_entities, keys = _entity_keys(raw.entities, at.key("entities"), entities)
    fields = dict(raw.fields)
    clash = {k.name for k in keys} & set(fields)
    if clash:
        raise at.key("fields").error(f"{', '.join(sorted(clash))} is an entity key, not a field")
    primary = known_source(raw.source, at.key("source"))
    fallbacks_at = at.key("fallbacks")
    chain = (primary, *(known_source(f, fallbacks_at.key(i)) for i, f in enumerate(raw.fallbacks)))
    if len(set(chain)) != len(chain):
        raise fallbacks_at.error("a source appears twice in the chain")
    routes = _routes(raw.routes, at.key("routes"), keys, known_source)
    bindings: dict[str, Mapping[str, Any]] = {}
    for source, options in (raw.bindings or {}).items():
        where = at.key("bindings").key(source)
        known_source(source, where)
        bindings[source] = _binding(options, where, sources[source].kind, fields)
    offline = raw.offline
    if offline is not None:
        known_source(offline, at.key("offline"))
        if sources[offline].kind in ("request", "http"):
            raise at.key("offline").error(f"a {sources[offline].kind} source cannot be read in batch")
    else:
        offline = next((s for s in chain if sources[s].kind in ("postgres", "sqlite", "file")), None)
    declared_store = "online_store" in raw.model_fields_set
    store = raw.online_store if declared_store else online
    if store is not None:
        known_source(store, at.key("online_store") if declared_store else at)
        if sources[store].kind not in ("redis", "postgres", "sqlite"):
            raise at.error(f"online store {store!r} must be a redis, postgres or sqlite source")
    cache = raw.cache or _Cache()
    return ViewDef(
        name=item.name,
        entities=view_entities,
        keys=tuple(keys),
        fields=fields,
        ttl_s=raw.ttl,
        owner=raw.owner,
        description=raw.description,
        chain=chain,
        routes=routes,
        offline_source=offline,
        online_store=store,
        timestamp_field=raw.timestamp_field,
        bindings=bindings,
        cache_ttl_s=cache.ttl,
        cache_max_entries=cache.max_entries,
        defaults_when_unavailable=raw.unavailable == "default",
    )


def _binding(options: dict[str, Any], at: _At, kind: str, fields: Mapping[str, DType]) -> Mapping[str, Any]:
    try:
        binding = at.doc.validate(_BINDING_MODELS[kind], at.loc)
    except DocumentError as exc:
        raise DefinitionError(str(exc)) from None
    for name in getattr(binding, "columns", None) or {}:
        if name not in fields:
            raise at.key("columns").key(name).error(f"{name!r} is not a field of the view")
    return dict(options)


def _routes(rules: list[_RouteIn], at: _At, keys: list[KeyDef], known_source: Any) -> tuple[Route, ...]:
    key_names = {k.name for k in keys}
    routes = []
    for index, rule in enumerate(rules):
        where = at.key(index)
        fallbacks_at = where.key("fallbacks")
        chain = (
            known_source(rule.source, where.key("source")),
            *(known_source(f, fallbacks_at.key(i)) for i, f in enumerate(rule.fallbacks)),
        )
        when_at = where.key("when")
        if not rule.when:
            raise when_at.error("a route needs at least one condition (routing attributes or keys)")
        attributes: dict[str, str] = {}
        patterns: dict[str, re.Pattern[str]] = {}
        for name, pattern in rule.when.items():
            cond_at = when_at.key(name)
            if name != "keys":
                attributes[name] = str(pattern)
                continue
            if not isinstance(pattern, dict):
                raise cond_at.error(f"expected a mapping of key → regular expression, got {type(pattern).__name__}")
            for key, regex in pattern.items():
                if key not in key_names:
                    raise cond_at.key(key).error(f"{key!r} is not a key of the view's entities")
                try:
                    patterns[key] = re.compile(str(regex))
                except re.error as exc:
                    raise cond_at.key(key).error(f"not a regular expression: {exc}") from None
        routes.append(Route(chain, attributes, patterns))
    return tuple(routes)


def _service(
    item: _Section,
    entities: Mapping[str, EntityDef],
    views: Mapping[str, ViewDef],
    statistics: Mapping[str, tuple[float, float]],
) -> ServiceDef:
    raw: _Service = item.model
    at = item.at
    service_entities, keys = _entity_keys(raw.entities, at.key("entities"), entities)
    request_values = tuple(
        RequestValueDef(name, value.dtype, value.required) for name, value in (raw.request_values or {}).items()
    )
    by_name = {r.name: r for r in request_values}
    features: list[FeatureDef] = []
    used_views: list[str] = []
    for index, feature_raw in enumerate(raw.features):
        feature_at = at.key("features").key(index)
        feature = _feature(
            feature_raw,
            feature_at,
            views=views,
            request_values=by_name,
            statistics=statistics,
            service_entities=set(service_entities),
        )
        if any(f.name == feature.name for f in features):
            raise feature_at.error(f"feature {feature.name!r} is declared twice")
        features.append(feature)
        if feature.view is not None and feature.view not in used_views:
            used_views.append(feature.view)
    return ServiceDef(
        name=item.name,
        description=raw.description,
        owner=raw.owner,
        entities=service_entities,
        keys=tuple(keys),
        request_values=request_values,
        features=tuple(features),
        views=tuple(used_views),
        file=item.at.file,
    )


def _feature(
    raw: _Feature,
    at: _At,
    *,
    views: Mapping[str, ViewDef],
    request_values: Mapping[str, RequestValueDef],
    statistics: Mapping[str, tuple[float, float]],
    service_entities: set[str],
) -> FeatureDef:
    at = at.named(raw.name)
    source_key = "expr" if "expr" in raw.model_fields_set else "field"
    text = str(raw.expr if source_key == "expr" else raw.field)
    dtype = raw.dtype

    def resolve(prefix: str, attr: str) -> DType:
        if prefix == "request":
            if attr not in request_values:
                raise KeyError(f"request value {attr!r} is not declared in request_values")
            return request_values[attr].dtype
        view = views.get(prefix)
        if view is None:
            raise KeyError(f"unknown feature view {prefix!r}")
        if attr not in view.fields:
            raise KeyError(f"{attr!r} is not a field of view {prefix!r} ({', '.join(view.fields)})")
        return view.fields[attr]

    where = at.key(source_key)
    try:
        compiled = compile_expression(text, resolve, statistics)
    except ExpressionError as exc:
        raise where.error(str(exc)) from None
    feature_views = sorted({ref.split(".", 1)[0] for ref in compiled.refs if not ref.startswith("request.")})
    if len(feature_views) > 1:
        raise where.error(f"a feature reads at most one feature view, this one reads {', '.join(feature_views)}")
    view = feature_views[0] if feature_views else None
    if view is not None and not set(views[view].entities) <= service_entities:
        raise where.error(f"view {view!r} is keyed by {', '.join(views[view].entities)}, not all in the service")
    kind = compiled.root.kind
    if kind == TS:
        raise where.error("a timestamp is not a model input; use a date part (hour(), day_of_week()...) or age_days()")
    if kind == STR and dtype != "BYTES":
        raise at.key("dtype").error(f"a text value needs dtype BYTES (or one_hot() it), not {dtype}")
    if kind != STR and dtype == "BYTES":
        raise at.key("dtype").error("dtype BYTES needs a text value")
    shape = _shape(raw.shape, at.key("shape"), compiled.root.size if kind == VEC else 0)
    has_default = raw.default is not None
    default = _default(raw.default, at.key("default"), kind, dtype, shape) if has_default else None
    return FeatureDef(
        name=raw.name,
        dtype=dtype,
        shape=shape,
        view=view,
        expression=compiled,
        default=default,
        has_default=has_default,
        allow_missing=raw.allow_missing,
        description=raw.description,
    )


def _shape(shape: list[int] | None, at: _At, size: int) -> tuple[int, ...]:
    expected = (size,) if size else ()
    if shape is not None and tuple(shape) != expected:
        raise at.error(f"the expression gives shape {list(expected)}, not {shape}")
    return expected


def _default(value: Any, at: _At, kind: str, dtype: str, shape: tuple[int, ...]) -> Any:
    if shape:
        if not isinstance(value, list) or len(value) != shape[0]:
            raise at.error(f"the default of a vector feature is a list of {shape[0]} numbers")
        items = [_default(v, at, NUM, dtype, ()) for v in value]
        return tuple(items)
    try:
        if dtype == "BYTES":
            canonical = coerce(DType("STRING"), value)
            return canonical
        canonical = coerce(DType("FP64"), value)
    except ValueError as exc:
        raise at.error(f"default: {exc}") from None
    if canonical is None:
        raise at.error("a default must be a finite value")
    cast = cast_scalar(canonical, NUM if kind != STR else STR, dtype)
    if cast is None:
        raise at.error(f"default {value!r} does not fit {dtype}")
    return cast


def _each(items: Mapping[str, _Section], build: Callable[[_Section], T]) -> dict[str, T]:
    """``build`` of every item; the problems of all of them together (one per item)."""
    built: dict[str, T] = {}
    problems = []
    for name, item in items.items():
        try:
            built[name] = build(item)
        except DefinitionError as exc:
            problems.append(str(exc))
    if problems:
        raise DefinitionError("\n".join(problems))
    return built


def load_definitions(root: str | Path, variables: Mapping[str, str] | None = None) -> Definitions:
    """Load and validate the definitions under ``root`` (a folder of YAML files, or one file).

    ``${NAME}`` in source options reads the environment, then ``variables`` (values the gateway
    provides, such as ``DATA_GATEWAY_STATE_DIR``), then the ``${NAME:-default}`` default. The
    shape of every file is checked first, and all its problems are reported together; then each
    section in turn (entities, sources, views, services), the first problem of each item of it.
    """
    root = Path(root)
    docs, problems, digest = _read_files(root)
    sections, shapes = _collect(docs, problems)
    if problems:
        raise DefinitionError("\n".join(problems))
    base_dir = root if root.is_dir() else root.parent
    project_section = sections["project"].get("project")
    project: _Project = project_section.model if project_section is not None else _Project()
    statistics = {name: (item.model.mean, item.model.std) for name, item in sections["statistics"].items()}
    entities = _each(sections["entities"], _entity)
    sources = _each(sections["sources"], lambda item: _source(item, shapes[item.name], base_dir, variables or {}))
    online = project.online_store
    if online is not None and online not in sources and project_section is not None:
        raise project_section.at.key("online_store").error(f"unknown source {online!r}")
    views = _each(sections["feature_views"], lambda item: _view(item, entities, sources, online))
    services = _each(sections["feature_services"], lambda item: _service(item, entities, views, statistics))
    return Definitions(
        version=project.version or f"sha-{digest}",
        project=project.name,
        root=root,
        entities=entities,
        sources=sources,
        views=views,
        services=services,
        statistics=statistics,
        files=tuple(doc.file for doc in docs),
    )
