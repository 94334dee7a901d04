"""``infermesh batch-score``: features and a model over a file of entities or rows, predictions to a file.

1. Read the input (CSV, Parquet or JSON lines).
2. Features: with ``--feature-service``, the data gateway's batch path (GetTrainingSet: the
   features of each row as of its ``event_time``, or now when the file has none), computed by
   the gateway's engine (``--engine spark`` asks for its Spark engine); with ``--columns``, the
   file's own columns. The vector is the features in order, vector features flattened.
3. Scoring: ModelInfer calls to the model gateway, ``--batch-size`` rows each (capped at the
   version's max batch size), at most ``--concurrency`` in flight; in process by default, or in
   the partitions of a Spark job with ``--engine spark`` (pyspark, ``local[N]`` or a cluster).
4. Write the kept input columns, the version that served each row, and every output (one
   column per value: ``<output>`` or ``<output>_<i>``, class labels when the version names them).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm
from tritonclient.grpc import service_pb2
from tritonclient.utils import triton_to_np_dtype

from infermesh.datagateway.v1 import data_gateway_pb2 as dg
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh_chassis.errors import NotFound
from infermesh_cli.commands._context import Context, Remote, subcommand
from infermesh_cli.commands._errors import UsageError
from infermesh_cli.commands._kserve import (
    TensorMeta,
    inference,
    model_metadata,
)
from infermesh_cli.commands._output import print_fields
from infermesh_cli.commands._parse import read_table, write_table
from infermesh_cli.commands._scoring import ScoringPlan, score_batch
from infermesh_cli.commands.features import data_gateway, fetch_training_set
from infermesh_cli.commands.models import control

__all__ = ["add_parser"]


# -- features ------------------------------------------------------------------------------------


def _input_meta(inputs: list[TensorMeta], name: str | None, model: str) -> TensorMeta:
    if name is not None:
        for meta in inputs:
            if meta.name == name:
                return meta
        raise UsageError(f"model {model} has no input {name} (inputs: {', '.join(m.name for m in inputs)})")
    if len(inputs) != 1:
        raise UsageError(f"model {model} has {len(inputs)} inputs: name the one the features feed with --input-name")
    return inputs[0]


def _width(meta: TensorMeta) -> int:
    dims = meta.shape[1:] if meta.shape and meta.shape[0] == -1 else meta.shape
    if any(d < 0 for d in dims):
        raise UsageError(f"input {meta.name} has a dynamic shape {list(meta.shape)}: batch-score needs a fixed width")
    return int(np.prod(dims)) if dims else 1


def _matrix(table: pa.Table, columns: list[str], dtype: Any) -> np.ndarray:
    """The columns side by side as one row per entity (list columns flattened in place)."""
    blocks = []
    for name in columns:
        column = table.column(name)
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            blocks.append(np.asarray(column.to_pylist(), dtype=np.float64))
        else:
            try:
                blocks.append(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(-1, 1))
            except (TypeError, ValueError):
                raise UsageError(f"column {name} ({column.type}) is not numeric") from None
    return np.hstack(blocks).astype(dtype) if blocks else np.empty((table.num_rows, 0), dtype=dtype)


async def _features_from_gateway(ctx: Context, args: argparse.Namespace, table: pa.Table) -> tuple[np.ndarray, str]:
    request = dg.DescribeFeatureServiceRequest(name=args.feature_service)
    service = (await data_gateway(ctx).call("DescribeFeatureService", request)).feature_service
    keys = [k.name for e in service.entities for k in e.keys]
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise UsageError(f"{args.input}: no column {', '.join(missing)} (the keys of {args.feature_service})")
    wanted = [*keys, *(r.name for r in service.request_values if r.name in table.column_names)]
    entities = table.select(wanted)
    if "event_time" in table.column_names:
        entities = entities.append_column("event_time", table.column("event_time"))
    else:
        now = pa.array([datetime.now(UTC)] * table.num_rows, type=pa.timestamp("us", tz="UTC"))
        entities = entities.append_column("event_time", now)
    features, fields, version = await fetch_training_set(ctx, args.feature_service, entities, engine=args.engine)
    names = [f.name for f in fields]
    return _matrix(features, names, np.float64), f"{args.feature_service} (definitions {version})"


def _features_from_file(args: argparse.Namespace, table: pa.Table) -> tuple[np.ndarray, str]:
    columns = [c for c in args.columns.split(",") if c]
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise UsageError(f"{args.input}: no column {', '.join(missing)}")
    return _matrix(table, columns, np.float64), f"columns {', '.join(columns)}"


# -- scoring -------------------------------------------------------------------------------------


async def _max_batch(remote: Remote, model: str, version: str) -> int:
    reply = await remote.call("ModelConfig", service_pb2.ModelConfigRequest(name=model, version=version))
    return int(reply.config.max_batch_size)


async def _score_in_process(
    remote: Remote, plan: ScoringPlan, matrix: np.ndarray, concurrency: int, progress: tqdm
) -> tuple[list[str], dict[str, np.ndarray]]:
    starts = list(range(0, len(matrix), plan.batch_size))
    versions: list[str] = [""] * len(matrix)
    blocks: dict[int, dict[str, np.ndarray]] = {}
    pending = iter(starts)

    async def worker() -> None:
        for start in pending:
            rows = matrix[start : start + plan.batch_size]
            version, outputs = score_batch(await remote.call("ModelInfer", plan.request(rows)))
            versions[start : start + len(rows)] = [version] * len(rows)
            blocks[start] = outputs
            progress.update(len(rows))

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(starts)))))
    names = list(blocks[starts[0]]) if starts else []
    return versions, {n: np.vstack([blocks[s][n] for s in starts]) for n in names}


async def _labels(ctx: Context, model: str, version: str) -> dict[str, list[str]]:
    """Class labels of the version's outputs, by output name (empty when it names none)."""
    selector: dict[str, Any] = {}
    if version.isdigit():
        selector["version"] = int(version)
    elif version:
        selector["alias"] = version
    else:
        selector["alias"] = "production"
    request = mg.GetModelVersionRequest(model=model, **selector)
    try:
        record = (await control(ctx).call("GetModelVersion", request)).model_version
    except NotFound:  # labels are a nicety: a model without a production alias still scores
        return {}
    return {t.name: list(t.class_labels) for t in record.outputs if t.class_labels}


