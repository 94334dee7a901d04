"""``infermesh trace`` and ``infermesh traces``: the traces the monitor stored, in the terminal.

``trace REQUEST_ID|TRACE_ID`` prints one trace as a waterfall: one line per span, indented under its
parent, with its service, start offset from the trace's start, duration, status, a bar placed on the
trace's time line, and marks for failed spans (``!``) and degraded answers (``degraded``, with what
served them); then the events stored with the trace id, each in the span it was emitted in.
``traces`` lists the slowest traces of a window, optionally of one scene.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from infermesh.monitor.v1 import monitor_pb2 as pb
from infermesh.monitor.v1 import monitor_pb2_grpc as pb_grpc
from infermesh_chassis.errors import NotFound
from infermesh_cli.commands._context import Context, subcommand
from infermesh_cli.commands._convert import enum_name
from infermesh_cli.commands._errors import UsageError
from infermesh_cli.commands._output import ms, print_fields, print_table
from infermesh_cli.commands._parse import parse_duration, to_duration

__all__ = ["add_parser", "waterfall"]

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
BAR_WIDTH = 32
"""Characters of the time line a waterfall bar is drawn on."""


def _span_view(span: pb.TraceSpan, t0_us: int) -> dict[str, Any]:
    start_us = span.start.seconds * 1_000_000 + span.start.nanos // 1000
    return {
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "service": span.service,
        "name": span.name,
        "kind": enum_name(pb.SpanKind, span.kind, "SPAN_KIND_"),
        "start_offset_ms": (start_us - t0_us) / 1000,
        "duration_ms": span.duration_ms,
        "status": enum_name(pb.SpanStatus, span.status, "SPAN_STATUS_"),
        "status_message": span.status_message,
        "request_id": span.request_id,
        "degraded": span.degraded,
        "fallback": span.fallback,
        "attributes": dict(span.attributes),
    }


def waterfall(spans: list[dict[str, Any]]) -> list[list[str]]:
    """Table rows of a waterfall: spans depth-first under their parents (orphans at the top level)."""
    ids = {s["span_id"] for s in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else ""
        children.setdefault(parent, []).append(span)
    total = max((s["start_offset_ms"] + s["duration_ms"] for s in spans), default=0.0) or 1.0
    rows: list[list[str]] = []

    def visit(parent: str, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["start_offset_ms"]):
            begin = min(BAR_WIDTH - 1, int(span["start_offset_ms"] / total * BAR_WIDTH))
            length = max(1, round(span["duration_ms"] / total * BAR_WIDTH))
            bar = " " * begin + "█" * min(length, BAR_WIDTH - begin)
            marks = []
            if span["status"] == "ERROR":
                marks.append("! " + (span["status_message"] or "error"))
            if span["degraded"]:
                marks.append("degraded" + (f" ({span['fallback']})" if span["fallback"] else ""))
            elif span["fallback"]:
                marks.append(f"fallback {span['fallback']}")
            if span["attributes"].get("infermesh.from_fallback") == "true":
                marks.append("read from a fallback source")
            rows.append(
                [
                    span["service"],
                    "  " * depth + span["name"],
                    ms(span["start_offset_ms"]),
                    ms(span["duration_ms"]),
                    span["status"],
                    bar.ljust(BAR_WIDTH),
                    "; ".join(marks),
                ]
            )
            visit(span["span_id"], depth + 1)

    visit("", 0)
    return rows


async def trace(ctx: Context, args: argparse.Namespace) -> None:
    """One trace as a waterfall, by trace id (32 hex) or by the request id of a call it served."""
    key = args.id.strip()
    if not key:
        raise UsageError("give a request id or a trace id")
    monitor = ctx.remote("monitor", pb_grpc.MonitorServiceStub)
    reply = None
    if _TRACE_ID.fullmatch(key):  # request ids are often 32 hex too: then it is tried as one next
        try:
            reply = await monitor.call("GetTrace", pb.GetTraceRequest(trace_id=key))
        except NotFound:
            reply = None
    if reply is None:
        reply = await monitor.call("GetTrace", pb.GetTraceRequest(request_id=key))
    t0_us = min((s.start.seconds * 1_000_000 + s.start.nanos // 1000 for s in reply.spans), default=0)
    spans = [_span_view(s, t0_us) for s in reply.spans]
    total = max((s["start_offset_ms"] + s["duration_ms"] for s in spans), default=0.0)
    events = [
        {
            "event_id": e.event_id,
            "kind": e.kind,
            "service": e.service,
            "offset_ms": (e.time.seconds * 1_000_000 + e.time.nanos // 1000 - t0_us) / 1000,
            "span_id": e.span_id,
            "request_id": e.request_id,
        }
        for e in reply.events
    ]
    data = {"trace_id": reply.trace_id, "duration_ms": total, "spans": spans, "events": events}

    def render() -> None:
        services = sorted({s["service"] for s in spans})
        print_fields(
            [
                ("trace", reply.trace_id),
                ("duration ms", ms(total)),
                ("spans", f"{len(spans)} from {', '.join(services)}"),
            ]
        )
        print()
        print_table(["service", "span", "start ms", "duration ms", "status", "time line", "marks"], waterfall(spans))
        names = {s["span_id"]: f"{s['service']} {s['name']}" for s in spans}
        print()
        print_table(
            ["event", "service", "at ms", "in span", "request id"],
            [
                [e["kind"], e["service"], ms(e["offset_ms"]), names.get(e["span_id"], e["span_id"]), e["request_id"]]
                for e in events
            ],
            empty="(no events stored with this trace id)",
        )

    ctx.emit(data, render)


async def traces(ctx: Context, args: argparse.Namespace) -> None:
    """The slowest traces the monitor stored, of one scene or all, with their ids."""
    if not 1 <= args.slowest <= 1000:
        raise UsageError(f"--slowest: {args.slowest}; between 1 and 1000")
    since = parse_duration(args.since, "--since")
    if since <= 0:
        raise UsageError("--since: a positive duration (e.g. 10m)")
    request = pb.ListTracesRequest(scene=args.scene or "", limit=args.slowest, since=to_duration(since))
    reply = await ctx.remote("monitor", pb_grpc.MonitorServiceStub).call("ListTraces", request)
    rows = [
        {
            "trace_id": t.trace_id,
            "request_id": t.request_id,
            "scene": t.scene,
            "root": f"{t.root_service} {t.root_name}",
            "start": t.start.ToJsonString(),
            "duration_ms": t.duration_ms,
            "spans": t.spans,
            "error": t.error,
            "degraded": t.degraded,
        }
        for t in reply.traces
    ]
    ctx.emit(
        {"traces": rows},
        lambda: print_table(
            ["trace id", "request id", "scene", "duration ms", "spans", "error", "degraded", "root"],
            [
                [
                    r["trace_id"],
                    r["request_id"],
                    r["scene"],
                    ms(r["duration_ms"]),
                    r["spans"],
                    r["error"],
                    r["degraded"],
                    r["root"],
                ]
                for r in rows
            ],
        ),
    )


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``infermesh trace ID`` and ``infermesh traces``."""
    p = subcommand(sub, "trace", trace, parent)
    p.add_argument("id", metavar="REQUEST_ID|TRACE_ID", help="a request id, or a trace id (32 hex characters)")
    p = subcommand(sub, "traces", traces, parent)
    p.add_argument("--scene", help="only traces of this scene")
    p.add_argument("--slowest", type=int, default=10, metavar="N", help="how many, slowest first (default 10)")
    p.add_argument("--since", default="10m", metavar="DURATION", help="how far back (default 10m)")
