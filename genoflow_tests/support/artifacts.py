"""Artifacts and object stores for the storage tests: a folder that behaves as GCS, and fakes.

The fakes here are real ``Location`` subclasses over real folders (no mocks): ``FolderStore`` keeps
objects by exact name with an md5 per object and no rename, as GCS does for genoflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from genoflow.core.errors import StorageError
from genoflow.storage.cache import MARKER, Cache, Draft
from genoflow.storage.datamanager import DataManager
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.locations import (
    AlreadyExists,
    DataType,
    LocalLocation,
    Location,
    ObjectInfo,
    safe_relpath,
)
from genoflow.storage.upkeep import ReplicaUpkeep

MD5 = "60d8" + "0" * 28
KEY = ArtifactKey("intervals", MD5, "sorted", "1")
RELPATH = str(KEY.relpath)
FILES = {"peaks.bed.gz": b"chr1\t10\t20\n" * 50, "peaks.bed.gz.tbi": b"index bytes\xff\xfe"}


class FolderStore(Location):
    """An object store kept in a folder: objects by exact name, an md5 per object, no rename.

    It behaves as GCS does for genoflow: ``stat`` reports the store's md5 and a generation that
    changes with every write, and ``put(if_absent=True)`` fails when the object exists.
    """

    def __init__(self, name: str, folder: Path, *, deployment: str, kind: str = "gcs") -> None:
        super().__init__(name, f"store://{name}", deployment=deployment, is_local=False)
        self.kind = kind
        self.folder = folder

    def file(self, path: str) -> Path:
        return self.folder.joinpath(*safe_relpath(path).parts)

    def uri(self, path: str) -> str:
        return f"store://{self.name}/{path}"

    def stat(self, path: str) -> ObjectInfo | None:
        target = self.file(path)
        if not target.is_file():
            return None
        data, st = target.read_bytes(), target.stat()
        generation = f"{st.st_ino}:{st.st_mtime_ns}"
        return ObjectInfo(len(data), md5=hashlib.md5(data).hexdigest(), generation=generation)

    def get(self, path: str, dest: Path) -> ObjectInfo:
        try:
            shutil.copyfile(self.file(path), dest)
        except FileNotFoundError as exc:
            raise StorageError("object is missing", file=self.uri(path)) from exc
        return ObjectInfo(dest.stat().st_size)

    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        target = self.file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.upload")
        shutil.copyfile(src, temp)
        try:
            if if_absent:
                try:
                    os.link(temp, target)
                except FileExistsError as exc:
                    raise AlreadyExists("already published", file=self.uri(path)) from exc
            else:
                os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        info = self.stat(path)
        assert info is not None
        return info

    def delete(self, path: str) -> None:
        self.file(path).unlink(missing_ok=True)

    def objects(self) -> list[str]:
        """Every object's name (for tests to prove what is left)."""
        return sorted(
            str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file()
        )


class FailingMarkerStore(FolderStore):
    """Stores data objects, then fails as a dropped connection would when the marker is put."""

    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        if path.endswith(MARKER):
            raise StorageError("connection reset while uploading", file=self.uri(path))
        return super().put(src, path, if_absent=if_absent)


class FailingMarkerLocal(LocalLocation):
    """A local folder whose marker write fails (a full disk at the last moment)."""

    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        if path.endswith(MARKER):
            raise StorageError("no space left on device", file=self.uri(path))
        return super().put(src, path, if_absent=if_absent)


def publish_artifact(root: Path, files: dict[str, bytes] = FILES, key: ArtifactKey = KEY) -> Path:
    """Publish an artifact with ``files`` into the cache at ``root``; return its folder."""
    draft = Cache(root).begin(key)
    assert isinstance(draft, Draft)
    for name, data in files.items():
        (draft.dir / name).write_bytes(data)
    return (
        Cache(root).publish(draft, processor="tests.publish", details={"files": list(files)}).path
    )


def upload_artifact(store: FolderStore, source: Path, path: str = RELPATH) -> None:
    """Copy a published local artifact folder into ``store``, marker last."""
    names = [e["name"] for e in json.loads((source / MARKER).read_text())["files"]]
    for name in [*names, MARKER]:
        store.put(source / name, f"{path}/{name}", if_absent=name == MARKER)


def flip_last_byte(path: Path) -> None:
    """Corrupt a file without changing its size."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def local(tmp_path: Path, name: str, deployment: str) -> LocalLocation:
    return LocalLocation(name, tmp_path / name, deployment=deployment)


def store(tmp_path: Path, name: str, deployment: str, kind: str = "gcs") -> FolderStore:
    return FolderStore(name, tmp_path / name, deployment=deployment, kind=kind)


def every_replica(manager: DataManager) -> list[tuple[str, str, str]]:
    found = ReplicaUpkeep(manager).all_replicas(readable=False)
    return [(r.location, r.data_type.value, r.state.value) for r in found]


def register_many(registry: str, root: str, number: int, barrier: Barrier, results: Queue) -> None:
    """Register every artifact at the shared location and at this process's own location."""
    try:
        barrier.wait(timeout=60)
        manager = DataManager(registry, workdir=Path(root) / f"work-{number}")
        shared = LocalLocation("shared", Path(root) / "shared", deployment="lab")
        own = LocalLocation(f"own-{number}", Path(root) / "shared", deployment=f"node-{number}")
        for md5 in range(8):
            relpath = str(ArtifactKey("intervals", f"{md5:032x}", "sorted", "1").relpath)
            manager.register_path(shared, relpath, relpath)
            manager.register_path(own, relpath, relpath, DataType.SYMBOLIC_LINK)
        manager.close()
        results.put(("ok", number))
    except Exception as exc:  # sent to the parent, which fails the test with it
        results.put(("error", repr(exc)))
