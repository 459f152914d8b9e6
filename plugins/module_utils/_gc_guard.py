# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the registry's ``garbage-collect`` only when it cannot break a tagged image.

Standard library only: it runs inside Ansible (module registry_garbage_collect) and on the registry
host as ``python3 -m registry_tools._registry_tools_cli gc``.

Why a guard: ``garbage-collect --delete-untagged`` in distribution 2.8.x treats the untagged children
of a tagged index as garbage and deletes them, and their layers with them. The guard first runs the
collector with ``--dry-run`` and the same flags, reads what it would delete, follows every tag through
storage (with the scanner's reader, so storage is read one way only) and refuses when anything the
collector would delete is still reachable from a tag. Only then does it run the real collection,
between the caller's "before" and "after" commands (make the registry read-only or stop it, then
restart it: a running registry's blob-descriptor cache keeps answering for deleted blobs).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import typing as t

from ._report_files import Metric
from ._storage_scan import (
    ScanError,
    StorageReader,
    resolve_storage_root,
    scan_storage,
)

_BLOB_LINE = re.compile(r"^blob eligible for deletion: (sha256:[0-9a-f]{64})\s*$")
# 2.8 prints the bare digest after the repository's own line; 3.x prints {repo digest [tags]}.
_MANIFEST_LINE = re.compile(
    r"^manifest eligible for deletion: (?:\{(?P<repo>\S+) )?(?P<digest>sha256:[0-9a-f]{64})"
)
_MARKING_LINE = re.compile(r"^(?P<repo>\S+): marking (?P<what>manifest|blob) (?P<digest>sha256:[0-9a-f]{64})\s*$")
_LAYER_LINK_LINE = re.compile(r"^(?P<repo>\S+): layer link eligible for deletion: (?P<digest>sha256:[0-9a-f]{64})")
_SUMMARY_LINE = re.compile(r"^(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion")
# The collector announces each repository with a line holding only its name.
_REPOSITORY_LINE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")

DONE, REFUSED, FAILED = 0, 1, 2

_CONFIG_READ_LIMIT = 1024 * 1024
# The registry reads this variable over its configuration file; the collector inherits the guard's environment.
_ROOTDIRECTORY_ENV = "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"
# The filesystem driver's own default when storage.filesystem names no rootdirectory.
_DEFAULT_ROOTDIRECTORY = "/var/lib/registry"


class GCGuardError(Exception):
    """The guarded collection could not be prepared or run (bad options, unreadable storage)."""


class GCInterrupted(Exception):
    """SIGTERM or SIGHUP arrived: stop the collector, run the after command, report."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class GCOutput(t.NamedTuple):
    """What a garbage-collect run printed, parsed."""

    repositories: t.Tuple[str, ...]
    eligible_manifests: t.Tuple[t.Tuple[str, str], ...]
    eligible_blobs: t.Tuple[str, ...]
    eligible_layer_links: t.Tuple[t.Tuple[str, str], ...]
    summary: t.Optional[t.Tuple[int, int, int]]
    marked_manifests: t.Tuple[t.Tuple[str, str], ...] = ()


class GCFailure(t.NamedTuple):
    kind: str
    message: str


class Blocker(t.NamedTuple):
    """Something the collector would delete although a tag still reaches it."""

    kind: str  # "manifest" or "blob"
    repository: str
    digest: str
    tags: t.Tuple[str, ...]
    role: str  # "index", "child manifest", "config or layer", "tagged manifest"

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "kind": self.kind,
            "repository": self.repository,
            "digest": self.digest,
            "tags": list(self.tags),
            "role": self.role,
            "message": self.message,
        }

    @property
    def message(self) -> str:
        tags = ", ".join(f"{self.repository}:{tag}" for tag in self.tags)
        return f"{self.kind} {self.digest} ({self.role}) would be deleted but is reachable from {tags}"


class GCOptions(t.NamedTuple):
    storage_root: str
    config_path: str
    delete_untagged: bool = False
    gc_command: t.Tuple[str, ...] = ("docker-registry",)
    before_command: t.Tuple[str, ...] = ()
    after_command: t.Tuple[str, ...] = ()
    check_mode: bool = False
    timeout: float = 3600.0
    # The same configuration as this host sees it, when config_path is a path inside a container.
    config_on_host: str = ""
    # The rootdirectory the configuration must name when the collector runs in a container that mounts
    # storage_root there; empty means the collector runs on this host and the real paths must match.
    storage_root_in_config: str = ""
    # Seconds the collector (dry run or real run) may take; 0 means the per-command timeout.
    gc_timeout: float = 0.0
    # Run when the collector had to be stopped (timeout, signal), before the after command: it must stop
    # what killing the gc command's process group does not, such as the one-off container of `compose run`.
    gc_stop_command: t.Tuple[str, ...] = ()
    # The caller vouches that the registry is stopped or read-only for the whole run although no
    # before command makes it so; without either, the real collection is refused.
    registry_offline: bool = False

    @property
    def time_limit(self) -> float:
        """The longest a guarded run may take by its own timeouts: the dry and the real collection, and the
        before, collector-stop and after commands. Past it, the run has overrun."""
        collector = self.gc_timeout or self.timeout
        return 2 * collector + 3 * self.timeout


def running_metrics(options: GCOptions, started: float) -> t.List[Metric]:
    """Published as a guarded run starts: the registry may be stopped on purpose until ``started`` plus
    the run's time limit, and the probe's alert rules hold RegistryCatalogInaccessible until then."""
    return [
        Metric("registry_gc_running", "1 while a guarded GC runs (the registry may be stopped on purpose).",
               "gauge", 1),
        Metric("registry_gc_started_timestamp_seconds", "When the last guarded GC started.", "gauge", started),
        Metric("registry_gc_time_limit_seconds", "The longest the last guarded GC may take by its timeouts.",
               "gauge", options.time_limit),
    ]


class CommandResult(t.NamedTuple):
    returncode: int
    stdout: str
    stderr: str


Runner = t.Callable[[t.Sequence[str], float], CommandResult]


def run_command(argv: t.Sequence[str], timeout: float) -> CommandResult:
    """Run argv without a shell, in its own process group.

    A missing program or a timeout becomes GCGuardError. On a timeout or any exception (GCInterrupted
    included) the whole process group is killed and reaped before this returns, so no collector keeps
    running behind a wrapper shell once the guard moves on to the after command.
    """
    try:
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise GCGuardError(f"command {argv[0]} was not found") from None
    except PermissionError:
        raise GCGuardError(f"command {argv[0]} cannot be executed (permission denied)") from None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise GCGuardError(f"command {' '.join(argv)} did not finish within {timeout:g} seconds") from None
    except BaseException:
        _kill_group(process)
        raise
    return CommandResult(process.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))


def _kill_group(process: "subprocess.Popen[bytes]") -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass  # already gone
    process.kill()
    process.communicate()


def gc_argv(options: GCOptions, dry_run: bool) -> t.List[str]:
    argv = list(options.gc_command) + ["garbage-collect"]
    if dry_run:
        argv.append("--dry-run")
    if options.delete_untagged:
        argv.append("--delete-untagged")
    argv.append(options.config_path)
    return argv


def parse_gc_output(text: str) -> GCOutput:
    """Read the collector's output: repositories walked and every object eligible for deletion."""
    repositories: t.List[str] = []
    manifests: t.List[t.Tuple[str, str]] = []
    blobs: t.List[str] = []
    layer_links: t.List[t.Tuple[str, str]] = []
    marked: t.List[t.Tuple[str, str]] = []
    summary = None
    current = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        match = _BLOB_LINE.match(line)
        if match:
            blobs.append(match.group(1))
            continue
        match = _MANIFEST_LINE.match(line)
        if match:
            manifests.append((match.group("repo") or current, match.group("digest")))
            continue
        match = _MARKING_LINE.match(line)
        if match:
            current = match.group("repo")
            if match.group("what") == "manifest":
                marked.append((current, match.group("digest")))
            continue
        match = _LAYER_LINK_LINE.match(line)
        if match:
            layer_links.append((match.group("repo"), match.group("digest")))
            continue
        match = _SUMMARY_LINE.match(line)
        if match:
            summary = (int(match.group(1)), int(match.group(2)), int(match.group(3)))
            continue
        if _REPOSITORY_LINE.match(line):
            current = line
            repositories.append(line)
    return GCOutput(
        tuple(repositories),
        tuple(dict.fromkeys(manifests)),
        tuple(dict.fromkeys(blobs)),
        tuple(dict.fromkeys(layer_links)),
        summary,
        tuple(dict.fromkeys(marked)),
    )


def configured_rootdirectory(text: str) -> str:
    """``storage.filesystem.rootdirectory`` of a registry configuration written in block-style YAML.

    Standard library only, so a small reader of the one key the guard needs; raises ValueError when the
    file does not configure filesystem storage in a form it can follow (the guard then refuses).
    """
    keys: t.List[t.Tuple[int, str]] = []
    filesystem = False
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith(("#", "---", "- ")) or stripped == "-":
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError("it indents with tabs")
        indent = len(raw) - len(raw.lstrip())
        key, colon, value = stripped.partition(":")
        if not colon:
            continue
        key = key.strip().strip("\"'")
        value = _yaml_scalar(value)
        while keys and keys[-1][0] >= indent:
            keys.pop()
        where = [name for _indent, name in keys] + [key]
        if where == ["storage", "filesystem"]:
            if value:
                raise ValueError("storage.filesystem is not written as a block mapping")
            filesystem = True
        elif where == ["storage", "filesystem", "rootdirectory"]:
            if not value:
                raise ValueError("storage.filesystem.rootdirectory is empty")
            return value
        if not value:
            keys.append((indent, key))
    if filesystem:
        return _DEFAULT_ROOTDIRECTORY
    raise ValueError("it configures no filesystem storage (storage.filesystem)")


def _yaml_scalar(text: str) -> str:
    text = text.strip()
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        return text[1:end] if end > 0 else text[1:]
    return text.split(" #", 1)[0].strip()


def prove_same_storage(reader: StorageReader, options: GCOptions) -> str:
    """"" when the collector's configuration names the storage the guard reads, else why that is not shown.

    Compared by real path when the collector runs on this host; when it runs in a container, the
    configuration must name options.storage_root_in_config (where the container mounts storage_root).
    The dry run's own output is checked against the storage afterwards as well (_walked_elsewhere).
    """
    config_file = options.config_on_host or options.config_path
    try:
        with open(config_file, "rb") as handle:
            raw = handle.read(_CONFIG_READ_LIMIT + 1)
    except OSError as error:
        return (
            f"the registry configuration {config_file} cannot be read on this host ({error.strerror}), so it cannot "
            "be shown to name the storage root; give the host's copy as the config-on-host option"
        )
    try:
        if len(raw) > _CONFIG_READ_LIMIT:
            raise ValueError(f"it is larger than {_CONFIG_READ_LIMIT} bytes")
        configured = configured_rootdirectory(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return f"the storage root in the registry configuration {config_file} cannot be read: {error}"
    if options.storage_root_in_config:
        if os.path.normpath(configured) != os.path.normpath(options.storage_root_in_config):
            return (
                f"the registry configuration {config_file} names rootdirectory {configured}, "
                f"not {options.storage_root_in_config} where the collector's container mounts {options.storage_root}"
            )
        return ""
    configured = os.environ.get(_ROOTDIRECTORY_ENV) or configured
    try:
        configured_tree = resolve_storage_root(configured)
    except ScanError as error:
        return f"the registry configuration {config_file} names storage that cannot be used here: {error}"
    if os.path.realpath(configured_tree) != os.path.realpath(reader.root):
        return (
            f"the registry configuration {config_file} names rootdirectory {configured}, "
            f"which is not the storage root {options.storage_root}"
        )
    return ""


def classify_failure(result: CommandResult) -> GCFailure:
    """Exit status 1 of garbage-collect means several things; tell them apart from its output."""
    text = result.stderr + "\n" + result.stdout
    last = last_error_line(text)
    if "configuration error" in text:
        return GCFailure("configuration", f"the garbage collector rejected its configuration: {last}")
    match = re.search(r"Path not found: (\S*repositories)", text)
    if match:
        return GCFailure("empty_store", f"the storage has no repositories yet ({match.group(1)} not found)")
    match = re.search(r"failed to retrieve tags unknown repository name=(\S+)", text)
    if match:
        return GCFailure(
            "missing_tags_directory",
            f"repository {match.group(1)} has no _manifests/tags directory, so garbage-collect "
            "--delete-untagged stops before deleting anything",
        )
    damage_markers = (
        "failed to retrieve manifest",
        "invalid checksum digest",
        "unexpected end of JSON",
        "invalid character",
        "failed to retrieve tags for digest",
        "unknown manifest",
        "cannot unmarshal",
        "unsupported manifest",
    )
    if any(marker in text for marker in damage_markers):
        return GCFailure(
            "damaged_storage",
            f"the garbage collector stopped on damaged storage ({last}); run the storage scan to find it",
        )
    return GCFailure("unknown", f"the garbage collector exited with status {result.returncode}: {last}")


def last_error_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line and not line.startswith(("Usage:", "Flags:", "-", "registry garbage-collect")):
            if "configuration error" in line or "failed" in line or "error" in line.lower():
                return line
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class UnreadableStorage(Exception):
    """Storage the guard could not read completely: the collector may see (and delete) what the guard did not."""


def find_blockers(
    reader: StorageReader,
    eligible_manifests: t.Iterable[t.Tuple[str, str]],
    eligible_blobs: t.Iterable[str],
) -> t.List[Blocker]:
    """Follow every current tag through stored content; return what the collector must not delete.

    Reachability follows manifest content, not revision links: a child whose revision link is
    already gone still needs its layers, and its data is how it could be restored.
    Fails closed: a repository, ``_manifests`` or tag path that is a symlink or cannot be read, or a
    manifest reached from a tag that cannot be read, raises UnreadableStorage. The registry's own
    collector follows symlinks the guard will not, so anything unread could hide a blocker.
    """
    manifests = set(eligible_manifests)
    blobs = set(eligible_blobs)
    if not manifests and not blobs:
        return []
    found: t.Dict[t.Tuple[str, str, str], t.Tuple[t.Set[str], str]] = {}

    def note(kind: str, repository: str, digest: str, tag: str, role: str) -> None:
        key = (kind, repository, digest)
        entry = found.get(key)
        if entry is None:
            found[key] = ({tag}, role)
        else:
            entry[0].add(tag)

    problems: t.List[t.Tuple[str, str]] = []
    unreadable: t.List[str] = []
    for repository, directory in reader.iter_repositories(problems):
        current, _history = reader.read_tags(directory, problems)
        for part in (("_manifests", "revisions"), ("_layers",)):
            path = os.path.join(directory, *part)
            problem = reader.directory_problem(path)
            if problem and problem != "absent":
                problems.append((path, problem))
        for tag, (root, _link) in current.items():
            seen: t.Set[str] = set()
            stack = [(root, "tagged manifest")]
            while stack:
                digest, role = stack.pop()
                if digest in seen:
                    continue
                seen.add(digest)
                if (repository, digest) in manifests:
                    note("manifest", repository, digest, tag, role)
                if digest in blobs:
                    note("blob", repository, digest, tag, role)
                outcome = reader.read_manifest(digest)
                if outcome.info is None:
                    if not outcome.absent:
                        unreadable.append(
                            f"manifest {digest} ({role} of {repository}:{tag}) cannot be read: {outcome.problem}"
                        )
                    continue
                for child, _child_type in outcome.info.children:
                    stack.append((child, "child manifest"))
                for blob, _blob_type, _foreign in outcome.info.blobs:
                    if blob in blobs:
                        note("blob", repository, blob, tag, "config or layer")
    unreadable = [f"{reader.relative(path)} {reason}" for path, reason in problems] + unreadable
    if unreadable:
        more = f" (and {len(unreadable) - 1} more problems)" if len(unreadable) > 1 else ""
        raise UnreadableStorage(f"{unreadable[0]}{more}")
    return [
        Blocker(kind, repository, digest, tuple(sorted(tags)), role)
        for (kind, repository, digest), (tags, role) in sorted(found.items())
    ]


class GCOutcome:
    """Everything a guarded run decided and did; ``exit_code`` is 0 done, 1 refused, 2 failed."""

    def __init__(self, options: GCOptions) -> None:
        self.options = options
        self.status = "error"
        self.message = ""
        self.failure_kind = ""
        self.eligible_manifests: t.List[t.Tuple[str, str]] = []
        self.eligible_blobs: t.List[str] = []
        self.blockers: t.List[Blocker] = []
        self.deleted_manifests: t.List[t.Tuple[str, str]] = []
        self.deleted_blobs: t.List[str] = []
        self.reclaimed_bytes = 0
        self.commands: t.List[t.List[str]] = []
        self.warnings: t.List[str] = []
        self.scan_after: t.Optional[t.Dict[str, t.Any]] = None
        self.collection_attempted = False
        # True while a garbage-collect command runs, so an interruption knows to stop it.
        self.collector_running = False
        self.started = time.time()

    @property
    def changed(self) -> bool:
        return bool(self.deleted_manifests or self.deleted_blobs)

    @property
    def exit_code(self) -> int:
        if self.status == "refused":
            return REFUSED
        if self.status == "error":
            return FAILED
        return DONE

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "status": self.status,
            "message": self.message,
            "failure_kind": self.failure_kind,
            "changed": self.changed,
            "check_mode": self.options.check_mode,
            "delete_untagged": self.options.delete_untagged,
            "eligible_manifests": [{"repository": repo, "digest": digest} for repo, digest in self.eligible_manifests],
            "eligible_blobs": list(self.eligible_blobs),
            "blockers": [blocker.as_dict() for blocker in self.blockers],
            "deleted_manifests": [{"repository": repo, "digest": digest} for repo, digest in self.deleted_manifests],
            "deleted_blobs": list(self.deleted_blobs),
            "reclaimed_bytes": self.reclaimed_bytes,
            "commands": [list(command) for command in self.commands],
            "warnings": list(self.warnings),
            "scan_after": self.scan_after,
        }

    def diff(self) -> t.Dict[str, str]:
        """Ansible-style diff: the objects that were (or would be) deleted appear only in before."""
        if self.status == "collected":
            manifests, blobs = self.deleted_manifests, self.deleted_blobs
        elif self.status == "would_collect":
            manifests, blobs = self.eligible_manifests, self.eligible_blobs
        else:
            manifests, blobs = [], []
        lines = [f"manifest {repo}@{digest}" for repo, digest in manifests] + [f"blob {digest}" for digest in blobs]
        return {
            "before": "".join(line + "\n" for line in lines),
            "after": "",
            "before_header": "registry storage: objects garbage-collect deletes",
            "after_header": "registry storage after garbage-collect",
        }

    def log_lines(self) -> t.List[str]:
        lines = [f"GC BLOCKED {blocker.kind.upper()} repo={blocker.repository} digest={blocker.digest} "
                 f"role={blocker.role.replace(' ', '_')} tags={','.join(blocker.tags)}" for blocker in self.blockers]
        lines.extend(f"GC DELETED MANIFEST repo={repo} digest={digest}" for repo, digest in self.deleted_manifests)
        lines.extend(f"GC DELETED BLOB digest={digest}" for digest in self.deleted_blobs)
        lines.extend(f"GC WARNING {warning}" for warning in self.warnings)
        lines.append(
            f"GC {self.status.upper()} eligible_manifests={len(self.eligible_manifests)} "
            f"eligible_blobs={len(self.eligible_blobs)} blockers={len(self.blockers)} "
            f"deleted_manifests={len(self.deleted_manifests)} deleted_blobs={len(self.deleted_blobs)} "
            f"reclaimed_bytes={self.reclaimed_bytes} message={self.message}"
        )
        return lines

    def metrics(self) -> t.List[Metric]:
        return [
            Metric("registry_gc_refused", "1 when the last guarded GC was refused.", "gauge", int(self.status == "refused")),
            Metric("registry_gc_failed", "1 when the last guarded GC failed.", "gauge", int(self.status == "error")),
            Metric("registry_gc_deleted_blobs", "Blobs deleted by the last guarded GC.", "gauge", len(self.deleted_blobs)),
            Metric(
                "registry_gc_deleted_manifests",
                "Manifests deleted by the last guarded GC.",
                "gauge",
                len(self.deleted_manifests),
            ),
            Metric("registry_gc_reclaimed_bytes", "Bytes reclaimed by the last guarded GC.", "gauge", self.reclaimed_bytes),
            Metric("registry_gc_last_run_timestamp_seconds", "When the last guarded GC finished.", "gauge", time.time()),
        ] + [metric._replace(value=0) if metric.name == "registry_gc_running" else metric
             for metric in running_metrics(self.options, self.started)]


def run_guarded_gc(options: GCOptions, runner: Runner = run_command) -> GCOutcome:
    """Dry run, refuse or collect, restart, scan. Raises GCGuardError only for unusable options.

    SIGTERM and SIGHUP (in the main thread) interrupt the run like a failure: the collector is stopped
    and the after command still runs before the guard returns.
    """
    if not options.config_path:
        raise GCGuardError("no garbage-collect configuration path given")
    if not options.gc_command:
        raise GCGuardError("no garbage-collect command given")
    try:
        reader = StorageReader(options.storage_root)
    except ScanError as error:
        raise GCGuardError(str(error)) from None
    outcome = GCOutcome(options)
    mismatch = prove_same_storage(reader, options)
    if mismatch:
        # Checked before any command runs: a guard reading other storage would protect nothing.
        _fail(outcome, "storage_mismatch", f"refused to collect: {mismatch}")
        return outcome
    if not options.check_mode and not options.before_command and not options.registry_offline:
        # A push landing between the dry run and the real run would not be in the verdict.
        _fail(
            outcome,
            "registry_writable",
            "refused to collect: no before command stops the registry or makes it read-only, so a push between "
            "the dry run and the collection could be broken; give a before command, or say that the registry is "
            "stopped or read-only (registry offline)",
        )
        return outcome
    signals = SignalGuard()
    # The after command (restart) runs whenever the before command ran or the real collection was
    # attempted, whatever happened in between; a dry run alone changes nothing and needs no restart.
    before_ran = False
    try:
        with signals:
            try:
                if not options.check_mode and options.before_command:
                    before_ran = True
                    if not _run_hook(options.before_command, "before", options, outcome, runner):
                        return outcome
                _collect(reader, options, outcome, runner)
            except GCInterrupted as interrupted:
                _fail(outcome, "interrupted", f"{interrupted} before the run finished; nothing more was started")
                if outcome.collector_running:
                    _stop_collector(options, outcome, runner)
            finally:
                # Later signals are only noted: the after command must not be cut short.
                signals.defer()
                if (before_ran or outcome.collection_attempted) and options.after_command:
                    _run_hook(options.after_command, "after", options, outcome, runner)
    finally:
        if signals.deferred:
            outcome.warnings.append(f"{signals.deferred} arrived while the after command ran and was held back")
    # After the after command, so the scan does not keep the registry down any longer.
    if outcome.collection_attempted:
        _scan_after(reader, outcome)
    return outcome


class SignalGuard:
    """Turn SIGTERM and SIGHUP into GCInterrupted while active; then only note them until restored."""

    _SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self) -> None:
        self.previous: t.Dict[int, t.Any] = {}
        self.deferring = False
        self.deferred = ""

    def _handle(self, signum: int, _frame: t.Any) -> None:
        if self.deferring:
            self.deferred = signal.Signals(signum).name
            return
        raise GCInterrupted(signum)

    def __enter__(self) -> "SignalGuard":
        # Signal handlers can only be set in the main thread; elsewhere the caller's handling stays.
        if threading.current_thread() is threading.main_thread():
            for signum in self._SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def defer(self) -> None:
        self.deferring = True

    def __exit__(self, *_exc: t.Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _stop_collector(options: GCOptions, outcome: GCOutcome, runner: Runner) -> None:
    """The gc command's process group is already killed; stop what it left (a compose one-off container)."""
    if options.gc_stop_command:
        _run_hook(options.gc_stop_command, "gc stop", options, outcome, runner)


def _run_hook(argv: t.Sequence[str], which: str, options: GCOptions, outcome: GCOutcome, runner: Runner) -> bool:
    outcome.commands.append(list(argv))
    try:
        result = runner(argv, options.timeout)
    except GCGuardError as error:
        _fail(outcome, "hook", f"the {which} command failed: {error}")
        return False
    if result.returncode != 0:
        detail = last_error_line(result.stderr + "\n" + result.stdout)
        _fail(outcome, "hook", f"the {which} command exited with status {result.returncode}: {detail}")
        return False
    return True


def _fail(outcome: GCOutcome, kind: str, message: str) -> None:
    """Record a failure; the first one explains the run, later ones are kept as warnings."""
    if outcome.status == "error" and outcome.message:
        outcome.warnings.append(message)
        return
    if outcome.message:
        outcome.warnings.append(outcome.message)
    outcome.status, outcome.failure_kind, outcome.message = "error", kind, message


def _collect(reader: StorageReader, options: GCOptions, outcome: GCOutcome, runner: Runner) -> None:
    dry_argv = gc_argv(options, dry_run=True)
    outcome.commands.append(dry_argv)
    try:
        outcome.collector_running = True
        dry = runner(dry_argv, options.gc_timeout or options.timeout)
        outcome.collector_running = False
    except GCGuardError as error:
        outcome.collector_running = False
        _fail(outcome, "command", str(error))
        _stop_collector(options, outcome, runner)
        return
    if dry.returncode != 0:
        failure = classify_failure(dry)
        if failure.kind == "empty_store":
            outcome.status, outcome.message = "nothing_to_collect", failure.message
            return
        _fail(outcome, failure.kind, f"the dry run failed: {failure.message}")
        return
    parsed = parse_gc_output(dry.stdout)
    outcome.eligible_manifests = list(parsed.eligible_manifests)
    outcome.eligible_blobs = list(parsed.eligible_blobs)
    elsewhere = _walked_elsewhere(reader, parsed)
    if elsewhere:
        _fail(
            outcome,
            "storage_mismatch",
            f"the garbage collector walked {elsewhere}, which is not under {reader.root}: "
            "its configuration and the storage root name different storage",
        )
        return
    try:
        outcome.blockers = find_blockers(reader, parsed.eligible_manifests, parsed.eligible_blobs)
    except ScanError as error:
        _fail(outcome, "storage", str(error))
        return
    except UnreadableStorage as error:
        _fail(
            outcome,
            "unreadable_storage",
            f"refused to collect: the guard cannot read all of the storage the collector walks: {error}",
        )
        return
    if outcome.blockers:
        first = outcome.blockers[0]
        outcome.status = "refused"
        outcome.message = (
            f"refused: {len(outcome.blockers)} object(s) the collector would delete are still reachable from a tag, "
            f"first {first.message}"
        )
        return
    if not parsed.eligible_manifests and not parsed.eligible_blobs:
        outcome.status, outcome.message = "nothing_to_collect", "nothing is eligible for deletion"
        return
    if options.check_mode:
        outcome.status = "would_collect"
        outcome.message = (
            f"would delete {len(parsed.eligible_manifests)} manifest(s) and {len(parsed.eligible_blobs)} blob(s); "
            "none is reachable from a tag"
        )
        return
    # Evidence of what was deleted comes from storage before and after, not from the collector's words.
    sizes = {
        digest: reader.blob_size(digest)
        for digest in parsed.eligible_blobs
        if reader.blob_state(digest, fresh=True) == "present"
    }
    linked_before = [
        (repo, digest)
        for repo, digest in parsed.eligible_manifests
        if reader.linked(os.path.join(reader.repositories_dir, repo), digest, "revision")
    ]
    if not options.after_command:
        outcome.warnings.append(
            "no after command: restart the registry yourself, its blob-descriptor cache "
            "still answers for deleted blobs"
        )
    blobs_before = reader.count_blobs()
    real_argv = gc_argv(options, dry_run=False)
    outcome.commands.append(real_argv)
    outcome.collection_attempted = True
    try:
        outcome.collector_running = True
        real: t.Optional[CommandResult] = runner(real_argv, options.gc_timeout or options.timeout)
        outcome.collector_running = False
    except GCGuardError as error:
        outcome.collector_running = False
        real = None
        _fail(outcome, "command", str(error))
        # Before the after command makes the registry writable again.
        _stop_collector(options, outcome, runner)
    outcome.deleted_blobs = [digest for digest in sizes if reader.blob_state(digest, fresh=True) == "absent"]
    outcome.deleted_manifests = [
        (repo, digest)
        for repo, digest in linked_before
        if not reader.linked(os.path.join(reader.repositories_dir, repo), digest, "revision")
    ]
    outcome.reclaimed_bytes = sum(sizes.get(digest, 0) for digest in outcome.deleted_blobs)
    if real is not None and real.returncode != 0:
        failure = classify_failure(real)
        _fail(outcome, failure.kind, f"garbage-collect failed after the dry run passed: {failure.message}")
    elif real is not None:
        outcome.status = "collected"
        outcome.message = (
            f"deleted {len(outcome.deleted_manifests)} manifest(s) and {len(outcome.deleted_blobs)} blob(s), "
            f"{outcome.reclaimed_bytes} bytes"
        )
    unexpected = blobs_before - reader.count_blobs() - len(outcome.deleted_blobs)
    if unexpected > 0:
        outcome.warnings.append(
            f"garbage-collect deleted {unexpected} blob(s) its dry run did not list; "
            "was the registry writable during the run?"
        )


def _walked_elsewhere(reader: StorageReader, parsed: GCOutput) -> str:
    """What the dry run walked that the storage root does not hold: a repository, or a manifest revision.

    Two stores with the same repository names differ in their revisions, so both are compared.
    """
    walked = list(parsed.repositories) + [repo for repo, _digest in parsed.eligible_manifests]
    for repo in dict.fromkeys(walked):
        if not _REPOSITORY_LINE.match(repo) or not os.path.isdir(os.path.join(reader.repositories_dir, repo)):
            return f"repository {repo}"
    for repo, digest in parsed.marked_manifests + parsed.eligible_manifests:
        if not _REPOSITORY_LINE.match(repo) or not reader.linked(
            os.path.join(reader.repositories_dir, repo), digest, "revision"
        ):
            return f"manifest revision {repo}@{digest}"
    return ""


def _scan_after(reader: StorageReader, outcome: GCOutcome) -> None:
    """Scan once the registry is back; name the damage that involves what this run deleted."""
    try:
        scan = scan_storage(reader.root)
    except ScanError as error:
        outcome.warnings.append(f"the scan after garbage-collect failed: {error}")
        return
    deleted = set(outcome.deleted_blobs) | {digest for _repo, digest in outcome.deleted_manifests}
    harmful = [finding for finding in scan.findings if finding.harmful]
    caused = [finding for finding in harmful if deleted & ({finding.digest} | set(finding.missing))]
    outcome.scan_after = {
        "clean": scan.clean,
        "summary": scan.summary(),
        "broken_tags": sorted(scan.broken_tags),
        "new_damage": [finding.message for finding in caused],
        "other_damage": len(harmful) - len(caused),
    }
    if caused:
        outcome.warnings.append(
            f"the scan after garbage-collect found {len(caused)} problem(s) involving what it deleted, "
            f"first {caused[0].message}"
        )
    elif harmful:
        outcome.warnings.append(
            f"the storage has {len(harmful)} problem(s) not caused by this run: "
            f"{', '.join(sorted(scan.broken_tags)) or 'see scan_after'}"
        )
