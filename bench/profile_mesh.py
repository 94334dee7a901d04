"""Where each service of the mesh spends its CPU under load: py-spy flame graphs (``make profile``).

Starts the mesh exactly as ``bench_mesh.py`` does (data gateway, model gateway with one embedded
Triton worker, business center; events and metrics off), drives Predict at concurrency 16 from
this process, and while the load runs attaches ``py-spy record`` to each service process for
``--duration`` seconds, with C frames (grpc's core; py-spy pauses the process for each sample).
Writes one flame graph per service, ``bench/profiles/<label>/<service>.svg``, and
``bench/profiles/<label>/README.md``: the load's throughput, each service's CPU per request while
profiled, and per service the frames that hold the most samples on their own (self) and the
project's own frames that hold the most in total (inclusive), both read back from the flame graph.

``python bench/profile_mesh.py --label before``; ``--python-only`` samples Python frames only, without
pausing the services.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import html
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from benchkit import cpu_s, drive
from meshkit import API_KEY, CUSTOMERS, Service, start_mesh

from infermesh.bizcenter.v1 import biz_center_pb2 as bz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as bz_grpc

HERE = Path(__file__).resolve().parent
PY_SPY = Path(sys.executable).with_name("py-spy")
CONCURRENCY = 16
WARMUP_S = 3.0
TOP = 15
_ENTRY = ("<module> (", "main (", "run_service (")
"""The services' entry frames, under which everything runs: left out of the inclusive table."""
_FRAME = re.compile(
    r'<g><title>(?P<title>[^<]*) \([\d,]+ samples?, [\d.]+%\)</title><rect [^>]*y="(?P<y>\d+)"[^>]*'
    r'fg:x="(?P<x>\d+)" fg:w="(?P<w>\d+)"'
)


_WAITS = frozenset(
    {
        "epoll_wait",
        "epoll_pwait",
        "poll",
        "ppoll",
        "select",
        "nanosleep",
        "clock_nanosleep",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "sem_wait",
        "sem_timedwait",
        "PyThread_acquire_lock_timed",
    }
)
"""Functions in which a thread waits (for a socket, a lock, the GIL, a queue): a sample whose
stack holds one is a waiting thread's, not CPU spent."""
_PLACES = (
    ("the project (infermesh_*)", ("infermesh",)),
    ("protobuf (upb)", ("_message.abi3.so", "google/protobuf")),
    ("gRPC (cygrpc, grpc/)", ("cygrpc", "grpc/", "libgrpc")),
    ("asyncio and uvloop", ("asyncio/", "uvloop", "uv__", "loop.cpython")),
    ("prometheus_client", ("prometheus_client",)),
    ("structlog and logging", ("structlog", "logging/")),
    ("libc (system calls, memory)", ("libc.so",)),
    ("the interpreter (libpython)", ("libpython", "python3.11")),
)
"""Where a busy sample's own frame belongs, by the file or library it names (first match wins)."""


@dataclass
class Frame:
    """One box of a flame graph: the function (``name (file:line)``), its depth, its samples, and
    the boxes of its callees."""

    title: str
    depth: int
    x: int
    w: int
    callees: list[Frame] = field(default_factory=list)

    @property
    def function(self) -> str:
        """The title without its line number: ``name (file)``, so that a function's lines add up."""
        return re.sub(r":\d+\)$", ")", self.title)

    @property
    def own(self) -> int:
        """Samples in this box and in none of its callees'."""
        return self.w - sum(c.w for c in self.callees)


def read_tree(svg: Path) -> list[Frame]:
    """The root boxes of a py-spy flame graph, each with its callees (from ``fg:x``/``fg:w``, the
    sample positions, and ``y``, the depth: py-spy draws the root at the top)."""
    frames = [
        Frame(html.unescape(m["title"]), int(m["y"]), int(m["x"]), int(m["w"]))
        for m in _FRAME.finditer(svg.read_text())
    ]
    frames.sort(key=lambda f: (f.depth, f.x))
    roots: list[Frame] = []
    level: list[Frame] = []
    depth = None
    above: list[Frame] = []
    for frame in frames:
        if frame.depth != depth:
            depth, above, level = frame.depth, level, []
        level.append(frame)
        parent = next((p for p in above if p.x <= frame.x < p.x + p.w), None)
        (parent.callees if parent is not None else roots).append(frame)
    return roots


@dataclass
class Profile:
    """A flame graph's busy samples: in total, per function on its own (self) and in total
    (inclusive; a function nested in itself counted once), and per place (library)."""

    samples: int = 0
    busy: int = 0
    own: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    places: Counter[str] = field(default_factory=Counter)


def _name(frame: Frame) -> str:
    return frame.title.split(" (", 1)[0]


def _walk(frame: Frame, profile: Profile, stack: tuple[str, ...], waiting: bool) -> int:
    waiting = waiting or _name(frame) in _WAITS
    busy = 0 if waiting else frame.own
    if busy:
        profile.own[frame.function] += busy
        place = next((p for p, marks in _PLACES if any(m in frame.function for m in marks)), "other")
        profile.places[place] += busy
    for callee in frame.callees:
        busy += _walk(callee, profile, (*stack, frame.function), waiting)
    if busy and frame.function not in stack:
        profile.total[frame.function] += busy
    return busy


