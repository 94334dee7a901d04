"""Which version serves a request: pins, aliases, the weighted split, stickiness and the mirror.

The :class:`Router` holds an immutable snapshot of every model's versions, aliases and traffic
policy, swapped atomically when the registry changes (:meth:`Router.load`), so the hot path
reads it without locks or I/O.

Resolution of ``(model, version, alias, routing key)``:

- a model name may carry an alias (``churn@canary``); a version string may be a number or an
  alias name; the ``alias`` request parameter pins too;
- otherwise the model's traffic weights decide: with a sticky key set on the policy and a
  routing key on the request, a stable hash of the key picks the version (the same key lands on
  the same version while the weights are unchanged); without one, a random draw does; with no
  weights, the ``production`` alias serves;
- a mirror copies a share of the requests served by another version to its shadow version.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from infermesh_chassis.errors import FailedPrecondition, InvalidArgument, NotFound
from infermesh_chassis.validation import parse_uint, shown
from infermesh_model_gateway.domain import ModelRecord, ModelVersionRecord, VersionState, utc_now
from infermesh_model_gateway.registry import ALIAS_PATTERN

__all__ = ["PRODUCTION_ALIAS", "Route", "Router", "deprecation_warning"]

PRODUCTION_ALIAS = "production"


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes."""

    primary: ModelVersionRecord
    shadow: ModelVersionRecord | None
    pinned: bool
    """True when the caller named the version (number or alias) rather than the policy choosing."""


