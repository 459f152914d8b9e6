# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tag retention that never breaks a kept image: the safe replacement for ``rm -rf`` of tag directories.

Standard library only: this file runs on the registry host from cron
(``python3 -m registry_tools._tag_retention``) and inside the ``registry_tag_retention`` module.

What to delete is decided from the storage tree (which tags exist, what they resolve to, when each
was last pushed, which manifests an index references); deleting goes through the registry API by
manifest digest, because only the registry itself removes a manifest consistently. Two facts of
registry 2.8 shape the rules: deleting a digest removes every tag that points to it, and the
registry does not check whether an index still references what it deletes. So a digest is deleted
only when no kept tag resolves to it, nothing a kept tag reaches references it, no index left in the
repository references it, and every tag pointing to it is old. Dry run unless asked to apply.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import os
import re
import ssl
import sys
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request

from ._report_files import write_json_report
from ._storage_scan import DEFAULT_LOCK_FILE, DEFAULT_LOCK_WAIT, LOCK_FILE_ENV, HostLockError, ScanError, StorageReader, host_lock

DEFAULT_KEEP_NEWEST = 10
DEFAULT_MIN_AGE_DAYS = 7.0
# Release tags are what people deploy and roll back to; build tags are what piles up. Protecting the
# usual release spellings by default keeps a first run with default options from deleting them.
DEFAULT_PROTECTED_TAGS = ("latest", "[0-9]*.[0-9]*.[0-9]*", "v[0-9]*.[0-9]*.[0-9]*")
DEFAULT_TIMEOUT = 30.0
GC_HINT = (
    "Deleting manifests frees no space by itself: run the GC guard now (plain garbage-collect, "
    "never --delete-untagged) to reclaim the blobs, then restart the registry."
)
_SECONDS_PER_DAY = 86400.0
_COSIGN_TAG = re.compile(r"sha256-([0-9a-f]{64})\.(?:sig|att|sbom)")
_ENV_USERNAME = "REGISTRY_USERNAME"
_ENV_PASSWORD = "REGISTRY_PASSWORD"  # nosec - the name of a variable, not a secret


class TagRetentionError(Exception):
    """Retention could not go on; the message is one sentence naming the object and never a secret."""


class RetentionPolicy(t.NamedTuple):
    keep_newest: int = DEFAULT_KEEP_NEWEST
    min_age_days: float = DEFAULT_MIN_AGE_DAYS
    protected_tags: t.Tuple[str, ...] = DEFAULT_PROTECTED_TAGS
    include_repositories: t.Tuple[str, ...] = ("*",)
    exclude_repositories: t.Tuple[str, ...] = ()

    def validate(self) -> None:
        if self.keep_newest < 0:
            raise TagRetentionError(f"keep_newest must be 0 or more, not {self.keep_newest}.")
        if self.min_age_days < 0:
            raise TagRetentionError(f"min_age_days must be 0 or more, not {self.min_age_days}.")

    def selects_repository(self, repository: str) -> bool:
        return _matches_any(repository, self.include_repositories) and not _matches_any(
            repository, self.exclude_repositories
        )

    def protects_tag(self, tag: str) -> bool:
        return _matches_any(tag, self.protected_tags)


class TagState(t.NamedTuple):
    """One tag as the storage tree records it; pushed_at is the mtime of its current link."""

    tag: str
    digest: str
    pushed_at: float


class PlannedDeletion(t.NamedTuple):
    repository: str
    digest: str
    tags: t.Tuple[str, ...]
    # "old_tags" for a tagged manifest; "child_of:<digest>" for an untagged child of a deleted index.
    reason: str


class KeptTag(t.NamedTuple):
    repository: str
    tag: str
    digest: str
    reason: str


class RepositoryPlan(t.NamedTuple):
    repository: str
    tags: t.Mapping[str, TagState]
    deletions: t.List[PlannedDeletion]
    kept: t.List[KeptTag]
    problems: t.List[str]
    # index digest -> child digests, for every index among the deletions (apply order and parent checks)
    children: t.Mapping[str, t.Tuple[str, ...]]


