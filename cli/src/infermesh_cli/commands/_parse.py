"""Command-line text and input files into Python values and protobuf messages.

Every function raises :class:`UsageError` with a message naming the option or file and what
was expected, so a typo ends as one clear line with exit code 2.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from pydantic import BaseModel

from infermesh.common.v1 import common_pb2
from infermesh_chassis.documents import Document, DocumentError, Loc, load_yaml, proto_json_model
from infermesh_cli.commands._errors import UsageError

__all__ = [
    "guess_value",
    "load_document",
    "parse_duration",
    "parse_message",
    "parse_pairs",
    "parse_time",
    "read_document",
    "read_table",
    "time_range",
    "to_duration",
    "to_timestamp",
    "value_to_proto",
    "write_table",
]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|µs|ms|s|m|h|d|w)")
_DURATION_CHAIN = re.compile(r"(?:\d+(?:\.\d+)?(?:us|µs|ms|s|m|h|d|w))+")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str, what: str = "duration", *, unit_required: bool = False) -> float:
    """Seconds of ``30``, ``500us``, ``250ms``, ``30s``, ``5m``, ``1h30m``, ``7d``.

    ``unit_required`` refuses a bare number, for options where seconds are an unlikely unit.
    """
    text = text.strip()
    try:
        bare = float(text)
    except ValueError:
        pass
    else:
        if unit_required:
            raise UsageError(f"{what}: give a unit: {text}us, {text}ms or {text}s (a bare number is ambiguous here)")
        return bare
    if not _DURATION_CHAIN.fullmatch(text):
        raise UsageError(f"{what}: {text!r} is not a duration (e.g. 30s, 250ms, 500us, 5m, 1h30m, 7d)")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))


def to_duration(seconds: float) -> duration_pb2.Duration:
    """Seconds as a protobuf Duration."""
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


def parse_time(text: str, what: str = "time") -> datetime:
    """A point in time: ``now``, ``1h`` or ``-1h`` (that long ago), or ISO 8601 (UTC when no offset is given)."""
    text = text.strip()
    if text == "now":
        return datetime.now(UTC)
    ago = text.removeprefix("-")
    if _DURATION_CHAIN.fullmatch(ago):
        return datetime.now(UTC) - timedelta(seconds=parse_duration(ago, what))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{what}: {text!r} is not a time (now, 1h for an hour ago, or ISO 8601 such as 2026-11-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def to_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a protobuf Timestamp."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def time_range(since: str | None, until: str | None) -> common_pb2.TimeRange | None:
    """``[since, until)`` as a TimeRange; None when neither is given (the service's default window)."""
    if since is None and until is None:
        return None
    window = common_pb2.TimeRange()
    start = parse_time(since, "--since") if since is not None else None
    end = parse_time(until, "--until") if until is not None else None
    if start is not None and end is not None and start >= end:
        raise UsageError(f"--since {since} is not before --until {until}")
    if start is not None:
        window.start_time.CopyFrom(to_timestamp(start))
    if end is not None:
        window.end_time.CopyFrom(to_timestamp(end))
    return window


def parse_pairs(items: Iterable[str] | None, what: str) -> dict[str, str]:
    """``key=value`` items (each may hold several, comma-separated) as a dict."""
    pairs: dict[str, str] = {}
    for item in items or ():
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"{what}: {part!r} is not KEY=VALUE")
            pairs[key.strip()] = value.strip()
    return pairs


def guess_value(text: str) -> Any:
    """A command-line value typed by its look: JSON (numbers, true/false, null, lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def value_to_proto(value: Any, what: str = "value") -> common_pb2.Value:
    """A Python scalar or list as the contract's typed Value."""
    out = common_pb2.Value()
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int64_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        out.int64_list.values.extend(value)
    elif isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        out.double_list.values.extend(float(v) for v in value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        out.string_list.values.extend(value)
    else:
        raise UsageError(f"{what}: {value!r} is not a number, text, true/false, null or a flat list of one kind")
    return out


def read_document(path: Path) -> Document:
    """A YAML or JSON file (JSON is YAML), parsed, with the line of every key and item in it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    try:
        return load_yaml(text, str(path))
    except DocumentError as exc:
        raise UsageError(str(exc)) from None


def load_document(path: Path) -> Any:
    """A YAML or JSON file (JSON is YAML), parsed into plain values."""
    return read_document(path).data


@functools.cache
def _shape(descriptor: Descriptor) -> type[BaseModel]:
    return proto_json_model(descriptor)


def parse_message(document: Document, message: Message, loc: Loc = ()) -> Message:
    """The protobuf message at ``loc`` of ``document``, from its JSON form (snake_case or camelCase
    names, enums by name): its shape is checked first (unknown keys, types, one field per oneof), every
    problem named by the file, the line and the field."""
    try:
        document.validate(_shape(message.DESCRIPTOR), loc)
    except DocumentError as exc:
        raise UsageError("; ".join(exc.problems)) from None
    try:
        return json_format.ParseDict(document.at(loc), message)
    except (json_format.ParseError, TypeError, AttributeError) as exc:
        raise UsageError(document.problem(loc, str(exc))) from None


def read_table(path: Path) -> pa.Table:
    """A Parquet, CSV or JSON-lines file (by extension) as an Arrow table."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pa_csv.read_csv(path)
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pa_json.read_json(path)
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"{path}: cannot be read: {' '.join(str(exc).split())}") from None
    raise UsageError(f"{path}: give a .parquet, .csv or .jsonl file")


def _flat(table: pa.Table) -> pa.Table:
    """List columns (vector features) as JSON text, which CSV can hold."""
    for index, column in enumerate(table.columns):
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            text = pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], type=pa.string())
            table = table.set_column(index, table.schema.field(index).name, text)
    return table


def write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` as Parquet or CSV (by extension)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise UsageError(f"{path}: the output must end in .parquet or .csv")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            pa_csv.write_csv(_flat(table), path)
        else:
            pq.write_table(table, path)
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"{path}: cannot be written: {' '.join(str(exc).split())}") from None
