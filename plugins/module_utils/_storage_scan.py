# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only scanner for a distribution registry's filesystem storage.

Standard library only: the same file runs inside Ansible (module registry_orphan_scan)
and on the registry host as ``python3 -m registry_tools._registry_tools_cli scan``.

What it reads, under ``<root>/docker/registry/v2``::

    blobs/sha256/<hex[0:2]>/<hex>/data
    repositories/<name>/_manifests/revisions/sha256/<hex>/link
    repositories/<name>/_manifests/tags/<tag>/current/link
    repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link
    repositories/<name>/_layers/sha256/<hex>/link

Rules it keeps:

* It never writes, moves or deletes anything.
* A link is trusted only when it holds exactly ``sha256:<64 lowercase hex>``; anything else is a
  corrupt file and is never used to build a path.
* Symbolic links are never followed (the registry follows them out of its root and loops on them);
  every directory is listed with ``os.scandir`` and every file opened with ``O_NOFOLLOW``.
* A file that vanishes while the scan runs (a garbage collection deleting, a push writing) is
  rechecked before anything is reported, so a busy registry does not produce false damage.
* Memory stays flat: one repository is held at a time, only index edges are kept, and parsed
  manifests are cached in a small bounded cache.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import stat
import time
import typing as t

from ._report_files import Metric

DIGEST_PREFIX = "sha256:"
# fullmatch, never match with "$": "$" also matches before a trailing newline.
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]{64}")
_DIGEST_BYTES = re.compile(rb"sha256:[0-9a-f]{64}")
_READ_CHUNK = 65536

ORPHAN_INDEX = "orphan_index"
BROKEN_MANIFEST = "broken_manifest"
DANGLING_REVISION = "dangling_revision"
DANGLING_TAG = "dangling_tag"
ORPHAN_LAYER_LINK = "orphan_layer_link"
CORRUPT_FILE = "corrupt_file"
FINDING_KINDS = (ORPHAN_INDEX, BROKEN_MANIFEST, DANGLING_REVISION, DANGLING_TAG, ORPHAN_LAYER_LINK, CORRUPT_FILE)

_LOG_LABELS = {
    ORPHAN_INDEX: "ORPHAN INDEX",
    BROKEN_MANIFEST: "BROKEN MANIFEST",
    DANGLING_REVISION: "DANGLING REVISION",
    DANGLING_TAG: "DANGLING TAG",
    ORPHAN_LAYER_LINK: "ORPHAN LAYER LINK",
    CORRUPT_FILE: "CORRUPT FILE",
}

INDEX_MEDIA_TYPES = frozenset(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
_SCHEMA1_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v1+json"

# Links are 71 bytes; anything much larger is not a link. The manifest cap keeps a huge
# blob that a broken link points at from being read into memory.
_LINK_READ_LIMIT = 1024
MANIFEST_READ_LIMIT = 32 * 1024 * 1024
_MANIFEST_CACHE_SIZE = 4096
_BLOB_CACHE_SIZE = 200_000

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class ScanError(Exception):
    """The storage could not be scanned at all (wrong path, unreadable root)."""


# -- one maintenance run at a time on a host -------------------------------------------------------
# Scan, GC guard and tag retention (cron and modules alike) take this lock: two collectors on one store,
# or retention deleting while the guard decides, would each act on a state the other is changing.
DEFAULT_LOCK_FILE = "/run/lock/selfhosted-registry-tools.lock"
LOCK_FILE_ENV = "REGISTRY_TOOLS_LOCK_FILE"
DEFAULT_LOCK_WAIT = 300.0


class HostLockError(Exception):
    """The host-wide maintenance lock could not be taken (held by another run, or unusable)."""


@contextlib.contextmanager
def host_lock(what: str, path: str = "", wait: float = DEFAULT_LOCK_WAIT) -> t.Iterator[str]:
    """Hold the host-wide maintenance lock (flock) for the block; wait at most ``wait`` seconds for it.

    ``path`` defaults to $REGISTRY_TOOLS_LOCK_FILE, then DEFAULT_LOCK_FILE. The holder writes its PID and
    ``what`` into the file so a refused run can name it. The kernel drops the lock when the process ends.
    """
    path = path or os.environ.get(LOCK_FILE_ENV) or DEFAULT_LOCK_FILE
    if path == DEFAULT_LOCK_FILE:
        # Containers and minimal systems may lack /run/lock (systemd-tmpfiles makes it on a full host).
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as error:
        raise HostLockError(f"lock file {path} cannot be opened ({error.strerror})") from None
    try:
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
                    raise HostLockError(
                        f"another registry maintenance run ({holder}) holds lock file {path}; "
                        f"waited {wait:g} seconds, so this {what} did not start"
                    ) from None
                time.sleep(min(0.2, remaining))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} {what}\n".encode("utf-8"), 0)
        yield path
    finally:
        os.close(fd)


def is_digest(text: str) -> bool:
    """True for exactly ``sha256:`` followed by 64 lowercase hex digits (no newline, no case games)."""
    return _DIGEST.fullmatch(text) is not None


def is_hex(name: str) -> bool:
    return _HEX.fullmatch(name) is not None


