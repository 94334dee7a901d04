"""The registry of scenes and experiments: validated changes, the audit log, hot reload, the seed file.

Changes come from the admin RPCs and from the versioned seed file. Each is validated (the
object on its own, then against the others: an experiment's scene must exist, a scene with live
experiments cannot be deleted, one scene runs at most one model-routing experiment at a time),
written to the :class:`~.store.ConfigStore` with its audit entry, and applied without restart by
swapping in a new :class:`~.catalog.Snapshot`. Changes made by another instance sharing the
store are picked up by polling its revision.

The seed file is YAML: ``version`` (an integer that grows with every edit), ``scenes`` and
``experiments`` (lists of the contract's ``Scene`` / ``Experiment`` in their JSON form). Its shape
(keys, types, enum names, durations) is checked by pydantic models derived from the contract,
every problem named by file, line and field, before protobuf's JSON parser reads it. At
start, and whenever it changes on disk, a file whose version is newer than the last one applied
is validated as a whole and applied object by object (unchanged objects are left alone), with
actor ``seed-file``. A file never deletes: objects it no longer lists stay until deleted
through the admin API. Admin changes are stored, so they survive restarts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2
from infermesh_biz_center.catalog import (
    CompiledExperiment,
    CompiledScene,
    Snapshot,
    compile_experiment,
    compile_scene,
)
from infermesh_biz_center.store import AuditRecord, ConfigStore, Objects, Stored, WriteCheck, decode_token, encode_token
from infermesh_chassis.documents import Document, DocumentError, load_yaml, proto_json_model
from infermesh_chassis.errors import Aborted, FailedPrecondition, InfermeshError, InvalidArgument
from infermesh_chassis.logs import get_logger
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_chassis.validation import parse_uint

__all__ = ["EXPERIMENT", "SCENE", "ConfigRegistry", "SeedFile", "load_seed_file"]

SCENE = "scene"
EXPERIMENT = "experiment"
SEED_ACTOR = "seed-file"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

M = TypeVar("M", bound=Message)

_log = get_logger("infermesh_biz_center.registry")


def _parse(body: str, message: M) -> M:
    json_format.Parse(body, message, ignore_unknown_fields=True)
    return message


def _render(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), sort_keys=True)


def _content(message: M) -> M:
    """A copy without the output-only fields, for "did anything change" comparisons."""
    copy = type(message)()
    copy.CopyFrom(message)
    for name in ("config_version", "update_time", "updated_by"):
        copy.ClearField(name)
    return copy


def _page(page: common_pb2.PageRequest) -> tuple[int, str]:
    if page.page_size < 0:
        raise InvalidArgument(f"page.page_size: must be >= 0, got {page.page_size}")
    size = min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    return size, decode_token(page.page_token) if page.page_token else ""


@dataclass(frozen=True, slots=True)
class SeedFile:
    """A parsed seed file."""

    version: int
    scenes: tuple[pb.Scene, ...]
    experiments: tuple[pb.Experiment, ...]
    document: Document | None = None
    """The file as read, for the line of each entry in messages."""

    def where(self, key: str, index: int) -> str:
        """``seed file <file>:<line>: scenes[0]``: what an error about one entry starts with."""
        if self.document is None:
            return f"seed file: {key}[{index}]"
        return f"seed file {self.document.file}:{self.document.line((key, index))}: {key}[{index}]"


_SceneJson = proto_json_model(pb.Scene.DESCRIPTOR)
_ExperimentJson = proto_json_model(pb.Experiment.DESCRIPTOR)


class _SeedShape(BaseModel):
    """The shape of a seed file; each entry is the JSON form of the contract's message."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: int = Field(ge=1)
    """Grows with every edit."""
    scenes: list[_SceneJson] | None = None  # type: ignore[valid-type]
    experiments: list[_ExperimentJson] | None = None  # type: ignore[valid-type]


def _items(document: Document, key: str, message: type[M]) -> tuple[M, ...]:
    parsed = []
    for i, item in enumerate(document.data.get(key) or []):
        try:
            parsed.append(json_format.ParseDict(item, message()))
        except json_format.ParseError as exc:
            raise InvalidArgument(f"seed file {document.problem((key, i), str(exc))}") from None
    return tuple(parsed)


