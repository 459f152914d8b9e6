# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore, not rebuild: put back exactly the objects a garbage collection took, digests unchanged.

For each image asked for (or each tag the storage scan finds broken) the restore follows the tag through
the registry's own storage, exactly as the registry would serve it, and lists what is missing: manifest and
blob data, and the repository links (``_manifests/revisions``, ``_layers``) without which the registry
answers 404 although the bytes are there. The incident's child manifests usually need only their link.

Then, object by object, blobs before the manifests that name them and children before their index, it
takes each missing object from the first source that has it (a copy of the storage tree, another registry),
hashes every byte against the digest the parent manifest already names, and places it without replacing
anything that exists. Tag links are never read for writing: a restored image has the digests it had.
What no source has is listed, with the images it breaks, for a rebuild.

Check mode reads and hashes every object it would restore, so a corrupt backup is refused there too; it
writes nothing and runs no command.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import typing as t

from ._gc_guard import GCGuardError, GCInterrupted, SignalGuard, last_error_line, run_command
from ._image_reference import ImageReferenceError, parse_image_reference
from ._restore_sources import RestoreSource, SourceMiss
from ._storage_placement import PlacementError, StoragePlacer
from ._storage_scan import INDEX_MEDIA_TYPES, ScanError, StorageReader, parse_manifest

# An index of indexes is rare; deeper than this is not an image layout the restore should guess at.
_MAX_DEPTH = 4
# Manifests are kept in memory while the restore walks them; the registry's own cap is 4 MiB.
_MANIFEST_LIMIT = 4 * 1024 * 1024

Runner = t.Callable[[t.Sequence[str], float], t.Any]


class RestoreError(Exception):
    """The restore could not start (unusable storage root, bad image reference); one sentence."""


class RestoreOptions(t.NamedTuple):
    storage_root: str
    # "repository:tag" or "repository@sha256:..." (a host prefix naming registry_host is dropped).
    images: t.Tuple[str, ...] = ()
    registry_host: t.Optional[str] = None
    check_mode: bool = False
    # The same rule as the GC guard: files are placed only while the registry is stopped or read-only.
    before_command: t.Tuple[str, ...] = ()
    after_command: t.Tuple[str, ...] = ()
    registry_offline: bool = False
    timeout: float = 600.0


@dataclasses.dataclass
class MissingObject:
    """One object an image needs that the registry cannot serve, and what the restore did about it."""

    repository: str
    digest: str
    kind: str  # manifest | blob
    role: str  # index | manifest | config | layer
    missing: str  # data (bytes and link) | link (the bytes are there, the repository does not link them)
    parent: str  # the manifest that names it; "" for the image's own top manifest
    action: str = ""  # restored | linked | would_restore | would_link | unavailable | not_placed
    source: str = ""
    size: int = 0
    problems: t.List[str] = dataclasses.field(default_factory=list)
    # Objects this one names (a manifest's config, layers, children): placed first, and all must be.
    requires: t.List["MissingObject"] = dataclasses.field(default_factory=list, repr=False)
    body: t.Optional[bytes] = dataclasses.field(default=None, repr=False)

    @property
    def key(self) -> t.Tuple[str, str, str]:
        return self.repository, self.kind, self.digest

    @property
    def placed(self) -> bool:
        """True when the registry can serve it after this run (or would, in check mode)."""
        return self.action in ("restored", "linked", "would_restore", "would_link")

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "repository": self.repository,
            "digest": self.digest,
            "kind": self.kind,
            "role": self.role,
            "missing": self.missing,
            "parent": self.parent,
            "action": self.action,
            "source": self.source,
            "size": self.size,
            "problems": list(self.problems),
        }


@dataclasses.dataclass
class ImageRestore:
    reference: str
    repository: str
    digest: str = ""
    status: str = ""  # complete | restored | would_restore | rebuild | not_found
    message: str = ""
    objects: t.List[MissingObject] = dataclasses.field(default_factory=list)

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "reference": self.reference,
            "repository": self.repository,
            "digest": self.digest,
            "status": self.status,
            "message": self.message,
            "objects": [item.digest for item in self.objects],
        }


