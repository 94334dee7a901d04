"""``infermesh models``: the model gateway's registry, deployment, traffic, aliases, audit and retirement."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as pb_grpc
from infermesh_cli.commands._context import Context, Remote, all_pages, audit_filter, subcommand
from infermesh_cli.commands._convert import audit_view, enum_name, print_audit, seconds, timestamp
from infermesh_cli.commands._errors import UsageError
from infermesh_cli.commands._output import cell, print_fields, print_table
from infermesh_cli.commands._parse import parse_duration, parse_message, parse_pairs, read_document, to_duration
from infermesh_model_gateway.domain import queue_delay_text

__all__ = ["add_parser", "control", "model_view", "traffic_view", "version_view"]

FORMATS = {
    "onnx": pb.MODEL_FORMAT_ONNX,
    "sklearn": pb.MODEL_FORMAT_SKLEARN,
    "xgboost": pb.MODEL_FORMAT_XGBOOST,
    "lightgbm": pb.MODEL_FORMAT_LIGHTGBM,
    "pmml": pb.MODEL_FORMAT_PMML,
}
SERIALIZATIONS = {
    "native": pb.ARTIFACT_SERIALIZATION_NATIVE,
    "pickle": pb.ARTIFACT_SERIALIZATION_PICKLE,
    "joblib": pb.ARTIFACT_SERIALIZATION_JOBLIB,
}


def control(ctx: Context) -> Remote:
    """The model gateway's control plane."""
    return ctx.remote("model-gateway", pb_grpc.ModelControlServiceStub)


# -- views ---------------------------------------------------------------------------------------


def _state(state: int) -> str:
    return enum_name(pb.ModelVersionState, state, "MODEL_VERSION_STATE_")


def traffic_view(policy: pb.TrafficPolicy) -> dict[str, Any]:
    """A traffic policy: weights with their shares, stickiness, mirror, revision."""
    total = sum(w.weight for w in policy.weights)
    mirror = None
    if policy.mirror.shadow_version:
        mirror = {
            "version": policy.mirror.shadow_version,
            "fraction": policy.mirror.fraction,
            "timeout_s": seconds(policy.mirror.timeout) if policy.mirror.HasField("timeout") else None,
        }
    return {
        "model": policy.model,
        "weights": [
            {"version": w.version, "weight": w.weight, "share": w.weight / total if total else 0.0}
            for w in policy.weights
        ],
        "sticky_key": policy.sticky.key_name if policy.sticky.enabled else None,
        "mirror": mirror,
        "revision": policy.revision,
        "updated_by": policy.updated_by,
        "update_time": timestamp(policy, "update_time"),
    }


def _traffic_text(view: dict[str, Any]) -> str:
    if not view["weights"]:
        text = "all to production"
    else:
        text = ", ".join(f"v{w['version']} {100 * w['share']:.4g}%" for w in view["weights"])
    if view["sticky_key"]:
        text += f"; sticky on {view['sticky_key']}"
    if view["mirror"]:
        text += f"; mirror {100 * view['mirror']['fraction']:.4g}% to v{view['mirror']['version']}"
    return text


def model_view(model: pb.Model) -> dict[str, Any]:
    """A registered model with its aliases and traffic policy."""
    return {
        "name": model.name,
        "description": model.description,
        "owner": model.owner,
        "tags": dict(model.tags),
        "aliases": dict(sorted(model.aliases.items())),
        "latest_version": model.latest_version,
        "serving_versions": sorted(model.serving_versions),
        "traffic": traffic_view(model.traffic_policy),
        "create_time": timestamp(model, "create_time"),
        "update_time": timestamp(model, "update_time"),
    }


def _tensor(spec: common_pb2.TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": spec.datatype,
        "shape": list(spec.shape),
        "class_labels": list(spec.class_labels),
        "description": spec.description,
    }


def _drift_baseline(version: pb.ModelVersion) -> dict[str, Any] | None:
    if not version.HasField("drift_baseline"):
        return None
    baseline = version.drift_baseline
    return {"uri": baseline.uri or None, "baseline_id": baseline.baseline_id or None, "sha256": baseline.sha256}


def _retirement(version: pb.ModelVersion) -> dict[str, Any] | None:
    if not version.HasField("retirement"):
        return None
    retirement = version.retirement
    return {
        "successor_model": retirement.successor_model or None,
        "successor_version": retirement.successor_version or None,
        "deprecate_time": timestamp(retirement, "deprecate_time"),
        "retire_time": timestamp(retirement, "retire_time"),
        "reason": retirement.reason,
        "actor": retirement.actor,
    }