def read_profile(svg: Path) -> Profile:
    """The busy samples of one flame graph (see :class:`Profile`)."""
    profile = Profile()
    for root in read_tree(svg):
        profile.samples += root.w
        profile.busy += _walk(root, profile, (), False)
    return profile


def _table(counts: Counter[str], busy: int, keep: int, heading: str) -> list[str]:
    lines = [f"| % of busy samples | {heading} |", "| ---: | --- |"]
    for name, count in counts.most_common(keep):
        lines.append(f"| {100 * count / busy:.1f} | `{name}` |")
    return lines


def summarize(svg: Path) -> list[str]:
    """The README section of one flame graph."""
    profile = read_profile(svg)
    if not profile.busy:
        return ["(no busy samples)"]
    project = Counter({k: v for k, v in profile.total.items() if "infermesh" in k and not k.startswith(_ENTRY)})
    return [
        f"{profile.samples} samples, {profile.busy} of them busy (the rest wait on sockets, locks or the GIL).",
        "",
        "Where the busy samples' own frames are:",
        "",
        *_table(profile.places, profile.busy, len(_PLACES) + 1, "place"),
        "",
        "Top frames on their own (self):",
        "",
        *_table(profile.own, profile.busy, TOP, "frame"),
        "",
        "The project's frames holding the most busy samples in total (inclusive):",
        "",
        *_table(project, profile.busy, TOP, "frame"),
    ]


async def _profile(
    biz: Service, pids: dict[str, int], out: Path, *, duration_s: float, rate: int, native: bool
) -> tuple[dict[str, float], dict[str, float]]:
    requests = [bz.PredictRequest(scene="churn-score", unit_id=str(c)) for c in CUSTOMERS]
    metadata = (("x-api-key", API_KEY),)
    async with grpc.aio.insecure_channel(biz.address) as channel:
        predict = bz_grpc.BizCenterServiceStub(channel).Predict

        async def call(n: int) -> object:
            return await predict(requests[n % len(requests)], metadata=metadata, timeout=5)

        async def record() -> tuple[dict[str, float], float]:
            await asyncio.sleep(WARMUP_S)
            before = {name: cpu_s(pid) for name, pid in pids.items()}
            began = time.monotonic()
            spies = []
            for name, pid in pids.items():
                args = ["record", "--pid", str(pid), "--duration", str(int(duration_s)), "--rate", str(rate)]
                args += ["--format", "flamegraph", "--output", str(out / f"{name}.svg")]
                args += ["--native"] if native else ["--nonblocking"]
                spies.append(await asyncio.create_subprocess_exec(str(PY_SPY), *args))
            for spy in spies:
                if await spy.wait() != 0:
                    raise SystemExit(
                        f"py-spy exited with {spy.returncode}: is ptrace allowed here (root, or CAP_SYS_PTRACE)?"
                    )
            return {name: cpu_s(pid) - before[name] for name, pid in pids.items()}, time.monotonic() - began

        recording = asyncio.ensure_future(record())
        load = await drive(call, CONCURRENCY, warmup_s=WARMUP_S, duration_s=duration_s + 2, tolerate=(grpc.RpcError,))
        cpu, window_s = await recording
    served = load["rps"] * window_s
    return load, {name: seconds / served * 1000 for name, seconds in cpu.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="folder under bench/profiles/ (e.g. before, after)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each service is sampled")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--python-only", action="store_true", help="no C frames (grpc's core); never pauses")
    args = parser.parse_args()
    if not PY_SPY.exists():
        raise SystemExit(f"{PY_SPY} is missing: run `make setup` (py-spy is a dev dependency)")
    out = HERE / "profiles" / args.label
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="profile-mesh-"))
    services: list[Service] = []
    try:
        start_mesh(workdir, services)
        pids = {s.name: s.process.pid for s in services}
        load, cpu_ms = asyncio.run(
            _profile(services[-1], pids, out, duration_s=args.duration, rate=args.rate, native=not args.python_only)
        )
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    readme = [
        f"# Profiles: {args.label}",
        "",
        f"{when}. `make profile` (`bench/profile_mesh.py`): the `bench_mesh.py` mesh under Predict at "
        f"concurrency {CONCURRENCY}, each service sampled by py-spy for {args.duration:.0f} s at {args.rate} Hz "
        f"({'Python and C frames' if not args.python_only else 'Python frames'}; waiting threads' samples set apart). "
        "A shared 2-core box: compare profiles and ratios, not absolute figures.",
        "",
        f"Load while profiled: {load['rps']:.0f} Predict/s, p50 {load['p50_ms']:.2f} ms, "
        f"p99 {load['p99_ms']:.2f} ms, {load['errors']:.0f} errors.",
        "",
        "CPU per Predict while profiled (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in cpu_ms.items()) + ".",
    ]
    for name in pids:
        readme += ["", f"## {name} ([flame graph]({name}.svg))", "", *summarize(out / f"{name}.svg")]
    (out / "README.md").write_text("\n".join(readme) + "\n")
    print("\n".join(readme))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