class RestoreOutcome:
    def __init__(self, options: RestoreOptions) -> None:
        self.options = options
        self.images: t.List[ImageRestore] = []
        self.objects: t.List[MissingObject] = []
        self.commands: t.List[t.List[str]] = []
        self.failed = ""
        self.warnings: t.List[str] = []
        self.started = time.time()
        self.seconds = 0.0

    @property
    def changed(self) -> bool:
        """Something was placed; in check mode, something would be (Ansible's meaning of changed there)."""
        return any(item.placed for item in self.objects)

    @property
    def rebuild(self) -> t.List[str]:
        """The images no source could make whole: what the rebuild playbooks take, as they take it.

        A tag the storage does not have, or whose link cannot be read, is not_found: never handed to a rebuild."""
        return [image.reference for image in self.images if image.status == "rebuild"]

    def summary(self) -> t.Dict[str, int]:
        counts = {action: 0 for action in ("restored", "linked", "would_restore", "would_link", "unavailable", "not_placed")}
        for item in self.objects:
            counts[item.action] = counts.get(item.action, 0) + 1
        counts["bytes"] = sum(item.size for item in self.objects if item.action in ("restored", "would_restore"))
        for status in ("complete", "restored", "would_restore", "rebuild", "not_found"):
            counts[f"images_{status}"] = sum(1 for image in self.images if image.status == status)
        return counts

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "check_mode": self.options.check_mode,
            "images": [image.as_dict() for image in self.images],
            "objects": [item.as_dict() for item in self.objects],
            "rebuild": self.rebuild,
            "summary": self.summary(),
            "commands": self.commands,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }

    def diff(self) -> t.Dict[str, str]:
        """One line per object placed (or, in check mode, that would be), by its storage path."""
        lines = []
        for item in self.objects:
            if not item.placed:
                continue
            hex_digest = item.digest[7:]
            if item.missing == "data":
                lines.append(f"blobs/sha256/{hex_digest[:2]}/{hex_digest}/data  ({item.size} bytes from {item.source})")
            where = "_manifests/revisions" if item.kind == "manifest" else "_layers"
            lines.append(f"repositories/{item.repository}/{where}/sha256/{hex_digest}/link")
        return {"before": "", "after": "".join(line + "\n" for line in lines)}

    def lines(self) -> t.List[str]:
        """What a person reads: one line per image, then one per object that could not be placed."""
        out = [f"{image.reference}: {image.status}{' - ' + image.message if image.message else ''}" for image in self.images]
        for item in self.objects:
            if not item.placed:
                out.extend(f"{item.role} {item.repository}@{item.digest}: {problem}" for problem in item.problems)
        return out


# -- what is missing -------------------------------------------------------------------------------