def version_view(version: pb.ModelVersion) -> dict[str, Any]:
    """One model version: state, artifact, schema, deployment, replicas, retirement."""
    deployment = version.deployment
    return {
        "model": version.model,
        "version": version.version,
        "state": _state(version.state),
        "state_detail": version.state_detail,
        "format": enum_name(pb.ModelFormat, version.format, "MODEL_FORMAT_"),
        "artifact": {
            "uri": version.artifact.uri,
            "sha256": version.artifact.sha256,
            "size_bytes": version.artifact.size_bytes,
        },
        "inputs": [_tensor(t) for t in version.inputs],
        "outputs": [_tensor(t) for t in version.outputs],
        "deployment": {
            "max_batch_size": deployment.max_batch_size,
            "dynamic_batching": deployment.dynamic_batching.enabled,
            "max_queue_delay_us": (
                deployment.dynamic_batching.max_queue_delay.ToMicroseconds()
                if deployment.dynamic_batching.enabled
                else None
            ),
            "preferred_batch_sizes": list(deployment.dynamic_batching.preferred_batch_sizes),
            "instance_count": deployment.instance_count or 1,
        },
        "drift_baseline": _drift_baseline(version),
        "aliases": sorted(version.aliases),
        "owner": version.owner,
        "description": version.description,
        "tags": dict(version.tags),
        "created_by": version.created_by,
        "create_time": timestamp(version, "create_time"),
        "update_time": timestamp(version, "update_time"),
        "replicas": [
            {
                "worker_id": r.worker_id,
                "address": r.address,
                "state": enum_name(pb.ReplicaState, r.state, "REPLICA_STATE_"),
                "detail": r.detail,
                "worker_restarts": r.worker_restarts,
            }
            for r in version.replicas
        ],
        "retirement": _retirement(version),
    }


# -- rendering -----------------------------------------------------------------------------------


def _print_versions(versions: list[dict[str, Any]]) -> None:
    print_table(
        ["version", "state", "format", "aliases", "created", "detail"],
        [
            [
                v["version"],
                v["state"],
                v["format"],
                v["aliases"],
                v["create_time"],
                v["state_detail"] or _retire_text(v["retirement"]),
            ]
            for v in versions
        ],
    )


def _retire_text(retirement: dict[str, Any] | None) -> str:
    if retirement is None:
        return ""
    successor = retirement["successor_version"]
    text = f"retires {retirement['retire_time']}"
    return f"{text}, use v{successor}" if successor else text


def _baseline_text(baseline: dict[str, Any] | None) -> str:
    if baseline is None:
        return ""
    where = baseline["uri"] or f"monitor baseline {baseline['baseline_id']}"
    return f"{where} (sha256 {baseline['sha256'][:12]}...)" if baseline["sha256"] else where


def _print_model(view: dict[str, Any]) -> None:
    print_fields(
        [
            ("model", view["name"]),
            ("description", view["description"]),
            ("owner", view["owner"]),
            ("latest version", view["latest_version"]),
            ("serving", [f"v{v}" for v in view["serving_versions"]]),
            ("aliases", view["aliases"]),
            ("traffic", _traffic_text(view["traffic"])),
            ("tags", view["tags"]),
            ("updated", view["update_time"]),
        ]
    )


def _print_version(view: dict[str, Any]) -> None:
    deployment = view["deployment"]
    print_fields(
        [
            ("model", f"{view['model']} v{view['version']}"),
            ("state", f"{view['state']}{': ' + view['state_detail'] if view['state_detail'] else ''}"),
            ("format", view["format"]),
            ("artifact", f"{view['artifact']['uri']} (sha256 {view['artifact']['sha256'][:12]}...)"),
            ("aliases", view["aliases"]),
            (
                "deployment",
                f"max batch {deployment['max_batch_size']}, dynamic batching "
                f"{cell(deployment['dynamic_batching'])}"
                + (
                    f" (prefers {cell(deployment['preferred_batch_sizes'])})"
                    if deployment["preferred_batch_sizes"]
                    else ""
                )
                + (
                    f", max queue delay {queue_delay_text(deployment['max_queue_delay_us'])}"
                    if deployment["max_queue_delay_us"] is not None
                    else ""
                )
                + f", {deployment['instance_count']} instance(s)",
            ),
            ("drift baseline", _baseline_text(view["drift_baseline"])),
            ("owner", view["owner"]),
            ("created", f"{view['create_time']} by {view['created_by'] or '-'}"),
            ("retirement", _retire_text(view["retirement"])),
        ]
    )
    print()
    print_table(
        ["tensor", "direction", "datatype", "shape", "class labels", "description"],
        [
            [t["name"], direction, t["datatype"], json.dumps(t["shape"]), t["class_labels"], t["description"]]
            for direction, tensors in (("input", view["inputs"]), ("output", view["outputs"]))
            for t in tensors
        ],
    )
    if view["replicas"]:
        print()
        print_table(
            ["worker", "address", "replica", "restarts", "detail"],
            [[r["worker_id"], r["address"], r["state"], r["worker_restarts"], r["detail"]] for r in view["replicas"]],
        )


