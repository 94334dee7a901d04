"""``infermesh features``: the data gateway's feature services, online vectors, materialization, training sets."""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from infermesh.datagateway.v1 import data_gateway_pb2 as pb
from infermesh.datagateway.v1 import data_gateway_pb2_grpc as pb_grpc
from infermesh_cli.commands._context import Context, Remote, all_pages, subcommand
from infermesh_cli.commands._convert import enum_name, seconds, time_range_view, timestamp, value
from infermesh_cli.commands._errors import UsageError
from infermesh_cli.commands._output import cell, print_fields, print_table
from infermesh_cli.commands._parse import (
    guess_value,
    parse_pairs,
    parse_time,
    read_table,
    to_timestamp,
    value_to_proto,
    write_table,
)

__all__ = ["ENGINES", "add_parser", "data_gateway", "fetch_training_set"]

ENGINES = {"default": pb.BATCH_ENGINE_UNSPECIFIED, "local": pb.BATCH_ENGINE_LOCAL, "spark": pb.BATCH_ENGINE_SPARK}


def data_gateway(ctx: Context) -> Remote:
    """The data gateway."""
    return ctx.remote("data-gateway", pb_grpc.DataGatewayServiceStub)


def _status(status: int) -> str:
    return enum_name(pb.FeatureStatus, status, "FEATURE_STATUS_")


# -- list and describe ---------------------------------------------------------------------------


async def list_services(ctx: Context, args: argparse.Namespace) -> None:
    """List the feature services of the current definitions."""
    request = pb.ListFeatureServicesRequest(name_prefix=args.prefix or "")
    services = [
        {
            "name": s.name,
            "definition_version": s.definition_version,
            "feature_count": s.feature_count,
            "entities": list(s.entities),
            "owner": s.owner,
            "description": s.description,
        }
        for s in await all_pages(data_gateway(ctx), "ListFeatureServices", request, "feature_services")
    ]
    ctx.emit(
        services,
        lambda: print_table(
            ["feature service", "version", "features", "entities", "owner", "description"],
            [
                [s["name"], s["definition_version"], s["feature_count"], s["entities"], s["owner"], s["description"]]
                for s in services
            ],
        ),
    )


def _description_view(service: pb.FeatureServiceDescription) -> dict[str, Any]:
    return {
        "name": service.name,
        "definition_version": service.definition_version,
        "description": service.description,
        "owner": service.owner,
        "definition_file": service.definition_file,
        "entities": [
            {"name": e.name, "keys": {k.name: k.dtype for k in e.keys}, "description": e.description}
            for e in service.entities
        ],
        "request_values": [{"name": r.name, "dtype": r.dtype, "required": r.required} for r in service.request_values],
        "features": [
            {
                "name": f.name,
                "dtype": f.dtype,
                "shape": list(f.shape),
                "feature_view": f.feature_view,
                "transform": f.transform,
                "default": value(f.default_value) if f.HasField("default_value") else None,
                "allow_missing": f.allow_missing,
                "description": f.description,
            }
            for f in service.features
        ],
        "views": [
            {
                "name": v.name,
                "entities": list(v.entities),
                "source": v.source,
                "fallback_sources": list(v.fallback_sources),
                "ttl_s": seconds(v.ttl) if v.HasField("ttl") else None,
                "fields": list(v.fields),
                "owner": v.owner,
            }
            for v in service.views
        ],
        "sources": [
            {
                "name": s.name,
                "kind": enum_name(pb.SourceKind, s.kind, "SOURCE_KIND_"),
                "timeout_s": seconds(s.timeout) if s.HasField("timeout") else None,
                "health": enum_name(pb.SourceHealth, s.health, "SOURCE_HEALTH_"),
            }
            for s in service.sources
        ],
    }


def _print_description(view: dict[str, Any]) -> None:
    print_fields(
        [
            ("feature service", view["name"]),
            ("version", view["definition_version"]),
            ("description", view["description"]),
            ("owner", view["owner"]),
            ("entities", [f"{e['name']} ({cell(e['keys'])})" for e in view["entities"]]),
            (
                "request values",
                [f"{r['name']} {r['dtype']}{'' if r['required'] else '?'}" for r in view["request_values"]],
            ),
            ("defined in", view["definition_file"]),
        ]
    )
    print()
    print_table(
        ["#", "feature", "dtype", "shape", "view", "transform", "default"],
        [
            [
                i,
                f["name"],
                f["dtype"],
                json.dumps(f["shape"]) if f["shape"] else "scalar",
                f["feature_view"],
                f["transform"],
                f["default"],
            ]
            for i, f in enumerate(view["features"])
        ],
    )
    print()
    print_table(
        ["view", "entities", "source", "fallbacks", "ttl s", "fields"],
        [
            [v["name"], v["entities"], v["source"], v["fallback_sources"], v["ttl_s"], v["fields"]]
            for v in view["views"]
        ],
    )
    print()
    print_table(
        ["source", "kind", "timeout s", "health"],
        [[s["name"], s["kind"], s["timeout_s"], s["health"]] for s in view["sources"]],
    )


