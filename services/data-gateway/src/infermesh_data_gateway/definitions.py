"""Feature definitions: YAML files → validated, immutable, versioned definitions.

A definitions folder holds ``*.yaml`` files; each may declare any of the top-level sections
``project``, ``statistics``, ``entities``, ``sources``, ``feature_views`` and
``feature_services`` (a name declared twice, in one file or two, is an error naming both
places). Every error names the file and line of the offending value. The version of a set
of definitions is ``project.version`` when declared, otherwise a digest of the files'
contents; a version, once loaded, never changes meaning. See the service README for the format.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


class DefinitionError(ValueError):
    """The definitions are not valid; the message starts with ``file:line:``."""


# ------------------------------------------------------------------------------------------------
# YAML with line numbers
# ------------------------------------------------------------------------------------------------


class _Map(dict[str, Any]):
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int
    key_lines: dict[str, int]


class _List(list[Any]):
    """A YAML sequence that remembers the line of itself and of each item."""

    line: int
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> _Map:  # type: ignore[override]
        result = _Map()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                raise DefinitionError(f"{node.start_mark.name}:{key_node.start_mark.line + 1}: keys must be text")
            key = str(key)
            if key in result:
                raise DefinitionError(f"{node.start_mark.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> _List:  # type: ignore[override]
        result = _List(self.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _Loader.construct_sequence)


@dataclass(frozen=True, slots=True)
class _At:
    """Where a value is: its file, line and dotted path, for error messages."""

    file: str
    line: int
    path: str

    def error(self, message: str) -> DefinitionError:
        return DefinitionError(f"{self.file}:{self.line}: {self.path}: {message}")

    def key(self, mapping: Any, key: str | int) -> _At:
        line = self.line
        if isinstance(mapping, _Map):
            line = mapping.key_lines.get(str(key), mapping.line)
        elif isinstance(mapping, _List) and isinstance(key, int) and key < len(mapping.item_lines):
            line = mapping.item_lines[key]
        sep = f"[{key}]" if isinstance(key, int) else f".{key}"
        return _At(self.file, line, f"{self.path}{sep}" if self.path else str(key))


def _mapping(value: Any, at: _At, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise at.error(f"expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise at.key(value, key).error(f"unknown key; expected one of {', '.join(allowed)}")
    return value


def _name(value: Any, at: _At) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise at.error(f"{value!r} is not a valid name (letters, digits, underscores; not starting with a digit)")
    return value


def _text(mapping: Mapping[str, Any], key: str, at: _At, default: str = "") -> str:
    value = mapping.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str | int | float):
        raise at.key(mapping, key).error("expected text")
    return str(value)


def _names(value: Any, at: _At) -> tuple[str, ...]:
    if isinstance(value, str):
        return (_name(value, at),)
    if not isinstance(value, list):
        raise at.error("expected a name or a list of names")
    return tuple(_name(item, at.key(value, i)) for i, item in enumerate(value))


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
    """One declared item: its raw mapping and where it is."""

    name: str
    raw: Any
    at: _At


def _read_files(root: Path) -> tuple[list[tuple[str, Any]], str]:
    if root.is_file():
        paths = [root]
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    else:
        raise DefinitionError(f"{root}: no such definitions file or folder")
    if not paths:
        raise DefinitionError(f"{root}: no *.yaml definition files")
    digest = hashlib.sha256()
    docs = []
    for path in paths:
        text = path.read_text()
        digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode() + b"\0" + text.encode())
        loader = _Loader(text)
        loader.name = str(path)
        try:
            doc = loader.get_single_data()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else 1
            raise DefinitionError(f"{path}:{line}: not valid YAML: {exc.problem}") from None
        finally:
            loader.dispose()
        docs.append((str(path), doc))
    return docs, digest.hexdigest()[:12]


def _collect(docs: list[tuple[str, Any]]) -> dict[str, dict[str, _Section]]:
    sections: dict[str, dict[str, _Section]] = {s: {} for s in _SECTIONS}
    for path, doc in docs:
        if doc is None:
            continue
        top = _At(path, 1, "")
        _mapping(doc, top, _SECTIONS)
        for section, items in doc.items():
            at = top.key(doc, section)
            if section == "project":
                if "project" in sections["project"]:
                    first = sections["project"]["project"].at
                    raise at.error(f"declared twice (first at {first.file}:{first.line})")
                sections["project"]["project"] = _Section("project", items, at)
                continue
            for name, raw in _mapping(items or {}, at).items():
                item_at = at.key(items, name)
                _name(name, item_at)
                if name in sections[section]:
                    first = sections[section][name].at
                    raise item_at.error(f"declared twice (first at {first.file}:{first.line})")
                sections[section][name] = _Section(name, raw, item_at)
    return sections


def _entity(item: _Section) -> EntityDef:
    raw = _mapping(item.raw, item.at, ("keys", "description"))
    if "keys" not in raw:
        raise item.at.error("keys is required (key name → dtype, e.g. {customer_id: INT64})")
    keys_at = item.at.key(raw, "keys")
    keys = []
    for name, dtype in _mapping(raw["keys"], keys_at).items():
        at = keys_at.key(raw["keys"], name)
        _name(name, at)
        try:
            parsed = DType.field(str(dtype))
        except ValueError as exc:
            raise at.error(str(exc)) from None
        if parsed.name not in KEY_DTYPES:
            raise at.error(f"a key is INT64 or STRING, not {dtype}")
        keys.append(KeyDef(name, parsed))
    if not keys:
        raise keys_at.error("an entity needs at least one key")
    return EntityDef(item.name, tuple(keys), _text(raw, "description", item.at))


_SOURCE_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required options, optional options)
    "redis": (("url",), ("key_prefix",)),
    "postgres": (("dsn",), ()),
    "sqlite": (("path",), ()),
    "file": (("path",), ("format",)),
    "http": (("url",), ("headers",)),
    "request": ((), ()),
}
_COMMON_SOURCE_KEYS = ("kind", "timeout", "pool_size", "health_interval", "description")


def _duration(raw: Mapping[str, Any], key: str, at: _At, default: float | None) -> float | None:
    if key not in raw or raw[key] is None:
        return default
    try:
        return parse_duration(raw[key])
    except ValueError as exc:
        raise at.key(raw, key).error(str(exc)) from None


def _source(item: _Section, base_dir: Path, variables: Mapping[str, str]) -> SourceDef:
    raw = _mapping(item.raw, item.at)
    kind = raw.get("kind")
    if kind not in SOURCE_KINDS:
        raise item.at.key(raw, "kind").error(f"kind must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}")
    required, optional = _SOURCE_OPTIONS[kind]
    _mapping(raw, item.at, (*_COMMON_SOURCE_KEYS, *required, *optional))
    for key in required:
        if not raw.get(key):
            raise item.at.error(f"a {kind} source needs {key}")
    pool = raw.get("pool_size", 8)
    if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
        raise item.at.key(raw, "pool_size").error("pool_size must be a positive integer")
    options = {
        k: _expand_env(v, item.at.key(raw, k), variables) for k, v in raw.items() if k not in _COMMON_SOURCE_KEYS
    }
    if kind == "file" and options.get("format", "parquet") not in ("parquet", "csv"):
        raise item.at.key(raw, "format").error("format is parquet or csv")
    return SourceDef(
        name=item.name,
        kind=kind,
        options=options,
        timeout_s=_duration(raw, "timeout", item.at, 0.5) or 0.5,
        pool_size=pool,
        health_interval_s=_duration(raw, "health_interval", item.at, 2.0) or 2.0,
        base_dir=base_dir,
    )


def _entity_keys(
    raw: Mapping[str, Any], at: _At, entities: Mapping[str, EntityDef]
) -> tuple[tuple[str, ...], list[KeyDef]]:
    """The ``entities`` a view or a service names, and their key columns in order."""
    names = _names(raw["entities"], at.key(raw, "entities"))
    keys: list[KeyDef] = []
    for index, name in enumerate(names):
        if name not in entities:
            raise at.key(raw, "entities").key(raw["entities"], index).error(f"unknown entity {name!r}")
        keys.extend(entities[name].keys)
    return names, keys


_VIEW_KEYS = (
    "entities", "fields", "ttl", "owner", "description", "source", "fallbacks", "routes", "offline", "online_store",
    "timestamp_field", "bindings", "cache", "unavailable",
)  # fmt: skip


def _view(
    item: _Section, entities: Mapping[str, EntityDef], sources: Mapping[str, SourceDef], online: str | None
) -> ViewDef:
    raw = _mapping(item.raw, item.at, _VIEW_KEYS)
    at = item.at

    def known_source(name: Any, where: _At) -> str:
        _name(name, where)
        if name not in sources:
            raise where.error(f"unknown source {name!r} (declared: {', '.join(sorted(sources)) or 'none'})")
        return str(name)

    for key in ("entities", "fields", "source"):
        if key not in raw:
            raise at.error(f"{key} is required")
    view_entities, keys = _entity_keys(raw, at, entities)
    fields = _fields(raw["fields"], at.key(raw, "fields"), keys)
    primary = known_source(raw["source"], at.key(raw, "source"))
    fallbacks = _names(raw.get("fallbacks", []), at.key(raw, "fallbacks"))
    chain = (primary, *(known_source(f, at.key(raw, "fallbacks")) for f in fallbacks))
    if len(set(chain)) != len(chain):
        raise at.key(raw, "fallbacks").error("a source appears twice in the chain")
    routes = _routes(raw.get("routes", []), at.key(raw, "routes"), keys, known_source)
    bindings: dict[str, Mapping[str, Any]] = {}
    bindings_raw = _mapping(raw.get("bindings", {}) or {}, at.key(raw, "bindings"))
    for source, options in bindings_raw.items():
        where = at.key(raw, "bindings").key(bindings_raw, source)
        known_source(source, where)
        bindings[source] = _binding(options, where, sources[source].kind, fields)
    offline = raw.get("offline")
    if offline is not None:
        offline = known_source(offline, at.key(raw, "offline"))
        if sources[offline].kind in ("request", "http"):
            raise at.key(raw, "offline").error(f"a {sources[offline].kind} source cannot be read in batch")
    else:
        offline = next((s for s in chain if sources[s].kind in ("postgres", "sqlite", "file")), None)
    store = raw.get("online_store", online)
    if store is not None:
        store = known_source(store, at.key(raw, "online_store") if "online_store" in raw else at)
        if sources[store].kind not in ("redis", "postgres", "sqlite"):
            raise at.error(f"online store {store!r} must be a redis, postgres or sqlite source")
    ttl = _duration(raw, "ttl", at, None)
    cache_raw = _mapping(raw.get("cache", {}) or {}, at.key(raw, "cache"), ("ttl", "max_entries"))
    cache_ttl = _duration(cache_raw, "ttl", at.key(raw, "cache"), None)
    max_entries = cache_raw.get("max_entries", 100_000)
    if not isinstance(max_entries, int) or max_entries < 1:
        raise at.key(raw, "cache").error("max_entries must be a positive integer")
    unavailable = raw.get("unavailable", "fail")
    if unavailable not in ("fail", "default"):
        raise at.key(raw, "unavailable").error("unavailable is 'fail' (UNAVAILABLE) or 'default' (serve defaults)")
    timestamp = _name(raw.get("timestamp_field", "event_time"), at.key(raw, "timestamp_field"))
    return ViewDef(
        name=item.name,
        entities=view_entities,
        keys=tuple(keys),
        fields=fields,
        ttl_s=ttl,
        owner=_text(raw, "owner", at),
        description=_text(raw, "description", at),
        chain=chain,
        routes=routes,
        offline_source=offline,
        online_store=store,
        timestamp_field=timestamp,
        bindings=bindings,
        cache_ttl_s=cache_ttl,
        cache_max_entries=max_entries,
        defaults_when_unavailable=unavailable == "default",
    )


def _fields(raw: Any, at: _At, keys: list[KeyDef]) -> dict[str, DType]:
    fields: dict[str, DType] = {}
    for name, dtype in _mapping(raw, at).items():
        where = at.key(raw, name)
        _name(name, where)
        try:
            fields[name] = DType.field(str(dtype))
        except ValueError as exc:
            raise where.error(str(exc)) from None
    if not fields:
        raise at.error("a feature view needs at least one field")
    clash = {k.name for k in keys} & set(fields)
    if clash:
        raise at.error(f"{', '.join(sorted(clash))} is an entity key, not a field")
    return fields


_BINDING_KEYS = {
    "redis": ("key_prefix",),
    "postgres": ("table", "columns", "timestamp_format"),
    "sqlite": ("table", "columns", "timestamp_format"),
    "file": ("path", "columns"),
    "http": ("path", "fields_key", "timestamp_key"),
    "request": ("columns",),
}


def _binding(raw: Any, at: _At, kind: str, fields: Mapping[str, DType]) -> Mapping[str, Any]:
    options = dict(_mapping(raw, at, _BINDING_KEYS[kind]))
    if "table" in options:
        _name(options["table"], at.key(raw, "table"))
    if "timestamp_format" in options and options["timestamp_format"] not in ("iso", "epoch_s", "native"):
        raise at.key(raw, "timestamp_format").error("timestamp_format is iso, epoch_s or native")
    columns = _mapping(options.get("columns", {}) or {}, at.key(raw, "columns"))
    for name, column in columns.items():
        where = at.key(raw, "columns").key(columns, name)
        if name not in fields:
            raise where.error(f"{name!r} is not a field of the view")
        _name(column, where)
    return options


def _routes(raw: Any, at: _At, keys: list[KeyDef], known_source: Any) -> tuple[Route, ...]:
    if not isinstance(raw, list):
        raise at.error("routes is a list of {when: ..., source: ..., fallbacks: [...]}")
    key_names = {k.name for k in keys}
    routes = []
    for index, item in enumerate(raw):
        where = at.key(raw, index)
        rule = _mapping(item, where, ("when", "source", "fallbacks"))
        if "source" not in rule:
            raise where.error("a route needs a source")
        chain = (
            known_source(rule["source"], where.key(rule, "source")),
            *(known_source(f, where.key(rule, "fallbacks")) for f in _names(rule.get("fallbacks", []), where)),
        )
        when_at = where.key(rule, "when")
        when = _mapping(rule.get("when", {}) or {}, when_at)
        if not when:
            raise when_at.error("a route needs at least one condition (routing attributes or keys)")
        attributes: dict[str, str] = {}
        patterns: dict[str, re.Pattern[str]] = {}
        for name, pattern in when.items():
            cond_at = when_at.key(when, name)
            if name == "keys":
                for key, regex in _mapping(pattern, cond_at).items():
                    if key not in key_names:
                        raise cond_at.key(pattern, key).error(f"{key!r} is not a key of the view's entities")
                    try:
                        patterns[key] = re.compile(str(regex))
                    except re.error as exc:
                        raise cond_at.key(pattern, key).error(f"not a regular expression: {exc}") from None
            else:
                attributes[name] = str(pattern)
        routes.append(Route(chain, attributes, patterns))
    return tuple(routes)


_FEATURE_KEYS = ("name", "dtype", "shape", "expr", "field", "default", "allow_missing", "description")


def _service(
    item: _Section,
    entities: Mapping[str, EntityDef],
    views: Mapping[str, ViewDef],
    statistics: Mapping[str, tuple[float, float]],
) -> ServiceDef:
    raw = _mapping(item.raw, item.at, ("description", "owner", "entities", "request_values", "features"))
    at = item.at
    for key in ("entities", "features"):
        if key not in raw:
            raise at.error(f"{key} is required")
    service_entities, keys = _entity_keys(raw, at, entities)
    request_values = _request_values(raw.get("request_values", {}) or {}, at.key(raw, "request_values"))
    by_name = {r.name: r for r in request_values}
    features_raw = raw["features"]
    features_at = at.key(raw, "features")
    if not isinstance(features_raw, list) or not features_raw:
        raise features_at.error("features is a non-empty list")
    features: list[FeatureDef] = []
    used_views: list[str] = []
    for index, feature_raw in enumerate(features_raw):
        feature = _feature(
            feature_raw,
            features_at.key(features_raw, index),
            views=views,
            request_values=by_name,
            statistics=statistics,
            service_entities=set(service_entities),
        )
        if any(f.name == feature.name for f in features):
            raise features_at.key(features_raw, index).error(f"feature {feature.name!r} is declared twice")
        features.append(feature)
        if feature.view is not None and feature.view not in used_views:
            used_views.append(feature.view)
    return ServiceDef(
        name=item.name,
        description=_text(raw, "description", at),
        owner=_text(raw, "owner", at),
        entities=service_entities,
        keys=tuple(keys),
        request_values=request_values,
        features=tuple(features),
        views=tuple(used_views),
        file=item.at.file,
    )


def _request_values(raw: Any, at: _At) -> tuple[RequestValueDef, ...]:
    values = []
    for name, given in _mapping(raw, at).items():
        where = at.key(raw, name)
        _name(name, where)
        spec = _mapping({"dtype": given} if isinstance(given, str) else given, where, ("dtype", "required"))
        try:
            dtype = DType.field(str(spec.get("dtype", "")))
        except ValueError as exc:
            raise where.error(str(exc)) from None
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise where.key(spec, "required").error("required is true or false")
        values.append(RequestValueDef(name, dtype, required))
    return tuple(values)


def _feature(
    raw: Any,
    at: _At,
    *,
    views: Mapping[str, ViewDef],
    request_values: Mapping[str, RequestValueDef],
    statistics: Mapping[str, tuple[float, float]],
    service_entities: set[str],
) -> FeatureDef:
    raw = _mapping(raw, at, _FEATURE_KEYS)
    name = _name(raw.get("name"), at.key(raw, "name"))
    at = _At(at.file, at.line, f"{at.path}({name})")
    if ("expr" in raw) == ("field" in raw):
        raise at.error("give exactly one of expr (an expression) or field (<view>.<field>)")
    text = str(raw.get("expr", raw.get("field")))
    dtype = str(raw.get("dtype", "FP32")).upper()
    if dtype not in FEATURE_DTYPES:
        raise at.key(raw, "dtype").error(f"dtype must be one of {', '.join(sorted(FEATURE_DTYPES))}, not {dtype!r}")

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

    where = at.key(raw, "expr" if "expr" in raw else "field")
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
        raise at.key(raw, "dtype").error(f"a text value needs dtype BYTES (or one_hot() it), not {dtype}")
    if kind != STR and dtype == "BYTES":
        raise at.key(raw, "dtype").error("dtype BYTES needs a text value")
    shape = _shape(raw, at, compiled.root.size if kind == VEC else 0)
    default, has_default = None, "default" in raw and raw["default"] is not None
    if has_default:
        default = _default(raw["default"], at.key(raw, "default"), kind, dtype, shape)
    allow_missing = raw.get("allow_missing", False)
    if not isinstance(allow_missing, bool):
        raise at.key(raw, "allow_missing").error("allow_missing is true or false")
    return FeatureDef(
        name=name,
        dtype=dtype,
        shape=shape,
        view=view,
        expression=compiled,
        default=default,
        has_default=has_default,
        allow_missing=allow_missing,
        description=_text(raw, "description", at),
    )


def _shape(raw: Mapping[str, Any], at: _At, size: int) -> tuple[int, ...]:
    expected = (size,) if size else ()
    if "shape" not in raw:
        return expected
    shape = raw["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise at.key(raw, "shape").error("shape is a list of positive integers")
    if tuple(shape) != expected:
        raise at.key(raw, "shape").error(f"the expression gives shape {list(expected)}, not {shape}")
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


def _statistics(item: _Section) -> tuple[float, float]:
    raw = _mapping(item.raw, item.at, ("mean", "std", "computed_from", "computed_at"))
    try:
        mean, std = float(raw["mean"]), float(raw["std"])
    except (KeyError, TypeError, ValueError):
        raise item.at.error("statistics need numeric mean and std") from None
    if not std > 0:
        raise item.at.key(raw, "std").error("std must be > 0")
    return mean, std


def load_definitions(root: str | Path, variables: Mapping[str, str] | None = None) -> Definitions:
    """Load and validate the definitions under ``root`` (a folder of YAML files, or one file).

    ``${NAME}`` in source options reads the environment, then ``variables`` (values the gateway
    provides, such as ``DATA_GATEWAY_STATE_DIR``), then the ``${NAME:-default}`` default.
    """
    root = Path(root)
    docs, digest = _read_files(root)
    sections = _collect(docs)
    base_dir = root if root.is_dir() else root.parent
    project_raw: dict[str, Any] = {}
    project_at = _At(str(root), 1, "project")
    if "project" in sections["project"]:
        section = sections["project"]["project"]
        project_raw = _mapping(section.raw or {}, section.at, ("name", "version", "online_store", "description"))
        project_at = section.at
    statistics = {name: _statistics(item) for name, item in sections["statistics"].items()}
    entities = {name: _entity(item) for name, item in sections["entities"].items()}
    sources = {name: _source(item, base_dir, variables or {}) for name, item in sections["sources"].items()}
    online = project_raw.get("online_store")
    if online is not None and online not in sources:
        raise project_at.key(project_raw, "online_store").error(f"unknown source {online!r}")
    views = {name: _view(item, entities, sources, online) for name, item in sections["feature_views"].items()}
    services = {
        name: _service(item, entities, views, statistics) for name, item in sections["feature_services"].items()
    }
    version = _text(project_raw, "version", project_at) or f"sha-{digest}"
    return Definitions(
        version=version,
        project=_text(project_raw, "name", project_at, "default"),
        root=root,
        entities=entities,
        sources=sources,
        views=views,
        services=services,
        statistics=statistics,
        files=tuple(path for path, _ in docs),
    )