def _print_traffic(view: dict[str, Any]) -> None:
    print_fields(
        [
            ("model", view["model"]),
            ("traffic", _traffic_text(view)),
            ("revision", f"{view['revision']} by {view['updated_by'] or '-'} at {view['update_time'] or '-'}"),
        ]
    )
    if view["weights"]:
        print()
        print_table(
            ["version", "weight", "share"],
            [[w["version"], w["weight"], f"{100 * w['share']:.4g}%"] for w in view["weights"]],
        )


# -- registration input --------------------------------------------------------------------------


def _tensor_spec(text: str, what: str) -> common_pb2.TensorSpec:
    """``NAME:DTYPE:SHAPE[:LABELS]``, e.g. ``X:FP32:6`` or ``probabilities:FP32:2:stay,churn``."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or not parts[0] or not parts[1]:
        raise UsageError(f"{what}: {text!r} is not NAME:DTYPE:SHAPE[:LABELS] (e.g. X:FP32:6, p:FP32:2:stay,churn)")
    try:
        shape = [int(d) for d in parts[2].split(",") if d]
    except ValueError:
        raise UsageError(f"{what}: {text!r}: the shape is comma-separated integers (-1 for dynamic)") from None
    labels = [label for label in parts[3].split(",") if label] if len(parts) == 4 else []
    return common_pb2.TensorSpec(name=parts[0], datatype=parts[1].upper(), shape=shape, class_labels=labels)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def register_request(ctx: Context, args: argparse.Namespace) -> pb.RegisterModelVersionRequest:
    """The RegisterModelVersion request of ``models register``: the spec file, then the options over it."""
    request = pb.RegisterModelVersionRequest()
    if args.spec is not None:
        parse_message(read_document(args.spec), request)
    request.model = args.name
    request.actor = ctx.actor
    if args.reason:
        request.reason = args.reason
    if args.format:
        request.format = FORMATS[args.format]
    artifact = request.artifact
    if args.artifact:
        local = Path(args.artifact.removeprefix("file://"))
        artifact.uri = str(local.resolve()) if local.exists() else args.artifact
    if args.sha256:
        artifact.sha256 = args.sha256
    elif not artifact.sha256 and artifact.uri and Path(artifact.uri).is_file():
        artifact.sha256 = _sha256(Path(artifact.uri))
    if args.trusted:
        artifact.trusted = True
    if args.serialization:
        artifact.serialization = SERIALIZATIONS[args.serialization]
    if args.input:
        del request.inputs[:]
        request.inputs.extend(_tensor_spec(t, "--input") for t in args.input)
    if args.output:
        del request.outputs[:]
        request.outputs.extend(_tensor_spec(t, "--output") for t in args.output)
    deployment = request.deployment
    if args.max_batch_size is not None:
        deployment.max_batch_size = args.max_batch_size
    if args.dynamic_batching is not None:
        deployment.dynamic_batching.enabled = True
        if args.dynamic_batching:
            delay = parse_duration(args.dynamic_batching, "--dynamic-batching", unit_required=True)
            deployment.dynamic_batching.max_queue_delay.CopyFrom(to_duration(delay))
    if args.preferred_batch_size:
        deployment.dynamic_batching.preferred_batch_sizes[:] = args.preferred_batch_size
    if args.instance_count is not None:
        deployment.instance_count = args.instance_count
    deployment.backend_parameters.update(parse_pairs(args.param, "--param"))
    for field in ("owner", "description"):
        if getattr(args, field):
            setattr(request, field, getattr(args, field))
    request.tags.update(parse_pairs(args.tag, "--tag"))
    if args.baseline_uri:
        request.drift_baseline.uri = args.baseline_uri
    if not request.format:
        raise UsageError("give the artifact's --format (or `format` in --spec)")
    if not request.artifact.uri:
        raise UsageError("give the ARTIFACT (a path or URI), or `artifact.uri` in --spec")
    return request


# -- handlers ------------------------------------------------------------------------------------


async def register(ctx: Context, args: argparse.Namespace) -> None:
    """Register a new version of a model (and deploy it with --deploy)."""
    request = register_request(ctx, args)
    version = (await control(ctx).call("RegisterModelVersion", request, timeout_s=ctx.batch_timeout_s)).model_version
    if args.deploy:
        deploy_request = pb.DeployModelVersionRequest(
            model=version.model, version=version.version, actor=ctx.actor, reason=args.reason
        )
        reply = await control(ctx).call("DeployModelVersion", deploy_request, timeout_s=ctx.batch_timeout_s)
        version = reply.model_version
    view = version_view(version)
    ctx.emit(view, lambda: _print_version(view))


async def list_models(ctx: Context, args: argparse.Namespace) -> None:
    """List registered models with their serving versions, aliases and traffic."""
    request = pb.ListModelsRequest(name_prefix=args.prefix or "", owner=args.owner or "")
    request.tags.update(parse_pairs(args.tag, "--tag"))
    models = [model_view(m) for m in await all_pages(control(ctx), "ListModels", request, "models", limit=args.limit)]
    ctx.emit(
        models,
        lambda: print_table(
            ["model", "latest", "serving", "aliases", "traffic", "owner"],
            [
                [
                    m["name"],
                    m["latest_version"],
                    m["serving_versions"],
                    m["aliases"],
                    _traffic_text(m["traffic"]),
                    m["owner"],
                ]
                for m in models
            ],
        ),
    )


def _selector(text: str) -> dict[str, Any]:
    return {"version": int(text)} if text.isdigit() else {"alias": text}


async def get(ctx: Context, args: argparse.Namespace) -> None:
    """Show a model and its versions, or one version (by number or alias)."""
    if args.version is not None:
        request = pb.GetModelVersionRequest(model=args.name, **_selector(args.version))
        view = version_view((await control(ctx).call("GetModelVersion", request)).model_version)
        ctx.emit(view, lambda: _print_version(view))
        return
    model = model_view((await control(ctx).call("GetModel", pb.GetModelRequest(model=args.name))).model)
    request = pb.ListModelVersionsRequest(model=args.name)
    versions = [version_view(v) for v in await all_pages(control(ctx), "ListModelVersions", request, "model_versions")]

    def render() -> None:
        _print_model(model)
        print()
        _print_versions(versions)

    ctx.emit({"model": model, "versions": versions}, render)


async def deploy(ctx: Context, args: argparse.Namespace) -> None:
    """Load a version on its workers and wait until it is SERVING (or FAILED)."""
    request = pb.DeployModelVersionRequest(
        model=args.name,
        version=args.version,
        return_immediately=args.no_wait,
        actor=ctx.actor,
        reason=args.reason,
    )
    reply = await control(ctx).call("DeployModelVersion", request, timeout_s=ctx.batch_timeout_s)
    view = version_view(reply.model_version)
    ctx.emit(view, lambda: _print_versions([view]))


async def undeploy(ctx: Context, args: argparse.Namespace) -> None:
    """Drain and unload a version (refused while traffic or an alias points at it)."""
    request = pb.UndeployModelVersionRequest(model=args.name, version=args.version, actor=ctx.actor, reason=args.reason)
    if args.drain_timeout is not None:
        request.drain_timeout.CopyFrom(to_duration(parse_duration(args.drain_timeout, "--drain-timeout")))
    reply = await control(ctx).call("UndeployModelVersion", request, timeout_s=ctx.batch_timeout_s)
    view = version_view(reply.model_version)
    ctx.emit(view, lambda: _print_versions([view]))


async def promote(ctx: Context, args: argparse.Namespace) -> None:
    """Make a version `production` with 100% of the traffic."""
    request = pb.PromoteModelVersionRequest(model=args.name, version=args.version, actor=ctx.actor, reason=args.reason)
    reply = await control(ctx).call("PromoteModelVersion", request)
    view = {"model": model_view(reply.model), "previous_version": reply.previous_version or None}

    def render() -> None:
        print(f"{args.name}: v{args.version} is production (was {cell(view['previous_version'])})")
        _print_model(view["model"])

    ctx.emit(view, render)


async def rollback(ctx: Context, args: argparse.Namespace) -> None:
    """Move `production` and all traffic back to the previous production version (or --to)."""
    request = pb.RollbackModelRequest(model=args.name, to_version=args.to or 0, actor=ctx.actor, reason=args.reason)
    reply = await control(ctx).call("RollbackModel", request)
    view = {"model": model_view(reply.model), "rolled_back_version": reply.rolled_back_version}

    def render() -> None:
        production = view["model"]["aliases"].get("production")
        print(f"{args.name}: rolled back v{reply.rolled_back_version}; production is v{production}")
        _print_model(view["model"])

    ctx.emit(view, render)


async def traffic_get(ctx: Context, args: argparse.Namespace) -> None:
    """Show a model's traffic policy."""
    policy = (await control(ctx).call("GetTrafficPolicy", pb.GetTrafficPolicyRequest(model=args.name))).policy
    view = traffic_view(policy)
    ctx.emit(view, lambda: _print_traffic(view))


