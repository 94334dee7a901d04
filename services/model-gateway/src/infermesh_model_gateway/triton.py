"""Triton on the gateway's side: the model repository it writes, and the embedded worker processes.

:class:`ModelRepository` turns a registered version into a Triton model directory named
``<model>__<version>``: a complete ``config.pbtxt`` built from the schema and the deployment
config (batching, dynamic batching, instances, version policy), and either

- a python-backend model: ``1/model.py`` (the ``triton_python`` template), ``1/infermesh_runtime.py``
  (a copy of :mod:`.runtimes`) and the artifact; it runs on any Triton with the python backend and
  the format's library (the embedded default), or
- a native backend where the workers have it (``onnxruntime`` for ONNX in Triton's containers).

Directories are written to a temporary name and renamed into place, so a worker never sees a
half-written model.

:class:`TritonServer` runs the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel as a child
process (explicit model control, 127.0.0.1, free ports) with the recipe of ../shared/DESIGN.md:
a private backend directory, the interpreter's own libpython first on the library path, and the
virtual environment first on PATH so the python backend sees the same packages as the gateway.
The child is killed with the gateway (``PR_SET_PDEATHSIG``, :func:`dying_with_parent`), never left
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import sys
import sysconfig
import time
from pathlib import Path

import grpc
import psutil
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh_chassis.errors import Unavailable
from infermesh_chassis.logs import get_logger
from infermesh_model_gateway import runtimes
from infermesh_model_gateway.domain import ModelFormat, ModelVersionRecord, TensorSchema

__all__ = ["ModelRepository", "TritonServer", "dying_with_parent", "model_config", "tritonserver_binary"]

_log = get_logger("infermesh_model_gateway.triton")

_TEMPLATE = Path(__file__).parent / "triton_python" / "model.py"
_RUNTIME = Path(runtimes.__file__)

_DATA_TYPES = {
    "BOOL": mc.TYPE_BOOL,
    "UINT8": mc.TYPE_UINT8,
    "UINT16": mc.TYPE_UINT16,
    "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64,
    "INT8": mc.TYPE_INT8,
    "INT16": mc.TYPE_INT16,
    "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16,
    "FP32": mc.TYPE_FP32,
    "FP64": mc.TYPE_FP64,
    "BYTES": mc.TYPE_STRING,
}

ARTIFACT_NAMES = {
    ModelFormat.ONNX: "model.onnx",
    ModelFormat.SKLEARN: "model.skops",
    ModelFormat.XGBOOST: "model.json",
    ModelFormat.LIGHTGBM: "model.txt",
    ModelFormat.PMML: "model.pmml",
}
"""File name of a native artifact inside the Triton model directory."""

_PICKLE_NAMES = {"pickle": "model.pkl", "joblib": "model.joblib"}


def _artifact_name(record: ModelVersionRecord) -> str:
    if record.serialization == "native":
        if record.format is ModelFormat.XGBOOST and record.artifact_uri.lower().endswith(".ubj"):
            return "model.ubj"
        return ARTIFACT_NAMES[record.format]
    return _PICKLE_NAMES[record.serialization]


def _tensor(spec: TensorSchema, cls: type[mc.ModelInput] | type[mc.ModelOutput]) -> mc.ModelInput | mc.ModelOutput:
    return cls(name=spec.name, data_type=_DATA_TYPES[spec.datatype], dims=list(spec.shape))


def model_config(record: ModelVersionRecord, *, native_onnx: bool = False) -> mc.ModelConfig:
    """The complete Triton configuration of ``record`` (auto-complete stays off on the workers)."""
    deployment = record.deployment
    config = mc.ModelConfig(
        name=record.triton_name,
        max_batch_size=deployment.max_batch_size,
        input=[_tensor(s, mc.ModelInput) for s in record.inputs],
        output=[_tensor(s, mc.ModelOutput) for s in record.outputs],
        instance_group=[mc.ModelInstanceGroup(count=deployment.instance_count, kind=mc.ModelInstanceGroup.KIND_CPU)],
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
    )
    if native_onnx and record.format is ModelFormat.ONNX:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = ARTIFACT_NAMES[ModelFormat.ONNX]
        config.parameters["intra_op_thread_count"].string_value = "1"
    else:
        config.backend = "python"
        parameters = {
            "infermesh.format": record.format.value,
            "infermesh.artifact": _artifact_name(record),
            "infermesh.serialization": record.serialization,
            "infermesh.trusted": "true" if record.trusted else "false",
        }
        for key, value in parameters.items():
            config.parameters[key].string_value = value
    for key, value in deployment.backend_parameters.items():
        config.parameters[key].string_value = value
    if deployment.dynamic_batching and deployment.max_batch_size > 0:
        config.dynamic_batching.max_queue_delay_microseconds = deployment.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(deployment.preferred_batch_sizes)
    return config


class ModelRepository:
    """The Triton model repository the gateway writes (see the module docstring)."""

    def __init__(self, root: Path, *, native_onnx: bool = False) -> None:
        self.root = root
        self.native_onnx = native_onnx

    def path(self, triton_name: str) -> Path:
        """Directory of one Triton model."""
        return self.root / triton_name

    def write(self, record: ModelVersionRecord, artifact: Path) -> Path:
        """Write ``record``'s Triton model (replacing any previous copy); its directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(record.triton_name)
        staging = self.root / f".staging-{record.triton_name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        version_dir = staging / "1"
        version_dir.mkdir(parents=True)
        config = model_config(record, native_onnx=self.native_onnx)
        (staging / "config.pbtxt").write_text(text_format.MessageToString(config))
        target = version_dir / (
            ARTIFACT_NAMES[ModelFormat.ONNX] if config.platform == "onnxruntime_onnx" else _artifact_name(record)
        )
        _link_or_copy(artifact, target)
        if config.backend == "python":
            shutil.copyfile(_TEMPLATE, version_dir / "model.py")
            shutil.copyfile(_RUNTIME, version_dir / "infermesh_runtime.py")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        return final

    def remove(self, triton_name: str) -> None:
        """Delete one Triton model's directory (nothing when absent)."""
        shutil.rmtree(self.path(triton_name), ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"the '{name}' package is not installed; install nvidia-pytriton to run embedded workers")
    return Path(next(iter(spec.submodule_search_locations)))


