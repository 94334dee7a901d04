"""``infermesh streams``: the scenes' stream bindings (NATS JetStream in, results out) of the business center.

``list`` shows each binding as configured, ``status`` its live state (lag, counts of the instance that
answers, dead letters), ``replay-dead-letters`` publishes a binding's dead letters to their input
subject again. Bindings are changed with the scene (``infermesh scenes apply``).
"""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf import json_format

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh_cli.commands._context import Context, subcommand
from infermesh_cli.commands._convert import enum_name
from infermesh_cli.commands._errors import EXIT_FAILED
from infermesh_cli.commands._output import print_table
from infermesh_cli.commands.scenes import admin

__all__ = ["add_parser"]


def _view(status: pb.StreamBindingStatus) -> dict[str, Any]:
    binding = status.binding
    return {
        "scene": status.scene,
        "binding": json_format.MessageToDict(binding, preserving_proto_field_name=True),
        "consuming": status.consuming,
        "pending": status.pending,
        "ack_pending": status.ack_pending,
        "redelivered": status.redelivered,
        "oldest_pending_age_s": status.oldest_pending_age.ToNanoseconds() / 1e9,
        "dead_letters": status.dead_letters,
        "consumed": status.consumed,
        "scored": status.scored,
        "degraded": status.degraded,
        "dead_lettered": status.dead_lettered,
        "error": status.error,
    }


async def _statuses(ctx: Context, scene: str | None) -> list[pb.StreamBindingStatus]:
    reply = await admin(ctx).call("ListStreamBindings", pb.ListStreamBindingsRequest(scene=scene or ""))
    return list(reply.bindings)


async def list_bindings(ctx: Context, args: argparse.Namespace) -> None:
    """List the scenes' stream bindings as configured."""
    statuses = await _statuses(ctx, args.scene)
    rows = [
        [
            s.scene,
            s.binding.name,
            s.binding.enabled,
            s.binding.stream,
            list(s.binding.subjects),
            enum_name(pb.StreamFormat, s.binding.format, "STREAM_FORMAT_"),
            s.binding.output_subject,
            s.binding.dead_letter_subject or f"{s.binding.output_subject}.dead",
            s.binding.ordered_by_unit,
            s.binding.pause_when_degraded,
        ]
        for s in statuses
    ]
    headers = ["scene", "binding", "enabled", "stream", "subjects", "format", "output", "dead letters", "ordered",
               "pause when degraded"]  # fmt: skip
    ctx.emit([_view(s) for s in statuses], lambda: print_table(headers, rows))


async def status(ctx: Context, args: argparse.Namespace) -> int:
    """Live state of each binding: consumed, lag (pending, oldest unacknowledged), scored, degraded, dead letters."""
    statuses = await _statuses(ctx, args.scene)
    rows = [
        [
            s.scene,
            s.binding.name,
            "yes" if s.consuming else "no",
            s.pending,
            s.ack_pending,
            f"{s.oldest_pending_age.ToNanoseconds() / 1e9:.1f}",
            s.consumed,
            s.scored,
            s.degraded,
            s.dead_lettered,
            s.dead_letters,
            s.error,
        ]
        for s in statuses
    ]
    headers = ["scene", "binding", "consuming", "pending", "ack pending", "oldest s", "consumed", "scored",
               "degraded", "dead-lettered", "dead letters", "error"]  # fmt: skip
    ctx.emit([_view(s) for s in statuses], lambda: print_table(headers, rows))
    return EXIT_FAILED if any(s.error for s in statuses) else 0


async def replay(ctx: Context, args: argparse.Namespace) -> None:
    """Publish a binding's dead letters to their input subject again (each removed from the dead-letter stream)."""
    request = pb.ReplayDeadLettersRequest(scene=args.scene, binding=args.binding, limit=args.limit, actor=ctx.actor)
    reply = await admin(ctx).call("ReplayDeadLetters", request, timeout_s=ctx.batch_timeout_s)
    ctx.emit(
        {"scene": args.scene, "binding": args.binding, "replayed": reply.replayed},
        lambda: print(f"replayed {reply.replayed} dead letters of {args.scene}/{args.binding}"),
    )


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``infermesh streams list|status|replay-dead-letters``."""
    help_text = "Stream bindings of the business center's scenes: list, status, replay dead letters."
    group = sub.add_parser("streams", help=help_text, description=help_text)
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler in (("list", list_bindings), ("status", status)):
        p = subcommand(actions, name, handler, parent)
        p.add_argument("--scene", help="only this scene's bindings")
    p = subcommand(actions, "replay-dead-letters", replay, parent)
    p.add_argument("scene", help="scene name")
    p.add_argument("binding", help="binding name")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default: all, up to 10000)")