class RetentionResult(t.NamedTuple):
    dry_run: bool
    planned: t.List[PlannedDeletion]
    deleted: t.List[PlannedDeletion]
    kept: t.List[KeptTag]
    errors: t.List[str]
    repositories: int
    # Tags the registry removed along with a deleted digest because they were pushed to it mid-run.
    lost_tags: t.Tuple[KeptTag, ...] = ()

    def summary(self) -> t.Dict[str, t.Any]:
        return {
            "dry_run": self.dry_run,
            "repositories": self.repositories,
            "planned_digests": len(self.planned),
            "planned_tags": sum(len(item.tags) for item in self.planned),
            "deleted_digests": len(self.deleted),
            "deleted_tags": sum(len(item.tags) for item in self.deleted),
            "kept_tags": len(self.kept),
            "lost_tags": len(self.lost_tags),
            "errors": len(self.errors),
        }

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "dry_run": self.dry_run,
            "planned": [_deletion_dict(item) for item in self.planned],
            "deleted": [_deletion_dict(item) for item in self.deleted],
            "kept": [item._asdict() for item in self.kept],
            "errors": list(self.errors),
            "lost_tags": [item._asdict() for item in self.lost_tags],
            "summary": self.summary(),
            "next_step": GC_HINT if self.deleted else "",
        }


def _deletion_dict(item: PlannedDeletion) -> t.Dict[str, t.Any]:
    return {"repository": item.repository, "digest": item.digest, "tags": list(item.tags), "reason": item.reason}


