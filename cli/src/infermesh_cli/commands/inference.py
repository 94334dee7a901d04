"""``infermesh predict`` (one call to the business center) and ``infermesh infer`` (one KServe v2 model call)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as pb_grpc
from infermesh.common.v1 import common_pb2
from infermesh_cli.commands._context import Context, subcommand
from infermesh_cli.commands._convert import enum_name
from infermesh_cli.commands._errors import UsageError
from infermesh_cli.commands._kserve import decode_outputs, encode_input, infer_request, inference, model_metadata
from infermesh_cli.commands._output import print_fields, print_table
from infermesh_cli.commands._parse import guess_value, load_document, parse_pairs, value_to_proto

__all__ = ["add_parser"]

DEPRECATION_HEADER = "infermesh-deprecation"
"""Trailing metadata in which the model gateway warns callers pinning a deprecated version."""


# -- predict -------------------------------------------------------------------------------------


def _features(args: argparse.Namespace) -> dict[str, Any]:
    features: dict[str, Any] = {}
    if args.features_file is not None:
        document = load_document(args.features_file)
        if not isinstance(document, dict):
            raise UsageError(f"{args.features_file}: expected an object of feature name -> value")
        features.update(document)
    features.update({k: guess_value(v) for k, v in parse_pairs(args.feature, "--feature").items()})
    return features


def _prediction_view(reply: pb.PredictResponse) -> dict[str, Any]:
    degradation = reply.degradation
    return {
        "request_id": reply.request_id,
        "scene": reply.scene,
        "scene_config_version": reply.scene_config_version,
        "model": reply.model,
        "model_version": reply.model_version,
        "route": enum_name(pb.RouteSource, reply.route, "ROUTE_SOURCE_"),
        "variant": reply.variant,
        "assignments": [
            {"experiment": a.experiment, "layer": a.layer, "variant": a.variant, "bucket": a.bucket}
            for a in reply.assignments
        ],
        "label": reply.prediction.label,
        "scores": dict(reply.prediction.scores),
        "degraded": degradation.degraded,
        "degradation": {
            "reason": enum_name(common_pb2.DegradationReason, degradation.reason, "DEGRADATION_REASON_"),
            "detail": degradation.detail,
            "served_by": enum_name(common_pb2.ServedBy, degradation.served_by, "SERVED_BY_"),
        }
        if degradation.degraded
        else None,
        "latencies_ms": {h.hop: h.latency_ms for h in reply.latencies},
        "feature_lineage": {
            "feature_service": reply.feature_lineage.feature_service,
            "definition_version": reply.feature_lineage.definition_version,
            "views": [
                {"feature_view": v.feature_view, "source": v.source, "from_fallback": v.from_fallback}
                for v in reply.feature_lineage.views
            ],
        },
    }


def _print_prediction(view: dict[str, Any], unit: str) -> None:
    served = f"{view['model']} v{view['model_version']}" if view["model"] else "no model"
    degradation = view["degradation"]
    print_fields(
        [
            ("scene", f"{view['scene']} (config v{view['scene_config_version']})"),
            ("unit", unit),
            (
                "served by",
                f"{served}, route {view['route']}" + (f", variant {view['variant']}" if view["variant"] else ""),
            ),
            ("label", view["label"]),
            ("scores", {k: round(v, 6) for k, v in sorted(view["scores"].items())}),
            (
                "degraded",
                "no"
                if degradation is None
                else f"yes: {degradation['reason']} ({degradation['detail']}), served by {degradation['served_by']}",
            ),
            ("assignments", [f"{a['experiment']}/{a['layer']}: {a['variant']}" for a in view["assignments"]]),
            ("latency ms", {hop: f"{ms:.2f}" for hop, ms in view["latencies_ms"].items()}),
            ("request id", view["request_id"]),
        ]
    )


async def predict(ctx: Context, args: argparse.Namespace) -> None:
    """One Predict call to the business center for a scene and a unit."""
    request = pb.PredictRequest(
        scene=args.scene,
        unit_id=args.unit,
        attributes=parse_pairs(args.attribute, "--attribute"),
        request_id=args.request_id or "",
    )
    for name, raw in _features(args).items():
        request.features[name].CopyFrom(value_to_proto(raw, f"feature {name}"))
    reply = await ctx.remote("biz-center", pb_grpc.BizCenterServiceStub).call("Predict", request)
    view = _prediction_view(reply)
    ctx.emit(view, lambda: _print_prediction(view, args.unit))


# -- infer ---------------------------------------------------------------------------------------


def _values(text: str, what: str) -> Any:
    """``[[1, 2], [3, 4]]`` (JSON) or ``1,2,3`` (one row)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    return [guess_value(part.strip()) for part in text.split(",")]


