# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Puts objects into a registry's filesystem storage without ever replacing one that is there.

The only writer in the collection besides the registry itself, so its rules are narrow:

* A file is written under a temporary name in its final directory, synced, then hard-linked to its real
  name: the registry never sees a half-written blob, and ``link()`` fails when the name exists, so nothing
  present is ever overwritten (a concurrent writer's identical copy wins and ours is dropped).
* Every directory on the way must be a real directory; a symbolic link or a file where a directory belongs
  stops the write. New directories and files get the owner of the storage root when running as root, so
  the registry (often not root inside its container) can read them.
* Paths are built only from validated digests and repository names the storage already has.
"""

from __future__ import annotations

import os
import stat
import typing as t

from ._storage_scan import StorageReader

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class PlacementError(Exception):
    """An object could not be put in place; the message names the path and why."""


class PendingFile:
    """A file being written under a temporary name; ``commit`` gives it its real name, ``discard`` drops it."""

    def __init__(self, placer: "StoragePlacer", directory: str, name: str) -> None:
        self._placer = placer
        self.directory = directory
        self.path = f"{directory}/{name}"
        self._temporary = f"{directory}/.{name}.restore-{os.getpid()}"
        try:
            self._fd: t.Optional[int] = os.open(self._temporary, _WRITE_FLAGS, 0o644)
        except OSError as error:
            raise PlacementError(f"{placer.relative(self._temporary)} cannot be created ({error.strerror})") from None
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._fd is None:
            raise PlacementError(f"{self._placer.relative(self.path)} was already closed")
        view = memoryview(chunk)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:
            raise PlacementError(f"{self._placer.relative(self.path)} cannot be written ({error.strerror})") from None
        self.size += len(chunk)

    def commit(self) -> bool:
        """Give the file its real name; False when an object of that name appeared meanwhile (kept as it is)."""
        if self._fd is None:
            raise PlacementError(f"{self._placer.relative(self.path)} was already closed")
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._placer.own(self._temporary)
            os.link(self._temporary, self.path)
        except FileExistsError:
            return False
        except OSError as error:
            raise PlacementError(f"{self._placer.relative(self.path)} cannot be put in place ({error.strerror})") from None
        finally:
            self.discard()
        _sync_directory(self.directory)
        return True

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self._temporary)
        except FileNotFoundError:
            pass


class StoragePlacer:
    """Writes blob data and repository links into one storage tree (the ``docker/registry/v2`` directory)."""

    def __init__(self, reader: StorageReader) -> None:
        self.reader = reader
        root = os.stat(reader.root)
        # Only root can give files away; anyone else writes files the registry's user already shares.
        self._owner = (root.st_uid, root.st_gid) if os.geteuid() == 0 else None

    def relative(self, path: str) -> str:
        return self.reader.relative(path)

    def own(self, path: str) -> None:
        if self._owner is not None:
            os.chown(path, *self._owner, follow_symlinks=False)

    def directory(self, base: str, parts: t.Sequence[str]) -> str:
        """``base/parts...`` as real directories, making the missing ones; ``base`` must exist already."""
        path = base
        for index, part in enumerate((None,) + tuple(parts)):
            if part is not None:
                path = f"{path}/{part}"
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if index == 0:
                    raise PlacementError(f"{self.relative(path)} does not exist") from None
                try:
                    os.mkdir(path, 0o755)
                except FileExistsError:
                    pass  # made meanwhile by the registry: checked below like any other
                except OSError as error:
                    raise PlacementError(f"{self.relative(path)} cannot be made ({error.strerror})") from None
                else:
                    self.own(path)
                mode = os.lstat(path).st_mode
            if not stat.S_ISDIR(mode):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
                raise PlacementError(f"{self.relative(path)} is {kind}, so nothing is written there")
        return path

    def blob_file(self, digest: str) -> PendingFile:
        """A pending ``blobs/sha256/<xx>/<hex>/data``."""
        hex_digest = digest[7:]
        return PendingFile(self, self.directory(self.reader.blobs_dir, (hex_digest[:2], hex_digest)), "data")

    def link(self, repository: str, digest: str, where: str) -> bool:
        """Write ``_layers`` (where="layer") or ``_manifests/revisions`` link of repository; False when present."""
        parts = ("_manifests", "revisions") if where == "revision" else ("_layers",)
        repository_dir = self.directory(self.reader.repositories_dir, tuple(repository.split("/")))
        directory = self.directory(repository_dir, parts + ("sha256", digest[7:]))
        pending = PendingFile(self, directory, "link")
        try:
            pending.write(digest.encode("ascii"))
        except PlacementError:
            pending.discard()
            raise
        if pending.commit():
            return True
        present, problem = self.reader.read_link(f"{directory}/link")
        if present != digest:
            raise PlacementError(
                f"{self.relative(directory)}/link exists and holds {present or problem or 'something else'};"
                " it is not overwritten"
            )
        return False


def _sync_directory(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the data itself is synced
    finally:
        os.close(fd)