class _Planner:
    """Walks each image through the storage and lists what is missing; fetches manifests it must read."""

    def __init__(self, reader: StorageReader, sources: t.Sequence[RestoreSource]) -> None:
        self.reader = reader
        self.sources = sources
        self.objects: t.Dict[t.Tuple[str, str, str], MissingObject] = {}
        self.order: t.List[MissingObject] = []

    def plan(self, image: ImageRestore, top: str) -> None:
        self._manifest(image, top, "manifest", "", 0)

    def _note(self, image: ImageRestore, item: MissingObject) -> MissingObject:
        known = self.objects.get(item.key)
        if known is None:
            self.objects[item.key] = known = item
            self.order.append(item)
        if known not in image.objects:
            image.objects.append(known)
        return known

    def _manifest(self, image: ImageRestore, digest: str, role: str, parent: str, depth: int) -> t.List[MissingObject]:
        """The missing objects this manifest's subtree adds that its parent must wait for."""
        repository = image.repository
        read = self.reader.read_manifest(digest, fresh=True)
        item: t.Optional[MissingObject] = None
        info = read.info
        if info is not None:
            if not self.reader.linked(f"{self.reader.repositories_dir}/{repository}", digest, "revision"):
                item = MissingObject(repository, digest, "manifest", role, "link", parent)
        elif read.absent:
            item = MissingObject(repository, digest, "manifest", role, "data", parent)
            if item.key in self.objects:
                return [self._note(image, item)]
            body = self._fetch_manifest(item)
            if body is None:
                item.action = "unavailable"
                return [self._note(image, item)]
            info = parse_manifest(body, digest, verified=True)
        else:
            item = MissingObject(repository, digest, "manifest", role, "data", parent, action="unavailable",
                                 problems=[f"the registry's own copy: {read.problem}; it is not overwritten"])
            return [self._note(image, item)]
        if item is not None:
            if not parent:
                item.role = "index" if info.children else "manifest"  # the top is known only once read
            if item.key in self.objects:
                return [self._note(image, item)]
        if depth >= _MAX_DEPTH and info.children:
            item = item or MissingObject(repository, digest, "manifest", role, "link", parent)
            item.action = "unavailable"
            item.problems.append(f"indexes nest deeper than {_MAX_DEPTH} levels here; its children are not restored")
            return [self._note(image, item)]
        below: t.List[MissingObject] = []
        for child, media_type in info.children:
            child_role = "index" if media_type in INDEX_MEDIA_TYPES else "manifest"
            below.extend(self._manifest(image, child, child_role, digest, depth + 1))
        for position, (blob, _media_type, foreign) in enumerate(info.blobs):
            if not foreign:  # foreign layers live at their URLs, never in this registry
                below.extend(self._blob(image, blob, "config" if position == 0 else "layer", digest))
        if item is None:
            return below  # present and linked itself: what is below it is its parent's to wait for
        item.requires = below
        return [self._note(image, item)]

    def _blob(self, image: ImageRestore, digest: str, role: str, parent: str) -> t.List[MissingObject]:
        state = self.reader.blob_state(digest, fresh=True)
        if state == "present":
            if self.reader.linked(f"{self.reader.repositories_dir}/{image.repository}", digest, "layer"):
                return []
            return [self._note(image, MissingObject(image.repository, digest, "blob", role, "link", parent))]
        item = MissingObject(image.repository, digest, "blob", role, "data", parent)
        if state != "absent":
            item.action = "unavailable"
            item.problems.append(f"the registry's own copy: {state}; it is not overwritten")
        return [self._note(image, item)]

    def _fetch_manifest(self, item: MissingObject) -> t.Optional[bytes]:
        for source in self.sources:
            chunks: t.List[bytes] = []
            collected = _Collector(item, chunks.append, _MANIFEST_LIMIT)
            if collected.take(source):
                body = b"".join(chunks)
                try:
                    parse_manifest(body, item.digest, verified=True)
                except ValueError as invalid:
                    item.problems.append(f"{source.name}: manifest {invalid}, not used")
                    continue
                item.body = body
                return body
        return None