def _weights(text: str) -> list[pb.VersionWeight]:
    if text in ("", "none", "production"):
        return []
    weights = []
    for version, weight in parse_pairs([text], "WEIGHTS").items():
        if not version.isdigit() or not weight.isdigit():
            raise UsageError(f"WEIGHTS: {version}={weight}: give VERSION=WEIGHT with whole numbers, e.g. 1=90,2=10")
        weights.append(pb.VersionWeight(version=int(version), weight=int(weight)))
    return weights


def _mirror(text: str) -> pb.Mirror:
    version, sep, fraction = text.partition(":")
    try:
        mirror = pb.Mirror(shadow_version=int(version), fraction=float(fraction) if sep else 1.0)
    except ValueError:
        raise UsageError(f"--mirror: {text!r} is not VERSION:FRACTION (e.g. 2:0.1)") from None
    if not 0 <= mirror.fraction <= 1:
        raise UsageError(f"--mirror: the fraction {mirror.fraction} is not in [0, 1]")
    return mirror


async def traffic_set(ctx: Context, args: argparse.Namespace) -> None:
    """Change a model's traffic policy: weights, stickiness, mirror (what is not given is kept)."""
    remote = control(ctx)
    policy = (await remote.call("GetTrafficPolicy", pb.GetTrafficPolicyRequest(model=args.name))).policy
    revision = policy.revision
    if args.weights is not None:
        del policy.weights[:]
        policy.weights.extend(_weights(args.weights))
    if args.sticky_key is not None:
        policy.sticky.CopyFrom(pb.StickyRouting(enabled=bool(args.sticky_key), key_name=args.sticky_key))
    if args.mirror is not None:
        timeout = policy.mirror.timeout if policy.mirror.HasField("timeout") else None
        policy.mirror.CopyFrom(_mirror(args.mirror) if args.mirror not in ("", "none") else pb.Mirror())
        if timeout is not None and policy.mirror.shadow_version:
            policy.mirror.timeout.CopyFrom(timeout)
    if args.mirror_timeout is not None:
        policy.mirror.timeout.CopyFrom(to_duration(parse_duration(args.mirror_timeout, "--mirror-timeout")))
    request = pb.SetTrafficPolicyRequest(
        model=args.name, policy=policy, expected_revision=revision, actor=ctx.actor, reason=args.reason
    )
    view = traffic_view((await remote.call("SetTrafficPolicy", request)).policy)
    ctx.emit(view, lambda: _print_traffic(view))