async def describe(ctx: Context, args: argparse.Namespace) -> None:
    """Describe a feature service: features in vector order, views, sources, version."""
    request = pb.DescribeFeatureServiceRequest(name=args.name, definition_version=args.version or "")
    view = _description_view((await data_gateway(ctx).call("DescribeFeatureService", request)).feature_service)
    ctx.emit(view, lambda: _print_description(view))


# -- online vectors ------------------------------------------------------------------------------


def _entity_rows(args: argparse.Namespace) -> list[pb.EntityRow]:
    requested = {k: guess_value(v) for k, v in parse_pairs(args.request, "--request").items()}
    rows = []
    for text in args.entity or []:
        keys = {k: guess_value(v) for k, v in parse_pairs([text], "--entity").items()}
        rows.append(keys)
    if args.entities_file is not None:
        rows.extend(read_table(args.entities_file).to_pylist())
    if not rows:
        raise UsageError("give at least one --entity KEY=VALUE (or --entities-file)")
    entities = []
    for row in rows:
        entity = pb.EntityRow()
        for key, raw in row.items():
            entity.keys[key].CopyFrom(value_to_proto(raw, f"key {key}"))
        for key, raw in requested.items():
            entity.request_values[key].CopyFrom(value_to_proto(raw, f"--request {key}"))
        entities.append(entity)
    return entities


async def get(ctx: Context, args: argparse.Namespace) -> None:
    """Online feature vectors of entities, with each value's status and lineage."""
    entities = _entity_rows(args)
    request = pb.GetFeaturesRequest(
        feature_service=args.name,
        definition_version=args.version or "",
        entities=entities,
        routing_attributes=parse_pairs(args.routing, "--routing"),
    )
    reply = await data_gateway(ctx).call("GetFeatures", request)
    names = [f.name for f in reply.fields]
    rows = [
        {
            "keys": {k: value(v) for k, v in entity.keys.items()},
            "values": dict(zip(names, (value(v) for v in row.values), strict=True)),
            "statuses": dict(zip(names, (_status(s) for s in row.statuses), strict=True)),
            "lineage": [
                {
                    "feature_view": view.feature_view,
                    "source": view.source,
                    "value_time": timestamp(view, "value_time"),
                    "from_fallback": view.from_fallback,
                    "used_default": view.used_default,
                    "from_cache": view.from_cache,
                }
                for view in row.lineage.views
            ],
        }
        for entity, row in zip(entities, reply.rows, strict=True)
    ]
    data = {
        "feature_service": reply.feature_service,
        "definition_version": reply.definition_version,
        "fields": [{"name": f.name, "dtype": f.dtype, "shape": list(f.shape)} for f in reply.fields],
        "rows": rows,
    }

    def render() -> None:
        print(f"{reply.feature_service} (definitions {reply.definition_version})")
        headers = ["keys", *names, "not ok", "sources"]
        table = []
        for row in rows:
            flagged: dict[str, list[str]] = {}
            for feature, status in row["statuses"].items():
                if status != "OK":
                    flagged.setdefault(status, []).append(feature)
            sources = [f"{v['feature_view']}<-{v['source']}" for v in row["lineage"]]
            not_ok = [f"{status}: {' '.join(features)}" for status, features in flagged.items()]
            table.append([row["keys"], *(row["values"][n] for n in names), not_ok, sources])
        print_table(headers, table)

    ctx.emit(data, render)


# -- batch ---------------------------------------------------------------------------------------


async def materialize(ctx: Context, args: argparse.Namespace) -> None:
    """Compute a feature view from its offline source and write it to the online store."""
    request = pb.MaterializeFeatureViewRequest(
        feature_view=args.view, incremental=args.incremental, engine=ENGINES[args.engine], actor=ctx.actor
    )
    if args.start is not None:
        request.start_time.CopyFrom(to_timestamp(parse_time(args.start, "--start")))
    if args.end is not None:
        request.end_time.CopyFrom(to_timestamp(parse_time(args.end, "--end")))
    reply = await data_gateway(ctx).call("MaterializeFeatureView", request, timeout_s=ctx.batch_timeout_s)
    view = {
        "feature_view": reply.feature_view,
        "rows_written": reply.rows_written,
        "range": time_range_view(reply.range),
        "watermark": timestamp(reply, "watermark"),
        "elapsed_s": seconds(reply.elapsed),
    }
    ctx.emit(
        view,
        lambda: print_fields(
            [
                ("feature view", view["feature_view"]),
                ("rows written", view["rows_written"]),
                ("range", f"{view['range']['start'] or 'beginning'} .. {view['range']['end']}"),
                ("watermark", view["watermark"]),
                ("elapsed", f"{view['elapsed_s']:.3f} s"),
            ]
        ),
    )


