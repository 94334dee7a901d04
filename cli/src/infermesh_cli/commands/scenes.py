"""``infermesh scenes`` and ``infermesh experiments``: the business center's configuration, as files.

Both print and accept the contract's JSON form (``protos/infermesh/bizcenter/v1``), the same
as the business center's seed file: ``get --json`` (or the YAML ``get`` prints) can be edited
and given back to ``apply``. A file given to ``apply`` holds one object, a list of them, or a
seed file's ``scenes:`` / ``experiments:`` lists.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as pb_grpc
from infermesh.common.v1 import common_pb2
from infermesh_cli.commands._context import Context, Remote, all_pages, audit_filter, subcommand
from infermesh_cli.commands._convert import audit_view, enum_name, print_audit
from infermesh_cli.commands._errors import UsageError
from infermesh_cli.commands._output import print_table
from infermesh_cli.commands._parse import parse_message, read_document

__all__ = ["add_parser", "config_document"]


def admin(ctx: Context) -> Remote:
    """The business center's admin service."""
    return ctx.remote("biz-center", pb_grpc.BizCenterAdminServiceStub)


def config_document(message: Message) -> dict[str, Any]:
    """A scene or experiment in the contract's JSON form (what ``apply`` accepts)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _model_ref(ref: common_pb2.ModelRef) -> str:
    which = ref.WhichOneof("selector")
    if which == "version":
        return f"{ref.model} v{ref.version}"
    if which == "alias":
        return f"{ref.model}@{ref.alias}"
    return f"{ref.model} (traffic policy)" if ref.model else ""


@dataclass(frozen=True)
class Kind:
    """What differs between scenes and experiments."""

    noun: str
    plural: str
    message: type[Message]
    upsert: str
    upsert_request: type[Message]
    field: str
    rows: Any
    headers: tuple[str, ...]


def _scene_row(scene: pb.Scene) -> list[Any]:
    return [
        scene.name,
        scene.enabled,
        scene.feature_service,
        _model_ref(scene.model_routing.model),
        scene.gray_release.enabled,
        scene.config_version,
        scene.updated_by,
    ]


def _experiment_row(experiment: pb.Experiment) -> list[Any]:
    variants = [f"{layer.name}: {'/'.join(v.name for v in layer.variants)}" for layer in experiment.layers]
    return [
        experiment.name,
        experiment.scene,
        enum_name(pb.ExperimentStatus, experiment.status, "EXPERIMENT_STATUS_"),
        variants,
        experiment.config_version,
        experiment.updated_by,
    ]


SCENES = Kind(
    "scene",
    "scenes",
    pb.Scene,
    "UpsertScene",
    pb.UpsertSceneRequest,
    "scene",
    _scene_row,
    ("scene", "enabled", "feature service", "model", "gray release", "config version", "updated by"),
)
EXPERIMENTS = Kind(
    "experiment",
    "experiments",
    pb.Experiment,
    "UpsertExperiment",
    pb.UpsertExperimentRequest,
    "experiment",
    _experiment_row,
    ("experiment", "scene", "status", "layers: variants", "config version", "updated by"),
)


def _objects(kind: Kind, path: Path) -> list[Message]:
    document = read_document(path)
    data = document.data
    base: tuple[str, ...] = ()
    if isinstance(data, dict) and kind.plural in data:
        items, base = data[kind.plural] or [], (kind.plural,)
    elif isinstance(data, dict) and ("scenes" in data or "experiments" in data):
        items = []
    elif isinstance(data, dict):
        return [parse_message(document, kind.message())]
    elif isinstance(data, list):
        items = data
    else:
        raise UsageError(f"{path}: expected a {kind.noun}, a list of {kind.plural}, or a `{kind.plural}:` list")
    if not items:
        raise UsageError(f"{path}: no {kind.plural} in it")
    return [parse_message(document, kind.message(), (*base, i)) for i in range(len(items))]


def _show(ctx: Context, documents: list[dict[str, Any]] | dict[str, Any]) -> None:
    ctx.emit(documents, lambda: print(yaml.safe_dump(documents, sort_keys=False).rstrip()))


def _group(kind: Kind) -> dict[str, Any]:
    """The handlers of one kind."""

    async def list_objects(ctx: Context, args: argparse.Namespace) -> None:
        if kind is SCENES:
            request: Message = pb.ListScenesRequest()
            method, field = "ListScenes", "scenes"
        else:
            statuses = [getattr(pb, f"EXPERIMENT_STATUS_{s.upper()}") for s in args.status or []]
            request = pb.ListExperimentsRequest(scene=args.scene or "", statuses=statuses)
            method, field = "ListExperiments", "experiments"
        objects = await all_pages(admin(ctx), method, request, field)
        ctx.emit(
            [config_document(o) for o in objects], lambda: print_table(kind.headers, [kind.rows(o) for o in objects])
        )

    async def get(ctx: Context, args: argparse.Namespace) -> None:
        method = "GetScene" if kind is SCENES else "GetExperiment"
        request = pb.GetSceneRequest(name=args.name) if kind is SCENES else pb.GetExperimentRequest(name=args.name)
        reply = await admin(ctx).call(method, request)
        _show(ctx, config_document(getattr(reply, kind.field)))

    async def apply(ctx: Context, args: argparse.Namespace) -> None:
        applied = []
        for message in _objects(kind, args.file):
            request = kind.upsert_request(validate_only=args.validate_only, actor=ctx.actor, reason=args.reason)
            getattr(request, kind.field).CopyFrom(message)
            if args.create_only:
                request.expected_config_version = 0
            reply = await admin(ctx).call(kind.upsert, request)
            applied.append(getattr(reply, kind.field))
        verb = "valid" if args.validate_only else "applied"
        ctx.emit(
            [config_document(o) for o in applied],
            lambda: print_table([*kind.headers, "result"], [[*kind.rows(o), verb] for o in applied]),
        )

    async def delete(ctx: Context, args: argparse.Namespace) -> None:
        if kind is SCENES:
            request: Message = pb.DeleteSceneRequest(name=args.name, actor=ctx.actor, reason=args.reason)
            method = "DeleteScene"
        else:
            request = pb.DeleteExperimentRequest(name=args.name, actor=ctx.actor, reason=args.reason)
            method = "DeleteExperiment"
        if args.expected_version is not None:
            request.expected_config_version = args.expected_version  # type: ignore[attr-defined]
        deleted = getattr(await admin(ctx).call(method, request), kind.field)
        ctx.emit(
            config_document(deleted),
            lambda: print(f"deleted {kind.noun} {deleted.name} (config version {deleted.config_version})"),
        )

    async def audit(ctx: Context, args: argparse.Namespace) -> None:
        target = f"{kind.plural}/{args.name}" if args.name else f"{kind.plural}/"
        request = pb.ListAuditEntriesRequest(filter=common_pb2.AuditFilter(target_prefix=target, actor=args.by or ""))
        keep = audit_filter(target)
        found = await all_pages(admin(ctx), "ListAuditEntries", request, "entries", limit=args.limit, keep=keep)
        entries = [audit_view(e) for e in found]
        ctx.emit(entries, lambda: print_audit(entries))

    list_objects.__doc__ = f"List the {kind.plural}."
    get.__doc__ = f"Show one {kind.noun} as YAML (JSON with --json), in the form apply accepts."
    apply.__doc__ = f"Create or replace {kind.plural} from a YAML/JSON file (validated, recorded in the audit log)."
    delete.__doc__ = f"Delete a {kind.noun}."
    audit.__doc__ = f"Read the audit log of {kind.noun} changes, newest first."
    return {"list": list_objects, "get": get, "apply": apply, "delete": delete, "audit": audit}


def _add(sub: Any, parent: argparse.ArgumentParser, kind: Kind, help_text: str) -> None:
    group = sub.add_parser(kind.plural, help=help_text, description=help_text)
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    handlers = _group(kind)

    p = subcommand(actions, "list", handlers["list"], parent)
    if kind is EXPERIMENTS:
        p.add_argument("--scene", help="only experiments of this scene")
        p.add_argument(
            "--status",
            action="append",
            choices=["draft", "running", "paused", "completed"],
            help="only experiments in this status; repeatable",
        )

    p = subcommand(actions, "get", handlers["get"], parent)
    p.add_argument("name", help=f"{kind.noun} name")

    p = subcommand(actions, "apply", handlers["apply"], parent)
    p.add_argument("file", type=Path, help=f"YAML/JSON file of one {kind.noun}, a list, or a `{kind.plural}:` list")
    p.add_argument("--validate-only", action="store_true", help="validate, store nothing")
    p.add_argument("--create-only", action="store_true", help=f"refuse (ABORTED) to replace an existing {kind.noun}")
    p.add_argument("--reason", default="", help="why, for the audit log")

    p = subcommand(actions, "delete", handlers["delete"], parent)
    p.add_argument("name", help=f"{kind.noun} name")
    p.add_argument("--expected-version", type=int, metavar="N", help="refuse unless the stored config version is N")
    p.add_argument("--reason", default="", help="why, for the audit log")

    p = subcommand(actions, "audit", handlers["audit"], parent)
    p.add_argument("name", nargs="?", help=f"only this {kind.noun}'s entries")
    p.add_argument("--by", metavar="ACTOR", help="only changes by this actor")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``infermesh scenes ...`` and ``infermesh experiments ...``."""
    _add(sub, parent, SCENES, "Scenes of the business center: list, get, apply from a file, delete, audit.")
    _add(
        sub, parent, EXPERIMENTS, "A/B experiments of the business center: list, get, apply from a file, delete, audit."
    )
