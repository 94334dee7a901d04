"""Conditions on a request's attributes, compiled once when a config is applied.

A condition reads ``PredictRequest.attributes[attribute]``, or a caller-sent feature with
``feature.<name>``, and compares it with its operands (see ``ConditionOperator`` in
biz_center.proto). A condition on an attribute the request does not carry never holds (only
``EXISTS`` can tell); numeric and version comparisons on a value that does not parse do not hold
either. Regular expressions must match the whole value. A rule holds when all its conditions do.

Regular expressions are RE2 (linear time in the value, whatever the pattern; no backreferences or
lookaround: a pattern RE2 cannot compile is refused with INVALID_ARGUMENT), at most
``MAX_PATTERN_CHARS`` long. A condition never reads more than ``MAX_VALUE_CHARS`` of a caller's
value: a longer value refuses the request with INVALID_ARGUMENT, so no caller can make the event
loop match or parse without bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import re2

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2
from infermesh_chassis.errors import InvalidArgument

__all__ = [
    "MAX_PATTERN_CHARS",
    "MAX_VALUE_CHARS",
    "Facts",
    "Predicate",
    "Rule",
    "compile_conditions",
    "compile_rule",
    "parse_version",
    "value_text",
]

FEATURE_PREFIX = "feature."
MAX_PATTERN_CHARS = 1024
"""Longest regular expression a condition may have."""
MAX_VALUE_CHARS = 1024
"""Longest attribute or feature value a condition reads."""

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's error, answered, not logged by RE2

Op = pb.ConditionOperator


@dataclass(frozen=True, slots=True)
class Facts:
    """What conditions may read about one request."""

    unit_id: str
    attributes: Mapping[str, str]
    features: Mapping[str, common_pb2.Value]

    def get(self, attribute: str) -> str | None:
        """The attribute's value as text, or None when the request does not carry it."""
        if attribute.startswith(FEATURE_PREFIX):
            value = self.features.get(attribute[len(FEATURE_PREFIX) :])
            return None if value is None else value_text(value)
        return self.attributes.get(attribute)


Predicate = Callable[[Facts], bool]


def value_text(value: common_pb2.Value) -> str | None:
    """A scalar Value as the text a condition compares (None for null or a vector)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "int64_value":
        return str(value.int64_value)
    if kind == "double_value":
        return repr(value.double_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    return None


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"5.12.1"`` → ``(5, 12, 1)``; a suffix after the numbers (``-beta``) is ignored; None if no number leads."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    return None if match is None else tuple(int(part) for part in match.group(1).split("."))


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _compare(op: int, operands: Sequence[str], field: str) -> Callable[[str], bool]:
    """The test of a present value for ``op`` (raises InvalidArgument naming ``field`` on bad operands)."""
    many = {Op.CONDITION_OPERATOR_IN, Op.CONDITION_OPERATOR_NOT_IN, Op.CONDITION_OPERATOR_EXISTS}
    if op == Op.CONDITION_OPERATOR_EXISTS:
        if operands:
            raise InvalidArgument(f"{field}.values: EXISTS takes no operand")
        return lambda _: True
    if op not in many and len(operands) != 1:
        name = Op.Name(op) if op in Op.values() else str(op)
        raise InvalidArgument(f"{field}.values: {name} takes exactly one operand, got {len(operands)}")
    if op in (Op.CONDITION_OPERATOR_IN, Op.CONDITION_OPERATOR_NOT_IN) and not operands:
        raise InvalidArgument(f"{field}.values: {Op.Name(op)} needs at least one operand")
    operand = operands[0] if operands else ""
    if op == Op.CONDITION_OPERATOR_EQUALS:
        return lambda v: v == operand
    if op == Op.CONDITION_OPERATOR_NOT_EQUALS:
        return lambda v: v != operand
    if op == Op.CONDITION_OPERATOR_IN:
        members = frozenset(operands)
        return lambda v: v in members
    if op == Op.CONDITION_OPERATOR_NOT_IN:
        excluded = frozenset(operands)
        return lambda v: v not in excluded
    if op == Op.CONDITION_OPERATOR_PREFIX:
        return lambda v: v.startswith(operand)
    if op == Op.CONDITION_OPERATOR_REGEX:
        if len(operand) > MAX_PATTERN_CHARS:
            raise InvalidArgument(f"{field}.values[0]: a regular expression of at most {MAX_PATTERN_CHARS} characters")
        try:
            pattern = re2.compile(operand, _RE2_OPTIONS)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            raise InvalidArgument(
                f"{field}.values[0]: not a valid regular expression ({reason}; RE2 syntax: no backreferences "
                "or lookaround)"
            ) from None
        return lambda v: pattern.fullmatch(v) is not None
    if op in (Op.CONDITION_OPERATOR_GTE, Op.CONDITION_OPERATOR_LT):
        bound = _number(operand)
        if bound is None:
            raise InvalidArgument(f"{field}.values[0]: '{operand}' is not a number")
        if op == Op.CONDITION_OPERATOR_GTE:
            return lambda v: (n := _number(v)) is not None and n >= bound
        return lambda v: (n := _number(v)) is not None and n < bound
    if op in (Op.CONDITION_OPERATOR_VERSION_GTE, Op.CONDITION_OPERATOR_VERSION_LT):
        version = parse_version(operand)
        if version is None:
            raise InvalidArgument(f"{field}.values[0]: '{operand}' is not a dotted version")
        if op == Op.CONDITION_OPERATOR_VERSION_GTE:
            return lambda v: (p := parse_version(v)) is not None and p >= version
        return lambda v: (p := parse_version(v)) is not None and p < version
    raise InvalidArgument(f"{field}.op: an operator is required (got {op})")


def _compile_condition(condition: pb.Condition, field: str) -> Predicate:
    if not condition.attribute:
        raise InvalidArgument(f"{field}.attribute: required")
    if condition.attribute == FEATURE_PREFIX:
        raise InvalidArgument(f"{field}.attribute: '{FEATURE_PREFIX}' needs a feature name")
    attribute = condition.attribute
    test = _compare(condition.op, list(condition.values), field)

    def holds(facts: Facts) -> bool:
        value = facts.get(attribute)
        if value is None:
            return False
        if len(value) > MAX_VALUE_CHARS:
            where = attribute if attribute.startswith(FEATURE_PREFIX) else f"attributes.{attribute}"
            raise InvalidArgument(f"{where}: {len(value)} characters, a condition reads at most {MAX_VALUE_CHARS}")
        return test(value)

    return holds


def compile_conditions(conditions: Sequence[pb.Condition], field: str) -> Predicate:
    """All of ``conditions`` (AND); an empty list always holds. ``field`` prefixes error messages."""
    compiled = tuple(_compile_condition(c, f"{field}[{i}]") for i, c in enumerate(conditions))
    return lambda facts: all(check(facts) for check in compiled)


@dataclass(frozen=True, slots=True)
class Rule:
    """A named rule: holds when all its conditions do."""

    name: str
    holds: Predicate


def compile_rule(rule: pb.AttributeRule, field: str) -> Rule:
    """Compile one ``AttributeRule``; a rule must have at least one condition."""
    if not rule.conditions:
        raise InvalidArgument(f"{field}.conditions: a rule needs at least one condition")
    return Rule(rule.name, compile_conditions(rule.conditions, f"{field}.conditions"))
