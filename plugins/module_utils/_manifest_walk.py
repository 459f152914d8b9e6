# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""End-to-end image verification: tag -> index -> every child manifest -> config -> every layer.

Pure Python, no Ansible imports. Requests run on a bounded thread pool. Every unique
(repository, digest) object is requested once per run however many images share it; chains
from each tag to each broken object are rebuilt afterwards from the memoized graph, so a
shared broken layer is reported under every image that needs it.
"""

from __future__ import annotations

import collections
import fnmatch
import json
import os
import threading
import typing as t
from concurrent.futures import ThreadPoolExecutor

from ._image_reference import ImageReference, is_digest
from ._registry_client import (
    INDEX_MEDIA_TYPES,
    IMAGE_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    RegistryClient,
    RegistryError,
    compute_digest,
    named_with_digest,
)
from ._report_files import write_atomic

BLOB_CHECK_MODES = ("head", "read")
_MAX_INDEX_DEPTH = 4  # an index inside an index is legal; deeper nesting is garbage or a loop
_ATTESTATION_TYPE = "attestation-manifest"


class WalkError(Exception):
    """The walk could not start (registry unreachable, credentials rejected, listing failed)."""


class ManifestCache:
    """Manifest bodies seen on earlier runs, one file per digest (``<dir>/sha256/<hex>``).

    When a child manifest is gone from the registry, its body is all that tells which configs and
    layers it needed. Content addressing makes the cache safe: a body is used only if it hashes to the
    digest it is filed under, so a stale or tampered file can never stand in for another manifest.
    """

    def __init__(self, directory: str):
        self.directory = directory

    def _path(self, digest: str) -> t.Optional[str]:
        if not is_digest(digest):
            return None
        algorithm, hexdigest = digest.split(":", 1)
        return os.path.join(self.directory, algorithm, hexdigest)

    def get(self, digest: str) -> t.Optional[bytes]:
        path = self._path(digest)
        if path is None:
            return None
        try:
            with open(path, "rb") as handle:
                body = handle.read(MAX_MANIFEST_BYTES + 1)
        except OSError:
            return None
        if compute_digest(body, digest.split(":", 1)[0]) != digest:
            return None
        return body

    def put(self, digest: str, body: bytes) -> None:
        path = self._path(digest)
        if path is None or os.path.exists(path):
            return
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return  # not a JSON manifest; nothing worth keeping
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, text)
        except OSError:
            pass  # best effort: a cache that cannot be written must not turn a healthy image into a finding


class Child(t.NamedTuple):
    digest: str
    media_type: str
    platform: str
    kind: str  # "image", "attestation" or "index"


# The one verdict a run gives each image; automation acts on it, so the four never blur:
# "broken": the registry answered and an object is missing or damaged (only this is ever rebuilt);
# "unverified": the registry, the network or the credentials failed before the objects could be proven
# present or missing: a probe error, never damage; "not_found": the reference itself does not exist
# (an image asked for by name whose tag or digest answers 404; a tag the registry's own tag list names
# but cannot resolve is broken instead).
VERDICT_OK = "ok"
VERDICT_BROKEN = "broken"
VERDICT_UNVERIFIED = "unverified"
VERDICT_NOT_FOUND = "not_found"
VERDICTS = (VERDICT_OK, VERDICT_BROKEN, VERDICT_UNVERIFIED, VERDICT_NOT_FOUND)


class ImageResult(t.NamedTuple):
    reference: str
    repository: str
    tag: t.Optional[str]
    digest: t.Optional[str]
    media_type: t.Optional[str]
    ok: bool
    verdict: str  # one of VERDICTS; broken wins over unverified
    orphan_index: bool  # broken the garbage collector's way: the tag resolves to an index whose child answers 404
    reason: t.Optional[str]  # the first finding behind the verdict, one sentence; None when ok
    children: t.List[Child]


class RepositoryError(t.NamedTuple):
    """A repository of the catalog whose tag list could not be read: its images were not verified."""

    repository: str
    status: t.Optional[int]
    error_code: t.Optional[str]
    message: str


class BrokenObject(t.NamedTuple):
    reference: str
    chain: t.List[str]
    object_type: str  # "manifest", "config" or "layer"
    digest: t.Optional[str]
    status: t.Optional[int]
    error_code: t.Optional[str]
    message: str


class WalkSummary(t.NamedTuple):
    images: int
    broken_images: int
    unverified_images: int
    not_found_images: int
    repository_errors: int
    manifests: int
    blobs: int
    requests: int
    broken_objects: int
    unverified_objects: int
    foreign_layers: int


class WalkResult(t.NamedTuple):
    ok: bool  # every image verified and nothing broken
    summary: WalkSummary
    images: t.List[ImageResult]
    broken: t.List[BrokenObject]
    unverified: t.List[BrokenObject]  # objects the registry did not answer for (same shape as broken)
    not_found: t.List[BrokenObject]  # references asked for by name that do not exist
    repository_errors: t.List[RepositoryError]


class _Edge(t.NamedTuple):
    key: t.Tuple[str, str, str]
    object_type: str  # manifest | config | layer
    label: str  # how the message names it: "child manifest", "attestation manifest", "layer blob"...
    child: t.Optional[Child]


class _Node:
    """What one request found: the object's own problem (if any) and the objects it points to."""

    __slots__ = ("what", "digest", "media_type", "problem", "edges", "skipped_foreign")

    def __init__(self, what: str) -> None:
        # How messages name it: "manifest of tag v1", "child manifest sha256:..", "layer blob sha256:..".
        self.what = what
        self.digest: t.Optional[str] = None
        self.media_type: t.Optional[str] = None
        self.problem: t.Optional[RegistryError] = None
        self.edges: t.List[_Edge] = []
        self.skipped_foreign = 0