class Finding(t.NamedTuple):
    """One problem in storage, flat so it serialises as it is."""

    kind: str
    repository: str
    digest: str
    media_type: str
    missing: t.Tuple[str, ...]
    tags: t.Tuple[str, ...]
    history_tags: t.Tuple[str, ...]
    path: str
    message: str
    referenced: t.Optional[bool] = None
    reason: str = ""

    @property
    def harmful(self) -> bool:
        # A layer link without data is what every plain GC leaves behind; it only
        # matters when a manifest still references it.
        return not (self.kind == ORPHAN_LAYER_LINK and not self.referenced)

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "kind": self.kind,
            "repository": self.repository,
            "digest": self.digest,
            "media_type": self.media_type,
            "missing": list(self.missing),
            "tags": list(self.tags),
            "history_tags": list(self.history_tags),
            "path": self.path,
            "message": self.message,
            "referenced": self.referenced,
            "reason": self.reason,
            "harmful": self.harmful,
        }

    def log_line(self) -> str:
        """One stable, greppable line: label, then key=value pairs with no spaces in values."""
        parts = [_LOG_LABELS[self.kind]]
        if self.kind == CORRUPT_FILE:
            # The reason is free text and comes last, so it may keep its spaces.
            parts.append("path=" + _quote(self.path))
            parts.append("repo=" + _quote(self.repository))
            parts.append("digest=" + (self.digest or "-"))
            parts.append("tags=" + (",".join(_quote(tag) for tag in self.tags) or "-"))
            parts.append("reason=" + self.reason.replace("\n", " "))
            return " ".join(parts)
        parts.append("repo=" + _quote(self.repository))
        parts.append("digest=" + (self.digest or "-"))
        parts.append("media_type=" + _quote(self.media_type or "-"))
        if self.kind in (ORPHAN_INDEX, BROKEN_MANIFEST):
            parts.append("missing=" + (",".join(self.missing) or "-"))
        if self.kind == ORPHAN_LAYER_LINK:
            parts.append("referenced=" + ("yes" if self.referenced else "no"))
        parts.append("tags=" + (",".join(_quote(tag) for tag in self.tags) or "-"))
        parts.append("history_tags=" + (",".join(_quote(tag) for tag in self.history_tags) or "-"))
        return " ".join(parts)


def _quote(value: str) -> str:
    # Keep each finding on one line and its fields splittable on spaces.
    return value.replace("%", "%25").replace(" ", "%20").replace("\n", "%0A").replace("\r", "%0D") or "-"


class ScanResult:
    """Findings plus counts; ``clean`` ignores unreferenced layer links (normal after GC)."""

    def __init__(self, storage_root: str) -> None:
        self.storage_root = storage_root
        self.findings: t.List[Finding] = []
        self.repositories = 0
        self.revisions = 0
        self.tags = 0
        self.manifests_read = 0
        self.skipped_recent = 0
        self.dropped_on_recheck = 0
        self.broken_tags: t.Set[str] = set()
        self.started = time.time()
        self.duration = 0.0

    @property
    def clean(self) -> bool:
        return not any(finding.harmful for finding in self.findings)

    def summary(self) -> t.Dict[str, int]:
        counts = {kind: 0 for kind in FINDING_KINDS}
        for finding in self.findings:
            counts[finding.kind] += 1
        return counts

    def summary_line(self) -> str:
        counts = self.summary()
        pieces = " ".join(f"{kind}={counts[kind]}" for kind in FINDING_KINDS)
        return (
            f"SUMMARY clean={'yes' if self.clean else 'no'} repositories={self.repositories} "
            f"revisions={self.revisions} tags={self.tags} {pieces} broken_tags={len(self.broken_tags)} "
            f"skipped_recent={self.skipped_recent} duration={self.duration:.3f}s"
        )

    def as_report(self) -> t.Dict[str, t.Any]:
        return {
            "storage_root": self.storage_root,
            "clean": self.clean,
            "summary": self.summary(),
            "repositories": self.repositories,
            "revisions": self.revisions,
            "tags": self.tags,
            "manifests_read": self.manifests_read,
            "skipped_recent": self.skipped_recent,
            "dropped_on_recheck": self.dropped_on_recheck,
            "broken_tags": sorted(self.broken_tags),
            "findings": [finding.as_dict() for finding in self.findings],
            "started": self.started,
            "duration_seconds": round(self.duration, 3),
        }


