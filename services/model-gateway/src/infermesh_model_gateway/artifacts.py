"""Artifacts: fetched once, verified every time, checked against their schema before they serve.

:class:`ArtifactStore` copies an artifact from its URI (a local path, ``file://``, ``http(s)://``)
into a content-addressed cache (``<root>/<sha256>/<file>``), hashing it on the way in, and
hashes the cached copy again before every use, so a file changed behind the gateway's back is
caught before Triton loads it. :meth:`ArtifactStore.verify` then loads the artifact with the same
runtime the Triton model runs (:mod:`.runtimes`), so a corrupt file, an untrusted pickle, an ONNX
graph whose tensors differ from the registered schema, or outputs the format cannot produce are
refused at registration, with the reason, and nothing is stored; a verified artifact's size is
stored with its version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import aiohttp

from infermesh_chassis.errors import FailedPrecondition, InvalidArgument, Unavailable
from infermesh_model_gateway.domain import ModelVersionRecord, TensorSchema
from infermesh_model_gateway.runtimes import ArtifactError, TensorInfo, load_runtime

__all__ = ["ArtifactStore"]

_CHUNK = 1 << 20


def _tensor_infos(specs: tuple[TensorSchema, ...], batching: bool) -> list[TensorInfo]:
    return [TensorInfo(s.name, s.datatype, s.shape if batching else s.shape[1:]) for s in specs]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """The gateway's artifact cache (see the module docstring)."""

    def __init__(self, root: Path, *, max_bytes: int, download_timeout_s: float = 300.0) -> None:
        self.root = root
        self._max_bytes = max_bytes
        self._timeout_s = download_timeout_s
        self._locks: dict[str, asyncio.Lock] = {}

    def _cached(self, record: ModelVersionRecord) -> Path:
        name = Path(unquote(urlparse(record.artifact_uri).path)).name or "artifact"
        return self.root / record.artifact_sha256 / name

    async def fetch(self, record: ModelVersionRecord) -> Path:
        """The verified local copy of ``record``'s artifact (INVALID_ARGUMENT on a digest mismatch)."""
        cached = self._cached(record)
        async with self._locks.setdefault(record.artifact_sha256, asyncio.Lock()):
            if not cached.exists():
                await self._download(record, cached)
            actual = await asyncio.to_thread(_sha256, cached)
        if actual != record.artifact_sha256:
            if cached.parent.name == record.artifact_sha256:
                shutil.rmtree(cached.parent, ignore_errors=True)
            raise InvalidArgument(
                f"artifact.sha256 mismatch for {record.artifact_uri}: the file's SHA-256 is {actual}, "
                f"the registration says {record.artifact_sha256}; nothing was loaded"
            )
        return cached

    async def verify(self, record: ModelVersionRecord) -> ModelVersionRecord:
        """Fetch, then load the artifact as its format against its schema; ``record`` with the verified
        file's size."""
        path = await self.fetch(record)
        batching = record.deployment.max_batch_size > 0
        try:
            await asyncio.to_thread(
                load_runtime,
                record.format.value,
                path,
                _tensor_infos(record.inputs, batching),
                _tensor_infos(record.outputs, batching),
                serialization=record.serialization,
                trusted=record.trusted,
            )
        except ArtifactError as exc:
            if record.serialization != "native" and not record.trusted:
                raise FailedPrecondition(str(exc)) from None
            raise InvalidArgument(f"artifact {record.artifact_uri}: {exc}") from None
        size = (await asyncio.to_thread(path.stat)).st_size
        return dataclasses.replace(record, artifact_size_bytes=size)

    async def _download(self, record: ModelVersionRecord, target: Path) -> None:
        uri = record.artifact_uri
        parsed = urlparse(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".download-")
        os.close(handle)
        temp = Path(temp_name)
        try:
            if parsed.scheme in ("", "file"):
                await asyncio.to_thread(self._copy_local, Path(unquote(parsed.path) if parsed.scheme else uri), temp)
            elif parsed.scheme in ("http", "https"):
                await self._copy_http(uri, temp)
            else:
                raise InvalidArgument(
                    f"artifact.uri scheme '{parsed.scheme}' is not supported: use a path, file:// or http(s):// "
                    "(for object stores, a presigned https URL)"
                )
            await asyncio.to_thread(temp.rename, target)
        finally:
            await asyncio.to_thread(temp.unlink, missing_ok=True)

    def _copy_local(self, source: Path, temp: Path) -> None:
        if not source.is_file():
            raise InvalidArgument(f"artifact.uri: no file at {source}")
        size = source.stat().st_size
        if size > self._max_bytes:
            raise InvalidArgument(f"artifact {source} is {size} bytes, more than the limit of {self._max_bytes}")
        shutil.copyfile(source, temp)

    async def _copy_http(self, uri: str, temp: Path) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        written = 0
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(uri) as response:
                if response.status >= 500:
                    raise Unavailable(f"artifact.uri {uri} answered HTTP {response.status}; try again later")
                if response.status != 200:
                    raise InvalidArgument(f"artifact.uri {uri} answered HTTP {response.status}")
                with temp.open("wb") as out:
                    async for chunk in response.content.iter_chunked(_CHUNK):
                        written += len(chunk)
                        if written > self._max_bytes:
                            raise InvalidArgument(f"artifact {uri} is larger than the limit of {self._max_bytes} bytes")
                        out.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"artifact.uri {uri} could not be downloaded: {type(exc).__name__}: {exc}") from None