def _output_columns(outputs: dict[str, np.ndarray], labels: dict[str, list[str]]) -> dict[str, pa.Array]:
    columns: dict[str, pa.Array] = {}
    for name, block in outputs.items():
        names = labels.get(name, [])
        if block.shape[1] == 1:
            columns[name] = pa.array(block[:, 0])
            continue
        for index in range(block.shape[1]):
            suffix = names[index] if index < len(names) else str(index)
            columns[f"{name}_{suffix}"] = pa.array(block[:, index])
    return columns


async def batch_score(ctx: Context, args: argparse.Namespace) -> None:
    """Score a file of entities or rows with features and a model; write the predictions (Parquet or CSV)."""
    if bool(args.feature_service) == bool(args.columns):
        raise UsageError("say where the features come from: --feature-service NAME or --columns A,B,C")
    if args.output.suffix.lower() not in (".parquet", ".pq", ".csv"):
        raise UsageError(f"{args.output}: the output must end in .parquet or .csv")
    if args.batch_size < 1 or args.concurrency < 1:
        raise UsageError("--batch-size and --concurrency must be at least 1")
    began = time.perf_counter()
    table = read_table(args.input)
    remote = inference(ctx)
    version = args.version or ""
    inputs, outputs_meta = await model_metadata(remote, args.model, version)
    meta = _input_meta(inputs, args.input_name, args.model)
    if args.feature_service:
        matrix, source = await _features_from_gateway(ctx, args, table)
    else:
        matrix, source = _features_from_file(args, table)
    width = _width(meta)
    if matrix.shape[1] != width:
        raise UsageError(
            f"input {meta.name} of {args.model} takes {width} values per row; the features give {matrix.shape[1]}"
        )
    matrix = matrix.astype(triton_to_np_dtype(meta.datatype))
    batching = bool(meta.shape) and meta.shape[0] == -1
    limit = await _max_batch(remote, args.model, version) if batching else 1
    plan = ScoringPlan(
        address=remote.target.address,
        model=args.model,
        version=version,
        meta=meta,
        outputs=tuple(m.name for m in outputs_meta),
        batch_size=min(args.batch_size, limit or 1),
    )
    with tqdm(total=len(matrix), unit="row", desc="scoring", file=sys.stderr, disable=args.no_progress) as progress:
        if args.engine == "spark":
            from infermesh_cli.commands._spark import score_on_spark  # noqa: PLC0415  (pyspark is an optional extra)

            versions, outputs = await asyncio.to_thread(
                score_on_spark, plan, matrix, args.spark_master, args.concurrency, progress
            )
        else:
            versions, outputs = await _score_in_process(remote, plan, matrix, args.concurrency, progress)
    keep = table.column_names if args.keep is None else [c for c in args.keep.split(",") if c]
    missing = [c for c in keep if c not in table.column_names]
    if missing:
        raise UsageError(f"--keep: no column {', '.join(missing)} in {args.input}")
    result = table.select(keep).append_column(
        "model_version", pa.array([int(v) if v.isdigit() else v for v in versions])
    )
    for name, column in _output_columns(outputs, await _labels(ctx, args.model, version)).items():
        result = result.append_column(name, column)
    write_table(result, args.output)
    elapsed = time.perf_counter() - began
    served: dict[str, int] = {}
    for served_version in versions:
        served[served_version] = served.get(served_version, 0) + 1
    view = {
        "rows": len(matrix),
        "batches": -(-len(matrix) // plan.batch_size) if len(matrix) else 0,
        "batch_size": plan.batch_size,
        "engine": args.engine,
        "features": source,
        "model": args.model,
        "versions": {int(v) if v.isdigit() else v: n for v, n in sorted(served.items())},
        "columns": result.column_names,
        "output": str(args.output),
        "elapsed_s": elapsed,
        "rows_per_s": len(matrix) / elapsed if elapsed > 0 else 0.0,
    }
    ctx.emit(
        view,
        lambda: print_fields(
            [
                ("rows", f"{view['rows']} in {view['batches']} batches of up to {view['batch_size']}"),
                ("features", view["features"]),
                ("model", f"{view['model']}: " + ", ".join(f"v{v} {n} rows" for v, n in view["versions"].items())),
                ("engine", view["engine"]),
                ("written to", f"{view['output']} ({len(view['columns'])} columns)"),
                ("elapsed", f"{view['elapsed_s']:.2f} s ({view['rows_per_s']:.0f} rows/s)"),
            ]
        ),
    )


# -- parser --------------------------------------------------------------------------------------


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``infermesh batch-score``."""
    p = subcommand(sub, "batch-score", batch_score, parent)
    p.add_argument("input", type=Path, help="entities or rows: .csv, .parquet or .jsonl")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", help="a version number or an alias (default: the traffic policy's choice per batch)")
    p.add_argument("--output", "-o", type=Path, required=True, help="predictions file (.parquet or .csv)")
    p.add_argument("--feature-service", metavar="NAME", help="compute the features with the data gateway's batch path")
    p.add_argument("--columns", metavar="A,B,C", help="or take the features from these columns of the input, in order")
    p.add_argument("--input-name", metavar="NAME", help="the model input the features feed (default: its only input)")
    p.add_argument("--keep", metavar="A,B", help="input columns copied to the output (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per inference call (default 256)")
    p.add_argument("--concurrency", type=int, default=4, help="inference calls in flight (default 4)")
    p.add_argument(
        "--engine",
        choices=["local", "spark"],
        default="local",
        help="local: in this process; spark: features on the gateway's Spark engine, scoring in Spark partitions",
    )
    p.add_argument("--spark-master", default="local[2]", help="Spark master for --engine spark (default local[2])")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