def tritonserver_binary() -> Path:
    """The ``tritonserver`` binary bundled in the nvidia-pytriton wheel."""
    return _package_dir("pytriton") / "tritonserver" / "bin" / "tritonserver"


_PORT_ATTEMPTS = 3
"""Starts on fresh ports when another process took one of the picked ports first."""


class _PortTaken(Unavailable):
    """tritonserver exited because a port picked for it was taken before it bound it."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_EXEC_DYING_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed when its parent dies
if os.getppid() != int(sys.argv[1]):  # the parent died before that: nothing would kill it
    os._exit(70)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` started so that it is SIGKILLed when this process dies, however it dies.

    A small interpreter sets ``PR_SET_PDEATHSIG`` and execs ``argv`` (the setting survives exec). It is
    not a ``preexec_fn``: one makes Python ``fork()`` and run Python in the child, and with gRPC's
    threads busy gRPC skips its fork handlers, so the child can crash before exec (a restarted worker
    died with SIGSEGV so under load); without one, Python starts the child with ``vfork()``.
    """
    return [sys.executable, "-S", "-c", _EXEC_DYING_WITH_PARENT, str(os.getpid()), *argv]


class TritonServer:
    """One embedded ``tritonserver`` child process (see the module docstring)."""

    def __init__(self, model_repository: Path, workdir: Path, worker_id: str, *, log_verbose: int = 0) -> None:
        self.model_repository = model_repository
        self.workdir = workdir
        self.worker_id = worker_id
        self.log_verbose = log_verbose
        self.grpc_port = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def grpc_address(self) -> str:
        """``127.0.0.1:<port>`` of its gRPC endpoint, once started."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path:
        """Where its output goes."""
        return self.workdir / "tritonserver.log"

    def _backend_dir(self) -> Path:
        """A private backend directory: the python backend and the stub built for this interpreter."""
        source = _package_dir("pytriton") / "tritonserver"
        python_dir = self.workdir / "backends" / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        links = {
            "libtriton_python.so": source / "backends" / "python" / "libtriton_python.so",
            "triton_python_backend_utils.py": source / "backends" / "python" / "triton_python_backend_utils.py",
            "triton_python_backend_stub": source / "python_backend_stubs" / version / "triton_python_backend_stub",
        }
        for name, target in links.items():
            if not target.exists():
                raise Unavailable(f"the Triton python backend has no {target.name} for Python {version} ({target})")
            link = python_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        return python_dir.parent

    def _environment(self) -> dict[str, str]:
        libs = [str(sysconfig.get_config_var("LIBDIR")), str(_package_dir("pytriton").parent / "nvidia_pytriton.libs")]
        env = dict(os.environ)
        previous = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *([previous] if previous else [])])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["OMP_NUM_THREADS"] = "1"
        return env

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start the process and wait until it answers ServerReady (Unavailable otherwise).

        tritonserver cannot bind port 0 and say what it got, so its ports are picked free just before
        it starts; when another process binds one first (tritonserver exits: "already in use"), it
        starts again on fresh ports, up to ``_PORT_ATTEMPTS`` times.
        """
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                await self._start_once(timeout_s)
                return
            except _PortTaken as exc:
                if attempt == _PORT_ATTEMPTS:
                    raise
                _log.warning("triton_port_taken", worker=self.worker_id, attempt=attempt, error=exc.message)

    @property
    def _group_file(self) -> Path:
        """The process group of the last tritonserver started for this worker (its pid)."""
        return self.workdir / "tritonserver.pgid"

    def _reap_leftovers(self) -> None:
        """SIGKILL what an earlier tritonserver of this worker left running.

        Its python-backend stubs outlive it when the gateway itself was killed (tritonserver dies
        with its parent, the stubs it forked do not), each holding a model's memory. They are in the
        process group named by the group file and run from this worker's directory.
        """
        try:
            group = int(self._group_file.read_text())
        except (FileNotFoundError, ValueError):
            return
        marker = str(self.workdir)
        for process in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(OSError, psutil.Error):
                if os.getpgid(process.pid) == group and marker in "\0".join(process.info["cmdline"] or ()):
                    os.kill(process.pid, signal.SIGKILL)
                    _log.warning("triton_leftover_killed", worker=self.worker_id, pid=process.pid)

    async def _start_once(self, timeout_s: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._reap_leftovers()
        backends = self._backend_dir()
        http, self.grpc_port, metrics = _free_port(), _free_port(), _free_port()
        args = [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=5",
            "--strict-readiness=false",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={http}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={metrics}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            f"--log-verbose={self.log_verbose}",
            f"--id={self.worker_id}",
        ]
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *dying_with_parent(args),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self._environment(),
                start_new_session=True,
            )
        self._group_file.write_text(str(self._process.pid))
        try:
            await self._wait_ready(timeout_s)
        except BaseException:
            await self.stop()
            raise
        _log.info("triton_started", worker=self.worker_id, pid=self.pid, address=self.grpc_address)

    async def _wait_ready(self, timeout_s: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        async with grpc.aio.insecure_channel(self.grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while True:
                if self._process.returncode is not None:
                    tail = self.log_tail()
                    error = _PortTaken if "already in use" in tail else Unavailable
                    raise error(f"tritonserver {self.worker_id} exited with {self._process.returncode}: {tail}")
                with contextlib.suppress(grpc.RpcError):
                    reply = await stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=0.5)
                    if reply.ready:
                        return
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"tritonserver {self.worker_id} not ready after {timeout_s:.0f}s: {self.log_tail()}"
                    )
                await asyncio.sleep(0.05)

    async def wait(self) -> int:
        """Wait until the running process exits; its exit code (negative: the signal that ended it)."""
        if self._process is None:
            raise Unavailable(f"tritonserver {self.worker_id} is not running")
        return await self._process.wait()

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of its log, on one line."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(text[-lines:]) or f"(nothing logged; see {self.log_path})"

    def kill(self) -> None:
        """SIGKILL the server and its python-backend stubs at once (a crash, as tests simulate one)."""
        if self._process is not None and self._process.returncode is None:
            self._kill_group(self._process.pid)

    @staticmethod
    def _kill_group(pid: int) -> None:
        """SIGKILL the server's process group: the stubs outlive a dead server otherwise, spinning."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace_s`` (Triton unloads its models), then SIGKILL."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._kill_group(process.pid)
        _log.info("triton_stopped", worker=self.worker_id, code=process.returncode)
