"""YAML documents validated by pydantic models, every problem named by file, line and field.

:func:`load_yaml` parses a YAML text into plain data and remembers the line of every mapping key
and sequence item (a duplicate key, a key that is not text, or a recursive alias is refused).
:meth:`Document.validate` runs a pydantic model over the data, or a part of it, and turns every
validation error into one line ``file:line: field.path: message``, the line being that of the
YAML node pydantic's ``loc`` points at (or of its nearest parent when the field is missing). All
the problems of one validation are reported together, in one :class:`DocumentError`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

__all__ = ["Document", "DocumentError", "Loc", "format_loc", "load_yaml"]

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
            field = next((f for n, f in kind.model_fields.items() if part in (n, f.alias)), None)
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