async def alias_set(ctx: Context, args: argparse.Namespace) -> None:
    """Point an alias at a SERVING version."""
    request = pb.SetAliasRequest(
        model=args.name, alias=args.alias, version=args.version, actor=ctx.actor, reason=args.reason
    )
    view = model_view((await control(ctx).call("SetAlias", request)).model)
    ctx.emit(view, lambda: print_fields([("model", view["name"]), ("aliases", view["aliases"])]))


async def alias_delete(ctx: Context, args: argparse.Namespace) -> None:
    """Remove an alias."""
    request = pb.DeleteAliasRequest(model=args.name, alias=args.alias, actor=ctx.actor, reason=args.reason)
    view = model_view((await control(ctx).call("DeleteAlias", request)).model)
    ctx.emit(view, lambda: print_fields([("model", view["name"]), ("aliases", view["aliases"])]))


async def alias_list(ctx: Context, args: argparse.Namespace) -> None:
    """List a model's aliases."""
    model = (await control(ctx).call("GetModel", pb.GetModelRequest(model=args.name))).model
    aliases = dict(sorted(model.aliases.items()))
    ctx.emit(aliases, lambda: print_table(["alias", "version"], list(aliases.items())))


async def audit(ctx: Context, args: argparse.Namespace) -> None:
    """Read the model gateway's audit log, newest first."""
    target = f"models/{args.name}" if args.name else "models/"
    request = pb.ListAuditEntriesRequest(
        filter=common_pb2.AuditFilter(target_prefix=target, actor=args.by or "", actions=args.action or [])
    )
    keep = audit_filter(target)
    found = await all_pages(control(ctx), "ListAuditEntries", request, "entries", limit=args.limit, keep=keep)
    entries = [audit_view(e) for e in found]
    ctx.emit(entries, lambda: print_audit(entries))


