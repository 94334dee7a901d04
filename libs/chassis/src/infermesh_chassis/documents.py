"""YAML documents validated by pydantic models, every problem named by file, line and field.

:func:`load_yaml` parses a YAML text into plain data and remembers the line of every mapping key
and sequence item (a duplicate key, a key that is not text, or a recursive alias is refused).
:meth:`Document.validate` runs a pydantic model over the data, or a part of it, and turns every
validation error into one line ``file:line: field.path: message``, the line being that of the
YAML node pydantic's ``loc`` points at (or of its nearest parent when the field is missing). All
the problems of one validation are reported together, in one :class:`DocumentError`.

:func:`proto_json_model` derives such a model from a protobuf message: the shape of its JSON form
(field names as written in the .proto or in lowerCamelCase, types, enum names, nested messages,
durations and timestamps as text), so a file of protobuf documents is checked, with lines, before
:func:`google.protobuf.json_format.ParseDict` reads it.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import ErrorDetails

__all__ = ["Document", "DocumentError", "Loc", "format_loc", "load_yaml", "proto_json_model"]

Loc = tuple[str | int, ...]
"""Where a value is in a document: mapping keys and sequence indexes from the top."""

M = TypeVar("M", bound=BaseModel)

_VALUE_ERROR = "Value error, "
_KEY = "[key]"
_SHOWN_CHARS = 60


class DocumentError(ValueError):
    """A document is not valid: one line per problem, each starting with ``file:line:``."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def format_loc(loc: Loc) -> str:
    """``("views", "v", "fields", 0)`` → ``views.v.fields[0]``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed YAML document: its data and the line of every key and item in it."""

    file: str
    data: Any
    lines: Mapping[Loc, int]

    def at(self, loc: Loc) -> Any:
        """The value at ``loc`` (which must exist)."""
        value = self.data
        for part in loc:
            value = value[part]
        return value

    def line(self, loc: Loc) -> int:
        """The line of the value at ``loc``, else of its nearest parent that is in the file."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return 1

    def problem(self, loc: Loc, message: str) -> str:
        """One line naming the file, the line and the field: ``file:line: field.path: message``."""
        path = format_loc(loc)
        return (
            f"{self.file}:{self.line(loc)}: {path}: {message}" if path else f"{self.file}:{self.line(loc)}: {message}"
        )

    def validate(self, model: type[M], loc: Loc = ()) -> M:
        """The value at ``loc`` validated by ``model``; :class:`DocumentError` with every problem otherwise."""
        try:
            return model.model_validate(self.at(loc))
        except ValidationError as exc:
            raise DocumentError(self.problems(exc, model, loc)) from None

    def problems(self, exc: ValidationError, model: type[BaseModel], loc: Loc = ()) -> list[str]:
        """One line per error of ``exc``, raised by ``model`` validating the value at ``loc``."""
        found = []
        for error in exc.errors(include_url=False):
            where = (*loc, *(part for part in error["loc"] if part != _KEY))
            found.append((self.line(where), self.problem(where, _message(error, model, where[len(loc) :]))))
        return [problem for _, problem in sorted(found, key=lambda item: item[0])]


def _message(error: ErrorDetails, model: type[BaseModel], loc: Loc) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        allowed = _keys_at(model, loc[:-1])
        return f"unknown key; expected one of {', '.join(allowed)}" if allowed else "unknown key"
    if kind == "model_type":
        message = "Input should be a mapping"
    if kind.endswith("_type"):
        shown = repr(error["input"])
        return f"{message}, not {shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 3] + '...'}"
    return message.removeprefix(_VALUE_ERROR)


def _keys_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model allows at ``loc`` (empty when that is not a model's own mapping)."""
    kind: Any = model
    for part in loc:
        kind = _unwrap(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = next((f for n, f in kind.model_fields.items() if part in _names_of(n, f)), None)
            if field is None:
                return []
            kind = field.annotation
        elif typing.get_origin(kind) in (dict, Mapping):
            kind = typing.get_args(kind)[1]
        elif typing.get_origin(kind) in (list, Sequence, tuple) and isinstance(part, int):
            kind = typing.get_args(kind)[0]
        else:
            return []
    kind = _unwrap(kind)
    if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
        return []
    return [field.alias or name for name, field in kind.model_fields.items()]


def _names_of(name: str, field: Any) -> set[str | None]:
    """Every key that sets the field: its name, its alias and its validation aliases."""
    names = {name, field.alias}
    if isinstance(field.validation_alias, AliasChoices):
        names.update(choice for choice in field.validation_alias.choices if isinstance(choice, str))
    return names


def _unwrap(kind: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` → ``X``."""
    while True:
        if typing.get_origin(kind) is typing.Annotated:
            kind = typing.get_args(kind)[0]
        elif typing.get_origin(kind) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(kind) if a is not type(None)]
            if len(members) != 1:
                return kind
            kind = members[0]
        else:
            return kind


def load_yaml(text: str, file: str) -> Document:
    """Parse one YAML document (:class:`DocumentError` naming the file and line when it is not valid)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        builder = _Builder(loader, file)
        data = None if node is None else builder.build(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise DocumentError([f"{file}:{mark.line + 1 if mark else 1}: not valid YAML: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise DocumentError([f"{file}:1: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    return Document(file, data, builder.lines)


class _Builder:
    """Plain data from YAML nodes, recording the line of every key and item on the way."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[Loc, int] = {(): 1}
        self._open: set[int] = set()

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        """The value of ``node``, found at ``loc``."""
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return self.loader.construct_object(node, deep=True)
        if id(node) in self._open:
            raise self._error(node, f"{format_loc(loc)}: an alias refers to itself")
        self._open.add(id(node))
        value = self._mapping(node, loc) if isinstance(node, yaml.MappingNode) else self._sequence(node, loc)
        self._open.discard(id(node))
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        self.loader.flatten_mapping(node)
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                raise self._error(key_node, "keys must be text")
            key = str(key)
            if key in mapping:
                raise self._error(key_node, f"duplicate key {key!r}")
            self.lines[(*loc, key)] = key_node.start_mark.line + 1
            mapping[key] = self.build(value_node, (*loc, key))
        return mapping

    def _sequence(self, node: yaml.SequenceNode, loc: Loc) -> list[Any]:
        items = []
        for index, child in enumerate(node.value):
            self.lines[(*loc, index)] = child.start_mark.line + 1
            items.append(self.build(child, (*loc, index)))
        return items

    def _error(self, node: yaml.Node, message: str) -> DocumentError:
        return DocumentError([f"{self.file}:{node.start_mark.line + 1}: {message}"])


# ------------------------------------------------------------------------------------------------
# Models of protobuf messages in their JSON form
# ------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^-?\d+(\.\d{1,9})?s$")
_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_FLOAT_WORDS = ("NaN", "Infinity", "-Infinity")
_WRAPPERS = {
    "google.protobuf.DoubleValue": FieldDescriptor.CPPTYPE_DOUBLE,
    "google.protobuf.FloatValue": FieldDescriptor.CPPTYPE_FLOAT,
    "google.protobuf.Int64Value": FieldDescriptor.CPPTYPE_INT64,
    "google.protobuf.UInt64Value": FieldDescriptor.CPPTYPE_UINT64,
    "google.protobuf.Int32Value": FieldDescriptor.CPPTYPE_INT32,
    "google.protobuf.UInt32Value": FieldDescriptor.CPPTYPE_UINT32,
    "google.protobuf.BoolValue": FieldDescriptor.CPPTYPE_BOOL,
    "google.protobuf.StringValue": FieldDescriptor.CPPTYPE_STRING,
    "google.protobuf.BytesValue": FieldDescriptor.CPPTYPE_STRING,
}
_PROTO_MODELS: dict[str, type[BaseModel]] = {}


class _ProtoJson(BaseModel):
    """A message's JSON form: known fields only, strict types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, protected_namespaces=())


def proto_json_model(descriptor: Descriptor) -> type[BaseModel]:
    """A pydantic model of the JSON form of the message ``descriptor`` describes (cached per message)."""
    model = _PROTO_MODELS.get(descriptor.full_name)
    if model is None:
        model = _build_proto_model(descriptor, set())
    return model


def _build_proto_model(descriptor: Descriptor, building: set[str]) -> type[BaseModel]:
    building.add(descriptor.full_name)
    fields: dict[str, Any] = {}
    for field in descriptor.fields:
        aliases = AliasChoices(field.name, field.json_name) if field.json_name != field.name else field.name
        fields[f"f_{field.name}"] = (
            _proto_field_type(field, building) | None,
            Field(default=None, alias=field.name, validation_alias=aliases),
        )
    oneofs = [[(f.name, f.json_name) for f in oneof.fields] for oneof in descriptor.oneofs if len(oneof.fields) > 1]
    validators = {"_one_of_each_oneof": _oneof_validator(oneofs)} if oneofs else {}
    model = create_model(  # type: ignore[call-overload]
        descriptor.name,
        __base__=_ProtoJson,
        __doc__=f"The JSON form of {descriptor.full_name}.",
        __validators__=validators,
        **fields,
    )
    building.discard(descriptor.full_name)
    _PROTO_MODELS[descriptor.full_name] = model
    return model


def _oneof_validator(oneofs: list[list[tuple[str, str]]]) -> Any:
    """Refuses a message that sets two fields of one oneof (each field by its name or JSON name)."""

    def check(value: Any) -> Any:
        if isinstance(value, dict):
            for fields in oneofs:
                given = [
                    name
                    for name, json_name in fields
                    if {name, json_name} & {k for k, v in value.items() if v is not None}
                ]
                if len(given) > 1:
                    raise ValueError(f"give only one of {', '.join(n for n, _ in fields)}, not {' and '.join(given)}")
        return value

    return model_validator(mode="before")(check)


def _proto_field_type(field: FieldDescriptor, building: set[str]) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return dict[str, _proto_value_type(field.message_type.fields_by_name["value"], building)]  # type: ignore[misc]
    kind = _proto_value_type(field, building)
    return list[kind] if field.label == FieldDescriptor.LABEL_REPEATED else kind  # type: ignore[valid-type]


def _proto_value_type(field: FieldDescriptor, building: set[str]) -> Any:
    message = field.message_type
    if message is not None:
        name = message.full_name
        if name == "google.protobuf.Duration":
            return Annotated[str, PlainValidator(_duration_text)]
        if name == "google.protobuf.Timestamp":
            return Annotated[str, PlainValidator(_timestamp_text)]
        if name in _WRAPPERS:
            return _scalar_type(_WRAPPERS[name], None)
        if name in ("google.protobuf.Struct", "google.protobuf.Any", "google.protobuf.Empty"):
            return dict[str, Any]
        if name == "google.protobuf.ListValue":
            return list[Any]
        if name == "google.protobuf.Value":
            return Any
        if name == "google.protobuf.FieldMask":
            return str
        if name in building:  # a message that holds itself: checked by the protobuf parser only
            return dict[str, Any]
        return _PROTO_MODELS.get(name) or _build_proto_model(message, building)
    return _scalar_type(field.cpp_type, field.enum_type)


def _scalar_type(cpp_type: int, enum: Any) -> Any:
    if cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return Annotated[str | int, PlainValidator(_enum_check(enum))]
    if cpp_type in _INT_RANGES:
        return Annotated[int, PlainValidator(_int_check(*_INT_RANGES[cpp_type]))]
    if cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return Annotated[float, PlainValidator(_float_value)]
    if cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return bool
    return str


def _enum_check(enum: Any) -> Callable[[Any], Any]:
    names = [value.name for value in enum.values]
    numbers = {value.number for value in enum.values}

    def check(value: Any) -> Any:
        if (isinstance(value, str) and value in names) or (type(value) is int and value in numbers):
            return value
        raise ValueError(f"expected one of {', '.join(names)}, not {value!r}")

    return check


def _int_check(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        number = value
        digits = isinstance(value, str) and value.lstrip("-").isdigit() and value.isascii()
        if digits or (isinstance(value, float) and value.is_integer()):  # as protobuf's JSON parser reads them
            number = int(value)
        if type(number) is not int:
            raise ValueError(f"expected an integer, not {value!r}")
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range [{low}, {high}]")
        return number

    return check


def _float_value(value: Any) -> float:
    if isinstance(value, str) and value in _FLOAT_WORDS:
        return float(value.replace("Infinity", "inf"))
    if type(value) not in (int, float):
        raise ValueError(f"expected a number, not {value!r}")
    return float(value)


def _duration_text(value: Any) -> str:
    if not isinstance(value, str) or not _DURATION.match(value):
        raise ValueError(f"a duration is text such as '0.25s' or '3600s', not {value!r}")
    return value


def _timestamp_text(value: Any) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError
        Timestamp().FromJsonString(value)
    except ValueError:
        raise ValueError(f"a time is RFC 3339 text such as '2026-12-01T00:00:00Z', not {value!r}") from None
    return value
