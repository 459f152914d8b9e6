# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a restore takes the objects the garbage collector removed: a copy of the storage tree, or a registry.

A source hands over bytes and nothing else. It never decides whether they are right: the restore hashes
every byte against the digest the index already names, so a source that lies, a truncated backup file or a
blob from the wrong image is refused wherever it comes from. A source that does not have an object raises
SourceMiss with one sentence naming the source and the object; the restore then asks the next one.

Standard library only: the restore runs on the registry host, like the scanner.
"""

from __future__ import annotations

import errno
import os
import typing as t

from ._registry_client import RegistryClient, RegistryError
from ._storage_scan import ScanError, StorageReader

Sink = t.Callable[[bytes], None]

_CHUNK = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class SourceMiss(Exception):
    """This source cannot give the object; the message names the source, the object and why."""


class SourceError(Exception):
    """A source that cannot be used at all (no such storage tree); the message is one sentence."""


class RestoreSource(t.Protocol):
    name: str

    def stream(self, kind: str, repository: str, digest: str, sink: Sink) -> int:
        """Send the object's bytes (``kind`` is manifest or blob) to ``sink``; return how many. Raises SourceMiss."""

    def size(self, kind: str, repository: str, digest: str) -> int:
        """The object's size in bytes, without reading all of it (check mode). Raises SourceMiss."""


class StorageSource:
    """A copy of the registry's filesystem storage: a backup, a snapshot, an rsync of the tree.

    Blobs are content-addressed, so the copy is read by digest alone: a blob any repository of the copy
    holds will do. Symbolic links are never followed, as in the scanner.
    """

    def __init__(self, storage_root: str) -> None:
        try:
            self._reader = StorageReader(storage_root)
        except ScanError as error:
            raise SourceError(f"backup {storage_root}: {error}") from None
        self.name = f"backup {storage_root}"

    def _open(self, kind: str, digest: str) -> int:
        path, problem = self._reader.locate_blob(digest)
        if problem == "absent":
            raise SourceMiss(f"{self.name} has no {kind} {digest}")
        if problem:
            raise SourceMiss(f"{self.name}: {self._reader.relative(path)} {problem}")
        try:
            return os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise SourceMiss(f"{self.name} has no {kind} {digest}") from None
        except OSError as error:
            reason = "is a symbolic link (not followed)" if error.errno == errno.ELOOP else f"cannot be read ({error.strerror})"
            raise SourceMiss(f"{self.name}: {self._reader.relative(path)} {reason}") from None

    def stream(self, kind: str, repository: str, digest: str, sink: Sink) -> int:
        fd = self._open(kind, digest)
        try:
            size = 0
            while True:
                try:
                    chunk = os.read(fd, _CHUNK)
                except OSError as error:
                    raise SourceMiss(f"{self.name}: {kind} {digest} cannot be read ({error.strerror})") from None
                if not chunk:
                    return size
                size += len(chunk)
                sink(chunk)
        finally:
            os.close(fd)

    def size(self, kind: str, repository: str, digest: str) -> int:
        fd = self._open(kind, digest)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)


class RegistrySource:
    """Another registry over its API: a replica, another region, a mirror that holds the same image.

    The object is asked for in the same repository. Manifests come hash-checked by the client already;
    blobs are hashed by the restore as they arrive.
    """

    def __init__(self, client: RegistryClient) -> None:
        self._client = client
        self.name = f"registry {client.base_url}"

    def stream(self, kind: str, repository: str, digest: str, sink: Sink) -> int:
        try:
            if kind == "manifest":
                body = self._client.get_manifest(repository, digest).body
                sink(body)
                return len(body)
            return self._client.stream_blob(repository, digest, sink)
        except RegistryError as error:
            raise SourceMiss(f"{self.name}: {error}".rstrip(".")) from None

    def size(self, kind: str, repository: str, digest: str) -> int:
        try:
            if kind == "manifest":
                return len(self._client.get_manifest(repository, digest).body)
            found = self._client.check_blob(repository, digest, "head")
        except RegistryError as error:
            raise SourceMiss(f"{self.name}: {error}".rstrip(".")) from None
        return found.size or 0

    def close(self) -> None:
        self._client.close()
