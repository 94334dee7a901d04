"""Batch scoring in the partitions of a Spark job (``infermesh batch-score --engine spark``).

The feature rows become a Spark DataFrame; each partition runs in a Spark Python worker, which
calls the model gateway's ModelInfer for blocks of ``batch_size`` rows over its own channel
(``mapInArrow``). ``local[N]`` runs N workers on this machine; a ``spark://`` master spreads
the partitions over a cluster whose workers can reach the gateway. A partition's failure
comes back as the gRPC status and message of the call that failed.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from infermesh_cli.commands._errors import CliError, UsageError
from infermesh_cli.commands._scoring import ScoringPlan, score_batch

try:
    from pyspark.sql import SparkSession
    from pyspark.sql import types as T
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise UsageError("--engine spark needs pyspark: install infermesh-cli[spark]") from exc

__all__ = ["score_on_spark"]

ROW = "__row"
MARKER = "infermesh-batch-score:"
"""Prefix of a worker's error message, so the driver can find it in Spark's report."""


def _score_partition(
    batches: Iterator[pa.RecordBatch], plan: ScoringPlan, width: int, outputs: list[str], timeout_s: float
) -> Iterator[pa.RecordBatch]:
    """Runs in a Spark Python worker: score this partition's rows, block by block."""
    import grpc  # noqa: PLC0415  (imported in the worker process)
    from tritonclient.grpc import service_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(plan.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for batch in batches:
            rows = batch.column(ROW).to_numpy()
            flat = batch.column("features").flatten().to_numpy(zero_copy_only=False)
            matrix = np.asarray(flat, dtype=np.float64).reshape(len(rows), width)
            for start in range(0, len(rows), plan.batch_size):
                block = matrix[start : start + plan.batch_size]
                try:
                    response = stub.ModelInfer(plan.request(block), timeout=timeout_s)
                except grpc.RpcError as error:
                    raise RuntimeError(f"{MARKER} {error.code().name}: {error.details()}") from None
                version, scored = score_batch(response)
                arrays = [pa.array(rows[start : start + len(block)]), pa.array([version] * len(block))]
                arrays += [pa.array(scored[name].astype(np.float64).tolist()) for name in outputs]
                yield pa.RecordBatch.from_arrays(arrays, names=[ROW, "model_version", *outputs])


_LOG4J = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = spark %p %c{1}: %m%n
"""
"""Spark's own logging: errors only, so the progress bar and the summary stay readable."""


def _session(master: str, rows_per_partition: int, workdir: Path) -> Any:
    """A Spark session whose DataFrames from Arrow get one partition per ``rows_per_partition`` rows."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # pyspark's pandas-version notice, in workers
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support", category=FutureWarning)
    log4j = workdir / "log4j2.properties"
    log4j.write_text(_LOG4J)
    session = (
        SparkSession.builder.master(master)
        .appName("infermesh-batch-score")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log4j}")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(rows_per_partition))
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def _failure(error: Exception) -> CliError:
    text = str(error)
    if MARKER in text:
        line = text[text.index(MARKER) + len(MARKER) :].strip().splitlines()[0]
        return CliError(f"{line} (in a Spark partition)")
    return CliError(f"the Spark job failed: {text.strip().splitlines()[0] if text.strip() else type(error).__name__}")


def score_on_spark(
    plan: ScoringPlan, matrix: np.ndarray, master: str, partitions: int, progress: tqdm
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Score ``matrix`` in ``partitions`` Spark partitions (one Arrow batch each); versions and outputs in row order."""
    workdir = Path(tempfile.mkdtemp(prefix="infermesh-spark-"))
    session = _session(master, max(1, -(-len(matrix) // max(1, partitions))), workdir)
    try:
        rows = pa.array(np.arange(len(matrix), dtype=np.int64))
        features = pa.array(matrix.astype(np.float64).tolist(), type=pa.list_(pa.float64()))
        frame = session.createDataFrame(pa.table({ROW: rows, "features": features}))
        outputs = list(plan.outputs)
        schema = T.StructType(
            [
                T.StructField(ROW, T.LongType()),
                T.StructField("model_version", T.StringType()),
                *(T.StructField(name, T.ArrayType(T.DoubleType())) for name in outputs),
            ]
        )
        width = matrix.shape[1]
        score = functools.partial(_score_partition, plan=plan, width=width, outputs=outputs, timeout_s=60.0)
        done = session.sparkContext.accumulator(0)

        def counted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in score(batches):
                done.add(batch.num_rows)
                yield batch

        finished = threading.Event()
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["table"] = frame.mapInArrow(counted, schema).toArrow()
            except Exception as error:  # Py4J and pyspark wrap a worker's failure in several types
                result["error"] = error
            finally:
                finished.set()

        thread = threading.Thread(target=run, name="spark-batch-score", daemon=True)
        thread.start()
        while not finished.wait(0.2):
            progress.update(done.value - progress.n)
        thread.join()
        if "error" in result:
            raise _failure(result["error"])
        progress.update(len(matrix) - progress.n)
        table = result["table"].sort_by(ROW)
        versions = [str(v) for v in table.column("model_version").to_pylist()]
        scored = {name: np.asarray(table.column(name).to_pylist(), dtype=np.float64) for name in outputs}
        return versions, scored
    finally:
        session.stop()
        shutil.rmtree(workdir, ignore_errors=True)