class _ModelView:
    """One model's routing state, precomputed for the hot path."""

    __slots__ = ("aliases", "cumulative", "mirror", "name", "sticky_key", "versions", "weighted")

    def __init__(self, record: ModelRecord, versions: Iterable[ModelVersionRecord]) -> None:
        self.name = record.name
        self.versions = {v.version: v for v in versions}
        self.aliases = dict(record.aliases)
        policy = record.traffic
        self.sticky_key = policy.sticky_key
        self.weighted: list[ModelVersionRecord] = []
        self.cumulative: list[int] = []
        total = 0
        for version, weight in sorted(policy.weights.items()):
            if weight > 0 and version in self.versions:
                total += weight
                self.weighted.append(self.versions[version])
                self.cumulative.append(total)
        self.mirror = policy.mirror

    def by_number(self, version: int) -> ModelVersionRecord:
        record = self.versions.get(version)
        if record is None:
            raise NotFound(f"model '{self.name}' has no version {version}")
        return record

    def by_alias(self, alias: str) -> ModelVersionRecord:
        version = self.aliases.get(alias)
        if version is None:
            known = ", ".join(sorted(self.aliases)) or "none"
            raise NotFound(f"model '{self.name}' has no alias {shown(alias)} (aliases: {known})")
        return self.by_number(version)

    def by_text(self, version: str, field: str) -> ModelVersionRecord:
        """The version a request's version string names: a number (ASCII digits) or an alias."""
        if version[:1].isdigit():  # aliases start with a letter: this is meant as a number
            return self.by_number(parse_uint(version, field, what="a version number (ASCII digits)"))
        if not ALIAS_PATTERN.match(version):
            raise InvalidArgument(f"{field}: {shown(version)} is neither a version number nor an alias")
        return self.by_alias(version)

    def by_policy(self, routing_key: str | None, rng: random.Random) -> ModelVersionRecord:
        if not self.weighted:
            if PRODUCTION_ALIAS not in self.aliases:
                raise FailedPrecondition(
                    f"model '{self.name}' has no production version and no traffic weights: "
                    "promote a version or set a traffic policy, or pin a version"
                )
            return self.by_alias(PRODUCTION_ALIAS)
        total = self.cumulative[-1]
        if routing_key and self.sticky_key:
            digest = hashlib.blake2b(f"{self.name}\0{routing_key}".encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") % total
        else:
            point = rng.randrange(total)
        return self.weighted[bisect.bisect_right(self.cumulative, point)]


def _successor(record: ModelVersionRecord) -> str:
    if record.successor_model:
        version = f"version {record.successor} of " if record.successor else ""
        return f"{version}model '{record.successor_model}'"
    return f"version {record.successor}" if record.successor else ""


def _serving(record: ModelVersionRecord, clock: Callable[[], datetime]) -> ModelVersionRecord:
    if record.state is VersionState.SERVING:
        return record
    where = f"version {record.version} of model '{record.model}'"
    if record.state is VersionState.RETIRED:
        when = record.retired_at.isoformat(timespec="seconds") if record.retired_at else "an earlier date"
        successor = _successor(record)
        if successor:
            raise NotFound(f"{where} was retired at {when}; use {successor}")
        raise FailedPrecondition(f"{where} was retired at {when} and has no successor")
    deprecated_until = record.deprecated_until
    if record.state is VersionState.DRAINING and deprecated_until is not None and deprecated_until <= clock():
        # its deprecation ended: it drains on the way to RETIRED, and callers hear what they will hear then
        successor = _successor(record)
        when = deprecated_until.isoformat(timespec="seconds")
        if successor:
            raise NotFound(f"{where} is being retired (its deprecation ended at {when}); use {successor}")
        raise FailedPrecondition(f"{where} is being retired (its deprecation ended at {when}) and has no successor")
    raise FailedPrecondition(
        f"{where} is {record.state.value}, not serving"
        + ("; deploy it first" if record.state in (VersionState.REGISTERED, VersionState.FAILED) else "")
    )


def deprecation_warning(record: ModelVersionRecord) -> str:
    """The warning for a caller pinning ``record`` while it is deprecated ("" when it is not)."""
    if record.deprecated_until is None or record.state is not VersionState.SERVING:
        return ""
    successor = _successor(record)
    return (
        f"version {record.version} of model '{record.model}' is deprecated and retires at "
        f"{record.deprecated_until.isoformat(timespec='seconds')}" + (f"; move to {successor}" if successor else "")
    )


class Router:
    """Resolves requests against the current snapshot (see the module docstring)."""

    def __init__(self, rng: random.Random | None = None, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._models: dict[str, _ModelView] = {}
        self._rng = rng or random.Random()
        self._clock = clock
        """The time retirements are judged by: the one the rollout controller that retires versions reads."""

    def load(self, snapshot: Iterable[tuple[ModelRecord, list[ModelVersionRecord]]]) -> None:
        """Replace the routing state with ``snapshot`` (models with their versions)."""
        self._models = {record.name: _ModelView(record, versions) for record, versions in snapshot}

    def models(self) -> list[str]:
        """Names of the models known to the router."""
        return sorted(self._models)

    def _view(self, model: str) -> _ModelView:
        view = self._models.get(model)
        if view is None:
            raise NotFound(f"model '{model}' is not registered")
        return view

    def version(self, model: str, version: str = "") -> ModelVersionRecord:
        """The version record a metadata call names (number, alias, or empty for the policy's choice)."""
        name, _, alias = model.partition("@")
        view = self._view(name)
        if alias:
            return view.by_alias(alias)
        if version:
            return view.by_text(version, "version")
        return view.by_policy(None, self._rng)

    def serving_versions(self, model: str) -> list[ModelVersionRecord]:
        """Every SERVING version of ``model``, oldest first."""
        view = self._view(model.partition("@")[0])
        return [v for _, v in sorted(view.versions.items()) if v.state is VersionState.SERVING]

    def resolve(self, model: str, version: str = "", *, alias: str = "", routing_key: str | None = None) -> Route:
        """The route of one inference request; NOT_FOUND / FAILED_PRECONDITION with a clear message."""
        name, _, name_alias = model.partition("@")
        view = self._view(name)
        pin = name_alias or alias
        if pin:
            primary, pinned = view.by_alias(pin), True
        elif version:
            primary, pinned = view.by_text(version, "model_version"), True
        else:
            primary, pinned = view.by_policy(routing_key, self._rng), False
        primary = _serving(primary, self._clock)
        shadow = None
        mirror = view.mirror
        if mirror is not None and mirror.version != primary.version and self._rng.random() < mirror.fraction:
            candidate = view.versions.get(mirror.version)
            if candidate is not None and candidate.state is VersionState.SERVING:
                shadow = candidate
        return Route(primary, shadow, pinned)

    def sticky_key(self, model: str) -> str:
        """The request parameter that carries ``model``'s routing key ("" when not sticky)."""
        view = self._models.get(model.partition("@")[0])
        return "" if view is None else view.sticky_key
