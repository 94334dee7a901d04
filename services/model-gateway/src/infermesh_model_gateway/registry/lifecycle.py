"""The registry's lifecycle rules: which transitions a version may make, and what traffic may point at.

- Lifecycle transitions follow REGISTERED → DEPLOYING → SERVING → DRAINING → REGISTERED (FAILED
  after a failed deploy; RETIRED from REGISTERED, FAILED or DRAINING, for good).
- Traffic weights, mirrors and aliases may only point at SERVING versions that are not
  deprecated; a version that traffic or an alias points at cannot be undeployed or retired.
- ``promote`` gives a version ``production`` and all un-pinned traffic (a mirror onto it is
  dropped); ``rollback`` walks back through the versions that held ``production``.
"""

from __future__ import annotations

import dataclasses
import re

from infermesh_chassis.errors import FailedPrecondition
from infermesh_model_gateway.domain import ModelRecord, ModelVersionRecord, VersionState
from infermesh_model_gateway.registry.tables import Tx

__all__ = [
    "ALIAS_PATTERN",
    "PRODUCTION",
    "TRANSITIONS",
    "check_routable",
    "refuse_if_referenced",
    "require_serving",
    "transition_refusal",
    "with_production",
]

PRODUCTION = "production"
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")

TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    VersionState.REGISTERED: frozenset({VersionState.DEPLOYING, VersionState.RETIRED}),
    VersionState.FAILED: frozenset({VersionState.DEPLOYING, VersionState.RETIRED}),
    VersionState.DEPLOYING: frozenset({VersionState.SERVING, VersionState.FAILED}),
    VersionState.SERVING: frozenset({VersionState.DRAINING}),
    VersionState.DRAINING: frozenset({VersionState.REGISTERED, VersionState.RETIRED}),
    VersionState.RETIRED: frozenset(),
}


async def require_serving(tx: Tx, model: str, version: int, what: str) -> ModelVersionRecord:
    """The version, SERVING and not deprecated (FAILED_PRECONDITION naming ``what`` otherwise)."""
    record = await tx.version(model, version)
    if record.state is not VersionState.SERVING:
        raise FailedPrecondition(
            f"{what}: version {version} of model '{model}' is {record.state.value}, not serving; deploy it first"
        )
    if record.deprecated_until is not None:
        raise FailedPrecondition(
            f"{what}: version {version} of model '{model}' is deprecated and retires at "
            f"{record.deprecated_until.isoformat()}"
        )
    return record


async def check_routable(tx: Tx, model: ModelRecord, what: str) -> None:
    """Every version the model's traffic or ``production`` points at is SERVING."""
    versions = {v for v, w in model.traffic.weights.items() if w > 0}
    if model.traffic.mirror is not None:
        versions.add(model.traffic.mirror.version)
    if PRODUCTION in model.aliases:
        versions.add(model.aliases[PRODUCTION])
    for version in sorted(versions):
        await require_serving(tx, model.name, version, what)


def with_production(model: ModelRecord, version: int, *, append: bool) -> ModelRecord:
    """``model`` with ``production`` on ``version`` and all un-pinned traffic (a mirror onto it dropped);
    ``append`` records the move in its production history."""
    mirror = model.traffic.mirror
    traffic = dataclasses.replace(
        model.traffic,
        weights={},
        mirror=None if mirror is not None and mirror.version == version else mirror,
        revision=model.traffic.revision + 1,
    )
    history = model.production_history
    if append and model.aliases.get(PRODUCTION) != version:
        history = (*history, version)
    aliases = {**model.aliases, PRODUCTION: version}
    return dataclasses.replace(model, aliases=aliases, traffic=traffic, production_history=history)


def refuse_if_referenced(model: ModelRecord, version: int, what: str) -> None:
    """FAILED_PRECONDITION when an alias, a traffic weight or the mirror points at ``version``."""
    reasons = [f"alias '{a}'" for a, v in sorted(model.aliases.items()) if v == version]
    if model.traffic.weights.get(version, 0) > 0:
        reasons.append(f"a traffic weight of {model.traffic.weights[version]}")
    if model.traffic.mirror is not None and model.traffic.mirror.version == version:
        reasons.append("the mirror")
    if reasons:
        raise FailedPrecondition(
            f"cannot {what} version {version} of model '{model.name}': {', '.join(reasons)} still point at it; "
            "move them to another version first"
        )


def transition_refusal(record: ModelVersionRecord, state: VersionState) -> str:
    """Why ``record`` cannot become ``state``, with a hint where there is one."""
    where = f"version {record.version} of model '{record.model}'"
    if record.state is state:
        return f"{where} is already {state.value}"
    hints = {
        VersionState.DEPLOYING: "it can be deployed from registered or failed",
        VersionState.DRAINING: "only a serving version can be undeployed",
    }
    hint = hints.get(state, "")
    return f"{where} is {record.state.value}; it cannot become {state.value}" + (f" ({hint})" if hint else "")