def _given_inputs(args: argparse.Namespace) -> dict[str, Any]:
    given: dict[str, Any] = {}
    if args.inputs_file is not None:
        document = load_document(args.inputs_file)
        if not isinstance(document, dict):
            raise UsageError(f"{args.inputs_file}: expected an object of input name -> values")
        given.update(document)
    for item in args.input or []:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--input: {item!r} is not NAME=VALUES (e.g. X=[[0.1,0.2]] or X=0.1,0.2)")
        given[name.strip()] = _values(text, f"--input {name}")
    if not given:
        raise UsageError("give the inputs: --input NAME=VALUES (repeatable) or --inputs-file FILE.json")
    return given


def _output_view(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
    data = [v.decode(errors="replace") for v in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _nested(values: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return values
    step = len(values) // shape[0] if shape[0] else 0
    return [_nested(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


async def infer(ctx: Context, args: argparse.Namespace) -> None:
    """One KServe v2 ModelInfer call straight to the model gateway (input datatypes from the model's metadata)."""
    remote = inference(ctx)
    version = args.version or ""
    inputs, _ = await model_metadata(remote, args.model, version)
    given = _given_inputs(args)
    known = {meta.name: meta for meta in inputs}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UsageError(f"model {args.model} has no input {', '.join(unknown)} (inputs: {', '.join(known)})")
    missing = sorted(set(known) - set(given))
    if missing:
        raise UsageError(f"model {args.model} needs input {', '.join(missing)}")
    tensors = [encode_input(known[name], values) for name, values in given.items()]
    parameters = parse_pairs(args.param, "--param")
    request = infer_request(args.model, version, tensors, parameters, args.output)
    response, trailers = await remote.call_with_trailers("ModelInfer", request)
    warning = trailers.get(DEPRECATION_HEADER)
    view = {
        "model": response.model_name,
        "model_version": int(response.model_version) if response.model_version.isdigit() else response.model_version,
        "id": response.id,
        "outputs": [_output_view(name, dt, array) for name, (dt, array) in decode_outputs(response).items()],
        "warning": warning,
    }

    def render() -> None:
        print_fields([("model", f"{view['model']} v{view['model_version']}")])
        print()
        print_table(
            ["output", "datatype", "shape", "values"],
            [
                [
                    o["name"],
                    o["datatype"],
                    json.dumps(o["shape"]),
                    json.dumps(_nested([_rounded(v) for v in o["data"]], o["shape"])),
                ]
                for o in view["outputs"]
            ],
        )

    ctx.emit(view, render)
    if warning:
        ctx.warn(f"warning: {warning}")


def _rounded(number: Any) -> Any:
    return float(f"{number:.6g}") if isinstance(number, float) else number


# -- parser --------------------------------------------------------------------------------------


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``infermesh predict`` and ``infermesh infer``."""
    p = subcommand(sub, "predict", predict, parent)
    p.add_argument("scene", help="scene name")
    p.add_argument("unit", help="the unit id (user, device, order...)")
    p.add_argument("--feature", "-f", action="append", metavar="NAME=VALUE", help="a value the caller knows")
    p.add_argument("--features-file", type=Path, metavar="FILE", help="a JSON/YAML object of feature values")
    p.add_argument("--attribute", "-a", action="append", metavar="KEY=VALUE", help="attribute for gray-release rules")
    p.add_argument("--request-id", help="request id for tracing (default: generated)")

    p = subcommand(sub, "infer", infer, parent)
    p.add_argument("model", help="model name (model@alias pins an alias)")
    p.add_argument("--version", help="a version number or an alias (default: the traffic policy's choice)")
    p.add_argument(
        "--input", "-i", action="append", metavar="NAME=VALUES", help="e.g. X=[[0.1,0.2,0.3]] or X=0.1,0.2,0.3"
    )
    p.add_argument("--inputs-file", type=Path, metavar="FILE", help="a JSON/YAML object of input name -> values")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="request parameter (e.g. unit_id=42)")
    p.add_argument("--output", action="append", metavar="NAME", help="only this output; repeatable")