def _matches_any(name: str, patterns: t.Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


# ---------------------------------------------------------------------------------------------
# Storage reading, through the storage scanner's readers
# ---------------------------------------------------------------------------------------------

ChildrenReader = t.Callable[[str], t.Optional[t.Tuple[str, ...]]]


class StorageView:
    """What retention reads from storage, through the storage scanner's readers (one way to read it).

    Every problem the scanner's readers meet (corrupt link, symlink, unreadable directory) is
    returned, and the caller deletes nothing in a repository that has any: a tag or revision it
    cannot read could be the one that needs a candidate.
    """

    def __init__(self, storage_root: str) -> None:
        try:
            self.reader = StorageReader(storage_root)
        except ScanError as error:
            raise TagRetentionError(f"{error}.") from None
        self.root = self.reader.root

    def repositories(self) -> t.Tuple[t.List[t.Tuple[str, str]], t.List[str]]:
        """[(name, directory)] sorted by name, and problems met while listing."""
        problems: t.List[t.Tuple[str, str]] = []
        try:
            found = sorted(self.reader.iter_repositories(problems))
        except ScanError as error:
            raise TagRetentionError(f"{error}.") from None
        return found, [self._problem(path, reason) for path, reason in problems]

    def tags(self, directory: str) -> t.Tuple[t.Dict[str, TagState], t.List[str]]:
        problems: t.List[t.Tuple[str, str]] = []
        current, _history = self.reader.read_tags(directory, problems)
        tags: t.Dict[str, TagState] = {}
        for tag, (digest, link_path) in current.items():
            try:
                # The registry rewrites the current link on every push of the tag: its mtime is the push time.
                pushed_at = os.lstat(link_path).st_mtime
            except OSError as error:
                problems.append((link_path, f"cannot be read ({error.strerror})"))
                continue
            tags[tag] = TagState(tag, digest, pushed_at)
        return tags, [self._problem(path, reason) for path, reason in problems]

    def tag_push_times(self, directory: str) -> t.Optional[t.Dict[str, float]]:
        """{tag: mtime of its current link}, cheaply; None when the tags cannot be listed.

        Used right before each delete to notice a push since the plan was made: every push of a tag
        rewrites its current link, so a new, removed or re-pushed tag changes this map.
        """
        problems: t.List[t.Tuple[str, str]] = []
        entries = self.reader.list_directory(os.path.join(directory, "_manifests", "tags"), problems)
        if problems:
            return None
        times: t.Dict[str, float] = {}
        for entry in entries or ():
            try:
                times[entry.name] = os.lstat(os.path.join(entry.path, "current", "link")).st_mtime
            except FileNotFoundError:
                continue  # a tag directory without a current link does not resolve, as in tags()
            except OSError:
                return None
        return times

    def revisions(self, directory: str) -> t.Tuple[t.Set[str], t.List[str]]:
        problems: t.List[t.Tuple[str, str]] = []
        _layers, revisions = self.reader.read_repository_links(directory, problems)
        # A damaged layer link changes nothing about which manifests may go; only manifest problems count.
        layers_dir = os.path.join(directory, "_layers")
        relevant = [(path, reason) for path, reason in problems if not path.startswith(layers_dir)]
        return set(revisions), [self._problem(path, reason) for path, reason in relevant]

    def children(self, digest: str) -> t.Optional[t.Tuple[str, ...]]:
        """Child manifests of an index, () for an image, None when the manifest cannot be read."""
        outcome = self.reader.read_manifest(digest)
        if outcome.info is None:
            return None
        return tuple(child for child, _media_type in outcome.info.children)

    def _problem(self, path: str, reason: str) -> str:
        return f"{self.reader.relative(path)} {reason}"


# ---------------------------------------------------------------------------------------------
# Planning: pure, from what storage says
# ---------------------------------------------------------------------------------------------


def plan_repository(
    repository: str,
    tags: t.Mapping[str, TagState],
    revisions: t.AbstractSet[str],
    children_of: ChildrenReader,
    policy: RetentionPolicy,
    now: float,
) -> RepositoryPlan:
    """Decide which digests of one repository to delete.

    ``children_of(digest)`` returns the manifests an index references, ``()`` for an image manifest,
    and ``None`` when the manifest cannot be read: then nothing in the repository is deleted, because
    an unreadable index might reference any candidate.
    """
    kept: t.List[KeptTag] = []
    problems: t.List[str] = []
    kept_reason: t.Dict[str, str] = {}
    newest_kept = 0
    min_age_seconds = policy.min_age_days * _SECONDS_PER_DAY
    # cosign stores signatures, attestations and SBOMs as tags named after the digest they belong to: they
    # follow that digest (decided below, once it is known whether it stays) and never count as newest.
    subjects = {tag: subject for tag, subject in ((tag, cosign_subject(tag)) for tag in tags) if subject}
    # Newest first; the tag name breaks ties so the same storage always gives the same plan.
    for state in sorted(tags.values(), key=lambda item: (item.pushed_at, item.tag), reverse=True):
        if policy.protects_tag(state.tag):
            kept_reason[state.tag] = "protected"
        elif state.tag in subjects:
            continue
        elif newest_kept < policy.keep_newest:
            kept_reason[state.tag] = "newest"
            newest_kept += 1
        elif now - state.pushed_at < min_age_seconds:
            kept_reason[state.tag] = "too_young"

    children_cache: t.Dict[str, t.Optional[t.Tuple[str, ...]]] = {}
    unreadable: t.Set[str] = set()

    def children(digest: str) -> t.Tuple[str, ...]:
        if digest not in children_cache:
            children_cache[digest] = children_of(digest)
        found = children_cache[digest]
        if found is None:
            unreadable.add(digest)
            return ()
        return found

    def reach(roots: t.Mapping[str, str]) -> t.Dict[str, str]:
        """Every digest reachable from the roots, each mapped to the root label that reaches it first."""
        reached: t.Dict[str, str] = {}
        stack = sorted(roots.items(), reverse=True)
        while stack:
            digest, label = stack.pop()
            if digest in reached:
                continue
            reached[digest] = label
            for child in reversed(children(digest)):
                if child not in reached:
                    stack.append((child, label))
        return reached

    kept_roots: t.Dict[str, str] = {}
    for tag, reason in sorted(kept_reason.items()):
        kept_roots.setdefault(tags[tag].digest, tag)
    protected = reach(kept_roots)

    tags_by_digest: t.Dict[str, t.List[str]] = {}
    for state in tags.values():
        tags_by_digest.setdefault(state.digest, []).append(state.tag)

    deletion_roots: t.Set[str] = set()
    for state in tags.values():
        if state.tag in kept_reason or state.tag in subjects:
            continue
        if state.digest in kept_roots:
            kept_reason[state.tag] = f"same_digest_as:{kept_roots[state.digest]}"
        elif state.digest in protected:
            kept_reason[state.tag] = f"referenced_by_tag:{protected[state.digest]}"
        elif state.digest not in revisions:
            # The API answers 404 for it; only the orphan scan and a re-push can help.
            problems.append(
                f"{repository}:{state.tag} points to {state.digest}, which has no revision link, "
                "so the registry cannot delete it; the tag is left alone."
            )
            kept_reason[state.tag] = "no_revision"
        else:
            deletion_roots.add(state.digest)

    # An index going away takes its untagged children with it, or they would keep their blobs forever
    # (plain GC keeps every revision). Tagged children follow their own tags' decisions above.
    deletion: t.Dict[str, str] = {digest: "old_tags" for digest in deletion_roots}
    for digest, root in reach({digest: digest for digest in deletion_roots}).items():
        if digest not in deletion and digest not in tags_by_digest and digest in revisions:
            deletion[digest] = f"child_of:{root}"

    def keep_what_remaining_indexes_reference() -> None:
        """Whatever an index that stays references must stay too, even if that index is untagged."""
        while True:
            remaining = {digest: digest for digest in revisions if digest not in deletion}
            blocked = {}
            for digest in remaining:
                for child in children(digest):
                    if child in deletion:
                        blocked[child] = digest
            if not blocked:
                break
            for digest, parent in blocked.items():
                del deletion[digest]
                for tag in tags_by_digest.get(digest, ()):
                    kept_reason[tag] = f"referenced_by_index:{parent}"

    keep_what_remaining_indexes_reference()
    # Signature tags follow their subject: kept while it stays, deleted with it. One whose subject is
    # no longer in the repository is old content like any other tag (age only; it never counts as newest).
    for tag in sorted(subjects):
        if tag in kept_reason:
            continue
        state, subject = tags[tag], subjects[tag]
        if subject in deletion:
            goes = True
        elif subject in revisions:
            kept_reason[tag] = f"signature_of:{subject}"
            goes = False
        elif now - state.pushed_at < min_age_seconds:
            kept_reason[tag] = "too_young"
            goes = False
        else:
            goes = True
        if not goes:
            continue
        if state.digest in kept_roots or state.digest in protected:
            kept_reason[tag] = f"same_digest_as:{kept_roots.get(state.digest) or protected[state.digest]}"
        elif state.digest not in revisions:
            kept_reason[tag] = "no_revision"
        else:
            deletion.setdefault(state.digest, f"signature_of:{subject}" if subject in deletion else "old_tags")
    # A signature going away must not take a digest some other tag still needs.
    for digest in list(deletion):
        if deletion[digest].startswith("signature_of:") or deletion[digest] == "old_tags":
            holders = [tag for tag in tags_by_digest.get(digest, ()) if tag in kept_reason]
            if holders:
                del deletion[digest]
                for tag in tags_by_digest.get(digest, ()):
                    kept_reason.setdefault(tag, f"same_digest_as:{holders[0]}")
    keep_what_remaining_indexes_reference()
    # A signature whose subject ended up kept (an index still references it) stays too.
    for tag, subject in subjects.items():
        if subject not in deletion and subject in revisions and tags[tag].digest in deletion:
            del deletion[tags[tag].digest]
            for other in tags_by_digest.get(tags[tag].digest, ()):
                kept_reason[other] = f"signature_of:{subject}"

    for tag, reason in kept_reason.items():
        kept.append(KeptTag(repository, tag, tags[tag].digest, reason))
    kept.sort(key=lambda item: item.tag)

    ordered = _parents_first(deletion, children)
    deletions = [
        PlannedDeletion(repository, digest, tuple(sorted(tags_by_digest.get(digest, ()))), deletion[digest])
        for digest in ordered
    ]
    index_children = {digest: children(digest) for digest in deletion if children(digest)}
    plan = RepositoryPlan(repository, dict(tags), deletions, kept, problems, index_children)
    if unreadable:
        return cancel_deletions(
            plan,
            f"{repository}: manifest {sorted(unreadable)[0]} cannot be read"
            + (f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else "")
            + ", so what it references is unknown; nothing is deleted in this repository.",
        )
    return plan


def cosign_subject(tag: str) -> str:
    """The digest a cosign signature, attestation or SBOM tag (``sha256-<hex>.sig|.att|.sbom``) belongs to, or ""."""
    match = _COSIGN_TAG.fullmatch(tag)
    return f"sha256:{match.group(1)}" if match else ""


def cancel_deletions(plan: RepositoryPlan, problem: str) -> RepositoryPlan:
    """Keep everything in a repository that cannot be fully read; its would-be deletions become KEEP lines."""
    kept = list(plan.kept) + [
        KeptTag(plan.repository, tag, item.digest, "repository_not_readable")
        for item in plan.deletions
        for tag in item.tags
    ]
    kept.sort(key=lambda item: item.tag)
    return plan._replace(deletions=[], children={}, kept=kept, problems=list(plan.problems) + [problem])


def _parents_first(deletion: t.Mapping[str, str], children: t.Callable[[str], t.Tuple[str, ...]]) -> t.List[str]:
    """Order deletions so an index is deleted before anything it references.

    If the run stops half-way, what is left is a complete index or none: never an index whose
    children are already gone.
    """
    parents_left: t.Dict[str, int] = {digest: 0 for digest in deletion}
    for digest in deletion:
        for child in set(children(digest)):
            if child in parents_left:
                parents_left[child] += 1
    ready = sorted(digest for digest, count in parents_left.items() if count == 0)
    ordered: t.List[str] = []
    while ready:
        digest = ready.pop(0)
        ordered.append(digest)
        for child in sorted(set(children(digest))):
            if child in parents_left:
                parents_left[child] -= 1
                if parents_left[child] == 0:
                    ready.append(child)
    # A reference cycle cannot be pushed (a digest cannot contain itself); keep any leftovers last.
    ordered.extend(sorted(digest for digest in deletion if digest not in ordered))
    return ordered


# ---------------------------------------------------------------------------------------------
# Deleting: the registry API, by digest
# ---------------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A delete must reach the registry itself; following a redirect could carry credentials elsewhere.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


class RegistryDeleteClient:
    """The two calls retention needs: check access (GET /v2/) and delete a manifest by digest."""

    def __init__(
        self,
        url: str,
        username: t.Optional[str] = None,
        password: t.Optional[str] = None,
        ca_file: t.Optional[str] = None,
        verify_tls: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.username or parsed.password:
            # Credentials in a URL end up in logs and process lists; refuse them first, without echoing them.
            raise TagRetentionError("the registry URL must not contain credentials; use a password file or the environment.")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise TagRetentionError(f"registry URL {url!r} is not an http:// or https:// URL.")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.ca_file = ca_file if parsed.scheme == "https" else None
        self.username = username
        self._authorization: t.Optional[str] = None
        if username:
            token = base64.b64encode(f"{username}:{password or ''}".encode("utf-8")).decode("ascii")
            self._authorization = f"Basic {token}"
        self.timeout = timeout
        handlers: t.List[t.Any] = [_NoRedirect()]
        if parsed.scheme == "https":
            context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
            if not verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def _request(self, method: str, path: str, what: str) -> t.Tuple[int, str, str]:
        """(status, registry error code, auth scheme the registry asks for on 401)."""
        request = urllib.request.Request(self.url + path, method=method)
        if self._authorization:
            request.add_header("Authorization", self._authorization)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, "", ""
        except urllib.error.HTTPError as error:
            try:
                body = error.read(65536).decode("utf-8", "replace")
            except Exception:  # a broken body must not hide the status
                body = ""
            finally:
                error.close()
            scheme = (error.headers.get("WWW-Authenticate") or "").split(" ", 1)[0].lower() if error.code == 401 else ""
            return error.code, _error_code(body), scheme
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, ssl.SSLCertVerificationError):
                if self.ca_file:
                    hint = (
                        f"check that CA file {self.ca_file} signed it and that it names the URL's host "
                        f"{urllib.parse.urlsplit(self.url).hostname}"
                    )
                else:
                    hint = "give its CA file"
                raise TagRetentionError(
                    f"registry {self.url} presented a certificate that does not verify "
                    f"({reason.verify_message}) while {what}; {hint}."
                ) from None
            raise TagRetentionError(f"registry {self.url} is unreachable while {what}: {reason}.") from None

    def check_access(self) -> None:
        """Fail early, before any decision is acted on, when the registry is down or refuses us."""
        status, code, scheme = self._request("GET", "/v2/", "checking access")
        if status in (401, 403):
            raise TagRetentionError(self._refused(status, scheme))
        if status != 200:
            raise TagRetentionError(f"registry {self.url} answered {status} {code} to GET /v2/.".replace("  ", " "))

    def delete_manifest(self, repository: str, digest: str) -> None:
        path = "/v2/{}/manifests/{}".format(
            urllib.parse.quote(repository, safe="/"), urllib.parse.quote(digest, safe=":")
        )
        status, code, scheme = self._request("DELETE", path, f"deleting {repository}@{digest}")
        if status == 202:
            return
        if status in (401, 403):
            raise RegistryRefused(self._refused(status, scheme))
        if status == 405:
            raise RegistryRefused(
                f"registry {self.url} refuses deletes (405 {code or 'UNSUPPORTED'}): "
                "set storage.delete.enabled to true in its config."
            )
        raise TagRetentionError(f"{repository}@{digest}: DELETE answered {status} {code}".rstrip() + ".")

    def _refused(self, status: int, scheme: str) -> str:
        if scheme == "bearer":
            return (
                f"registry {self.url} asks for token authentication ({status}), which tag retention does not "
                "support; reach it through a listener with basic (htpasswd) authentication."
            )
        who = f"user {self.username!r}" if self.username else "anonymous access"
        return f"registry {self.url} rejected {who} ({status}); check the credentials."


class RegistryRefused(TagRetentionError):
    """The registry refuses every delete (credentials, deletes disabled): stop instead of retrying each one."""


def _error_code(body: str) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        code = errors[0].get("code", "")
        return code if isinstance(code, str) and code.isidentifier() else ""
    except (ValueError, AttributeError, IndexError, TypeError, RecursionError, MemoryError):
        # An error body is only a hint; a hostile one must not stop the run.
        return ""


# ---------------------------------------------------------------------------------------------
# Running: plan every repository, then (only when asked) delete
# ---------------------------------------------------------------------------------------------

Emit = t.Callable[[str], None]


def _quiet(_line: str) -> None:
    return None


def plan_storage(
    storage: StorageView, policy: RetentionPolicy, now: float
) -> t.Tuple[t.List[t.Tuple[str, RepositoryPlan]], t.List[str]]:
    """Plan every selected repository: [(its directory, its plan)] and the problems met.

    A repository with any unreadable tag, revision or manifest is planned with no deletion.
    """
    policy.validate()
    plans: t.List[t.Tuple[str, RepositoryPlan]] = []
    repositories, errors = storage.repositories()
    for repository, directory in repositories:
        if not policy.selects_repository(repository):
            continue
        tags, tag_problems = storage.tags(directory)
        revisions, revision_problems = storage.revisions(directory)
        plan = plan_repository(repository, tags, revisions, storage.children, policy, now)
        problems = tag_problems + revision_problems
        if problems:
            plan = cancel_deletions(
                plan,
                f"{repository}: {problems[0]}"
                + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
                + "; nothing is deleted in this repository.",
            )
        plans.append((directory, plan))
    return plans, errors


def run_retention(
    storage_root: str,
    policy: RetentionPolicy,
    client: t.Optional[RegistryDeleteClient],
    apply: bool = False,
    now: t.Optional[float] = None,
    emit: Emit = _quiet,
) -> RetentionResult:
    """Plan from storage and, when ``apply`` is true, delete through ``client``.

    Every decision is passed to ``emit`` as one greppable line. In a dry run the client (when given)
    is only used to check access, so the dry run also proves that the real run would authenticate.
    """
    if apply and client is None:
        raise TagRetentionError("deleting needs the registry URL: retention deletes through the API only.")
    storage = StorageView(storage_root)
    if client is not None:
        client.check_access()
    plans, errors = plan_storage(storage, policy, time.time() if now is None else now)
    for message in errors:
        emit(f"ERROR {message}")
    planned: t.List[PlannedDeletion] = []
    deleted: t.List[PlannedDeletion] = []
    kept: t.List[KeptTag] = []
    lost: t.List[KeptTag] = []
    stopped: t.Optional[str] = None
    for directory, plan in plans:
        for item in plan.kept:
            emit(f"KEEP repo={item.repository} tag={item.tag} reason={item.reason}")
        for message in plan.problems:
            emit(f"ERROR {message}")
        errors.extend(plan.problems)
        kept.extend(plan.kept)
        planned.extend(plan.deletions)
        if not apply:
            for item in plan.deletions:
                emit(f"WOULD DELETE {_describe(item)}")
            continue
        if stopped is None and client is not None:  # apply without a client was refused above
            stopped = _apply_repository(storage, directory, plan, client, deleted, errors, emit, lost)
    result = RetentionResult(not apply, planned, deleted, kept, errors, len(plans), tuple(lost))
    summary = " ".join(f"{key}={value}" for key, value in result.summary().items())
    emit(f"SUMMARY {summary}")
    if deleted:
        emit(f"NEXT {GC_HINT}")
    return result


def _describe(item: PlannedDeletion) -> str:
    return f"repo={item.repository} digest={item.digest} tags={','.join(item.tags)} reason={item.reason}"


def _apply_repository(
    storage: StorageView,
    directory: str,
    plan: RepositoryPlan,
    client: RegistryDeleteClient,
    deleted: t.List[PlannedDeletion],
    errors: t.List[str],
    emit: Emit,
    lost: t.List[KeptTag],
) -> t.Optional[str]:
    """Delete one repository's plan in order; returns a message when the whole run must stop."""
    expected = {tag: state.pushed_at for tag, state in plan.tags.items()}
    done: t.Set[str] = set()
    for item in plan.deletions:
        parents = [digest for digest, children in plan.children.items() if item.digest in children]
        if any(parent not in done for parent in parents):
            message = f"{item.repository}@{item.digest}: not deleted because the index referencing it was not deleted."
            errors.append(message)
            emit(f"ERROR {message}")
            continue
        # A push between planning and now could have tagged this digest anew: re-read before each delete.
        if storage.tag_push_times(directory) != expected:
            message = (
                f"{item.repository}: tags changed since the plan was made; "
                "its remaining deletions are skipped (run again)."
            )
            errors.append(message)
            emit(f"ERROR {message}")
            return None
        try:
            client.delete_manifest(item.repository, item.digest)
        except RegistryRefused as error:
            errors.append(str(error))
            emit(f"ERROR {error}")
            return str(error)
        except TagRetentionError as error:
            errors.append(str(error))
            emit(f"ERROR {error}")
            continue
        done.add(item.digest)
        deleted.append(item)
        for tag in item.tags:
            expected.pop(tag, None)
        emit(f"DELETE {_describe(item)}")
        # The registry removes every tag that points to the digest when it deletes: one pushed there between
        # the check above and the DELETE went with it. Re-read the tags to name any such loss.
        after = storage.tag_push_times(directory)
        gone = sorted(tag for tag in expected if after is not None and tag not in after)
        for tag in gone:
            message = (
                f"{item.repository}:{tag} was removed together with {item.digest}: it was pushed to that digest "
                "while it was being deleted; push the tag again."
            )
            errors.append(message)
            lost.append(KeptTag(item.repository, tag, item.digest, "removed_with_deleted_digest"))
            emit(f"SIDE EFFECT repo={item.repository} tag={tag} digest={item.digest}")
            emit(f"ERROR {message}")
        if after is None or gone or after != expected:
            message = (
                f"{item.repository}: tags changed while deleting {item.digest}; "
                "its remaining deletions are skipped (run again)."
            )
            errors.append(message)
            emit(f"ERROR {message}")
            return None
    return None


def _sentence(error: BaseException, fallback: str) -> str:
    if isinstance(error, TagRetentionError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        name = f" {error.filename}" if error.filename else ""
        return f"{fallback}:{name} {error.strerror.lower()}."
    return f"{fallback}."


# ---------------------------------------------------------------------------------------------
# Command line (cron on the registry host)
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m registry_tools._tag_retention",
        description=(
            "Delete old tags by manifest digest through the registry API, keeping the newest tags of each "
            "repository and everything a kept tag or a remaining index references. Dry run unless --apply."
        ),
        epilog=(
            f"The password is read from --password-file or ${_ENV_PASSWORD}, never from the command line. "
            "Exit status: 0 when every decision was carried out, 2 on any error."
        ),
    )
    parser.add_argument("--storage-root", required=True, help="the registry's storage root (rootdirectory)")
    parser.add_argument("--registry-url", help="registry base URL, e.g. http://127.0.0.1:5000 (needed with --apply)")
    parser.add_argument("--username", help=f"basic-auth user (default: ${_ENV_USERNAME})")
    parser.add_argument("--password-file", help=f"file holding the password (default: ${_ENV_PASSWORD})")
    parser.add_argument("--ca-file", help="CA bundle for an https registry")
    parser.add_argument("--insecure", action="store_true", help="do not verify the registry's TLS certificate")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request (default: %(default)s)")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP_NEWEST, help="newest tags kept per repository (default: %(default)s)")
    parser.add_argument(
        "--min-age-days", type=float, default=DEFAULT_MIN_AGE_DAYS,
        help="never delete a tag pushed less than this many days ago (default: %(default)s)",
    )
    parser.add_argument(
        "--protect", action="append", metavar="GLOB",
        help="tag pattern never deleted, repeatable; replaces the default " + " ".join(DEFAULT_PROTECTED_TAGS),
    )
    parser.add_argument("--no-protect", action="store_true", help="protect no tag by pattern")
    parser.add_argument("--include", action="append", metavar="GLOB", help="repository pattern to handle (default: all)")
    parser.add_argument("--exclude", action="append", metavar="GLOB", default=[], help="repository pattern to skip")
    parser.add_argument("--report", help="also write the decisions as a JSON report to this file")
    parser.add_argument("--apply", action="store_true", help="really delete (without it, only print the plan)")
    parser.add_argument(
        "--lock-file",
        default="",
        help=f"host-wide lock shared with the storage scan and the GC guard, so they never run at once "
        f"(default: ${LOCK_FILE_ENV} or {DEFAULT_LOCK_FILE})",
    )
    parser.add_argument(
        "--lock-wait", type=float, default=DEFAULT_LOCK_WAIT,
        help="seconds to wait for another run to finish before giving up with exit 2 (default: %(default)g)",
    )
    return parser


def _credentials(args: argparse.Namespace) -> t.Tuple[t.Optional[str], t.Optional[str]]:
    username = args.username or os.environ.get(_ENV_USERNAME) or None
    password: t.Optional[str] = None
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
            password = lines[0] if lines else ""
        except (OSError, UnicodeDecodeError) as error:
            raise TagRetentionError(_sentence(error, "password file cannot be read")) from None
    elif os.environ.get(_ENV_PASSWORD):
        password = os.environ[_ENV_PASSWORD]
    if password is not None and not username:
        raise TagRetentionError(f"a password was given but no user name (--username or ${_ENV_USERNAME}).")
    return username, password


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    protected: t.Tuple[str, ...] = () if args.no_protect else tuple(args.protect or DEFAULT_PROTECTED_TAGS)
    policy = RetentionPolicy(
        keep_newest=args.keep,
        min_age_days=args.min_age_days,
        protected_tags=protected,
        include_repositories=tuple(args.include or ("*",)),
        exclude_repositories=tuple(args.exclude),
    )

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    report: t.Dict[str, t.Any] = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "storage_root": args.storage_root,
        "registry_url": None,
        "policy": policy._asdict(),
    }
    status = 2
    try:
        username, password = _credentials(args)
        client = None
        if args.registry_url:
            client = RegistryDeleteClient(
                args.registry_url, username, password, args.ca_file, not args.insecure, args.timeout
            )
            report["registry_url"] = client.url
        with host_lock("tag retention", args.lock_file, args.lock_wait):
            result = run_retention(args.storage_root, policy, client, apply=args.apply, emit=emit)
        report.update(result.as_dict())
        status = 2 if result.errors else 0
    except (TagRetentionError, HostLockError) as error:
        message = str(error) if str(error).endswith(".") else f"{error}."
        # The report says so too, so a monitor reading only the report sees the failed run.
        report["errors"] = [message]
        _fail(message)
    report["ok"] = status == 0
    if args.report:
        try:
            write_json_report(args.report, report)
        except OSError as error:
            _fail(f"report {args.report} cannot be written: {(error.strerror or str(error)).lower()}.")
            return 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())