class _Collector:
    """Streams one object from a source into a sink, hashing it; ``take`` says whether the bytes are right."""

    def __init__(self, item: MissingObject, sink: t.Callable[[bytes], None], limit: int = 0) -> None:
        self.item = item
        self.sink = sink
        self.limit = limit

    def take(self, source: RestoreSource) -> bool:
        hasher = hashlib.sha256()
        size = 0

        def hashed(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if self.limit and size > self.limit:
                raise SourceMiss(f"{source.name}: {self.item.kind} {self.item.digest} is larger than {self.limit} bytes")
            hasher.update(chunk)
            self.sink(chunk)

        try:
            source.stream(self.item.kind, self.item.repository, self.item.digest, hashed)
        except SourceMiss as miss:
            self.item.problems.append(str(miss))
            return False
        got = f"sha256:{hasher.hexdigest()}"
        if got != self.item.digest:
            self.item.problems.append(
                f"{source.name}: its {size} bytes hash to {got}, not {self.item.digest} (altered or truncated), not used"
            )
            return False
        self.item.source, self.item.size = source.name, size
        return True


# -- putting it back ---------------------------------------------------------------------------------

class _Restorer:
    def __init__(self, reader: StorageReader, sources: t.Sequence[RestoreSource], check_mode: bool) -> None:
        self.reader = reader
        self.sources = sources
        self.check_mode = check_mode
        self.placer = None if check_mode else StoragePlacer(reader)
        self._would_place: t.Set[str] = set()  # blob digests a check-mode run already counted

    def place(self, item: MissingObject) -> None:
        if item.action:
            return  # unavailable from the plan, or already placed for another image
        unplaced = [below for below in item.requires if not below.placed]
        if unplaced:
            first = unplaced[0]
            item.action = "not_placed"
            item.problems.append(
                f"not placed: the {first.role} {first.digest} it names could not be restored"
                + (f" (and {len(unplaced) - 1} more)" if len(unplaced) > 1 else "")
            )
            return
        if item.missing == "data" and not self._data(item):
            item.action = "unavailable"
            if not item.problems:
                item.problems.append("no source was given")
            return
        self._link(item, "linked" if item.missing == "link" else "restored")

    def _data(self, item: MissingObject) -> bool:
        if self.check_mode:
            if item.digest in self._would_place:
                item.missing = "link"
                return True
            if item.body is not None:  # fetched and hashed while planning
                self._would_place.add(item.digest)
                return True
            for source in self.sources:
                if _Collector(item, lambda chunk: None).take(source):
                    self._would_place.add(item.digest)
                    return True
            return False
        placer = t.cast(StoragePlacer, self.placer)  # set whenever not in check mode
        if self.reader.blob_state(item.digest, fresh=True) == "present":
            item.missing = "link"  # placed meanwhile for another repository, or by the registry
            return True
        try:
            if item.body is not None:
                pending = placer.blob_file(item.digest)
                pending.write(item.body)
                pending.commit()
                return True
            for source in self.sources:
                pending = placer.blob_file(item.digest)
                try:
                    if not _Collector(item, pending.write).take(source):
                        continue
                finally:
                    if item.source != source.name:
                        pending.discard()
                pending.commit()
                return True
        except PlacementError as error:
            item.problems.append(str(error))
        return False

    def _link(self, item: MissingObject, done: str) -> None:
        if self.check_mode:
            item.action = "would_" + ("link" if done == "linked" else "restore")
            return
        try:
            t.cast(StoragePlacer, self.placer).link(item.repository, item.digest, "revision" if item.kind == "manifest" else "layer")
        except PlacementError as error:
            item.action = "not_placed"
            item.problems.append(str(error))
            return
        item.action = done


# -- the run -----------------------------------------------------------------------------------------

def _top_digest(reader: StorageReader, image: ImageRestore, tag: t.Optional[str], digest: t.Optional[str]) -> str:
    """The digest the tag names, read through real directories only; "" (and not_found) when it cannot be read."""
    if digest:
        return digest
    path = reader.repositories_dir
    # Every directory on the way, the repository's own components included: none may be a symlink.
    for part in image.repository.split("/") + ["_manifests", "tags", str(tag), "current"]:
        path = f"{path}/{part}"
        problem = reader.directory_problem(path)
        if problem:
            break
    else:
        found, problem = reader.read_link(f"{path}/link")
        if found:
            return found
    image.status = "not_found"
    image.message = (f"{reader.relative(path)} {problem}" if problem and problem != "absent"
                     else f"the storage has no tag {tag}; check the name")
    return ""


def _images(reader: StorageReader, options: RestoreOptions) -> t.List[t.Tuple[ImageRestore, str]]:
    out = []
    for text in options.images:
        try:
            reference = parse_image_reference(text, options.registry_host)
        except ImageReferenceError as error:
            raise RestoreError(str(error)) from None
        image = ImageRestore(reference=str(reference), repository=reference.repository)
        top = _top_digest(reader, image, reference.tag, reference.digest)
        out.append((image, top))
    return out


def _judge(image: ImageRestore, check_mode: bool) -> None:
    if image.status == "not_found":
        return
    if not image.objects:
        image.status, image.message = "complete", "nothing is missing"
    elif all(item.placed for item in image.objects):
        image.status = "would_restore" if check_mode else "restored"
        image.message = f"{len(image.objects)} objects, digest {image.digest} unchanged"
    else:
        lost = sum(1 for item in image.objects if not item.placed)
        image.status, image.message = "rebuild", f"{lost} of {len(image.objects)} missing objects could not be restored; rebuild it"


def run_restore(options: RestoreOptions, sources: t.Sequence[RestoreSource],
                runner: Runner = run_command) -> RestoreOutcome:
    """Plan, then (outside check mode) stop the registry, place, start it again. Raises RestoreError."""
    try:
        reader = StorageReader(options.storage_root)
    except ScanError as error:
        raise RestoreError(str(error)) from None
    outcome = RestoreOutcome(options)
    planner = _Planner(reader, sources)
    for image, top in _images(reader, options):
        outcome.images.append(image)
        if top:
            image.digest = top
            planner.plan(image, top)
    outcome.objects = planner.order
    pending = [item for item in planner.order if not item.action]
    if pending and not options.check_mode and not options.before_command and not options.registry_offline:
        outcome.failed = (
            "refused to restore: no before command stops the registry or makes it read-only while files are placed"
            " in its storage; give a before command, or say that the registry is stopped or read-only (registry offline)"
        )
    elif pending:
        _place_all(options, reader, sources, pending, outcome, runner)
    for image in outcome.images:
        _judge(image, options.check_mode)
    if outcome.changed and not options.check_mode:
        _confirm(reader, outcome)
    outcome.seconds = time.time() - outcome.started
    return outcome


def _place_all(options: RestoreOptions, reader: StorageReader, sources: t.Sequence[RestoreSource],
               pending: t.List[MissingObject], outcome: RestoreOutcome, runner: Runner) -> None:
    restorer = _Restorer(reader, sources, options.check_mode)
    if options.check_mode:
        for item in pending:
            restorer.place(item)
        return
    signals = SignalGuard()
    before_ran = False
    try:
        with signals:
            try:
                if options.before_command:
                    before_ran = True
                    if not _hook(options.before_command, "before", options, outcome, runner):
                        return
                for item in pending:
                    restorer.place(item)
            except GCInterrupted as interrupted:
                outcome.failed = f"{interrupted} while objects were placed; what was placed is complete and stays"
            finally:
                signals.defer()
                if before_ran and options.after_command:
                    _hook(options.after_command, "after", options, outcome, runner)
    finally:
        if signals.deferred:
            outcome.warnings.append(f"{signals.deferred} arrived while the after command ran and was held back")


def _hook(argv: t.Sequence[str], which: str, options: RestoreOptions, outcome: RestoreOutcome, runner: Runner) -> bool:
    outcome.commands.append(list(argv))
    try:
        result = runner(argv, options.timeout)
    except GCGuardError as error:
        message = f"the {which} command failed: {error}"
    else:
        if result.returncode == 0:
            return True
        detail = last_error_line(result.stderr + "\n" + result.stdout)
        message = f"the {which} command exited with status {result.returncode}: {detail}"
    if outcome.failed:
        outcome.warnings.append(message)
    else:
        outcome.failed = message
    return False


def _confirm(reader: StorageReader, outcome: RestoreOutcome) -> None:
    """Walk every restored image again through the storage alone: it must need nothing now."""
    for image in outcome.images:
        if image.status != "restored":
            continue
        check = _Planner(reader, ())
        check.plan(image=ImageRestore(image.reference, image.repository, image.digest), top=image.digest)
        if check.order:
            first = check.order[0]
            image.status = "rebuild"
            image.message = (f"after the restore the storage still lacks {len(check.order)} objects"
                             f" (first: {first.role} {first.digest}); rebuild it")