def load_seed_file(path: Path) -> SeedFile:
    """Parse a seed file (INVALID_ARGUMENT naming the file, line and field of every problem of its shape)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"seed file {path}: cannot be read ({exc})") from None
    try:
        document = load_yaml(text, str(path))
        shape = document.validate(_SeedShape)
    except DocumentError as exc:
        raise InvalidArgument("\n".join(f"seed file {problem}" for problem in exc.problems)) from None
    return SeedFile(
        shape.version,
        _items(document, "scenes", pb.Scene),
        _items(document, "experiments", pb.Experiment),
        document,
    )


class ConfigRegistry:
    """Scenes and experiments in force, and every way to change them (see the module docstring)."""

    def __init__(
        self,
        store: ConfigStore,
        *,
        global_limits: bool,
        seed_file: Path | None = None,
        watch_interval_s: float = 2.0,
        on_audit: Callable[[common_pb2.AuditEntry], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._global_limits = global_limits
        self._seed_file = seed_file
        self._watch_interval_s = watch_interval_s
        self._on_audit = on_audit
        self._clock = clock
        self._snapshot = Snapshot()
        self._revision = -1
        self._seed_stat: tuple[float, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    @property
    def snapshot(self) -> Snapshot:
        """What requests see now."""
        return self._snapshot

    async def start(self) -> None:
        """Apply the seed file if it is newer, load the store, and start watching both.

        An invalid seed file stops the start (InvalidArgument) rather than serving a config nobody wrote.
        """
        if self._seed_file is not None:
            self._seed_stat = self._stat(self._seed_file)
            await self._apply_seed(self._seed_file)
        await self.reload()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="biz-center-config-watch")

    async def stop(self) -> None:
        """Stop watching and close the store."""
        await cancel_and_wait(self._task)
        self._task = None
        await self._store.close()

    # -- loading ---------------------------------------------------------------------------

    def _build(self, scenes: Sequence[Stored], experiments: Sequence[Stored]) -> Snapshot:
        compiled: dict[str, CompiledScene] = {}
        for stored in scenes:
            try:
                scene = _parse(stored.body, pb.Scene())
                compiled[stored.name] = compile_scene(scene, global_limits=self._global_limits)
            except InfermeshError as exc:
                _log.error("stored_scene_invalid", scene=stored.name, error=exc.message)
        by_scene: dict[str, list[CompiledExperiment]] = defaultdict(list)
        for stored in experiments:
            try:
                experiment = compile_experiment(_parse(stored.body, pb.Experiment()))
            except InfermeshError as exc:
                _log.error("stored_experiment_invalid", experiment=stored.name, error=exc.message)
                continue
            if experiment.scene in compiled:
                by_scene[experiment.scene].append(experiment)
        return Snapshot(compiled, {scene: tuple(exps) for scene, exps in by_scene.items()})

    async def reload(self) -> None:
        """Rebuild the snapshot from the store (when its revision moved)."""
        revision = await self._store.revision()
        scenes, experiments = await self._store.all(SCENE), await self._store.all(EXPERIMENT)
        if revision == self._revision:
            return
        self._snapshot = self._build(scenes, experiments)
        self._revision = revision
        _log.info("config_applied", revision=revision, scenes=len(scenes), experiments=len(experiments))

    @staticmethod
    def _stat(path: Path) -> tuple[float, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_mtime, stat.st_size

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._watch_interval_s)
            try:
                if self._seed_file is not None:
                    stat = self._stat(self._seed_file)
                    if stat != self._seed_stat:
                        self._seed_stat = stat
                        if stat is not None:
                            await self._apply_seed(self._seed_file)
                await self.reload()
            except InfermeshError as exc:
                _log.error("seed_file_refused", file=str(self._seed_file), error=exc.message)
            except Exception:
                _log.exception("config_watch_failed")

    async def _apply_seed(self, path: Path) -> None:
        seed = await asyncio.to_thread(load_seed_file, path)
        applied = await self._store.meta("seed_version")
        if applied is not None and int(applied) >= seed.version:
            return
        for i, scene in enumerate(seed.scenes):
            self._validate(SCENE, _content(scene), seed.where("scenes", i))
        known = {s.name for s in seed.scenes} | set(self._snapshot.scenes)
        known |= {s.name for s in await self._store.all(SCENE)}
        for i, experiment in enumerate(seed.experiments):
            self._validate(EXPERIMENT, _content(experiment), seed.where("experiments", i))
            if experiment.scene not in known:
                raise InvalidArgument(f"{seed.where('experiments', i)}: scene '{experiment.scene}' does not exist")
        who = AuditRecord(SEED_ACTOR, f"seed file {path} version {seed.version}", "")
        for scene in seed.scenes:
            await self._put(SCENE, scene, None, who)
        for experiment in seed.experiments:
            await self._put(EXPERIMENT, experiment, None, who)
        await self._store.set_meta("seed_version", str(seed.version))
        _log.info("seed_file_applied", file=str(path), version=seed.version)
        await self.reload()

    def _validate(self, kind: str, message: Message, where: str = "") -> None:
        """Check one object on its own (InvalidArgument, prefixed with ``where`` when given)."""
        try:
            if isinstance(message, pb.Scene):
                compile_scene(message, global_limits=self._global_limits)
            elif isinstance(message, pb.Experiment):
                compile_experiment(message)
            else:
                raise TypeError(f"not a {kind}: {type(message).__name__}")
        except InvalidArgument as exc:
            if not where:
                raise
            raise InvalidArgument(f"{where}: {exc.message}") from None

    # -- writes ----------------------------------------------------------------------------

    def _checks(self, kind: str, message: Message) -> WriteCheck:
        """The cross-object checks of a write, run inside its transaction."""

        async def check(objects: Objects, current: Stored | None) -> None:
            if kind != EXPERIMENT:
                return
            assert isinstance(message, pb.Experiment)
            if await objects.find(SCENE, message.scene) is None:
                raise FailedPrecondition(f"scene '{message.scene}' does not exist: create it first")
            if message.status != pb.EXPERIMENT_STATUS_RUNNING or not compile_experiment(message).routes_models:
                return
            for stored in await objects.all(EXPERIMENT):
                if stored.name == message.name:
                    continue
                other = _parse(stored.body, pb.Experiment())
                if (
                    other.scene == message.scene
                    and other.status == pb.EXPERIMENT_STATUS_RUNNING
                    and compile_experiment(other).routes_models
                ):
                    raise FailedPrecondition(
                        f"scene '{message.scene}' already runs model-routing experiment '{stored.name}':"
                        " pause or complete it first"
                    )

        return check

    async def _put(self, kind: str, message: M, expected: int | None, who: AuditRecord) -> M:
        content = _content(message)
        name: str = content.name

        def render(version: int) -> str:
            stored = type(content)()
            stored.CopyFrom(content)
            stored.config_version = version
            stored.update_time.FromNanoseconds(int(self._clock() * 1e9))
            stored.updated_by = who.actor
            return _render(stored)

        def unchanged(current: Stored) -> bool:
            return _content(_parse(current.body, type(content)())) == content

        async with self._write_lock:
            stored, entry = await self._store.put(
                kind,
                name,
                render,
                expected=expected,
                who=who,
                check=self._checks(kind, content),
                unchanged=unchanged,
            )
        if entry is not None:
            self._audited(entry)
            await self.reload()
        return _parse(stored.body, type(content)())

    def _audited(self, entry: common_pb2.AuditEntry) -> None:
        _log.info("config_changed", action=entry.action, target=entry.target, actor=entry.actor)
        if self._on_audit is not None:
            self._on_audit(entry)

    async def _preview(self, kind: str, message: M, expected: int | None) -> M:
        """What an upsert would store, without storing it (validate_only)."""
        content = _content(message)
        try:
            current = await self._store.get(kind, content.name)
        except InfermeshError:
            current = None
        version = 0 if current is None else current.config_version
        if expected is not None and expected != version:
            state = "does not exist" if current is None else f"is at config version {version}"
            raise Aborted(f"{kind} '{content.name}' {state}, not {expected}: re-read it and retry")
        content.config_version = version + 1
        return content

    async def _delete(self, kind: str, name: str, expected: int | None, who: AuditRecord, message: type[M]) -> M:
        async def check(objects: Objects, current: Stored | None) -> None:
            if kind != SCENE:
                return
            live = [
                stored.name
                for stored in await objects.all(EXPERIMENT)
                if (other := _parse(stored.body, pb.Experiment())).scene == name
                and other.status != pb.EXPERIMENT_STATUS_COMPLETED
            ]
            if live:
                raise FailedPrecondition(f"scene '{name}' has experiments {live}: complete or delete them first")

        async with self._write_lock:
            stored, entry = await self._store.delete(kind, name, expected=expected, who=who, check=check)
        self._audited(entry)
        await self.reload()
        return _parse(stored.body, message())

    async def upsert_scene(
        self, scene: pb.Scene, *, expected: int | None, validate_only: bool, who: AuditRecord
    ) -> pb.Scene:
        """Validate and store ``scene`` (or only validate it); returns it as stored."""
        self._validate(SCENE, _content(scene))
        if validate_only:
            return await self._preview(SCENE, scene, expected)
        return await self._put(SCENE, scene, expected, who)

    async def upsert_experiment(
        self, experiment: pb.Experiment, *, expected: int | None, validate_only: bool, who: AuditRecord
    ) -> pb.Experiment:
        """Validate and store ``experiment`` (or only validate it); returns it as stored."""
        if experiment.status == pb.EXPERIMENT_STATUS_UNSPECIFIED:
            experiment = _content(experiment)
            experiment.status = pb.EXPERIMENT_STATUS_DRAFT
        self._validate(EXPERIMENT, _content(experiment))
        if validate_only:
            if experiment.scene not in self._snapshot.scenes:
                raise FailedPrecondition(f"scene '{experiment.scene}' does not exist: create it first")
            return await self._preview(EXPERIMENT, experiment, expected)
        return await self._put(EXPERIMENT, experiment, expected, who)

    async def delete_scene(self, name: str, *, expected: int | None, who: AuditRecord) -> pb.Scene:
        """Delete a scene (refused while experiments other than completed ones use it)."""
        return await self._delete(SCENE, name, expected, who, pb.Scene)

    async def delete_experiment(self, name: str, *, expected: int | None, who: AuditRecord) -> pb.Experiment:
        """Delete an experiment."""
        return await self._delete(EXPERIMENT, name, expected, who, pb.Experiment)

    # -- reads -----------------------------------------------------------------------------

    async def get_scene(self, name: str) -> pb.Scene:
        """One scene as stored (NOT_FOUND when unknown)."""
        return _parse((await self._store.get(SCENE, name)).body, pb.Scene())

    async def get_experiment(self, name: str) -> pb.Experiment:
        """One experiment as stored (NOT_FOUND when unknown)."""
        return _parse((await self._store.get(EXPERIMENT, name)).body, pb.Experiment())

    async def list_scenes(self, page: common_pb2.PageRequest) -> tuple[list[pb.Scene], str]:
        """A page of scenes by name, and the next page's token ("" on the last page)."""
        size, after = _page(page)
        stored = [s for s in await self._store.all(SCENE) if s.name > after]
        token = encode_token(stored[size - 1].name) if len(stored) > size else ""
        return [_parse(s.body, pb.Scene()) for s in stored[:size]], token

    async def list_experiments(
        self, page: common_pb2.PageRequest, scene: str, statuses: Sequence[int]
    ) -> tuple[list[pb.Experiment], str]:
        """A page of experiments by name, filtered by scene and statuses."""
        size, after = _page(page)
        wanted = set(statuses)
        matching: list[pb.Experiment] = []
        for stored in await self._store.all(EXPERIMENT):
            if stored.name <= after:
                continue
            experiment = _parse(stored.body, pb.Experiment())
            if (scene and experiment.scene != scene) or (wanted and experiment.status not in wanted):
                continue
            matching.append(experiment)
        token = encode_token(matching[size - 1].name) if len(matching) > size else ""
        return matching[:size], token

    async def audit(
        self, page: common_pb2.PageRequest, query: common_pb2.AuditFilter
    ) -> tuple[list[common_pb2.AuditEntry], str]:
        """A page of audit entries, newest first."""
        size, after = _page(page)
        seq = parse_uint(after, "page.page_token", what="a token this service issued") if after else None
        entries, next_seq = await self._store.audit(query, size, seq)
        return entries, encode_token(str(next_seq)) if next_seq is not None else ""