async def fetch_training_set(
    ctx: Context, service: str, entities: pa.Table, *, engine: str = "default", version: str = "", chunk_rows: int = 0
) -> tuple[pa.Table, list[pb.FeatureField], str]:
    """Point-in-time features of ``entities`` (keys and ``event_time``) from the data gateway's batch path.

    Returns the training set (keys, ``event_time``, features, passthrough columns, in the
    entities' order), its feature fields, and the definition version used.
    """
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, entities.schema) as writer:
        writer.write_table(entities)
    request = pb.GetTrainingSetRequest(
        feature_service=service,
        definition_version=version,
        arrow_ipc=sink.getvalue(),
        format=pb.TRAINING_SET_FORMAT_ARROW_IPC,
        chunk_rows=chunk_rows,
        engine=ENGINES[engine],
    )
    tables: list[pa.Table] = []
    fields: list[pb.FeatureField] = []
    definition_version = ""
    async for chunk in data_gateway(ctx).stream("GetTrainingSet", request, timeout_s=ctx.batch_timeout_s):
        if chunk.chunk_index == 0:
            fields = list(chunk.fields)
            definition_version = chunk.definition_version
        tables.append(pa.ipc.open_stream(io.BytesIO(chunk.arrow_ipc)).read_all())
    return pa.concat_tables(tables), fields, definition_version


async def training_set(ctx: Context, args: argparse.Namespace) -> None:
    """Build a point-in-time-correct training set for an entity file and write it (Parquet or CSV)."""
    entities = read_table(args.entities)
    if args.output.suffix.lower() not in (".parquet", ".pq", ".csv"):
        raise UsageError(f"{args.output}: the output must end in .parquet or .csv")
    began = time.perf_counter()
    table, fields, version = await fetch_training_set(
        ctx, args.name, entities, engine=args.engine, version=args.version or "", chunk_rows=args.chunk_rows
    )
    write_table(table, args.output)
    view = {
        "feature_service": args.name,
        "definition_version": version,
        "rows": table.num_rows,
        "features": [f.name for f in fields],
        "columns": table.column_names,
        "output": str(args.output),
        "engine": args.engine,
        "elapsed_s": time.perf_counter() - began,
    }
    ctx.emit(
        view,
        lambda: print_fields(
            [
                ("feature service", f"{view['feature_service']} (definitions {view['definition_version']})"),
                ("rows", view["rows"]),
                ("features", view["features"]),
                ("columns", view["columns"]),
                ("written to", view["output"]),
                ("elapsed", f"{view['elapsed_s']:.2f} s ({view['engine']} engine)"),
            ]
        ),
    )


# -- parser --------------------------------------------------------------------------------------


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``infermesh features ...``."""
    text = "Feature services of the data gateway: list, describe, online vectors, materialize, training sets."
    group = sub.add_parser("features", help=text, description=text)
    features = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = subcommand(features, "list", list_services, parent)
    p.add_argument("--prefix", help="only names starting with this")

    p = subcommand(features, "describe", describe, parent)
    p.add_argument("name", help="feature service")
    p.add_argument("--version", help="definition version (default: the current one)")

    p = subcommand(features, "get", get, parent)
    p.add_argument("name", help="feature service")
    p.add_argument(
        "--entity", action="append", metavar="KEY=VALUE[,KEY=VALUE]", help="one entity's keys; repeat for more"
    )
    p.add_argument("--entities-file", type=Path, metavar="FILE", help="entities as rows of a CSV/Parquet/JSONL file")
    p.add_argument("--request", action="append", metavar="NAME=VALUE", help="request-time value for every entity")
    p.add_argument("--routing", action="append", metavar="KEY=VALUE", help="routing attribute (tenant, region...)")
    p.add_argument("--version", help="definition version (default: the current one)")

    p = subcommand(features, "materialize", materialize, parent)
    p.add_argument("view", help="feature view")
    p.add_argument("--start", metavar="TIME", help="start of the event-time range (ISO 8601, -7d...)")
    p.add_argument("--end", metavar="TIME", help="end of the range (default now)")
    p.add_argument("--incremental", action="store_true", help="from the view's last watermark")
    p.add_argument("--engine", choices=sorted(ENGINES), default="default", help="batch engine")

    p = subcommand(features, "training-set", training_set, parent)
    p.add_argument("name", help="feature service")
    p.add_argument("entities", type=Path, help="CSV/Parquet/JSONL of entity keys, event_time, and passthrough columns")
    p.add_argument("--output", "-o", type=Path, required=True, help="where to write it (.parquet or .csv)")
    p.add_argument("--engine", choices=sorted(ENGINES), default="default", help="batch engine")
    p.add_argument("--chunk-rows", type=int, default=0, help="rows per streamed chunk (default: the gateway's)")
    p.add_argument("--version", help="definition version (default: the current one)")