def resolve_storage_root(path: str) -> str:
    """Accept the registry's rootdirectory or its ``docker/registry/v2`` directory; return the latter."""
    if not path:
        raise ScanError("no storage root given")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ScanError(f"storage root {path} does not exist") from None
    except OSError as error:
        raise ScanError(f"storage root {path} cannot be read: {error.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise ScanError(f"storage root {path} is not a directory")
    nested = os.path.join(path, "docker", "registry", "v2")
    if os.path.isdir(nested):
        return os.path.abspath(nested)
    if os.path.isdir(os.path.join(path, "repositories")) or os.path.isdir(os.path.join(path, "blobs")):
        return os.path.abspath(path)
    try:
        empty = not os.listdir(path)
    except OSError as error:
        raise ScanError(f"storage root {path} cannot be listed: {error.strerror}") from None
    if empty:
        # A registry that never stored anything has an empty rootdirectory: an empty store, not an error.
        return os.path.abspath(nested)
    raise ScanError(
        f"storage root {path} holds no registry storage (neither docker/registry/v2 nor repositories/ or blobs/)"
    )


class _Unusable(Exception):
    """A file that exists but cannot be used as one (directory, FIFO, symlink, unreadable, too large)."""


class ManifestInfo(t.NamedTuple):
    media_type: str
    # (digest, media type) of child manifests (indexes only).
    children: t.Tuple[t.Tuple[str, str], ...]
    # (digest, media type, foreign) of config and layers (image manifests only).
    blobs: t.Tuple[t.Tuple[str, str, bool], ...]


class ManifestRead(t.NamedTuple):
    """Outcome of reading a manifest blob: info, or absent, or a corruption reason."""

    info: t.Optional[ManifestInfo]
    absent: bool
    problem: str


def parse_manifest(body: bytes, digest: str, verified: bool = False) -> ManifestInfo:
    """Parse a manifest body into its references; raises ValueError with a short reason.

    ``verified`` says the caller has already checked that the body hashes to the digest.
    """
    if not verified and hashlib.sha256(body).hexdigest() != digest[7:]:
        raise ValueError("content does not match its digest (altered or truncated)")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not valid JSON (truncated or not a manifest)") from None
    except RecursionError:
        # The registry accepts JSON nested up to 10,000 levels; Python's parser recurses far less deep.
        raise ValueError("JSON is nested too deeply to parse (not a usable manifest)") from None
    except MemoryError:
        raise ValueError("JSON is too large to parse in memory") from None
    if not isinstance(document, dict):
        raise ValueError("JSON is not an object, so not a manifest")
    media_type = document.get("mediaType")
    if media_type is not None and not isinstance(media_type, str):
        raise ValueError("mediaType is not a string")
    if document.get("schemaVersion") == 1:
        layers = document.get("fsLayers")
        if not isinstance(layers, list):
            raise ValueError("schema 1 manifest without an fsLayers list")
        blobs = []
        for layer in layers:
            blob_digest = layer.get("blobSum") if isinstance(layer, dict) else None
            if not isinstance(blob_digest, str) or not is_digest(blob_digest):
                raise ValueError("schema 1 layer without a valid sha256 blobSum")
            blobs.append((blob_digest, "", False))
        return ManifestInfo(media_type or _SCHEMA1_MEDIA_TYPE, (), tuple(blobs))
    if "manifests" in document:
        entries = document["manifests"]
        if not isinstance(entries, list):
            raise ValueError("manifests is not a list")
        children = []
        for entry in entries:
            child_digest, child_type, _foreign = _descriptor(entry, "child manifest")
            children.append((child_digest, child_type))
        return ManifestInfo(media_type or "application/vnd.oci.image.index.v1+json", tuple(children), ())
    if "config" in document or "layers" in document:
        blobs = [_descriptor(document.get("config"), "config")]
        layers = document.get("layers") or []
        if not isinstance(layers, list):
            raise ValueError("layers is not a list")
        for layer in layers:
            blobs.append(_descriptor(layer, "layer"))
        return ManifestInfo(media_type or "application/vnd.oci.image.manifest.v1+json", (), tuple(blobs))
    raise ValueError("JSON has neither manifests, config nor layers, so not a known manifest type")


def _descriptor(entry: t.Any, what: str) -> t.Tuple[str, str, bool]:
    if not isinstance(entry, dict):
        raise ValueError(f"{what} descriptor is not an object")
    digest = entry.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        # Other algorithms exist in the spec; this registry stores sha256 only.
        raise ValueError(f"{what} descriptor has no valid sha256 digest")
    media_type = entry.get("mediaType")
    urls = entry.get("urls")
    return digest, media_type if isinstance(media_type, str) else "", bool(urls)


class StorageReader:
    """Reads links, blob presence and manifests from one storage tree, never following symlinks.

    Shared by the scanner and the GC guard so both read storage the same way. Every path it
    builds comes from a validated digest or from a directory listing, never from file content.
    """

    def __init__(self, storage_root: str) -> None:
        self.root = resolve_storage_root(storage_root)
        self.blobs_dir = os.path.join(self.root, "blobs", "sha256")
        self.repositories_dir = os.path.join(self.root, "repositories")
        self._blob_cache: t.Dict[str, str] = {}
        self._manifest_cache: "collections.OrderedDict[str, ManifestRead]" = collections.OrderedDict()
        self._prefix_problems: t.Dict[str, str] = {}
        self.manifests_read = 0

    # -- primitive reads ---------------------------------------------------------------------------
    def open_bytes(self, path: str, limit: int, valid: t.Optional[t.Callable[[bytes], bool]] = None) -> bytes:
        """Read a regular file; FileNotFoundError when absent, _Unusable when not a usable file.

        The final component is opened with O_NOFOLLOW and O_NONBLOCK, so a symlink is refused and a
        FIFO cannot block. Content that ``valid`` accepts (a link holding a digest, a manifest hashing
        to its digest) is returned after one read; anything else is checked with fstat, so a
        directory, FIFO or device is reported as what it is. Skipping fstat on the common path saves
        a system call per file, which is most of the scan's cost.
        Tests replace this method to make files vanish between listing and reading.
        """
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise _Unusable("is a symbolic link (not followed)") from None
            if error.errno == errno.ENOTDIR:
                raise FileNotFoundError(path) from None
            if error.errno in (errno.EACCES, errno.EPERM):
                raise _Unusable("cannot be read (permission denied)") from None
            raise _Unusable(f"cannot be opened ({error.strerror})") from None
        try:
            want = min(limit + 1, _READ_CHUNK)
            try:
                first = os.read(fd, want)
            except OSError as error:
                _require_regular(fd)
                raise _Unusable(f"cannot be read ({error.strerror})") from None
            if len(first) < want and valid is not None and valid(first):
                return first
            _require_regular(fd)
            chunks = [first]
            size = len(first)
            while len(chunks[-1]) == want or size == 0:
                if size > limit:
                    raise _Unusable(f"is larger than {limit} bytes")
                try:
                    chunk = os.read(fd, _READ_CHUNK)
                except OSError as error:
                    raise _Unusable(f"cannot be read ({error.strerror})") from None
                if not chunk:
                    break
                size += len(chunk)
                chunks.append(chunk)
                want = _READ_CHUNK
            if size > limit:
                raise _Unusable(f"is larger than {limit} bytes")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def read_link(self, path: str) -> t.Tuple[str, str]:
        """Return (digest, "") for a valid link, ("", "") when absent, ("", reason) when corrupt."""
        try:
            raw = self.open_bytes(path, _LINK_READ_LIMIT, _is_digest_bytes)
        except FileNotFoundError:
            return "", ""
        except _Unusable as problem:
            return "", str(problem)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return "", "link holds non-ASCII bytes, not a digest"
        if is_digest(text):
            return text, ""
        return "", _link_problem(text)

    def directory_problem(self, path: str) -> str:
        """"" for a real directory, "absent", or why it cannot be used (symlink, file)."""
        return _directory_problem(path)

    def list_directory(
        self, directory: str, problems: t.List[t.Tuple[str, str]]
    ) -> t.Optional[t.List["os.DirEntry[str]"]]:
        """List a real directory (never a symlink to one); None when absent or unusable."""
        problem = _directory_problem(directory)
        if problem == "absent":
            return None
        if problem:
            problems.append((directory, problem))
            return None
        try:
            with os.scandir(directory) as iterator:
                return list(iterator)
        except (FileNotFoundError, NotADirectoryError):
            return None  # removed between the check and the listing
        except OSError as error:
            problems.append((directory, f"cannot be listed ({error.strerror})"))
            return None

    # -- blobs -------------------------------------------------------------------------------------
    # Hot paths build paths with "/" directly (posix only, like the registry's filesystem driver):
    # os.path.join costs more than the system call it prepares.
    def blob_path(self, digest: str) -> str:
        hex_digest = digest[7:]
        return f"{self.blobs_dir}/{hex_digest[:2]}/{hex_digest}/data"

    def _blob_dir_problem(self, digest: str, fresh: bool) -> t.Tuple[str, str]:
        """Check blobs/sha256/<xx> and blobs/sha256/<xx>/<hex> are real directories: (path, problem)."""
        hex_digest = digest[7:]
        prefix_dir = f"{self.blobs_dir}/{hex_digest[:2]}"
        problem = None if fresh else self._prefix_problems.get(hex_digest[:2])
        if problem is None:
            problem = _directory_problem(prefix_dir)
            if problem != "absent":
                self._prefix_problems[hex_digest[:2]] = problem
        if problem:
            return prefix_dir, problem
        blob_dir = f"{prefix_dir}/{hex_digest}"
        return blob_dir, _directory_problem(blob_dir)

    def locate_blob(self, digest: str) -> t.Tuple[str, str]:
        """(path of the blob's data file, "") when its directories are usable; else (path, "absent" or why not)."""
        where, problem = self._blob_dir_problem(digest, fresh=True)
        return (where, problem) if problem else (f"{where}/data", "")

    def blob_state(self, digest: str, fresh: bool = False) -> str:
        """"present", "absent", or "<path> <reason>" when the blob's files are unusable.

        Only valid digests reach here, so the path cannot escape the blob store.
        """
        if not fresh:
            cached = self._blob_cache.get(digest)
            if cached is not None:
                return cached
        where, problem = self._blob_dir_problem(digest, fresh)
        if problem == "absent":
            state = "absent"
        elif problem:
            state = f"{self.relative(where)} {problem}"
        else:
            data = f"{where}/data"
            state = _file_state(data)
            if state not in ("present", "absent"):
                state = f"{self.relative(data)} {state}"
        if len(self._blob_cache) >= _BLOB_CACHE_SIZE:
            self._blob_cache.clear()
        self._blob_cache[digest] = state
        return state

    def count_blobs(self) -> int:
        """Number of blob directories (cheap: two directory levels, no file reads); the collector removes whole ones."""
        problems: t.List[t.Tuple[str, str]] = []
        count = 0
        for prefix in self.list_directory(self.blobs_dir, problems) or ():
            if not prefix.is_dir(follow_symlinks=False):
                continue
            for entry in self.list_directory(prefix.path, problems) or ():
                if entry.is_dir(follow_symlinks=False) and is_hex(entry.name):
                    count += 1
        return count

    def blob_size(self, digest: str) -> int:
        try:
            return os.lstat(self.blob_path(digest)).st_size
        except OSError:
            return 0

    def read_manifest(self, digest: str, fresh: bool = False) -> ManifestRead:
        """Read and parse the manifest stored under digest (hash checked), cached in a small LRU."""
        if not fresh:
            cached = self._manifest_cache.get(digest)
            if cached is not None:
                self._manifest_cache.move_to_end(digest)
                return cached
        where, problem = self._blob_dir_problem(digest, fresh)
        if problem == "absent":
            return ManifestRead(None, True, "")
        if problem:
            outcome = ManifestRead(None, False, f"{self.relative(where)} {problem}")
        else:
            data = f"{where}/data"
            expected = digest[7:]
            hashed: t.List[bool] = []

            def hashes_right(body: bytes) -> bool:
                hashed.append(hashlib.sha256(body).hexdigest() == expected)
                return hashed[-1]

            try:
                body = self.open_bytes(data, MANIFEST_READ_LIMIT, hashes_right)
            except FileNotFoundError:
                return ManifestRead(None, True, "")
            except _Unusable as unusable:
                outcome = ManifestRead(None, False, f"{self.relative(data)} {unusable}")
            else:
                self.manifests_read += 1
                try:
                    outcome = ManifestRead(parse_manifest(body, digest, hashed == [True]), False, "")
                except ValueError as invalid:
                    outcome = ManifestRead(None, False, f"manifest data {invalid}")
        self._manifest_cache[digest] = outcome
        if len(self._manifest_cache) > _MANIFEST_CACHE_SIZE:
            self._manifest_cache.popitem(last=False)
        return outcome

    def relative(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    # -- repositories ------------------------------------------------------------------------------
    def iter_repositories(self, problems: t.List[t.Tuple[str, str]]) -> t.Iterator[t.Tuple[str, str]]:
        """Yield (name, directory) for every repository, sorted; symlinks go to problems, never followed."""
        problem = _directory_problem(self.repositories_dir)
        if problem == "absent":
            return
        if problem:
            raise ScanError(f"{self.repositories_dir} {problem}")
        stack = [("", self.repositories_dir)]
        while stack:
            name, directory = stack.pop()
            try:
                with os.scandir(directory) as iterator:
                    entries = list(iterator)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as error:
                if not name:
                    raise ScanError(f"{self.repositories_dir} cannot be listed: {error.strerror}") from None
                problems.append((directory, f"cannot be listed ({error.strerror})"))
                continue
            # The registry's catalog lists a directory that has _layers; one with only
            # _manifests is a repository too, as far as damage goes.
            if name and any(entry.name in ("_manifests", "_layers") for entry in entries):
                yield name, directory
            children = []
            for entry in entries:
                if entry.name.startswith("_"):
                    continue
                if entry.is_symlink():
                    problems.append((entry.path, "is a symbolic link (not followed)"))
                elif entry.is_dir(follow_symlinks=False):
                    children.append((f"{name}/{entry.name}" if name else entry.name, entry.path))
            stack.extend(sorted(children, reverse=True))

    def read_link_directory(
        self, directory: str, problems: t.List[t.Tuple[str, str]]
    ) -> t.Dict[str, str]:
        """Read ``<directory>/<hex>/link`` entries; return {digest: link path} for the valid ones."""
        found: t.Dict[str, str] = {}
        entries = self.list_directory(directory, problems)
        if not entries:
            return found
        for entry in entries:
            if entry.is_symlink():
                problems.append((entry.path, "is a symbolic link (not followed)"))
                continue
            if not is_hex(entry.name):
                problems.append((entry.path, "is not named after a sha256 digest"))
                continue
            if not entry.is_dir(follow_symlinks=False):
                problems.append((entry.path, "is a file where a directory is expected"))
                continue
            link_path = f"{entry.path}/link"
            digest, problem = self.read_link(link_path)
            if problem:
                problems.append((link_path, problem))
            elif digest:
                if digest[7:] != entry.name:
                    problems.append((link_path, f"link holds {digest}, not the digest its directory is named after"))
                else:
                    found[digest] = link_path
        return found

    def read_tags(
        self, repository_dir: str, problems: t.List[t.Tuple[str, str]]
    ) -> t.Tuple[t.Dict[str, t.Tuple[str, str]], t.Dict[str, t.List[str]]]:
        """Return ({tag: (current digest, link path)}, {tag: [digests in the tag's index history]})."""
        current: t.Dict[str, t.Tuple[str, str]] = {}
        history: t.Dict[str, t.List[str]] = {}
        manifests_dir = os.path.join(repository_dir, "_manifests")
        problem = _directory_problem(manifests_dir)
        if problem:
            if problem != "absent":
                problems.append((manifests_dir, problem))
            return current, history
        entries = self.list_directory(os.path.join(manifests_dir, "tags"), problems)
        if not entries:
            return current, history
        for entry in sorted(entries, key=lambda item: item.name):
            if entry.is_symlink():
                problems.append((entry.path, "is a symbolic link (not followed)"))
                continue
            if not entry.is_dir(follow_symlinks=False):
                problems.append((entry.path, "is a file where a tag directory is expected"))
                continue
            current_dir = os.path.join(entry.path, "current")
            problem = _directory_problem(current_dir)
            if problem and problem != "absent":
                problems.append((current_dir, problem))
            elif not problem:
                link_path = os.path.join(current_dir, "link")
                digest, problem = self.read_link(link_path)
                if problem:
                    problems.append((link_path, problem))
                elif digest:
                    current[entry.name] = (digest, link_path)
            index_dir = os.path.join(entry.path, "index")
            problem = _directory_problem(index_dir)
            if problem and problem != "absent":
                problems.append((index_dir, problem))
            elif not problem:
                history[entry.name] = list(self.read_link_directory(os.path.join(index_dir, "sha256"), problems))
        return current, history

    def read_repository_links(
        self, repository_dir: str, problems: t.List[t.Tuple[str, str]]
    ) -> t.Tuple[t.Dict[str, str], t.Dict[str, str]]:
        """Return ({layer digest: link path}, {revision digest: link path}) of one repository."""
        layers: t.Dict[str, str] = {}
        revisions: t.Dict[str, str] = {}
        layers_dir = os.path.join(repository_dir, "_layers")
        problem = _directory_problem(layers_dir)
        if problem and problem != "absent":
            problems.append((layers_dir, problem))
        elif not problem:
            layers = self.read_link_directory(os.path.join(layers_dir, "sha256"), problems)
        manifests_dir = os.path.join(repository_dir, "_manifests")
        problem = _directory_problem(manifests_dir)
        if not problem:
            revisions_dir = os.path.join(manifests_dir, "revisions")
            problem = _directory_problem(revisions_dir)
            if problem and problem != "absent":
                problems.append((revisions_dir, problem))
            elif not problem:
                revisions = self.read_link_directory(os.path.join(revisions_dir, "sha256"), problems)
        return layers, revisions

    def linked(self, repository_dir: str, digest: str, where: str) -> bool:
        """Fresh check that the repository links digest as a revision or as a layer."""
        parts = ("_manifests", "revisions") if where == "revision" else ("_layers",)
        path = repository_dir
        # Each directory on the way must be real, or the read would follow a symlink.
        for part in parts + ("sha256", digest[7:]):
            path = os.path.join(path, part)
            if _directory_problem(path):
                return False
        found, _problem = self.read_link(os.path.join(path, "link"))
        return found == digest


def _is_digest_bytes(raw: bytes) -> bool:
    return _DIGEST_BYTES.fullmatch(raw) is not None


def _require_regular(fd: int) -> None:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        raise _Unusable(_describe_mode(mode))


def _describe_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory where a file is expected"
    if stat.S_ISFIFO(mode):
        return "is a FIFO where a file is expected"
    if stat.S_ISSOCK(mode):
        return "is a socket where a file is expected"
    if stat.S_ISLNK(mode):
        return "is a symbolic link (not followed)"
    return "is a device or special file where a file is expected"


def _lstat_mode(path: str) -> t.Tuple[t.Optional[int], str]:
    """The path's mode without following links, or None and why it could not be read."""
    try:
        return os.lstat(path).st_mode, ""
    except (FileNotFoundError, NotADirectoryError):
        return None, "absent"
    except OSError as error:
        return None, f"cannot be examined ({error.strerror})"


def _directory_problem(path: str) -> str:
    mode, problem = _lstat_mode(path)
    if mode is None:
        return problem
    if stat.S_ISDIR(mode):
        return ""
    if stat.S_ISLNK(mode):
        return "is a symbolic link (not followed)"
    return "is a file where a directory is expected"


def _file_state(path: str) -> str:
    mode, problem = _lstat_mode(path)
    if mode is None:
        return problem
    return "present" if stat.S_ISREG(mode) else _describe_mode(mode)


def _link_problem(text: str) -> str:
    if not text:
        return "link is empty"
    if text.strip() != text:
        return "link has surrounding whitespace or a trailing newline"
    if "/" in text or ".." in text:
        return "link holds a path, not a digest (never followed)"
    if text.lower() != text and is_digest(text.lower()):
        return "link digest is not lowercase"
    return "link does not hold sha256:<64 lowercase hex>"


class _Pending(t.NamedTuple):
    """A finding before its tags are attached and before the recheck."""

    kind: str
    digest: str
    media_type: str
    missing: t.Tuple[str, ...]
    path: str
    message: str
    referenced: t.Optional[bool] = None


class StorageScanner:
    """Scans every repository once; ``scan()`` returns a ScanResult."""

    def __init__(
        self,
        storage_root: str,
        repositories: t.Sequence[str] = (),
        min_age: float = 0.0,
        on_finding: t.Optional[t.Callable[[Finding], None]] = None,
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        self.reader = StorageReader(storage_root)
        self.patterns = [pattern for pattern in repositories if pattern]
        self.min_age = float(min_age or 0)
        self.on_finding = on_finding
        self.clock = clock
        self.result = ScanResult(self.reader.root)
        self._reported_paths: t.Set[str] = set()

    def scan(self) -> ScanResult:
        started = time.monotonic()
        problems: t.List[t.Tuple[str, str]] = []
        for name, directory in self.reader.iter_repositories(problems):
            self._report_problems(problems, "")
            if self.patterns and not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns):
                continue
            self.result.repositories += 1
            self._scan_repository(name, directory)
        self._report_problems(problems, "")
        self.result.manifests_read = self.reader.manifests_read
        self.result.duration = time.monotonic() - started
        return self.result

    # -- reporting ---------------------------------------------------------------------------------
    def _emit(self, finding: Finding) -> None:
        self.result.findings.append(finding)
        if self.on_finding is not None:
            self.on_finding(finding)

    def _is_recent(self, path: str) -> bool:
        if self.min_age <= 0:
            return False
        try:
            modified = os.lstat(path).st_mtime
        except OSError:
            return False
        return self.clock() - modified < self.min_age

    def _problem_persists(self, path: str, reason: str) -> bool:
        """Recheck a corrupt-file problem: a link caught mid-write reads fine a moment later."""
        if not os.path.lexists(path):
            return False
        if path.endswith(os.sep + "link"):
            digest, problem = self.reader.read_link(path)
            return bool(problem) or not digest or reason.startswith("link holds sha256:")
        if path.startswith(self.reader.blobs_dir + os.sep) and path.endswith(os.sep + "data"):
            if not reason.startswith("manifest data"):
                return True
            digest = DIGEST_PREFIX + os.path.basename(os.path.dirname(path))
            outcome = self.reader.read_manifest(digest, fresh=True)
            return outcome.info is None and not outcome.absent
        return True

    def _report_problems(self, problems: t.List[t.Tuple[str, str]], repository: str) -> None:
        for path, reason in problems:
            if path in self._reported_paths:
                continue
            if self._is_recent(path):
                self.result.skipped_recent += 1
                continue
            if not self._problem_persists(path, reason):
                self.result.dropped_on_recheck += 1
                continue
            self._reported_paths.add(path)
            relative = self.reader.relative(path)
            self._emit(
                Finding(CORRUPT_FILE, repository, "", "", (), (), (), relative, f"{relative} {reason}", None, reason)
            )
        del problems[:]

    def _blob_usable(self, digest: str, problems: t.List[t.Tuple[str, str]]) -> bool:
        state = self.reader.blob_state(digest)
        if state == "present":
            return True
        if state != "absent":
            # The state names the unusable path itself (data, its directory, or the prefix directory).
            relative, _space, reason = state.partition(" ")
            problems.append((os.path.join(self.reader.root, relative), reason))
        return False

    # -- one repository ----------------------------------------------------------------------------
    def _scan_repository(self, name: str, directory: str) -> None:
        reader = self.reader
        problems: t.List[t.Tuple[str, str]] = []
        layer_links, revisions = reader.read_repository_links(directory, problems)
        current_tags, tag_history = reader.read_tags(directory, problems)
        self.result.revisions += len(revisions)
        self.result.tags += len(current_tags)

        pending: t.List[_Pending] = []
        # Only index edges are kept: they are all that tag reachability needs.
        edges: t.Dict[str, t.Tuple[str, ...]] = {}
        media_types: t.Dict[str, str] = {}
        referenced_blobs: t.Dict[str, str] = {}
        users_of_missing: t.Dict[str, t.List[str]] = {}
        for digest in sorted(revisions):
            link_path = revisions[digest]
            outcome = reader.read_manifest(digest)
            if outcome.absent:
                pending.append(
                    _Pending(DANGLING_REVISION, digest, "", (), link_path, "revision link has no manifest data")
                )
                continue
            if outcome.info is None:
                # Kept as a pending finding (not a bare problem) so it carries the tags it breaks.
                pending.append(_Pending(CORRUPT_FILE, digest, "", (), link_path, outcome.problem))
                continue
            info = outcome.info
            media_types[digest] = info.media_type
            if info.children:
                edges[digest] = tuple(child for child, _child_type in info.children)
                missing = tuple(
                    dict.fromkeys(
                        child
                        for child, _child_type in info.children
                        if not ((child in revisions or child in layer_links) and self._blob_usable(child, problems))
                    )
                )
                if missing:
                    pending.append(
                        _Pending(ORPHAN_INDEX, digest, info.media_type, missing, link_path, "child manifests are missing")
                    )
            if info.blobs:
                missing_blobs: t.List[str] = []
                for blob_digest, blob_type, foreign in info.blobs:
                    referenced_blobs.setdefault(blob_digest, blob_type)
                    if blob_digest in layer_links:
                        if self._blob_usable(blob_digest, problems):
                            continue
                    elif foreign:
                        continue  # non-distributable layer: pulled from its URLs, never stored here
                    missing_blobs.append(blob_digest)
                    users_of_missing.setdefault(blob_digest, []).append(digest)
                if missing_blobs:
                    pending.append(
                        _Pending(
                            BROKEN_MANIFEST,
                            digest,
                            info.media_type,
                            tuple(dict.fromkeys(missing_blobs)),
                            link_path,
                            "config or layers are missing",
                        )
                    )

        for tag, (digest, link_path) in current_tags.items():
            if digest in revisions or digest in layer_links:
                state = reader.blob_state(digest)
                if state == "present":
                    continue
                reason = "tag's manifest has no data" if state == "absent" else "tag's manifest data is unusable"
            else:
                reason = "tag points at a digest with no revision link"
            pending.append(_Pending(DANGLING_TAG, digest, media_types.get(digest, ""), (tag,), link_path, reason))

        for digest, link_path in layer_links.items():
            if digest in revisions or self._blob_usable(digest, problems):
                continue
            pending.append(
                _Pending(
                    ORPHAN_LAYER_LINK,
                    digest,
                    referenced_blobs.get(digest, ""),
                    (),
                    link_path,
                    "layer link has no data",
                    digest in referenced_blobs,
                )
            )

        self._report_problems(problems, name)
        if not pending:
            return
        wanted = {item.digest for item in pending}
        for users in users_of_missing.values():
            wanted.update(users)
        reached = _reach({tag: (digest,) for tag, (digest, _link) in current_tags.items()}, edges, wanted)
        reached_history = _reach(tag_history, edges, wanted)
        for item in pending:
            finding = self._recheck(name, directory, item)
            if finding is None:
                continue
            if item.kind == DANGLING_TAG:
                tags: t.Set[str] = set(item.missing)
                history: t.Set[str] = set()
            else:
                sources = [item.digest] + (users_of_missing.get(item.digest, []) if item.kind == ORPHAN_LAYER_LINK else [])
                tags = set().union(*(reached.get(source, set()) for source in sources))
                history = set().union(*(reached_history.get(source, set()) for source in sources))
            finding = finding._replace(tags=tuple(sorted(tags)), history_tags=tuple(sorted(history - tags)))
            if finding.harmful:
                self.result.broken_tags.update(f"{name}:{tag}" for tag in finding.tags)
            self._emit(finding)

    def _recheck(self, repository: str, directory: str, item: _Pending) -> t.Optional[Finding]:
        """Look again with fresh reads; drop what a concurrent writer or collector explains."""
        reader = self.reader
        if self._is_recent(item.path):
            self.result.skipped_recent += 1
            return None
        digest, problem = reader.read_link(item.path)
        if problem or digest != item.digest:
            # The link vanished or changed since it was listed: the object was deleted or rewritten.
            self.result.dropped_on_recheck += 1
            return None
        missing = item.missing
        if item.kind in (DANGLING_REVISION, ORPHAN_LAYER_LINK):
            if reader.blob_state(item.digest, fresh=True) == "present":
                self.result.dropped_on_recheck += 1
                return None
        elif item.kind == DANGLING_TAG:
            linked = reader.linked(directory, item.digest, "revision") or reader.linked(directory, item.digest, "layer")
            if linked and reader.blob_state(item.digest, fresh=True) == "present":
                self.result.dropped_on_recheck += 1
                return None
        elif item.kind == ORPHAN_INDEX:
            missing = tuple(
                child
                for child in item.missing
                if not (
                    (reader.linked(directory, child, "revision") or reader.linked(directory, child, "layer"))
                    and reader.blob_state(child, fresh=True) == "present"
                )
            )
        elif item.kind == CORRUPT_FILE:
            outcome = reader.read_manifest(item.digest, fresh=True)
            if outcome.info is not None or outcome.absent:
                self.result.dropped_on_recheck += 1
                return None
            return Finding(
                CORRUPT_FILE,
                repository,
                item.digest,
                "",
                (),
                (),
                (),
                reader.relative(reader.blob_path(item.digest)),
                f"{repository}@{item.digest}: {outcome.problem}",
                None,
                outcome.problem,
            )
        elif item.kind == BROKEN_MANIFEST:
            missing = tuple(
                blob
                for blob in item.missing
                if not (reader.linked(directory, blob, "layer") and reader.blob_state(blob, fresh=True) == "present")
            )
        if item.kind in (ORPHAN_INDEX, BROKEN_MANIFEST) and not missing:
            self.result.dropped_on_recheck += 1
            return None
        return Finding(
            item.kind,
            repository,
            item.digest,
            item.media_type,
            () if item.kind == DANGLING_TAG else missing,
            (),
            (),
            reader.relative(item.path),
            _message(item, repository, missing),
            item.referenced,
            item.message,
        )


def _message(item: _Pending, repository: str, missing: t.Tuple[str, ...]) -> str:
    if item.kind == ORPHAN_INDEX:
        return f"{repository}@{item.digest}: index child manifests missing: {', '.join(missing)}"
    if item.kind == BROKEN_MANIFEST:
        return f"{repository}@{item.digest}: config or layers missing: {', '.join(missing)}"
    if item.kind == DANGLING_TAG:
        return f"{repository}:{item.missing[0]} -> {item.digest}: {item.message}"
    if item.kind == ORPHAN_LAYER_LINK:
        usage = "referenced by a manifest in this repository" if item.referenced else "not referenced by any manifest"
        return f"{repository}@{item.digest}: {item.message}, {usage}"
    return f"{repository}@{item.digest}: {item.message}"


def _reach(
    starts: t.Mapping[str, t.Sequence[str]],
    edges: t.Mapping[str, t.Tuple[str, ...]],
    wanted: t.Set[str],
) -> t.Dict[str, t.Set[str]]:
    """Map each wanted digest to the tags whose start manifests reach it through index edges."""
    reached: t.Dict[str, t.Set[str]] = {}
    for tag, digests in starts.items():
        seen: t.Set[str] = set()
        stack = list(digests)
        while stack:
            digest = stack.pop()
            if digest in seen:
                continue
            seen.add(digest)
            if digest in wanted:
                reached.setdefault(digest, set()).add(tag)
            stack.extend(edges.get(digest, ()))
    return reached


def scan_storage(
    storage_root: str,
    repositories: t.Sequence[str] = (),
    min_age: float = 0.0,
    on_finding: t.Optional[t.Callable[[Finding], None]] = None,
) -> ScanResult:
    """Scan a storage tree and return every finding; raises ScanError when it cannot scan at all."""
    return StorageScanner(storage_root, repositories, min_age, on_finding).scan()


def failed_scan_report(storage_root: str, message: str, started: float) -> t.Dict[str, t.Any]:
    """The report of a scan that could not run, so a monitor never keeps reading the last good one."""
    return {"storage_root": storage_root, "clean": False, "failed": True, "error": message, "started": started}


def failed_scan_metrics(started: float) -> t.List[Metric]:
    """Samples for a scan that could not run: failed, and not proven clean."""
    return [
        Metric("registry_storage_scan_failed", "1 when the last scan could not scan the storage.", "gauge", 1),
        Metric("registry_storage_clean", "1 when the last scan found no harmful problem.", "gauge", 0),
        Metric("registry_storage_scan_timestamp_seconds", "When the last scan started.", "gauge", int(started)),
    ]


def scan_metrics(result: ScanResult) -> t.List[Metric]:
    """Prometheus samples describing a scan, for node_exporter's textfile collector."""
    metrics = [
        Metric(
            "registry_storage_findings",
            "Problems found in registry storage by the last scan, by kind.",
            "gauge",
            count,
            {"kind": kind},
        )
        for kind, count in result.summary().items()
    ]
    metrics.extend(
        [
            Metric("registry_storage_scan_failed", "1 when the last scan could not scan the storage.", "gauge", 0),
            Metric("registry_storage_clean", "1 when the last scan found no harmful problem.", "gauge", int(result.clean)),
            Metric("registry_storage_broken_tags", "Tags that reach a broken manifest.", "gauge", len(result.broken_tags)),
            Metric("registry_storage_repositories", "Repositories scanned.", "gauge", result.repositories),
            Metric("registry_storage_revisions", "Manifest revisions scanned.", "gauge", result.revisions),
            Metric("registry_storage_scan_duration_seconds", "Duration of the last scan.", "gauge", result.duration),
            Metric(
                "registry_storage_scan_timestamp_seconds", "When the last scan started.", "gauge", int(result.started)
            ),
        ]
    )
    return metrics