async def retire(ctx: Context, args: argparse.Namespace) -> None:
    """Retire a version: deprecated for a period (pinned callers warned), then RETIRED (NOT_FOUND naming successor)."""
    request = pb.RetireModelVersionRequest(
        model=args.name,
        version=args.version,
        successor_version=args.successor or 0,
        successor_model=args.successor_model or "",
        actor=ctx.actor,
        reason=args.reason,
    )
    if args.deprecation_period:
        request.deprecation_period.CopyFrom(
            to_duration(parse_duration(args.deprecation_period, "--deprecation-period"))
        )
    view = version_view((await control(ctx).call("RetireModelVersion", request)).model_version)

    def render() -> None:
        retirement = view["retirement"] or {}
        print_fields(
            [
                ("model", f"{view['model']} v{view['version']}"),
                ("state", view["state"]),
                ("deprecated since", retirement.get("deprecate_time")),
                ("retires at", retirement.get("retire_time")),
                ("successor", _successor(retirement)),
            ]
        )

    ctx.emit(view, render)


def _successor(retirement: dict[str, Any]) -> str:
    model, version = retirement.get("successor_model"), retirement.get("successor_version")
    if not model and not version:
        return "-"
    return f"{model or 'same model'}{f' v{version}' if version else ''}"


# -- parser --------------------------------------------------------------------------------------


def _reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="why, for the audit log")


def _model_version(parser: argparse.ArgumentParser, version_help: str) -> argparse.ArgumentParser:
    parser.add_argument("name", help="model name")
    parser.add_argument("version", type=int, help=version_help)
    return parser


def _add_register(models: Any, parent: argparse.ArgumentParser) -> None:
    p = subcommand(models, "register", register, parent)
    p.add_argument("name", help="model name (created with its first version)")
    p.add_argument("artifact", nargs="?", help="artifact path or URI (file://, http(s)://, s3://)")
    p.add_argument("--format", choices=sorted(FORMATS), help="artifact format")
    p.add_argument("--spec", type=Path, help="a YAML/JSON RegisterModelVersionRequest; options override it")
    p.add_argument("--sha256", help="expected SHA-256 (computed here for a local file)")
    p.add_argument("--trusted", action="store_true", help="allow a pickle/joblib artifact to load")
    p.add_argument("--serialization", choices=sorted(SERIALIZATIONS), help="how the file is encoded")
    p.add_argument("--input", action="append", metavar="NAME:DTYPE:SHAPE", help="input tensor, e.g. X:FP32:6")
    p.add_argument(
        "--output", action="append", metavar="NAME:DTYPE:SHAPE[:LABELS]", help="output tensor, e.g. p:FP32:2:stay,churn"
    )
    p.add_argument("--max-batch-size", type=int, help="largest batch (0: no batching; shapes are then full shapes)")
    p.add_argument(
        "--dynamic-batching",
        nargs="?",
        const="",
        metavar="DELAY",
        help="turn dynamic batching on, optionally with its max queue delay (500us, 2ms; at most 1s; default 500us)",
    )
    p.add_argument(
        "--preferred-batch-size",
        action="append",
        type=int,
        metavar="N",
        help="a batch size dynamic batching should prefer (repeatable)",
    )
    p.add_argument("--instance-count", type=int, help="model instances per worker")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="backend parameter")
    p.add_argument("--owner", help="team or person accountable")
    p.add_argument("--description", help="free text")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="tag")
    p.add_argument("--baseline-uri", help="drift baseline (training rows) for the monitor")
    p.add_argument("--deploy", action="store_true", help="deploy the new version right away")
    _reason(p)