def _json_type(value: t.Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, dict) else "a list"


def _descriptor_size(descriptor: t.Dict[str, t.Any]) -> t.Optional[int]:
    size = descriptor.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _root_name(image: ImageReference) -> str:
    return f"manifest {image.digest}" if image.digest else f"manifest of tag {image.reference}"


def platform_string(platform: t.Any) -> str:
    if not isinstance(platform, dict):
        return "unknown/unknown"
    text = f"{platform.get('os') or 'unknown'}/{platform.get('architecture') or 'unknown'}"
    if platform.get("variant"):
        text += f"/{platform['variant']}"
    return text


def _platform_selected(platform: str, wanted: t.Sequence[str]) -> bool:
    # "linux/arm64" selects linux/arm64/v8 too; "linux/arm/v7" selects only that variant.
    return any(platform == want or platform.startswith(want.rstrip("/") + "/") for want in wanted)


class ManifestWalker:
    """Verifies images against one registry. Create one per run: its memo is the run's dedup."""

    def __init__(
        self,
        client: RegistryClient,
        concurrency: int = 8,
        blob_check: str = "head",
        platforms: t.Optional[t.Sequence[str]] = None,
        descend: bool = True,
        cache: t.Optional[ManifestCache] = None,
    ):
        if blob_check not in BLOB_CHECK_MODES:
            raise ValueError(f"blob_check must be one of {', '.join(BLOB_CHECK_MODES)}, not {blob_check!r}.")
        self.client = client
        self.concurrency = max(1, int(concurrency))
        self.blob_check = blob_check
        self.platforms = [p.strip().lower() for p in platforms or [] if p and p.strip()]
        # descend=False checks only the tagged manifests: a pull-through mirror fetches children lazily,
        # so asking for them would trigger upstream pulls rather than verify anything.
        self.descend = descend
        self.cache = cache
        self._nodes: t.Dict[t.Tuple[str, str, str], _Node] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        # Objects wait as plain tuples, taken by at most `concurrency` workers on the pool: one pool task
        # (a Future, its lock and condition) per object cost more client CPU per request than the rest of
        # the walk's bookkeeping, and 70,000 of them queued at once most of a large catalog's memory.
        self._jobs: t.Deque[t.Tuple[t.Tuple[str, str, str], int, t.Optional[int]]] = collections.deque()
        self._workers = 0
        self._pool: t.Optional[ThreadPoolExecutor] = None

    # -- scheduling -------------------------------------------------------------------------------

    def _schedule(
        self, key: t.Tuple[str, str, str], what: str, depth: int = 0, expected_size: t.Optional[int] = None
    ) -> None:
        with self._lock:
            if key in self._nodes:
                return  # already requested (or in flight) in this run
            self._nodes[key] = _Node(what)
            self._pending += 1
            self._jobs.append((key, depth, expected_size))
            if self._workers >= self.concurrency:
                return  # a running worker will take it
            self._workers += 1
        self._running_pool().submit(self._work)

    def _work(self) -> None:
        """One worker: checks queued objects until none is left."""
        while True:
            with self._lock:
                if not self._jobs:
                    self._workers -= 1
                    return
                key, depth, expected_size = self._jobs.popleft()
            try:
                self._run(key, depth, expected_size)
            finally:
                with self._idle:
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()

    def _run(self, key: t.Tuple[str, str, str], depth: int, expected_size: t.Optional[int]) -> None:
        node = self._nodes[key]
        try:
            if key[0] == "blob":
                self._check_blob(node, key[1], key[2], expected_size)
            else:
                self._fetch_manifest(node, key[1], key[2], depth, expected_size)
        except RegistryError as exc:
            node.problem = exc
            # The answer may have told the digest even though the object is bad (a hashed body, the header).
            node.digest = node.digest or exc.digest
        except Exception as exc:  # a bug or a library surprise must not hang the run or lose the object
            node.problem = RegistryError(f"{node.what} could not be checked ({type(exc).__name__}).")

    def _wait_idle(self) -> None:
        with self._idle:
            while self._pending:
                self._idle.wait()

    # -- one object -----------------------------------------------------------------------------

    def _check_blob(self, node: _Node, repository: str, digest: str, expected_size: t.Optional[int]) -> None:
        node.digest = digest
        check = self.client.check_blob(repository, digest, self.blob_check, what=node.what)
        if expected_size is not None and check.size is not None and check.size != expected_size:
            node.problem = RegistryError(
                f"{node.what} is {check.size} bytes, but the manifest says {expected_size}.", status=check.status
            )

    def _fetch_manifest(
        self, node: _Node, repository: str, reference: str, depth: int, expected_size: t.Optional[int]
    ) -> None:
        if not self.descend and depth == 0:
            # Mirror mode: a HEAD proves the tag resolves without making the mirror fetch anything else.
            digest = self.client.head_manifest(repository, reference, what=node.what)[1]
            node.digest = reference if is_digest(reference) else (digest if digest and is_digest(digest) else None)
            return
        try:
            manifest = self.client.get_manifest(repository, reference, what=node.what)
        except RegistryError as exc:
            remembered = self.cache.get(reference) if self.cache is not None and exc.status == 404 else None
            if remembered is None:
                raise
            # Gone from the registry, but its body is known: report it, and still check what it needs.
            node.problem = exc
            node.digest = reference
            self._walk_document(node, repository, json.loads(remembered), depth)
            return
        node.digest = manifest.digest
        node.what = named_with_digest(node.what, manifest.digest)
        node.media_type = manifest.media_type
        if expected_size is not None and len(manifest.body) != expected_size:
            # The body hashes to its digest, so the index's descriptor is wrong: a pull checks both and fails.
            node.problem = RegistryError(
                f"{node.what} is {len(manifest.body)} bytes, but the index says {expected_size}.",
                status=200, digest=manifest.digest,
            )
        if self.cache is not None:
            self.cache.put(manifest.digest, manifest.body)
        if not is_digest(reference):
            # A tag and its digest are the same object: a later request by digest reuses this node.
            with self._lock:
                self._nodes.setdefault(("manifest", repository, manifest.digest), node)
        self._walk_document(node, repository, manifest.document, depth)

    def _walk_document(self, node: _Node, repository: str, document: t.Any, depth: int) -> None:
        if not isinstance(document, dict):
            node.problem = node.problem or RegistryError(f"{node.what} is not a manifest object.", status=200)
            return
        if node.media_type is None:
            # Only a remembered body gets here without a Content-Type; OCI makes mediaType optional.
            node.media_type = document.get("mediaType") or (
                "application/vnd.oci.image.index.v1+json" if "manifests" in document
                else "application/vnd.oci.image.manifest.v1+json"
            )
        media_type = node.media_type
        if media_type in INDEX_MEDIA_TYPES:
            if depth >= _MAX_INDEX_DEPTH:
                node.problem = RegistryError(
                    f"{node.what} nests indexes deeper than the {_MAX_INDEX_DEPTH} levels this verifier walks;"
                    " what is below was not checked.", 200, beyond_our_limits=True)
                return
            self._index_edges(node, repository, document, depth)
        elif media_type in IMAGE_MEDIA_TYPES:
            self._image_edges(node, repository, document)
        else:
            node.problem = node.problem or RegistryError(
                f"{node.what} has the unsupported media type {media_type or 'none'!r}.",
                status=200,
            )

    def _index_edges(self, node: _Node, repository: str, document: t.Dict[str, t.Any], depth: int) -> None:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            node.problem = RegistryError(f"{node.what} is an index without a manifests list.", status=200)
            return
        descriptors = [entry for entry in entries if isinstance(entry, dict)]
        if len(descriptors) != len(entries) or not all(is_digest(str(d.get("digest", ""))) for d in descriptors):
            node.problem = RegistryError(f"{node.what} lists a child without a valid digest.", status=200)
            return
        selected_digests: t.Set[str] = set()
        for entry in descriptors:
            platform = platform_string(entry.get("platform"))
            if self._is_attestation(entry):
                continue
            if not self.platforms or _platform_selected(platform, self.platforms):
                selected_digests.add(entry["digest"])
        for entry in descriptors:
            digest = entry["digest"]
            media_type = str(entry.get("mediaType") or "")
            platform = platform_string(entry.get("platform"))
            if self._is_attestation(entry):
                annotations = entry.get("annotations") or {}
                subject = annotations.get("vnd.docker.reference.digest") if isinstance(annotations, dict) else None
                if self.platforms and subject not in selected_digests:
                    continue
                kind, label = "attestation", "attestation manifest"
            elif digest in selected_digests:
                kind = "index" if media_type in INDEX_MEDIA_TYPES else "image"
                label = "child index" if kind == "index" else "child manifest"
            else:
                continue
            child = Child(digest, media_type, platform, kind)
            key = ("manifest", repository, digest)
            node.edges.append(_Edge(key, "manifest", label, child))
            self._schedule(key, f"{label} {digest}", depth + 1, expected_size=_descriptor_size(entry))

    @staticmethod
    def _is_attestation(entry: t.Dict[str, t.Any]) -> bool:
        annotations = entry.get("annotations")
        if isinstance(annotations, dict) and annotations.get("vnd.docker.reference.type") == _ATTESTATION_TYPE:
            return True
        return platform_string(entry.get("platform")) == "unknown/unknown"

    def _image_edges(self, node: _Node, repository: str, document: t.Dict[str, t.Any]) -> None:
        config = document.get("config")
        layers = document.get("layers")
        if not isinstance(config, dict) or not is_digest(str(config.get("digest", ""))):
            node.problem = RegistryError(f"{node.what} has no config with a valid digest.", status=200)
            return
        if not isinstance(layers, list):
            detail = "no layers list" if layers is None else f"a layers field that is {_json_type(layers)}, not a list"
            node.problem = RegistryError(f"{node.what} has {detail}.", status=200)
            return
        blobs = [("config", "config blob", config)]
        for layer in layers:
            if not isinstance(layer, dict) or not is_digest(str(layer.get("digest", ""))):
                node.problem = RegistryError(f"{node.what} lists a layer without a valid digest.", 200)
                return
            if layer.get("urls"):
                # Foreign (non-distributable) layers live elsewhere by design; the registry never had them.
                node.skipped_foreign += 1
                continue
            blobs.append(("layer", "layer blob", layer))
        for object_type, label, descriptor in blobs:
            key = ("blob", repository, descriptor["digest"])
            node.edges.append(_Edge(key, object_type, label, None))
            self._schedule(key, f"{label} {descriptor['digest']}", expected_size=_descriptor_size(descriptor))

    # -- runs -----------------------------------------------------------------------------------

    def verify(self, images: t.Sequence[ImageReference]) -> WalkResult:
        """Verify explicit images. Raises WalkError when the registry cannot be used at all."""
        self._start()
        try:
            # Digest-pinned references first: their node exists before any tag resolves to the same digest,
            # so the count of requests does not depend on thread timing.
            for image in sorted(images, key=lambda image: image.digest is None):
                self._schedule(("manifest", image.repository, image.reference), _root_name(image))
            self._wait_idle()
        finally:
            self._stop()
        return self._result(images, [])

    def verify_catalog(self, repository_patterns: t.Optional[t.Sequence[str]] = None) -> WalkResult:
        """Verify every tag of every repository (optionally only repositories matching fnmatch patterns).

        Raises WalkError when the registry or its catalog cannot be read. A repository whose tag list
        cannot be read is reported in ``repository_errors`` and the others are verified all the same:
        one bad repository must not blind the probe to the rest.
        """
        self._start()
        images: t.List[ImageReference] = []
        errors: t.List[RepositoryError] = []
        try:
            try:
                repositories = self.client.list_repositories()
            except RegistryError as exc:
                raise WalkError(exc.message) from None
            if repository_patterns:
                repositories = [
                    name for name in repositories if any(fnmatch.fnmatchcase(name, p) for p in repository_patterns)
                ]
            # Tag lists come in parallel; each repository's tags are walked as soon as they arrive.
            pool = self._running_pool()
            listings = {name: pool.submit(self.client.list_tags, name) for name in sorted(set(repositories))}
            for name, future in listings.items():
                try:
                    tags = future.result()
                except RegistryError as exc:
                    errors.append(RepositoryError(name, exc.status, exc.error_code, exc.message))
                    continue
                for tag in sorted(set(tags)):
                    image = ImageReference(name, tag, None)
                    images.append(image)
                    self._schedule(("manifest", name, tag), _root_name(image))
            self._wait_idle()
        finally:
            self._stop()
        return self._result(images, errors, listed=True)

    def _start(self) -> None:
        try:
            self.client.ping()
        except RegistryError as exc:
            raise WalkError(exc.message) from None
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="registry-walk")

    def _running_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            raise RuntimeError("the walk's thread pool is used outside verify() or verify_catalog()")
        return self._pool

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _result(self, images: t.Sequence[ImageReference], repository_errors: t.List[RepositoryError],
                listed: bool = False) -> WalkResult:
        """Each image's verdict and findings. ``listed``: the images came from the registry's own tag lists,
        so a tag that does not resolve is damage (a dangling tag), not a name nobody pushed."""
        results: t.List[ImageResult] = []
        findings = _Findings()
        for image in images:
            reference = str(image)
            root_key = ("manifest", image.repository, image.reference)
            root = self._nodes[root_key]
            if not listed and _does_not_exist(root):
                verdicts = {VERDICT_NOT_FOUND}
                findings.add(VERDICT_NOT_FOUND, root_key,
                             self._finding(reference, root, "manifest", [reference], image.digest))
            else:
                verdicts = self._collect(reference, root_key, "manifest", [reference], findings, frozenset())
            verdict = next((v for v in (VERDICT_NOT_FOUND, VERDICT_BROKEN, VERDICT_UNVERIFIED) if v in verdicts),
                           VERDICT_OK)
            first = findings.first_for(reference, verdict)
            results.append(ImageResult(
                reference=reference,
                repository=image.repository,
                tag=image.tag,
                digest=image.digest or root.digest,
                media_type=root.media_type,
                ok=verdict == VERDICT_OK,
                verdict=verdict,
                orphan_index=verdict == VERDICT_BROKEN and self._is_orphan_index(root),
                reason=first.message if first else None,
                children=[edge.child for edge in root.edges if edge.child is not None],
            ))
        manifests = sum(1 for key, node in self._unique_nodes() if key[0] == "manifest")
        blobs = sum(1 for key, node in self._unique_nodes() if key[0] == "blob")
        foreign = sum(node.skipped_foreign for unused_key, node in self._unique_nodes())

        def counted(verdict: str) -> int:
            return sum(1 for result in results if result.verdict == verdict)

        summary = WalkSummary(
            images=len(results),
            broken_images=counted(VERDICT_BROKEN),
            unverified_images=counted(VERDICT_UNVERIFIED),
            not_found_images=counted(VERDICT_NOT_FOUND),
            repository_errors=len(repository_errors),
            manifests=manifests,
            blobs=blobs,
            requests=self.client.request_count,
            broken_objects=len(findings.keys[VERDICT_BROKEN]),
            unverified_objects=len(findings.keys[VERDICT_UNVERIFIED]),
            foreign_layers=foreign,
        )
        return WalkResult(
            ok=all(result.ok for result in results) and not repository_errors,
            summary=summary,
            images=results,
            broken=findings.lists[VERDICT_BROKEN],
            unverified=findings.lists[VERDICT_UNVERIFIED],
            not_found=findings.lists[VERDICT_NOT_FOUND],
            repository_errors=list(repository_errors),
        )

    def _is_orphan_index(self, root: _Node) -> bool:
        """The incident's signature: an index that resolves while a child manifest answers 404."""
        if root.problem is not None or not any(edge.child is not None for edge in root.edges):
            return False
        for edge in root.edges:
            child = self._nodes.get(edge.key)
            if edge.object_type == "manifest" and child is not None and child.problem is not None \
                    and child.problem.status == 404:
                return True
        return False

    def _unique_nodes(self) -> t.Iterator[t.Tuple[t.Tuple[str, str, str], _Node]]:
        seen: t.Set[int] = set()
        for key, node in self._nodes.items():
            if id(node) not in seen:
                seen.add(id(node))
                yield key, node

    @staticmethod
    def _finding(reference: str, node: _Node, object_type: str, chain: t.List[str],
                 digest: t.Optional[str]) -> BrokenObject:
        problem = t.cast(RegistryError, node.problem)
        return BrokenObject(
            reference=reference,
            chain=chain,
            object_type=object_type,
            digest=digest,
            status=problem.status,
            error_code=problem.error_code,
            message=f"{reference}: {problem.message}",
        )

    def _collect(
        self,
        reference: str,
        key: t.Tuple[str, str, str],
        object_type: str,
        chain_prefix: t.List[str],
        findings: "_Findings",
        visiting: t.FrozenSet[t.Tuple[str, str, str]],
    ) -> t.Set[str]:
        """File every problem under key with its chain from the tag; return the verdicts met (broken, unverified)."""
        node = self._nodes[key]
        # A finding names the object asked for: an object asked for by digest keeps that digest, whatever
        # the answer claimed.
        digest = key[2] if is_digest(key[2]) else node.digest
        chain = chain_prefix + [digest] if digest else list(chain_prefix)
        verdicts: t.Set[str] = set()
        if node.problem is not None:
            verdict = VERDICT_UNVERIFIED if node.problem.says_nothing_about_the_object else VERDICT_BROKEN
            findings.add(verdict, (key[0], key[1], digest or key[2]), self._finding(reference, node, object_type, chain, digest))
            verdicts.add(verdict)
        if key in visiting:  # content addressing makes cycles impossible; garbage must not recurse forever
            return verdicts
        for edge in node.edges:
            verdicts |= self._collect(reference, edge.key, edge.object_type, chain, findings, visiting | {key})
        return verdicts


def _does_not_exist(root: _Node) -> bool:
    """A reference asked for by name that the registry says it has never heard of: 404 on the tag or digest
    itself (MANIFEST_UNKNOWN, NAME_UNKNOWN), with nothing known about it from an earlier run."""
    return root.problem is not None and root.problem.status == 404 and not root.edges


class _Findings:
    """Problems filed by verdict, with the unique objects behind them (one shared object counts once)."""

    def __init__(self) -> None:
        self.lists: t.Dict[str, t.List[BrokenObject]] = {verdict: [] for verdict in VERDICTS}
        self.keys: t.Dict[str, t.Set[t.Tuple[str, str, str]]] = {verdict: set() for verdict in VERDICTS}
        self._first: t.Dict[t.Tuple[str, str], BrokenObject] = {}

    def add(self, verdict: str, key: t.Tuple[str, str, str], finding: BrokenObject) -> None:
        self.lists[verdict].append(finding)
        self.keys[verdict].add(key)
        self._first.setdefault((finding.reference, verdict), finding)

    def first_for(self, reference: str, verdict: str) -> t.Optional[BrokenObject]:
        return self._first.get((reference, verdict))
