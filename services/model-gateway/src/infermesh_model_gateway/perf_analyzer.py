"""Triton's ``perf_analyzer`` against any KServe v2 gRPC endpoint: the gateway, or a Triton worker.

The ``tritonclient==2.51.0`` wheel installs the 2.51 binary next to the interpreter (``bin/``). It
needs ``libb64.so.0d`` and ``libcudart.so.12``, which the nvidia-pytriton wheel carries under
hashed names: :func:`library_dir` links them by soname into a directory put on the binary's
``LD_LIBRARY_PATH``. :func:`run_perf_analyzer` runs one measurement at one concurrency and
returns its throughput and latency percentiles from the CSV the binary writes.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PerfResult", "library_dir", "perf_analyzer_binary", "run_perf_analyzer"]

_SONAMES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


@dataclass(frozen=True, slots=True)
class PerfResult:
    """One perf_analyzer measurement."""

    concurrency: int
    throughput: float
    """Inferences per second."""
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float


def perf_analyzer_binary() -> Path:
    """The perf_analyzer binary the tritonclient wheel installed (FileNotFoundError when absent)."""
    binary = Path(sys.executable).parent / "perf_analyzer"
    if not binary.exists():
        raise FileNotFoundError(f"no perf_analyzer at {binary}: install tritonclient==2.51.0 into this environment")
    return binary


def library_dir(root: Path) -> Path:
    """A directory with the shared libraries perf_analyzer needs, linked by soname."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("perf_analyzer's libraries come from the nvidia-pytriton wheel, which is not installed")
    libs = Path(next(iter(spec.submodule_search_locations))).parent / "nvidia_pytriton.libs"
    root.mkdir(parents=True, exist_ok=True)
    for soname, pattern in _SONAMES.items():
        found = sorted(libs.glob(pattern))
        if not found:
            raise FileNotFoundError(f"no {pattern} in {libs}")
        link = root / soname
        if not link.exists():
            link.symlink_to(found[0])
    return root


def run_perf_analyzer(
    address: str,
    model: str,
    *,
    concurrency: int,
    shapes: dict[str, list[int]],
    measurement_ms: int = 2000,
    batch_size: int = 1,
    workdir: Path | None = None,
    timeout_s: float = 300.0,
) -> PerfResult:
    """Measure ``model`` at ``address`` (gRPC) at one concurrency with random inputs of ``shapes``."""
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        out = Path(scratch) / "perf.csv"
        args = [
            str(perf_analyzer_binary()),
            "-m",
            model,
            "-u",
            address,
            "-i",
            "grpc",
            "-b",
            str(batch_size),
            f"--concurrency-range={concurrency}:{concurrency}",
            f"--measurement-interval={measurement_ms}",
            "--stability-percentage=999",
            "--max-trials=5",
            "--percentile=99",
            "--input-data=random",
            "-f",
            str(out),
            *(f"--shape={name}:{','.join(map(str, dims))}" for name, dims in shapes.items()),
        ]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(library_dir(Path(scratch) / "lib")), *([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])]
        )
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
        with out.open() as handle:
            row = next(csv.DictReader(handle))
    return PerfResult(
        concurrency=int(row["Concurrency"]),
        throughput=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000,
        p90_ms=float(row["p90 latency"]) / 1000,
        p95_ms=float(row["p95 latency"]) / 1000,
        p99_ms=float(row["p99 latency"]) / 1000,
    )