def _add_reads(models: Any, parent: argparse.ArgumentParser) -> None:
    p = subcommand(models, "list", list_models, parent)
    p.add_argument("--prefix", help="only names starting with this")
    p.add_argument("--owner", help="only models of this owner")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="only models with this tag")
    p.add_argument("--limit", type=int, help="at most this many")

    p = subcommand(models, "get", get, parent)
    p.add_argument("name", help="model name")
    p.add_argument("version", nargs="?", help="a version number or an alias (else the model and all its versions)")

    p = subcommand(models, "audit", audit, parent)
    p.add_argument("name", nargs="?", help="only this model's entries")
    p.add_argument("--by", metavar="ACTOR", help="only changes by this actor")
    p.add_argument("--action", action="append", help="only this action (e.g. traffic_policy.set); repeatable")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")


def _add_lifecycle(models: Any, parent: argparse.ArgumentParser) -> None:
    p = _model_version(subcommand(models, "deploy", deploy, parent), "version number")
    p.add_argument("--no-wait", action="store_true", help="return once DEPLOYING instead of waiting for SERVING")
    _reason(p)

    p = _model_version(subcommand(models, "undeploy", undeploy, parent), "version number")
    p.add_argument("--drain-timeout", metavar="DURATION", help="longest wait for in-flight requests")
    _reason(p)

    _reason(_model_version(subcommand(models, "promote", promote, parent), "version to make production"))

    p = subcommand(models, "rollback", rollback, parent)
    p.add_argument("name", help="model name")
    p.add_argument("--to", type=int, metavar="VERSION", help="version to go back to (default: the previous production)")
    _reason(p)

    p = _model_version(subcommand(models, "retire", retire, parent), "version to retire")
    p.add_argument("--successor", type=int, metavar="VERSION", help="the version callers should move to")
    p.add_argument("--successor-model", metavar="MODEL", help="the model callers should move to")
    p.add_argument(
        "--deprecation-period", metavar="DURATION", help="served with a warning this long first (default: retire now)"
    )
    _reason(p)


def _add_routing(models: Any, parent: argparse.ArgumentParser) -> None:
    traffic = models.add_parser("traffic", help="Show or change a model's traffic policy.")
    traffic_sub = traffic.add_subparsers(dest="traffic_action", required=True, metavar="ACTION")
    p = subcommand(traffic_sub, "get", traffic_get, parent)
    p.add_argument("name", help="model name")
    p = subcommand(traffic_sub, "set", traffic_set, parent)
    p.add_argument("name", help="model name")
    p.add_argument(
        "weights", nargs="?", help="VERSION=WEIGHT,... e.g. 1=90,2=10 ('none': all traffic to the production alias)"
    )
    p.add_argument("--sticky-key", metavar="KEY", help="routing key parameter for stickiness ('' turns it off)")
    p.add_argument("--mirror", metavar="VERSION:FRACTION", help="mirror a share to a shadow version ('none' stops it)")
    p.add_argument("--mirror-timeout", metavar="DURATION", help="longest wait for the shadow")
    _reason(p)

    aliases = models.add_parser("aliases", help="List, set or delete a model's aliases.")
    alias_sub = aliases.add_subparsers(dest="alias_action", required=True, metavar="ACTION")
    p = subcommand(alias_sub, "list", alias_list, parent)
    p.add_argument("name", help="model name")
    p = subcommand(alias_sub, "set", alias_set, parent)
    p.add_argument("name", help="model name")
    p.add_argument("alias", help="alias name, e.g. production, canary")
    p.add_argument("version", type=int, help="a SERVING version")
    _reason(p)
    p = subcommand(alias_sub, "delete", alias_delete, parent)
    p.add_argument("name", help="model name")
    p.add_argument("alias", help="alias name")
    _reason(p)


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``infermesh models ...``."""
    text = "Model registry, deployment, traffic, aliases, audit and retirement (the model gateway)."
    group = sub.add_parser("models", help=text, description=text)
    models = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_register(models, parent)
    _add_reads(models, parent)
    _add_lifecycle(models, parent)
    _add_routing(models, parent)
